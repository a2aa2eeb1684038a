"""The sequence-only checks: each FAILs its planted twin in the tiny GPT (tests/zoo/sequence_bugs.py),
naming the cause, and gives no FAIL on clean pipelines: the tiny GPT, the bigram table, an LSTM and a
GRU language model, on a character stream and on padded names."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from checks.baselines.sequence_baselines import beats_ngram_baselines
from checks.engine.registry import CHECKS
from checks.engine.result import Verdict
from checks.engine.runner import run_check
from checks.report.figures import render_png
from recipe.data import Split
from recipe.language import TinyGPT
from recipe.sequences import bigram_pipeline, gpt_pipeline
from tests.test_verdicts import disagreements
from tests.zoo.sequence_bugs import (SEQUENCE_BUGS, NoPositionGPT, _gpt, _on_data, config,
                                      frequent_token_missing_from_train, names_bundle, no_positional_embedding,
                                      stream_bundle, train_without)

NEW = ("token_range", "targets_shifted", "split_overlap", "unseen_tokens", "unigram_bigram_baselines",
       "causality", "position_used", "padding_masked")
slow = pytest.mark.slow


class RecurrentLM(nn.Module):
    """Embedding, a one-layer LSTM or GRU, a linear head: a valid position-aware, causal language model."""

    def __init__(self, vocab: int, cell=nn.LSTM, bidirectional: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = cell(32, 48, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(48 * (2 if bidirectional else 1), vocab)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0])


def recurrent(pipeline, cell=nn.LSTM, bidirectional=False):
    V = pipeline.num_classes
    return replace(pipeline, name=cell.__name__.lower(), make_model=lambda: RecurrentLM(V, cell, bidirectional))


@pytest.fixture(scope="module")
def datas():
    return {"stream": stream_bundle(), "names": names_bundle(), "left-names": names_bundle(left=True)}


def clean_pipeline(data, model: str, seed: int = 0):
    if model == "bigram":
        return bigram_pipeline(config(seed=seed), data)
    gpt = gpt_pipeline(config(seed=seed), data)
    return {"gpt": gpt, "lstm": recurrent(gpt), "gru": recurrent(gpt, nn.GRU)}[model]


def run(name, pipeline):
    stage, check = CHECKS[name]
    return run_check(check, pipeline, stage)


CLEAN = [("stream", m) for m in ("gpt", "bigram", "lstm", "gru")] + [("names", m) for m in ("gpt", "bigram", "lstm", "gru")] \
    + [("left-names", m) for m in ("gpt", "bigram")]  # a recurrent model reads left pads: see padding_masked


@pytest.mark.parametrize("data_name, model", CLEAN, ids=lambda v: v)
def test_new_checks_pass_or_do_not_apply_on_clean_language_models(datas, data_name, model):
    pipeline = clean_pipeline(datas[data_name], model)
    results = [run(name, pipeline) for name in NEW]
    wrong = [f"{r.name}: {r.verdict.value}: {r.message}" for r in results if r.verdict not in (Verdict.PASS, Verdict.NA)]
    assert not wrong, "\n".join(wrong)
    assert not disagreements(results)  # each shown number agrees with its verdict
    na = {r.name: r.message for r in results if r.verdict is Verdict.NA}
    assert all(na.values())  # every N/A says why
    expected_na = ({"padding_masked"} if data_name == "stream" else set()) | ({"position_used"} if model == "bigram" else set())
    assert set(na) == expected_na


@pytest.mark.parametrize("bug", SEQUENCE_BUGS, ids=lambda b: b.name)
def test_planted_sequence_bug_fails_its_check_and_names_the_cause(datas, bug):
    pipeline = bug.plant(gpt_pipeline(config(), datas[bug.data]))
    result = run(bug.check, pipeline)
    assert result.verdict is Verdict.FAIL, f"{bug.name}: {result.verdict.value}: {result.message}"
    assert any(w.lower() in result.message.lower() for w in bug.cause_words), (bug.name, result.message)
    assert not disagreements([result])


def test_every_new_check_has_a_twin_or_is_a_report():
    planted = {bug.check for bug in SEQUENCE_BUGS}
    assert set(NEW) - planted <= {"unigram_bigram_baselines"}  # a report: nothing to plant


def test_a_bidirectional_recurrent_layer_breaks_causality_and_is_named(datas):
    result = run("causality", recurrent(gpt_pipeline(config(), datas["stream"]), bidirectional=True))
    assert result.verdict is Verdict.FAIL and "bidirectional" in result.message


def test_a_context_bag_without_any_position_fails_and_a_deep_one_warns(datas):
    """No position module at all: one layer reads the context as a bag (FAIL); two stacked causal layers
    recover some order (NoPE), which a relative scheme would too: WARN, never a FAIL."""
    class BareGPT(NoPositionGPT):
        def __init__(self, vocab, block_size, pad_id=None, layers=2):
            super().__init__(vocab, block_size, pad_id, layers=layers)
            del self.position
    gpt = gpt_pipeline(config(), datas["stream"])
    bag = run("position_used", _gpt(gpt, cls=lambda V, block_size, pad_id: BareGPT(V, block_size, pad_id, 1)))
    assert bag.verdict is Verdict.FAIL and "bag of tokens" in bag.message
    deep = run("position_used", _gpt(gpt, cls=BareGPT))
    assert deep.verdict is Verdict.WARN and "RoPE" in deep.message


def test_targets_matching_no_offset_warn_rather_than_fail(datas):
    """Targets unrelated to the inputs (another row's, or a tagging task) match no offset: WARN."""
    gpt = gpt_pipeline(config(), datas["stream"])
    rolled = _on_data(gpt, lambda s, _: Split(s.images, torch.roll(s.labels, 1, dims=0)))
    result = run("targets_shifted", rolled)
    assert result.verdict is Verdict.WARN and "no offset" in result.message


def test_names_that_repeat_in_the_data_itself_do_not_fail_split_overlap(datas):
    """A name list with natural repeats shares rows across splits as it does within train: the null."""
    names = names_bundle(n=600)
    pool = torch.cat([names.train.images[:100]] * 6)  # every train name six times
    labels = torch.cat([names.train.labels[:100]] * 6)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    pool, labels = pool[order], labels[order]
    data = replace(names, train=Split(pool[:480], labels[:480]), val=Split(pool[480:540], labels[480:540]),
                   test=Split(pool[540:], labels[540:]))
    result = run("split_overlap", gpt_pipeline(config(), data))
    assert result.verdict is not Verdict.FAIL, result.message
    assert result.details["train_repeat_share"] > 0.5


def test_a_frequent_token_train_never_shows_fails_unseen_tokens_and_a_rare_one_does_not(datas):
    stream = datas["stream"]
    gpt = gpt_pipeline(config(), stream)
    counts = torch.bincount(stream.val.images.flatten(), minlength=stream.num_classes)
    assert run("unseen_tokens", frequent_token_missing_from_train(gpt)).verdict is Verdict.FAIL
    rare = int(torch.where(counts > 0, counts, counts.max() + 1)[1:].argmin()) + 1
    assert counts[rare] / counts.sum() < 0.001  # a capital letter seen a few times in val
    assert run("unseen_tokens", train_without(gpt, rare)).verdict is not Verdict.FAIL


def test_unigram_and_bigram_baselines_are_the_counts():
    """Ordered uniform > unigram > bigram on text, and the train entropy equals a direct count."""
    stream = stream_bundle(n_chars=6000)
    result = run("unigram_bigram_baselines", gpt_pipeline(config(), stream))
    d = result.details
    assert d["bigram"] < d["unigram"] < d["uniform"] == pytest.approx(torch.log(torch.tensor(float(stream.num_classes))).item())
    y = stream.train.labels.flatten()
    p = torch.bincount(y, minlength=stream.num_classes).double()
    p = p[p > 0] / p.sum()
    assert d["unigram_train_entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-9)


@slow  # ~5 s: a 100-step run of the GPT
def test_gpt_beats_the_ngram_baselines_and_shows_samples(datas):
    result = beats_ngram_baselines(gpt_pipeline(config(), datas["stream"]))
    assert result.verdict is Verdict.PASS, result.message
    assert result.value < result.details["bigram"] < result.details["unigram"]
    assert len(result.details["samples_after"]) == 3 and render_png(result.figures[0]).startswith(b"\x89PNG")


@slow  # ~2.5 s: 100 steps
def test_a_slow_bigram_table_is_not_failed_for_a_short_run(datas):
    result = beats_ngram_baselines(bigram_pipeline(config(), datas["names"]))
    assert result.verdict is not Verdict.FAIL, result.message


@slow
def test_a_model_that_never_sees_its_input_fails_the_ngram_baselines(datas):
    """Inputs zeroed before the model: it can learn the token frequencies (the unigram), nothing more."""
    gpt = gpt_pipeline(config(), datas["stream"])

    class Blind(TinyGPT):
        def forward(self, x):
            return super().forward(torch.zeros_like(x))
    result = beats_ngram_baselines(_gpt(gpt, cls=Blind))
    assert result.verdict is Verdict.FAIL, result.message


def test_position_used_reads_the_real_tokens_of_left_padded_rows(datas):
    """Every row starts with pads: the check drops them rather than giving up."""
    left = datas["left-names"]
    pad = torch.full((1,), left.pad_id)

    def padded(s, _):
        return Split(torch.cat([pad.expand(len(s), 1), s.images], 1), torch.cat([pad.expand(len(s), 1), s.labels], 1))
    gpt = gpt_pipeline(config(), left)
    every_row_padded = _gpt(_on_data(gpt, padded), cls=TinyGPT)
    assert (every_row_padded.data.train.images[:, 0] == left.pad_id).all()
    assert run("position_used", every_row_padded).verdict is Verdict.PASS
    assert run("position_used", no_positional_embedding(every_row_padded)).verdict is Verdict.FAIL


def test_a_recurrent_model_on_left_padded_rows_reads_the_pads(datas):
    """Not a false alarm: an LSTM runs through left pads, so a name's predictions depend on how many pads
    precede it (the fix is pack_padded_sequence or right padding)."""
    result = run("padding_masked", recurrent(gpt_pipeline(config(), datas["left-names"])))
    assert result.verdict is Verdict.FAIL and "recurrent layer runs through the pads" in result.message


@slow  # ~3 s a seed: other texts, names, block sizes and inits; the limits were not tuned to seed 0
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_seeds_catch_every_twin_and_pass_the_clean_models(seed):
    datas = {"stream": stream_bundle(seed=seed, block=16 * (1 + seed % 3)), "names": names_bundle(seed=seed),
             "left-names": names_bundle(seed=seed, left=True)}
    for bug in SEQUENCE_BUGS:
        result = run(bug.check, bug.plant(gpt_pipeline(config(seed=seed), datas[bug.data])))
        assert result.verdict is Verdict.FAIL, f"{bug.name}: {result.message}"
    for data_name, model in CLEAN:
        pipeline = clean_pipeline(datas[data_name], model, seed)
        wrong = [f"{r.name}: {r.message}" for r in (run(name, pipeline) for name in NEW)
                 if r.verdict not in (Verdict.PASS, Verdict.NA)]
        assert not wrong, (data_name, model, wrong)


def test_the_text_figure_draws_decoded_samples_with_newlines_and_long_lines():
    from checks.engine.result import Figure
    png = render_png(Figure("text", "samples", {"lines": ["init:  a\nb", "after: " + "x" * 300]}))
    assert png.startswith(b"\x89PNG")
