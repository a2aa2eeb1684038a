"""RecipeCheck in a Lightning Trainer: a LightningModule written as Lightning's docs write their MNIST example,
on the `sample` digits through DataLoaders. Clean: the preflight runs before the first epoch and fit goes on.
A zoo bug planted in training_step: fit stops with that check's FAIL; force=True trains anyway."""
from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from checks.engine.result import Verdict
from checks.integrations.loop import PreflightFailed
from recipe.data import load_data

pytestmark = pytest.mark.skipif(find_spec("lightning") is None, reason="needs Lightning: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def lit():
    """Lightning, the docs' module and its zoo twins (tests/lightning_modules.py), imported when a test here runs."""
    pytest.importorskip("lightning.pytorch")  # installed but broken: a skip, as before
    from tests import lightning_modules

    return lightning_modules


@pytest.fixture(scope="module")
def digits():
    data = load_data("sample", download=False)

    def loader(split, shuffle=False):
        pixels = split.images.float().div(255).sub(0.1307).div(0.3081)  # ToTensor + Normalize, as the docs do
        return DataLoader(TensorDataset(pixels, split.labels), batch_size=64, shuffle=shuffle)

    return loader(data.train, shuffle=True), loader(data.val)


@pytest.mark.slow
def test_the_docs_module_passes_and_fit_goes_on(lit, digits, tmp_path):
    callback = lit.RecipeCheck(report_dir=tmp_path)
    trainer = lit.fit(lit.LitMNIST(), digits, callback)
    assert callback.verdict.passed, callback.verdict.failure_line()
    assert callback.verdict.complete and callback.verdict.report.is_file()
    assert trainer.global_step == 5  # the preflight ran before the first epoch, and training went on


@pytest.mark.parametrize("module_class, words", [("NegatedLoss", "wrong sign"), ("SummedLoss", "reduction")])
def test_a_zoo_bug_in_training_step_stops_fit_with_that_checks_fail(lit, digits, module_class, words):
    module = getattr(lit, module_class)()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(PreflightFailed) as raised:
        lit.fit(module, digits, lit.RecipeCheck(report_dir=None, only=["loss_at_init"]))
    assert raised.value.verdict.result("loss_at_init").verdict is Verdict.FAIL
    assert "/loss_at_init FAIL" in str(raised.value) and words in str(raised.value)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # fit stopped before any step


def test_force_trains_anyway(lit, digits):
    callback = lit.RecipeCheck(report_dir=None, only=["loss_at_init"], force=True)
    trainer = lit.fit(lit.NegatedLoss(), digits, callback)
    assert not callback.verdict.passed and trainer.global_step == 5
    assert callback.verdict.result("loss_at_init").verdict is Verdict.FAIL


DDP_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from torch.utils.data import DataLoader, TensorDataset

from recipe.data import load_data
from tests.lightning_modules import NegatedLoss, RecipeCheck, pl

if __name__ == "__main__":
    data = load_data("sample", download=False)
    loaders = [DataLoader(TensorDataset(s.images.float().div(255), s.labels), batch_size=64, shuffle=s is data.train)
               for s in (data.train, data.val)]
    trainer = pl.Trainer(max_epochs=1, callbacks=[RecipeCheck(report_dir=None, only=["loss_at_init"])],
                         accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    try:
        trainer.fit(NegatedLoss(), *loaders)
        line = "TRAINED"
    except Exception as err:
        line = f"STOPPED {{type(err).__name__}} {{err}}"
    with open(f"rank{{trainer.global_rank}}.txt", "w") as out:  # one file each: the ranks share stdout
        out.write(line)
"""


@pytest.mark.slow
def test_under_ddp_rank_0_checks_and_every_rank_stops(tmp_path):
    """strategy="ddp", 2 CPU processes (gloo): the preflight runs on rank 0 only, and both ranks stop."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    ranks = [tmp_path / f"rank{rank}.txt" for rank in (0, 1)]
    assert all(path.is_file() for path in ranks), done.stdout[-2000:] + done.stderr[-2000:]
    first, second = (path.read_text() for path in ranks)
    assert first.startswith("STOPPED PreflightFailed") and second.startswith("STOPPED RankStopped")
    assert "/loss_at_init FAIL" in first and "/loss_at_init FAIL" in second


def test_a_loader_with_its_own_collate_fn_is_read_through_it(lit, digits):
    train, val = digits
    custom = DataLoader(train.dataset, batch_size=64, collate_fn=lambda items: [torch.stack([x for x, _ in items]),
                                                                               torch.tensor([y for _, y in items])])
    callback = lit.RecipeCheck(report_dir=None, only=["label_pairing"])
    lit.fit(lit.LitMNIST(), (custom, val), callback)
    assert callback.verdict.passed and callback.verdict.pipeline.data.read_once == (("train", "collate"),)


def test_a_loader_the_checks_cannot_read_stops_fit_in_one_line(lit, digits):
    from recipe.loaders import LoaderError

    train, val = digits
    custom = DataLoader(train.dataset, batch_size=64, collate_fn=lambda items: items)  # (x, y) items, uncollated
    with pytest.raises(LoaderError, match="a list of"):
        lit.fit(lit.LitMNIST(), (custom, val), lit.RecipeCheck(report_dir=None, force=True))


def test_a_softmax_inside_training_step_stops_fit_at_overfit_one_batch(lit, digits):
    with pytest.raises(PreflightFailed) as raised:
        lit.fit(lit.SoftmaxInStep(), digits, lit.RecipeCheck(report_dir=None, only=["overfit_one_batch"]))
    assert raised.value.verdict.result("overfit_one_batch").verdict is Verdict.FAIL
    assert "squashed scores" in str(raised.value)


@pytest.mark.slow
def test_manual_optimisation_gets_the_preflight_and_fit_goes_on(lit, digits, tmp_path):
    callback = lit.RecipeCheck(report_dir=tmp_path)
    trainer = lit.fit(lit.ManualMNIST(), digits, callback)
    assert callback.verdict.passed, callback.verdict.failure_line()
    assert callback.verdict.result("gradient_clipping").verdict is Verdict.PASS  # self.clip_gradients was seen
    assert trainer.global_step == 5


@pytest.mark.parametrize("module_class, check, words", [
    ("ManualWithoutZeroGrad", "gradient_flow", "zero_grad"),
    ("ManualNegated", "loss_at_init", "wrong sign"),
    ("ManualClipAfterStep", "gradient_clipping", "after"),
])
def test_a_zoo_bug_in_a_manual_step_stops_fit_with_that_checks_fail(lit, digits, module_class, check, words):
    with pytest.raises(PreflightFailed) as raised:
        lit.fit(getattr(lit, module_class)(), digits, lit.RecipeCheck(report_dir=None, only=[check]))
    assert raised.value.verdict.result(check).verdict is Verdict.FAIL
    assert f"/{check} FAIL" in str(raised.value) and words in str(raised.value)


@pytest.mark.parametrize("page_name", ["docs/usage.md", "README.md"])
def test_the_usage_example_runs_as_pasted(lit, digits, tmp_path, monkeypatch, page_name):
    """The Lightning snippet of docs/usage.md and of the README, exec'd as written with the docs module and loaders in scope; the
    Trainer kept short (CPU, 2 batches an epoch) and one check instead of all, so it stays fast."""
    import re
    from pathlib import Path

    import checks.integrations.lightning as lightning

    page = (Path(__file__).resolve().parents[1] / page_name).read_text()
    code = re.search(r"```python\n(.*?)```", re.split(r"\n#+ Lightning\n", page, maxsplit=1)[1], re.S).group(1)
    run = lightning.run_preflight_on
    monkeypatch.setattr(lightning, "run_preflight_on", lambda *a, **k: run(*a, **{**k, "only": ["loss_at_init"]}))
    monkeypatch.chdir(tmp_path)

    def Trainer(**kwargs):  # the user's Trainer, with the test's limits added to what the snippet passes
        return lit.pl.Trainer(**kwargs, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                          limit_val_batches=1, num_sanity_val_steps=0)

    scope = {"Trainer": Trainer, "model": lit.LitMNIST(), "train_loader": digits[0], "val_loader": digits[1]}
    exec(compile(code, page_name, "exec"), scope)
    assert scope["trainer"].global_step == 5 * 2  # max_epochs=5 as pasted, trained after the preflight
    assert list((tmp_path / "reports").glob("*/index.html"))  # report_dir="reports" as pasted


@pytest.mark.parametrize("module_class, verdicts", [("SeedsFromBatchIdx", {Verdict.PASS}), ("ReseedsEveryStep", {Verdict.FAIL})])
def test_training_step_gets_the_running_batch_idx(lit, digits, module_class, verdicts):
    """Each check step passes the batch_idx Lightning would (0, 1, 2... from a fresh model), not 0 every time:
    a step that seeds from its batch_idx draws a new dropout mask each step and is no reset."""
    callback = lit.RecipeCheck(report_dir=None, only=["fresh_randomness"], force=True)
    lit.fit(getattr(lit, module_class)(), digits, callback)
    result = callback.verdict.result("fresh_randomness")
    assert result.verdict in verdicts, result.message
