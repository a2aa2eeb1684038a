"""Token data end to end: the offline sources (python-source split by file, names padded, any text file
cut into chunks, a user's own ids), the default GPT pipeline they get, and the shared checks on them."""
from __future__ import annotations

import pytest
import torch

from checks.engine.registry import CHECKS
from checks.engine.result import Verdict
from checks.engine.runner import run_all, run_check
from recipe import text_sources
from recipe.all_sources import SOURCES, load_source
from recipe.config import TrainConfig
from recipe.data import DataBundle, Split
from recipe.errors import DataError
from recipe.pipeline import DEFAULT_PIPELINE
from recipe.sequences import bigram_pipeline, gpt_pipeline
from recipe.token_datasets import bundle_from_token_ids
from recipe.user_code import DEFAULT_TOKEN_PIPELINE, pipeline_spec_for

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))


@pytest.fixture
def small_stdlib(monkeypatch):
    """python-source from ~150 KB of files instead of ~600 KB: the same reader and split, a quarter of the time."""
    monkeypatch.setattr(text_sources, "STDLIB_TOTAL_BYTES", 150_000)


def test_python_source_is_split_by_file_and_deterministic(small_stdlib):
    paths = text_sources.stdlib_files()
    assert paths == sorted(paths) and len(paths) >= 10
    sizes = [len(p.read_text(encoding="utf-8", errors="replace")) for p in paths]
    files = text_sources.split_files(paths, sizes)
    assert files == text_sources.split_files(paths, sizes)  # SPLIT_SEED, not the training seed
    train, val, test = (set(files[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)  # no file in two splits
    assert train | val | test == set(paths)
    assert val and test and len(train) > len(val)


def test_python_source_blocks_are_the_split_files_text_shifted_by_one(small_stdlib):
    data = load_source("python-source")
    assert data.kind == "tokens" and data.pad_id is None and data.train.images.shape[1] == 64
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert torch.equal(split.labels[:, :-1], split.images[:, 1:])
    paths = text_sources.stdlib_files()
    files = text_sources.split_files(paths, [len(p.read_text(encoding="utf-8", errors="replace")) for p in paths])
    val_text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files["val"])
    assert val_text.startswith(data.decode(data.val.images[:3].flatten()))  # val holds val's files, in order


def test_names_are_bounded_padded_and_split_by_name():
    data = load_source("names")
    assert data.kind == "tokens" and data.pad_id == 0 and data.class_names[0] == text_sources.PAD
    dot = data.class_names.index(text_sources.BOUNDARY)
    words = {}
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert (split.images[:, 0] == dot).all()  # every name starts after the boundary token
        for x, y in zip(split.images.tolist(), split.labels.tolist()):
            n = len(x) - x.count(0)  # the name's length + 1
            assert y[n - 1] == dot and set(y[n:]) <= {0} and x[1:n] == y[:n - 1]  # y is x shifted, ending on '.'
        words[name] = {data.decode(row).strip(text_sources.PAD + text_sources.BOUNDARY) for row in split.images}
    assert not (words["train"] & words["val"] or words["train"] & words["test"] or words["val"] & words["test"])
    assert sum(map(len, words.values())) > 5000


def test_a_text_file_is_cut_into_contiguous_chunks(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    data = load_source("text", path)
    streams = [data.decode(data.split(s).images.flatten()) for s in ("train", "val", "test")]
    assert TEXT.startswith(streams[0])  # train is the beginning, in order
    cut_val, cut_test = round(0.8 * len(TEXT)), round(0.9 * len(TEXT))
    assert TEXT[cut_val:].startswith(streams[1]) and TEXT[cut_test:].startswith(streams[2])
    assert len(data.train) > 7 * len(data.val)


@pytest.mark.parametrize("content, expected", [
    (None, "is missing"), ("folder", "is a folder"), (b"\x00\x01binary\x00", "looks binary"),
    (b"caf\xe9 latin-1", "is not UTF-8"), (b"too short", "needs at least")])
def test_bad_text_files_give_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "input.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as raised:
        load_source("text", path)
    assert "\n" not in str(raised.value)


def test_a_users_token_ids_become_a_bundle():
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, 20, (int(n),), generator=generator) for n in torch.randint(5, 15, (50,), generator=generator)]
    data = bundle_from_token_ids(sequences, sequences[:8], vocab=20, pad_id=0)
    assert data.kind == "tokens" and data.num_classes == 20 and len(data.train) + len(data.val) == 50
    first = sequences[0]
    assert torch.equal(data.train.images[0, :len(first) - 1], first[:-1])
    assert torch.equal(data.train.labels[0, :len(first) - 1], first[1:])
    assert (data.train.labels[0, len(first) - 1:] == 0).all()  # padded: no loss there
    pairs = [(s[:-1], s[1:]) for s in sequences if len(s) == len(sequences[0])]
    assert len(bundle_from_token_ids(pairs, pairs, pairs, vocab=20).train) == len(pairs)
    stream = bundle_from_token_ids(torch.arange(2000) % 7, torch.arange(300) % 7, vocab=list("abcdefg"), block_size=16)
    assert stream.train.images.shape[1] == 16 and stream.decode([0, 1, 2]) == "abc"
    with pytest.raises(DataError, match="give pad_id"):
        bundle_from_token_ids(sequences, sequences, vocab=20)
    with pytest.raises(DataError, match="outside the vocabulary"):
        bundle_from_token_ids(sequences, sequences, vocab=10, pad_id=0)


def test_token_data_gets_the_gpt_unless_a_pipeline_is_named(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    split = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    tokens, images = load_source("text", path), DataBundle(split, split, split, ("a", "b"), "tiny", "test")
    assert pipeline_spec_for(DEFAULT_PIPELINE, tokens) == DEFAULT_TOKEN_PIPELINE == "recipe.sequences:gpt_pipeline"
    assert pipeline_spec_for(DEFAULT_PIPELINE, images) == DEFAULT_PIPELINE
    assert pipeline_spec_for("recipe.sequences:bigram_pipeline", tokens) == "recipe.sequences:bigram_pipeline"
    assert {"python-source", "names", "text"} <= set(SOURCES)


def test_image_only_checks_say_not_applicable_on_tokens(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    pipeline = gpt_pipeline(TrainConfig(epochs=1), load_source("text", path))
    image_only = [(stage, check) for stage, check in CHECKS.values() if "tokens" not in getattr(check, "kinds", ("image",))]
    assert image_only  # integrity, input_normalisation, label checks ... read pixels or classes
    for stage, check in image_only:
        result = run_check(check, pipeline, stage)
        assert result.verdict is Verdict.NA and "token sequences" in result.message, check.__name__


@pytest.mark.slow
@pytest.mark.parametrize("source, factory, seed", [  # the GPT's other seeds: tests/test_valid_configs_lm.py
    ("names", gpt_pipeline, 0), ("names", bigram_pipeline, 0),
    ("names", bigram_pipeline, 1), ("python-source", bigram_pipeline, 0), ("python-source", gpt_pipeline, 0)])
def test_the_whole_preflight_fails_nothing_on_clean_language_models(source, factory, seed):
    pipeline = factory(TrainConfig(seed=seed), load_source(source))
    results = run_all(pipeline, gate=False)
    bad = [(r.name, r.verdict.name, r.message) for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    assert bad == []
    ran = {r.name for r in results if r.verdict is not Verdict.NA}
    assert {"loss_at_init", "overfit_one_batch", "input_independent_baseline", "batch_independence"} <= ran


@pytest.mark.slow
def test_recipe_run_on_names_trains_and_reports(tmp_path, capsys):
    from checks.cli.main import main

    code = main(["run", "--data", "names", "--epochs", "3", "--report-dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    run = (tmp_path / "latest").resolve()
    assert (run / "index.html").is_file() and (run / "results.json").is_file()
    html = (run / "index.html").read_text()
    assert "names" in html and "recipe.sequences:gpt_pipeline" in (run / "results.json").read_text()


def _text_pipeline(tmp_path, factory=gpt_pipeline):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return factory(TrainConfig(epochs=1), load_source("text", path))


def test_shared_checks_catch_bugs_on_token_batches(tmp_path):
    pipeline = _text_pipeline(tmp_path)

    def targets_of_another_example(split, **kw):  # y comes from the neighbouring sequence
        for b in pipeline.batches(split, **kw):
            yield type(b)(b.x, b.y.roll(1, 0), b.idx)

    shuffled = type(pipeline)(**{**pipeline.__dict__, "batches": targets_of_another_example})
    assert run_check(CHECKS["label_pairing"][1], shuffled, "skeleton").verdict is Verdict.FAIL
    assert run_check(CHECKS["label_pairing"][1], pipeline, "skeleton").verdict is Verdict.PASS

    class MixesTheBatch(torch.nn.Module):  # adds the batch mean: each sequence sees the others
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out + out.mean(0, keepdim=True)

    mixing = type(pipeline)(**{**pipeline.__dict__, "make_model": lambda: MixesTheBatch(pipeline.make_model())})
    assert run_check(CHECKS["batch_independence"][1], mixing, "skeleton").verdict is Verdict.FAIL
    assert run_check(CHECKS["batch_independence"][1], pipeline, "skeleton").verdict is Verdict.PASS
    assert run_check(CHECKS["output_sanity"][1], pipeline, "skeleton").verdict is Verdict.PASS
    assert run_check(CHECKS["loss_at_init"][1], pipeline, "skeleton").verdict is Verdict.PASS


class _PositionOnly(torch.nn.Module):
    """A 'language model' whose forward never reads the token ids: a learned table per position."""

    def __init__(self, vocab: int, block: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(block, vocab))

    def forward(self, x):
        return self.table[: x.shape[1]].expand(x.shape[0], -1, -1)


class _DetachedEmbedding(torch.nn.Module):
    """The ids are read, but only through an embedding that is zeroed: the context is multiplied away."""

    def __init__(self, vocab: int, block: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32)
        self.head = torch.nn.Linear(32, vocab)

    def forward(self, x):
        return self.head(self.embed(x) * 0.0)


@pytest.mark.slow  # two short runs of a tiny model on names: ~3 s
@pytest.mark.parametrize("model", [_PositionOnly, _DetachedEmbedding], ids=["position-only", "context-zeroed"])
def test_a_model_that_never_reads_its_tokens_fails_the_input_independent_baseline(model):
    import dataclasses

    from checks.baselines.baseline_checks import input_independent_baseline
    data = load_source("names")
    clean = gpt_pipeline(TrainConfig(), data)
    block = data.train.images.shape[1]
    blind = dataclasses.replace(clean, make_model=lambda: model(data.num_classes, block))
    result = input_independent_baseline(blind)
    assert result.verdict is Verdict.FAIL, result.message  # the clean GPT PASSes it in the whole-preflight test
