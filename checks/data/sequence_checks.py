"""Data checks for token sequences: ids in range, targets that are the next inputs, no block shared by
two splits, val/test tokens train has seen, and the unigram / bigram losses a model must beat.

Each reads the raw (N, T) id tensors of the bundle (inputs in `images`, next-token targets in
`labels`); counts come from checks/measure/ngrams.py. Padding (`DataBundle.pad_id`) is skipped
wherever a pad is not a token.
"""
from __future__ import annotations

import math

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict, measured
from checks.measure.ngrams import (NgramTables, chance_agreement, ngram_losses, offset_agreement, rows,
                                   unigram_counts)
from recipe.pipeline import Pipeline

STAGE = "data"
SPLITS = ("train", "val", "test")
SHIFTED = 0.99       # share of targets equal to the next input for PASS: stream blocks give exactly 1
EXPLAINED = 0.9      # another offset explaining this share of the targets is a misalignment
OFFSETS = (-2, -1, 0, 2, 3)  # the wrong offsets tried: y = x (0), two ahead (2), the previous token (-1) ...
OVERLAP_WARN, OVERLAP_FAIL = 0.001, 0.01


@applies_to("tokens")
def token_range(pipeline: Pipeline) -> CheckResult:
    """Every input id in [0, V) and every target id in [0, V) or the pad id: an id at V or above
    is an embedding index error on the device (or silently wraps), a vocabulary off by one."""
    V, pad = pipeline.num_classes, pipeline.data.pad_id
    bad, found, worst_ids = 0, [], []
    for name in SPLITS:
        split = pipeline.data.split(name)
        for what, ids, pad_ok in (("inputs", split.images, False), ("targets", split.labels, True)):
            outside = (ids < 0) | (ids >= V)
            if pad_ok and pad is not None:
                outside &= ids != pad
            n = int(outside.sum())
            if n:
                bad += n
                found.append(f"{name} {what}: {n} ids outside [0, {V}) (min {int(ids.min())}, max {int(ids.max())})")
                worst_ids.append(int(ids.max()))
    fail = (f"{bad} ids fall outside the vocabulary [0, {V}): " + "; ".join(found[:4]) + ". " +
            ("The largest id equals V: the vocabulary is one token short (an off-by-one: a token added "
             "after the vocabulary was sized, ids counted from 1, or the pad/EOS token left out of "
             "class_names). " if worst_ids and max(worst_ids) == V else "") +
            "Likely causes: the vocabulary built from other text than the ids were encoded with, ids "
            "counted from 1, a special token (pad, BOS/EOS) outside class_names. An embedding lookup of "
            "an id >= V crashes on the GPU and may read garbage elsewhere.")
    return measured("token_range", STAGE, bad, 0, "<=", f"every input and target id lies in [0, {V})"
                    + (f" (targets may be the pad id {pad})." if pad is not None else "."), fail,
                    details={"vocab_size": V, "problems": found})


@applies_to("tokens")
def targets_shifted(pipeline: Pipeline) -> CheckResult:
    """The targets are the inputs one position later: y[:, t] == x[:, t + 1] wherever both are real
    tokens (a pad at t + 1 is skipped: padded names end with EOS in y where x has pad).

    Stream blocks agree at every position (1.0). FAIL only on evidence of a misalignment: another
    offset (y = x, two ahead, one behind) explains over 90% of the targets and more than the next
    token does. Targets that match no offset (agreement near chance) WARN: it may be a pairing bug,
    or a task that is not next-token prediction (tagging, translation), which this check cannot tell.
    """
    pad, V = pipeline.data.pad_id, pipeline.num_classes
    per_split, worst = {}, None
    for name in SPLITS:
        x, y = rows(pipeline.data.split(name))
        if x.shape[1] < 2:
            continue
        next_share, n = offset_agreement(x, y, 1, pad)
        others = {k: offset_agreement(x, y, k, pad)[0] for k in OFFSETS}
        others = {k: v for k, v in others.items() if not math.isnan(v)}
        best = max(others, key=others.get) if others else None
        row = {"split": name, "next": next_share, "positions": n, "chance": chance_agreement(x, y, V, pad),
               "best_other_offset": best, "best_other": others.get(best, 0.0)}
        per_split[name] = row
        misaligned = row["best_other"] > max(EXPLAINED, next_share)
        key = (misaligned, -next_share)
        if worst is None or key > worst[0]:
            worst = (key, row)
    if worst is None:
        return CheckResult("targets_shifted", STAGE, Verdict.NA, None, None, "",
                           "blocks of one token have no next position inside the block to compare with")
    row = worst[1]
    details = {"per_split": list(per_split.values())}
    said = (f"{row['split']}: {row['next']:.3f} of {row['positions']} targets equal the next input "
            f"(chance {row['chance']:.3f}); the best other offset, {row['best_other_offset']:+d}, explains "
            f"{row['best_other']:.3f}")
    threshold = max(EXPLAINED, row["next"])
    if row["best_other"] > threshold:
        k = row["best_other_offset"]
        what = {0: "the targets ARE the inputs (y = x: the shift by one is missing, so the model learns to copy)",
                -1: "the targets are the PREVIOUS input (shifted the wrong way)"}.get(
                    k, f"the targets are the input {k} positions {'ahead' if k > 0 else 'behind'} (shifted by {k}, "
                    "not 1)")
        return CheckResult("targets_shifted", STAGE, Verdict.FAIL, row["best_other"], threshold, "<=",
                           f"{said}: {what}. Build y = ids[1:] and x = ids[:-1] from the same block of T + 1 "
                           "ids (recipe.sequences.blocks_of).", details=details)
    if row["next"] >= SHIFTED:
        return CheckResult("targets_shifted", STAGE, Verdict.PASS, row["best_other"], threshold, "<=",
                           f"{said}: the targets are the next tokens.", details=details)
    near_chance = row["next"] <= 2 * row["chance"] + 0.05
    why = ("the targets match the inputs at no offset (near chance): targets paired with another row, "
           "shuffled apart from the inputs, or encoded with another vocabulary. If this task maps a sequence "
           "to another one (tagging, translation), this check does not apply." if near_chance else
           f"some targets are not the next token (below {SHIFTED}): inputs corrupted or masked on purpose "
           "(denoising), or part of the rows misaligned.")
    return CheckResult("targets_shifted", STAGE, Verdict.WARN, row["best_other"], threshold, "<=",
                       f"{said}: {why}", details={**details, "warn_threshold": SHIFTED})


def _row_keys(x: torch.Tensor) -> list[bytes]:
    return [bytes(r) for r in x.numpy().astype("int64")]


@applies_to("tokens")
def split_overlap(pipeline: Pipeline) -> CheckResult:
    """No input block appears byte for byte in two splits (val or test in train, test in val).

    Stream blocks of tens of tokens never repeat by chance, so clean text measures 0. Data that repeats
    within train (short padded names, boilerplate) repeats across splits at a similar rate without any
    bug: the FAIL limit is 1% plus twice train's own repeat rate; any overlap above 0.1% WARNs.
    """
    keys = {name: _row_keys(rows(pipeline.data.split(name))[0]) for name in SPLITS}
    seen = {name: set(k) for name, k in keys.items()}
    within = 1 - len(seen["train"]) / max(len(keys["train"]), 1)  # share of train rows that repeat a train row
    pairs, worst = [], (0.0, "val", "train", 0)
    for a, b in (("val", "train"), ("test", "train"), ("test", "val")):
        n = sum(k in seen[b] for k in keys[a])
        share = n / max(len(keys[a]), 1)
        pairs.append({"split": a, "found_in": b, "rows": n, "share": share})
        worst = max(worst, (share, a, b, n))
    share, a, b, n = worst
    limit = OVERLAP_FAIL + 2 * within
    said = (f"{n} of {len(keys[a])} {a} blocks ({share:.2%}) are also in {b} (train repeats {within:.2%} of its "
            "own blocks). Only exact blocks are compared: overlap of whole documents needs document ids, which "
            "a token bundle does not carry")
    return measured("split_overlap", STAGE, share, limit, "<=", f"{said}: no leak.",
                    f"{said} (limit {limit:.2%}): the splits share blocks, so val/test measure memorisation. "
                    "Likely causes: a split copied from another, splitting after shuffling overlapping windows, "
                    "or the same files read into two splits. Split the documents first, then cut blocks.",
                    warn_threshold=max(OVERLAP_WARN, 2 * within),
                    warn_message=f"{said}: a few blocks repeat across splits; dedupe if val should be unseen.",
                    details={"pairs": pairs, "train_repeat_share": within})


@applies_to("tokens")
def unseen_tokens(pipeline: Pipeline) -> CheckResult:
    """Val and test tokens that never occur in train: their embeddings never train, and their loss
    says nothing about learning.

    The limits come from train itself (Good-Turing): the share of train tokens seen only once estimates
    the mass of tokens a same-distribution sample has not seen. WARN above max(0.1%, 2x that), FAIL
    above max(1%, 5x that): then val and test come from another distribution or another encoding.
    """
    V, pad = pipeline.num_classes, pipeline.data.pad_id
    tx, ty = rows(pipeline.data.train)
    train_counts = unigram_counts(tx, V, pad) + unigram_counts(ty, V, pad)
    total = float(train_counts.sum())
    good_turing = float((train_counts == 1).sum()) / max(total, 1)
    per_split, worst = [], (0.0, "val", 0, [])
    for name in ("val", "test"):
        x, y = rows(pipeline.data.split(name))
        counts = unigram_counts(torch.cat([x.reshape(-1), y.reshape(-1)]), V, pad)
        unseen = (counts > 0) & (train_counts == 0)
        share = float(counts[unseen].sum()) / max(float(counts.sum()), 1)
        ids = torch.nonzero(unseen).flatten().tolist()
        per_split.append({"split": name, "unseen_share": share, "unseen_ids": ids[:20]})
        worst = max(worst, (share, name, len(ids), ids))
    share, name, distinct, ids = worst
    shown = ", ".join(repr(_token(pipeline, i)) for i in ids[:8])
    said = (f"{share:.3%} of {name} tokens ({distinct} distinct: {shown or 'none'}) never occur in train "
            f"(Good-Turing expects {good_turing:.3%} unseen)")
    return measured("unseen_tokens", STAGE, share, max(0.01, 5 * good_turing), "<=", f"{said}.",
                    f"{said}: val/test hold tokens training never shows. Likely causes: splits from different "
                    "sources, a split encoded with another vocabulary or tokenizer, or a sorted corpus split "
                    "by position.", warn_threshold=max(0.001, 2 * good_turing),
                    warn_message=f"{said}: a few rare tokens only val/test hold; their loss cannot fall.",
                    details={"per_split": per_split, "good_turing": good_turing})


def _token(pipeline: Pipeline, i: int) -> str:
    names = pipeline.data.class_names
    return names[i] if 0 <= i < len(names) else str(i)


CONTEXT_HELPS = 0.1   # nats the bigram must beat no context by on held-out train rows to judge the other splits
CONTEXT_MISLEADS = -0.1  # ...and lose by on val or test to FAIL: other documents of one encoding score above 0


def context_gains(pipeline: Pipeline, tables: NgramTables) -> dict[str, float]:
    """How much train's add-one bigram beats the better guess without context, its unigram or uniform
    (nats/token), on val, test and, as the null, on a seeded tenth of train's own rows the tables were
    not fitted on. On text encoded like train,
    the previous token helps everywhere (+0.45 to +0.67 on names, python-source and a 200 KB text file);
    on a split whose ids were assigned by another vocabulary (`sorted(set(text))` per file) train's
    transitions mislead, and the bigram scores worse (-0.23 to -0.66). A remap that moves only a few ids
    (a split missing one rare character of train's sorted vocabulary) can still score a gain: not caught.
    With a word-level vocabulary (19k-28k ids on 0.2-0.7M train tokens) add-one smoothing makes the bigram
    lose even on held-out train rows (-1.2 nats): no null, so the rule stays silent there."""
    data = pipeline.data
    x, y = rows(data.train)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    held, fitted = order[: max(len(x) // 10, 1)], order[max(len(x) // 10, 1):]
    uniform = math.log(data.num_classes)
    null = NgramTables(x[fitted], y[fitted], data.num_classes, data.pad_id)
    unigram, bigram, _ = null.losses(x[held], y[held])
    gains = {"train (held-out rows)": min(unigram, uniform) - bigram}
    for name in ("val", "test"):  # `tables`: fitted on all of train
        split = data.split(name)
        if len(split):  # against the better guess without context: a foreign split's unigram is worse than uniform
            unigram, bigram, _ = tables.losses(*rows(split))
            gains[name] = min(unigram, uniform) - bigram
    return gains


@applies_to("tokens")
def unigram_bigram_baselines(pipeline: Pipeline) -> CheckResult:
    """The dumb baselines (makemore's first rungs): the val loss of train's unigram and add-one bigram,
    in nats per token. A model must beat both; `beats_ngram_baselines` reads them from the details.
    FAILs when the ids of val or test do not follow train's: the previous token, as train's bigram reads
    it, predicts worse there than no context at all, while it helps by CONTEXT_HELPS or more on train's
    own held-out rows (`context_gains`): the same ids mean other tokens in that split."""
    tables = NgramTables(*rows(pipeline.data.train), pipeline.num_classes, pipeline.data.pad_id)
    b = ngram_losses(pipeline.data, "val", tables)
    gains = context_gains(pipeline, tables)
    b["context_gain"] = gains
    said = (f"val loss of the dumb baselines fitted on train: uniform ln V = {b['uniform']:.3f}, unigram "
            f"{b['unigram']:.3f}, add-one bigram {b['bigram']:.3f} nats/token ({b['tokens_scored']} val tokens; "
            f"train's unigram entropy {b['unigram_train_entropy']:.3f})")
    null = gains["train (held-out rows)"]
    foreign = [name for name in ("val", "test") if gains.get(name, 0.0) < CONTEXT_MISLEADS]
    if null >= CONTEXT_HELPS and foreign:
        worst = min(foreign, key=lambda name: gains[name])
        return CheckResult("unigram_bigram_baselines", STAGE, Verdict.FAIL, gains[worst], 0.0, ">=",
                           f"the ids of {' and '.join(foreign)} do not follow train's: train's bigram predicts "
                           f"{worst} {-gains[worst]:.3f} nats/token worse than no context (its unigram, or uniform), "
                           "while on held-out train "
                           f"rows the previous token helps by {null:.3f}. The same ids mean other tokens there: a "
                           "split encoded with a vocabulary of its own (chars = sorted(set(text)) per file), or "
                           "another tokenizer. Encode every split with train's vocabulary.", details=b)
    if b["unigram"] <= b["uniform"]:
        return CheckResult("unigram_bigram_baselines", STAGE, Verdict.PASS, b["unigram"], b["uniform"], "<=",
                           f"{said}: the model must get below the unigram, and should get below the bigram.",
                           details=b)
    return CheckResult("unigram_bigram_baselines", STAGE, Verdict.WARN, b["unigram"], b["uniform"], ">",
                       f"{said}: train's token frequencies predict val worse than a uniform guess, so val's "
                       "tokens are distributed unlike train's (see unseen_tokens).", details=b)
