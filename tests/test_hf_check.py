"""RecipeTrainerCallback in a Hugging Face Trainer: a tiny GPT-2 built from a config (nothing downloaded) on the
`names` ids, batches as Hugging Face writes them for a causal LM (input_ids, attention_mask, labels = input_ids
with -100 on padding). Clean: the sequence checks run before the first step and training goes on. A planted
bug (a custom attention mask that forgot causality) stops train() with causality's FAIL; force=True trains."""
from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from checks.engine.result import Verdict
from checks.integrations.loop import PreflightFailed
from recipe.all_sources import load_source

pytestmark = pytest.mark.skipif(find_spec("transformers") is None, reason="needs transformers: pip install -e '.[test]'")

SEQUENCE_CHECKS = ("causality", "loss_at_init")


@pytest.fixture(scope="module")
def hf():
    """transformers, the tiny GPT-2 and its bug (tests/hf_models.py), imported when a test here runs."""
    pytest.importorskip("transformers")  # installed but broken: a skip, as before
    from tests import hf_models

    return hf_models


@pytest.fixture(scope="module")
def names():
    data = load_source("names")

    def rows(split, n):
        ids = torch.cat([split.images[:n, :1], split.labels[:n]], dim=1)  # the full row: HF shifts in the model
        mask = (ids != data.pad_id).long()
        labels = ids.masked_fill(mask == 0, -100)
        return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]

    return rows(data.train, 2048), rows(data.val, 128), data.num_classes, data.pad_id


@pytest.mark.slow
def test_the_clean_tiny_gpt2_passes_and_trains(hf, names, tmp_path):
    callback = hf.RecipeTrainerCallback(eval_dataset=names[1])
    trainer = hf.train("GPT2LMHeadModel", names, tmp_path, callback)
    verdict = callback.verdict
    assert verdict is not None and verdict.passed, verdict.failure_line()
    for name in SEQUENCE_CHECKS:
        assert verdict.result(name).verdict in (Verdict.PASS, Verdict.NA), verdict.result(name).message
    assert trainer.state.global_step == 2  # training went on after the preflight


def test_a_non_causal_mask_stops_train_with_causality_fail(hf, names, tmp_path):
    with pytest.raises(PreflightFailed, match="causality") as caught:
        hf.train("PeekingGPT2", names, tmp_path, hf.RecipeTrainerCallback(eval_dataset=names[1]))
    assert caught.value.verdict.result("causality").verdict is Verdict.FAIL


@pytest.mark.slow
def test_force_trains_past_the_fail(hf, names, tmp_path):
    callback = hf.RecipeTrainerCallback(force=True, eval_dataset=names[1])
    trainer = hf.train("PeekingGPT2", names, tmp_path, callback)
    assert not callback.verdict.passed and trainer.state.global_step == 2


def test_labels_that_count_padding_stop_train_with_undeclared_padding(hf, names, tmp_path):
    """labels = input_ids with the padding left in (no -100): the Trainer's loss trains on padding as text."""
    counted = [dict(row, labels=row["input_ids"].clone()) for row in names[0]]
    with pytest.raises(PreflightFailed, match="undeclared_padding") as caught:
        hf.train("GPT2LMHeadModel", (counted, *names[1:]), tmp_path,
              hf.RecipeTrainerCallback(eval_dataset=names[1]))
    assert caught.value.verdict.result("undeclared_padding").verdict is Verdict.FAIL


@pytest.mark.parametrize("page_name", ["docs/usage.md", "README.md"])
def test_the_usage_example_runs_as_pasted(hf, names, tmp_path, monkeypatch, page_name):
    """The Hugging Face snippet of docs/usage.md and of the README, exec'd as written with a tiny GPT-2, its TrainingArguments and
    the names rows in scope; the run stopped after 2 steps and one check instead of all, so it stays fast."""
    import re
    from pathlib import Path

    import checks.integrations.huggingface as huggingface

    page = (Path(__file__).resolve().parents[1] / page_name).read_text()
    code = re.search(r"```python\n(.*?)```", re.split(r"\n#+ Hugging Face Trainer\n", page, maxsplit=1)[1], re.S).group(1)
    run = huggingface.run_preflight_on
    monkeypatch.setattr(huggingface, "run_preflight_on", lambda *a, **k: run(*a, **{**k, "only": ["causality"]}))
    monkeypatch.chdir(tmp_path)
    train_rows, eval_rows, vocab, pad_id = names
    torch.manual_seed(0)
    model = hf.transformers.GPT2LMHeadModel(hf.transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32,
                                                                       vocab_size=vocab, n_positions=64,
                                                                       pad_token_id=pad_id))
    args = hf.transformers.TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=3, learning_rate=3e-3,
                                             per_device_train_batch_size=16, report_to=[], use_cpu=True,
                                             save_strategy="no", disable_tqdm=True)

    def Trainer(callbacks, **kwargs):  # the user's Trainer, stopped after 2 steps by the test
        return hf.transformers.Trainer(callbacks=[*callbacks, hf.StopAfterTwoSteps()], **kwargs)

    scope = {"Trainer": Trainer, "model": model, "args": args, "train": train_rows, "held_out": eval_rows}
    exec(compile(code, page_name, "exec"), scope)
    assert scope["trainer"].state.global_step == 2  # the preflight passed and training went on
    assert list((tmp_path / "reports").glob("*/index.html"))  # report_dir="reports" as pasted


class Streamed(torch.utils.data.IterableDataset):
    """The rows as a streaming dataset (no len()), as `datasets`' streaming mode gives them."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


@pytest.mark.parametrize("model_class, verdict", [("GPT2LMHeadModel", Verdict.PASS), ("PeekingGPT2", Verdict.FAIL)])
def test_a_streaming_dataset_is_read_through_the_trainers_loader(hf, names, tmp_path, model_class, verdict):
    train_rows, eval_rows, vocab, pad_id = names
    torch.manual_seed(0)
    config = hf.transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=64,
                                        pad_token_id=pad_id)
    model = hf.model_class(model_class)(config)
    args = hf.transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3 * len(train_rows) // 16,
                                             learning_rate=3e-3, per_device_train_batch_size=16, report_to=[],
                                             use_cpu=True, save_strategy="no", disable_tqdm=True)
    callback = hf.RecipeTrainerCallback(force=True, eval_dataset=Streamed(eval_rows), only=["causality", "loss_at_init"])
    hf.transformers.Trainer(model=model, args=args, train_dataset=Streamed(train_rows),
                            callbacks=[callback, hf.StopAfterTwoSteps()]).train()
    assert callback.verdict.result("causality").verdict is verdict, callback.verdict.result("causality").message
    data = callback.verdict.pipeline.data
    assert len(data.train) + len(data.val) + len(data.test) == len(train_rows) + len(eval_rows)
