"""The real-bug track for language models: publicly reported LM training bugs, ported as buggy/fixed pairs
on the tiny GPT (an LSTM where the report is about one) and the `names` data the CLI loads.

Same rules as the image track (catalogue.py, whose `RealBug`, `run_track` and row logic this reuses):
every check runs, gate off, on both versions, and nothing declares which check should fire.

- recall: the share of buggy versions with at least one FAIL,
- the false-FAIL rate: the share of fixed versions with at least one FAIL,
- and per pair, the FAILs the buggy version has and its fixed twin does not.

    python -m tests.realbugs --lm [--seed N] [--markdown] [--only NAME ...]
"""
from __future__ import annotations

from tests.realbugs import lm_pairs as m
from tests.realbugs import lm_pairs_data as d
from tests.realbugs.catalogue import RealBug, TrackRow, _fails, _short, misses_by_family, run_track, summary

LM_DATA = "names"  # `recipe run --data names`: padded, so the padding bugs have something to act on

LM_BUGS: tuple[RealBug, ...] = (
    RealBug("causal_mask_skipped",
            "https://github.com/facebookresearch/xformers/issues/103", "github-issue",
            "scaled_dot_product applies the causal mask only when an att_mask is passed: called without a padding "
            "mask, the causal model attends to the future",
            "apply the causal mask whether or not a padding mask is given",
            m.causal_mask_skipped_buggy, m.causal_mask_skipped_fixed, "attention mask"),
    RealBug("causal_mask_flipped",
            "https://github.com/pytorch/examples/issues/649", "github-issue",
            "the word_language_model Transformer's square subsequent mask comes out transposed (PyTorch 1.3): each "
            "position attends to itself and the future, not the past",
            "a mask with -inf above the diagonal (triu(..., 1)), 0 on and below it",
            m.causal_mask_flipped_buggy, m.causal_mask_flipped_fixed, "attention mask"),
    RealBug("additive_mask_into_binary_apply",
            "https://github.com/harvard-edge/cs249r_book/pull/1785", "github-pr",
            "GPT builds an additive -inf causal mask but _apply_mask expects 1 = attend: every allowed score gets "
            "-1e9, so attention is uniform over the past",
            "build the binary np.tril(np.ones(...)) mask _apply_mask expects",
            m.additive_mask_into_binary_apply_buggy, m.additive_mask_into_binary_apply_fixed, "attention mask"),
    RealBug("padding_mask_inverted",
            "https://github.com/lucidrains/halonet-pytorch/issues/4", "github-issue",
            "masked_fill_(mask, max_neg_value) with the mask True at the real tokens: every real key gets the same "
            "score, the causal -inf of later ones overwritten, so each token averages all real tokens, future ones too",
            "mask = ~mask.bool()",
            m.padding_mask_inverted_buggy, m.padding_mask_inverted_fixed, "attention mask"),
    RealBug("decoder_not_causal",
            "https://github.com/huggingface/transformers/issues/48745", "github-issue",
            "RoFormerForCausalLM (is_decoder=True) applies only the padding mask: each position sees the tokens after "
            "it and the CLM loss collapses",
            "combine the causal mask with the padding mask, as BertLMHeadModel does",
            m.decoder_not_causal_buggy, m.decoder_not_causal_fixed, "attention mask"),
    RealBug("attention_softmax_over_queries",
            "https://github.com/karpathy/minGPT/issues/132", "github-issue",
            "F.softmax(att, dim=-2) in CausalSelfAttention: normalised over the queries, so a position's weights "
            "depend on later positions; train and val loss incredibly low, samples bad",
            "F.softmax(att, dim=-1), over the keys",
            m.attention_softmax_over_queries_buggy, m.attention_softmax_over_queries_fixed, "attention softmax"),
    RealBug("attention_not_scaled",
            "https://github.com/PAIR-code/tiny-transformers/issues/71", "github-issue",
            "the raw attention scores are not divided by the square root of the head dimension",
            "multiply q k^T by 1/sqrt(head size)",
            m.attention_not_scaled_buggy, m.attention_not_scaled_fixed, "attention scale"),
    RealBug("attention_scale_divided",
            "https://github.com/esceptico/perceiver-io/issues/9", "github-issue",
            "self.scale = head_dim ** -0.5 and the scores are divided by it: multiplied by sqrt(d) instead of "
            "divided",
            "multiply the scores by self.scale",
            m.attention_scale_divided_buggy, m.attention_scale_divided_fixed, "attention scale"),
    RealBug("lm_loss_not_shifted",
            "https://github.com/huggingface/transformers/pull/404", "github-pr",
            "GPT-2's LM loss is computed without shifting while labels = input_ids: each position is trained to "
            "output its own input token",
            "score logits[..., :-1, :] against labels[..., 1:]",
            d.lm_loss_not_shifted_buggy, d.lm_loss_not_shifted_fixed, "targets alignment"),
    RealBug("labels_shifted_twice",
            "https://github.com/huggingface/transformers/pull/44642", "github-pr",
            "labels pre-shifted by the user and shifted again inside the causal-LM loss: next-next-token prediction",
            "pass labels aligned with the inputs once (labels = input_ids to a model that shifts, or no second shift)",
            d.labels_shifted_twice_buggy, d.labels_shifted_twice_fixed, "targets alignment"),
    RealBug("ignore_index_unused",
            "https://github.com/lucidrains/DALLE-pytorch/issues/57", "github-issue",
            "ignore_index is defined but not passed to F.cross_entropy: the pad tokens (id 0) are scored",
            "F.cross_entropy(..., ignore_index=0), the pad id",
            d.ignore_index_unused_buggy, d.ignore_index_unused_fixed, "padding in the loss"),
    RealBug("pad_with_end_token",
            "https://github.com/FlagAI-Open/FlagAI/issues/522", "github-issue",
            "sequences are padded with the end token while the loss ignores -100: every pad position is a scored "
            "end token",
            "pad with a pad id the loss ignores",
            d.pad_with_end_token_buggy, d.pad_with_end_token_fixed, "padding in the loss"),
    RealBug("position_embedding_detached",
            "https://github.com/d2l-ai/d2l-en/pull/2121", "github-pr",
            "forward adds self.pos_embedding.data: the learnable position embedding is cut from the graph and never "
            "trains",
            "add self.pos_embedding itself",
            m.position_embedding_detached_buggy, m.position_embedding_detached_fixed, "parameters not trained"),
    RealBug("lstm_state_carried_across_batches",
            "https://github.com/HIT-SCIR/ELMoForManyLangs/issues/68", "github-issue",
            "the LSTM's last hidden state of one batch is the next batch's initial state though batches are "
            "shuffled and unrelated: the same batch twice gives different outputs",
            "start every batch from a zero state",
            m.lstm_state_carried_across_batches_buggy, m.lstm_state_carried_across_batches_fixed, "recurrent state"),
    RealBug("accumulation_mean_of_means",
            "https://github.com/huggingface/transformers/issues/24725", "github-issue",
            "with gradient accumulation each micro-batch's loss is a mean over its own tokens, then averaged: tokens "
            "of short micro-batches weigh more than with one big batch",
            "weigh each micro-batch's mean by its share of the step's tokens (sum / total tokens)",
            d.accumulation_mean_of_means_buggy, d.accumulation_mean_of_means_fixed, "loss normalisation"),
)

LABELS = ("recall on buggy language-model versions", "false-FAIL rate on fixed language-model versions",
          "buggy language-model versions with a FAIL their fixed twin does not have")


def lm_summary_lines(rows: list[TrackRow]) -> list[str]:
    s, n = summary(rows), len(rows)
    return [f"{label}: {s[key]}/{n} ({s[key] / n:.0%})"
            for label, key in zip(LABELS, ("caught", "false_fail", "caught_by_bug"))]


def render_lm_markdown(rows: list[TrackRow]) -> str:
    lines = ["| pair | source | family | caught? | false FAIL? | checks that FAIL: buggy (fixed) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.bug.name}` | [{_short(r.bug.source_url)}]({r.bug.source_url}) | {r.bug.family} | "
                     f"{'yes' if r.caught else '**no**'} | {'**yes**' if r.false_fail else 'no'} | "
                     f"{_fails(r.buggy_fails)} ({_fails(r.fixed_fails)}) |")
    missed = misses_by_family(rows)
    lines += ["", *lm_summary_lines(rows), "", "misses (no FAIL beyond the fixed twin's), by family:"]
    return "\n".join(lines + ([f"- {family}: {', '.join(names)}" for family, names in missed.items()] or ["- none"]))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    import torch

    from recipe.all_sources import load_source
    from tests.realbugs.catalogue import _progress, render_text

    parser = argparse.ArgumentParser(prog="python -m tests.realbugs --lm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the markdown table (for docs/realbugs.md)")
    parser.add_argument("--only", nargs="*", help="run only these pairs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra intra-op threads only add overhead on a shared 2-core box
    bugs = tuple(b for b in LM_BUGS if not args.only or b.name in args.only)
    data = load_source(LM_DATA)
    started = time.perf_counter()
    rows = run_track(data, args.seed, bugs, on_row=_progress)
    print()
    print(render_lm_markdown(rows) if args.markdown else render_text(rows))
    print(f"\n{len(rows)} pairs, data {LM_DATA}, seed {args.seed}, {time.perf_counter() - started:.0f} s")
    return 0
