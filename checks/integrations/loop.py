"""The plain PyTorch loop's entry point: the preflight on the objects a training script already has.

    from checks import check_loop, PreflightFailed

    check_loop(lambda: Net(), lambda params: optim.Adadelta(params, lr=1.0), F.nll_loss,
               train_loader, val_loader,
               scheduler_factory=lambda opt: StepLR(opt, step_size=1, gamma=0.7), scheduler_interval="epoch")
    # ... then the script's own training loop, unchanged

It reads the loaders' datasets (recipe/loaders.py: map-style Datasets, the loader's batch size and
shuffle), builds the Pipeline view of the user's factories and step, runs every check through the one
runner with the one stage gate, optionally writes the usual report, and returns a `LoopVerdict`.
On a FAIL or ERROR it raises `PreflightFailed`, naming the failing checks, so a script stops before
it trains (`raise_on_fail=False` returns the verdict instead). A loader whose items are not what the
model gets (an IterableDataset, a custom collate_fn, a random transform) is read once through the loader
(recipe/read_once.py); one that cannot be read at all is refused in one line, before any check runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable

import torch
from torch import nn

from checks.engine.result import CheckResult, Verdict, worst
from recipe.config import TrainConfig
from recipe.errors import RecipeError
from recipe.loaders import read_loaders
from recipe.pipeline import SCHEDULER_INTERVALS, Pipeline
from recipe.steps import StepFn, train_step

DEFAULT_REPORT_DIR = "reports"


class PreflightFailed(RecipeError):
    """The preflight found a FAIL or ERROR: training should not start. `.verdict` holds every result."""

    def __init__(self, verdict: "LoopVerdict"):
        self.verdict = verdict
        super().__init__(verdict.failure_line())


@dataclass
class LoopVerdict:
    """The preflight's results on the user's loop. `passed`: no FAIL or ERROR (WARN and N/A do not block)."""
    results: list[CheckResult]
    pipeline: Pipeline
    report: Path | None = None  # the run's index.html, when a report was written
    checks_s: float = 0.0
    complete: bool = field(default=True)

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.overall.blocks

    @property
    def overall(self) -> Verdict:
        return worst(r.verdict for r in self.results)

    @property
    def failing(self) -> list[CheckResult]:
        return [r for r in self.results if r.verdict.blocks]

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    def failure_line(self) -> str:
        names = "; ".join(f"{r.stage}/{r.name} {r.verdict.value}: {r.message.rstrip('.')}" for r in self.failing)
        where = f" Report: {self.report}." if self.report is not None else ""
        return f"the preflight FAILED, so training should not start: {names}.{where}"

    def __str__(self) -> str:
        from collections import Counter

        counts = ", ".join(f"{n} {v}" for v, n in sorted(Counter(r.verdict.value for r in self.results).items()))
        where = f"; report: {self.report}" if self.report is not None else ""
        return f"preflight {self.overall.value} ({len(self.results)} checks: {counts}){where}"


def pipeline_from_loop(model_factory: Callable[[], nn.Module],
                       optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
                       loss_fn: Callable, train_loader, val_loader, *, test_loader=None, step: StepFn | None = None,
                       scheduler_factory: Callable | None = None, scheduler_interval: str = "step", epochs: int = 1,
                       seed: int = 0, check_steps: int = 0, name: str | None = None, class_names=None, vocab=None,
                       decode: Callable | None = None, pad_id: int | None = None, device: str | torch.device = "cpu"
                       ) -> Pipeline:
    """The Pipeline view of a plain loop: its data read from the loaders, its factories and step as given."""
    if scheduler_interval not in SCHEDULER_INTERVALS:
        raise RecipeError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    for what, value in (("model_factory", model_factory), ("optimizer_factory", optimizer_factory),
                        ("loss_fn", loss_fn)):
        if isinstance(value, nn.Module) and what == "model_factory":
            raise RecipeError("model_factory is a model, not a factory: pass `lambda: Net()` (every check trains a "
                              "fresh copy, never your model)")
        if isinstance(value, torch.optim.Optimizer):
            raise RecipeError(f"{what} is an optimizer, not a factory: pass `lambda params: "
                              f"{type(value).__name__}(params, ...)`")
        if not callable(value):
            raise RecipeError(f"{what} must be callable, got {type(value).__name__}")
    view = read_loaders(train_loader, val_loader, test_loader, class_names=class_names, vocab=vocab,
                        decode=decode, pad_id=pad_id, device=device)
    config = TrainConfig(epochs=epochs, batch_size=view.batch_size, seed=seed, check_steps=check_steps)
    target = torch.device(device)

    def make_model() -> nn.Module:
        return model_factory().to(target)

    return Pipeline(name=name or _name_of(model_factory), data=view.data, norm=view.norm, batches=view.batches,
                    make_model=make_model, loss_fn=loss_fn, make_optimizer=optimizer_factory,
                    train_step=step or train_step, config=config, make_scheduler=scheduler_factory,
                    scheduler_interval=scheduler_interval, derived_from=config)


def check_loop(model_factory, optimizer_factory, loss_fn, train_loader, val_loader, *, test_loader=None,
               step: StepFn | None = None, scheduler_factory=None, scheduler_interval: str = "step",
               epochs: int = 1, seed: int = 0, report_dir: str | Path | None = None, gate: bool = True,
               raise_on_fail: bool = True, only: Collection[str] | None = None, check_steps: int = 0,
               name: str | None = None, class_names=None, vocab=None, decode=None, pad_id=None,
               device: str | torch.device = "cpu") -> LoopVerdict:
    """Run the preflight on a plain loop's own objects (see the module docstring).

    `model_factory()` -> a fresh nn.Module; `optimizer_factory(params)`; `loss_fn(output, y)`;
    `step(model, optimizer, loss_fn, x, y) -> loss` (default: zero_grad, forward, loss, backward, step);
    `scheduler_factory(optimizer)`, stepped per "step" or per "epoch". `report_dir`: write the usual
    report there. `only`: run just these checks (a partial preflight). Raises PreflightFailed on a
    FAIL or ERROR unless `raise_on_fail=False`.
    """
    pipeline = pipeline_from_loop(model_factory, optimizer_factory, loss_fn, train_loader, val_loader,
                                  test_loader=test_loader, step=step, scheduler_factory=scheduler_factory,
                                  scheduler_interval=scheduler_interval, epochs=epochs, seed=seed,
                                  check_steps=check_steps, name=name, class_names=class_names, vocab=vocab,
                                  decode=decode, pad_id=pad_id, device=device)
    return run_preflight_on(pipeline, _spec_of(model_factory), gate=gate, report_dir=report_dir,
                            raise_on_fail=raise_on_fail, only=only)


def run_preflight_on(pipeline: Pipeline, spec: str, *, gate: bool = True, report_dir: str | Path | None = None,
                     raise_on_fail: bool = True, only: Collection[str] | None = None) -> LoopVerdict:
    """The one runner and gate over `pipeline`, the report if asked for, and the verdict (raised on FAIL)."""
    from checks.engine.preflight import run_preflight

    started = time.perf_counter()
    preflight = run_preflight(pipeline, spec, gate=gate, only=only)
    verdict = LoopVerdict(preflight.results, pipeline, checks_s=preflight.checks_s, complete=preflight.complete)
    if report_dir is not None:
        verdict.report = _write_report(Path(report_dir), preflight, pipeline, started)
    if raise_on_fail and not verdict.passed:
        raise PreflightFailed(verdict)
    return verdict


def _write_report(report_dir: Path, preflight, pipeline: Pipeline, started: float) -> Path:
    from checks.engine.preflight import write_run_report
    from recipe.runs import run_folder

    with run_folder(report_dir) as run:
        timings = {"checks_s": preflight.checks_s, "total_s": time.perf_counter() - started, "process": "library"}
        write_run_report(run.path, preflight, pipeline, timings)
    return run.final / "index.html"


def _name_of(factory) -> str:
    """The factory's name, or for a lambda the class of the model it makes (`lambda: Net()` -> Net)."""
    name = getattr(factory, "__qualname__", type(factory).__name__)
    if "<lambda>" in name or "<locals>" in name:
        try:
            return type(factory()).__name__
        except Exception:  # a factory that crashes here crashes in the checks too, where it is explained
            return "loop"
    return name


def _spec_of(factory) -> str:
    """module:name of the model factory: the fingerprint hashes that module's file and the user's own
    modules it imports, so a changed model is a changed preflight."""
    return f"{getattr(factory, '__module__', None) or '__main__'}:{_name_of(factory)}"
