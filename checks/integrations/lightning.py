"""Lightning: `Trainer(callbacks=[RecipeCheck()])` runs the preflight on the Trainer's own objects.

    from checks.integrations.lightning import RecipeCheck   # pip install -e '.[lightning]'
    trainer = Trainer(max_epochs=5, callbacks=[RecipeCheck(report_dir="reports")])
    trainer.fit(model, datamodule=dm)   # stops with PreflightFailed, naming the failing checks

At `on_train_start` (the loaders are set up, no optimizer step has run) it builds the Pipeline view of
the run, asking nothing of the user's code:
- the model: a deepcopy of the LightningModule as it is then, one fresh copy per check;
- the step: `training_step((x, y), batch_idx)` for the loss, then zero_grad / backward / step, as
  automatic optimisation does; with `automatic_optimization = False`, training_step itself, its
  `self.optimizers()`, `self.lr_schedulers()`, `self.manual_backward` and `self.clip_gradients` given
  the check's own optimizer and scheduler (`_driven`), and the loss it backpropagates as the step's loss;
- the loss the checks score outputs with: `training_step` itself, run on given outputs (it calls
  `self(x)`, which returns them); where that cannot be done, `loss_fn` (default F.cross_entropy);
- the optimizer and LR scheduler (with its interval) from `configure_optimizers`;
- the data: the Trainer's train and val DataLoaders, read as `check_loop` reads them.
It runs every check through the one runner and gate, writes the report (with `report_dir`) and, on a
FAIL or ERROR, raises PreflightFailed, which Lightning propagates out of `fit`. `force=True` reports and
trains anyway. Under DDP the preflight runs on global rank 0 only: see `_verdict_for_every_rank`.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from checks.integrations.loop import LoopVerdict, PreflightFailed, run_preflight_on
from recipe.config import TrainConfig
from recipe.errors import RecipeError

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the base install does without Lightning: say how to get it, in one line
    raise RecipeError("RecipeCheck needs Lightning: pip install -e '.[lightning]' (or pip install lightning)") from None
from recipe.loaders import read_loaders
from recipe.pipeline import Pipeline

LIGHTNING_DEFAULT_INTERVAL = "epoch"  # what Lightning steps a scheduler by when its config names no interval


class RecipeCheck(Callback):
    def __init__(self, *, report_dir: str | Path | None = "reports", force: bool = False, gate: bool = True,
                 loss_fn: Callable | None = None, only=None, seed: int = 0, check_steps: int = 0):
        self.report_dir, self.force, self.gate, self.only = report_dir, force, gate, only
        self.loss_fn, self.seed, self.check_steps = loss_fn, seed, check_steps
        self.verdict: LoopVerdict | None = None  # rank 0's results (None on the other ranks)
        self.passed: bool | None = None  # on every rank

    def on_train_start(self, trainer, pl_module) -> None:
        verdict, refused = None, None
        if trainer.global_rank == 0:
            try:
                pipeline = lightning_pipeline(trainer, pl_module, self.loss_fn, self.seed, self.check_steps)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*self.log.*")  # the copies have no Trainer to log to
                    verdict = run_preflight_on(pipeline, _spec_of(pl_module), gate=self.gate,
                                               report_dir=self.report_dir, raise_on_fail=False, only=self.only)
            except RecipeError as err:  # a loader or module the checks cannot read: the other ranks must hear too
                refused = err
        self.verdict = verdict
        summary = (False, str(refused), True) if refused is not None else \
            (verdict.passed, verdict.failure_line(), False) if verdict is not None else None
        self.passed, line, was_refused = _verdict_for_every_rank(trainer, summary)
        if refused is not None:
            raise refused
        if not self.passed and (was_refused or not self.force):  # force trains past a FAIL, never past a refusal
            raise PreflightFailed(verdict) if verdict is not None else RankStopped(line)


class RankStopped(RecipeError):
    """Raised on a rank other than 0 when rank 0's preflight failed: the same line, so every rank stops."""


def _verdict_for_every_rank(trainer, summary) -> tuple[bool, str, bool]:
    """(passed, failure line, refused) of rank 0's preflight, sent to every rank, so all stop (or train) together.
    Only these travel: the verdict holds the pipeline, whose factories need not pickle."""
    if trainer.world_size > 1:
        summary = trainer.strategy.broadcast(summary, src=0)
    return summary


def lightning_pipeline(trainer, module, loss_fn: Callable | None = None, seed: int = 0,
                       check_steps: int = 0) -> Pipeline:
    """The Pipeline view of a Trainer about to fit `module` (see the module docstring)."""
    manual = not module.automatic_optimization
    train_loader, val_loaders = trainer.train_dataloader, trainer.val_dataloaders
    if isinstance(val_loaders, (list, tuple)):
        val_loaders = val_loaders[0] if val_loaders else None
    if val_loaders is None:
        raise RecipeError("RecipeCheck needs a val DataLoader (val_dataloader in the module or datamodule, or "
                          "trainer.fit(..., val_dataloaders=...)): the checks compare train with held-out data")
    view = read_loaders(train_loader, val_loaders, device=module.device)
    template = _detached_copy(module)
    made = _Made(template)
    config = TrainConfig(epochs=max(trainer.max_epochs or 1, 1), batch_size=view.batch_size, seed=seed,
                         check_steps=check_steps)
    # Manual optimisation steps its scheduler itself (Lightning leaves that to training_step): no PlannedSchedule.
    return Pipeline(name=type(module).__name__, data=view.data, norm=view.norm, batches=view.batches,
                    make_model=made.model, loss_fn=loss_fn or _loss_from_training_step(template, view, manual),
                    make_optimizer=made.optimizer, train_step=_manual_step(made) if manual else lightning_step,
                    config=config, make_scheduler=made.scheduler if made.interval and not manual else None,
                    scheduler_interval=made.interval or "step", derived_from=config)


_STEPS_TAKEN: dict[int, int] = {}  # by id: a module defining __eq__ without __hash__ is no dict key


def _batch_idx(model) -> int:
    """The batch_idx Lightning would pass: how many steps this model object has taken. Every check trains
    a fresh copy, which starts at 0, so a check's run is the same every time (unlike Lightning, it does not
    go back to 0 each epoch). A constant 0 made a step that seeds from batch_idx look like one that resets
    the generator at every step (`fresh_randomness`)."""
    key = id(model)
    if key not in _STEPS_TAKEN:
        weakref.finalize(model, _STEPS_TAKEN.pop, key, None)  # a later object with the same id starts at 0
    taken = _STEPS_TAKEN.get(key, 0)
    _STEPS_TAKEN[key] = taken + 1
    return taken


def lightning_step(model, optimizer, loss_fn, x, y):
    """Automatic optimisation, spelled out: the loss from training_step, then backward and step."""
    optimizer.zero_grad(set_to_none=True)
    loss = _loss_of(model.training_step([x, y], _batch_idx(model)))
    loss.backward()
    optimizer.step()
    return loss.detach()


def _manual_step(made: "_Made"):
    """Manual optimisation: training_step runs the whole step with the check's optimizer and scheduler."""
    def manual_step(model, optimizer, loss_fn, x, y):
        with _driven(model, optimizer, made.schedulers.get(id(optimizer)), backward=True) as losses:
            output = model.training_step([x, y], _batch_idx(model))
        return (losses[-1] if losses else _loss_of(output)).detach()
    return manual_step


class _NoStep:
    """The optimizer training_step is given while only its loss is read: nothing is zeroed or stepped."""
    param_groups: list = []

    def zero_grad(self, *args, **kwargs) -> None:
        pass

    def step(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def _driven(module, optimizer, scheduler, backward: bool):
    """Lightning's manual-optimisation API on a module outside a Trainer: self.optimizers() is `optimizer`,
    self.lr_schedulers() `scheduler`, self.manual_backward(loss) loss.backward() (nothing when only the
    loss is read), self.clip_gradients torch's own clipping (which gradient_clipping watches). Yields the
    losses handed to manual_backward."""
    losses: list[torch.Tensor] = []

    def manual_backward(loss, *args, **kwargs):
        losses.append(loss)
        if backward:
            loss.backward(*args, **kwargs)

    def clip_gradients(opt, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val and backward:
            params = [p for group in opt.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    patched = {"optimizers": lambda use_pl_optimizer=True: optimizer, "lr_schedulers": lambda: scheduler,
               "manual_backward": manual_backward, "clip_gradients": clip_gradients}
    for name, function in patched.items():
        object.__setattr__(module, name, function)  # instance attributes shadow the methods, on this copy only
    try:
        yield losses
    finally:
        for name in patched:
            module.__dict__.pop(name, None)


def _loss_of(output):
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, torch.Tensor):
        raise RecipeError(f"training_step returned {type(output).__name__}; RecipeCheck needs the loss tensor "
                          "(or a dict with 'loss')")
    return loss


def _detached_copy(module):
    """A deepcopy of the module without its Trainer (which must not be copied, nor stepped by the checks)."""
    trainer = module._trainer
    module._trainer = None
    try:
        return copy.deepcopy(module)
    finally:
        module._trainer = trainer


class _Made:
    """Fresh copies of the module, and each copy's own configure_optimizers: the optimizer for a copy's
    parameters comes from that copy, with the scheduler built beside it."""

    def __init__(self, template):
        self.template = template
        self.owners: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.schedulers: dict[int, object] = {}
        _, _, self.interval = _read_optimizers(copy.deepcopy(template).configure_optimizers())

    def model(self):
        copied = copy.deepcopy(self.template)
        for parameter in copied.parameters():
            self.owners[id(parameter)] = copied
        return copied

    def optimizer(self, params):
        params = list(params)
        owner = self.owners.get(id(params[0])) if params else None
        if owner is None or len(params) != len(list(owner.parameters())):
            raise RecipeError("RecipeCheck builds optimizers with the module's configure_optimizers, for all of one "
                              "copy's parameters; a check asked for another set")
        optimizer, scheduler, _ = _read_optimizers(owner.configure_optimizers())
        self.schedulers[id(optimizer)] = scheduler
        return optimizer

    def scheduler(self, optimizer):
        return self.schedulers.pop(id(optimizer), None)


def _read_optimizers(config):
    """(optimizer, scheduler or None, interval or None) of what configure_optimizers may return: an
    optimizer, a one-item list, ([optimizer], [scheduler]), or a dict with "optimizer" and "lr_scheduler"."""
    scheduler = None
    if isinstance(config, (list, tuple)) and len(config) == 2 and all(isinstance(c, (list, tuple)) for c in config):
        config, schedulers = config
        scheduler = schedulers[0] if schedulers else None
    if isinstance(config, (list, tuple)):
        if len(config) != 1:
            raise RecipeError(f"configure_optimizers returned {len(config)} optimizers; RecipeCheck drives one")
        config = config[0]
    if isinstance(config, Mapping):
        scheduler = config.get("lr_scheduler")
        config = config["optimizer"]
    interval = LIGHTNING_DEFAULT_INTERVAL if scheduler is not None else None
    if isinstance(scheduler, Mapping):
        interval = scheduler.get("interval", LIGHTNING_DEFAULT_INTERVAL)
        scheduler = scheduler["scheduler"]
    if not isinstance(config, torch.optim.Optimizer):
        raise RecipeError(f"configure_optimizers returned {type(config).__name__}; RecipeCheck reads an optimizer, "
                          "a list of one, ([optimizer], [scheduler]) or {'optimizer': ..., 'lr_scheduler': ...}")
    return config, scheduler, interval


class _GivenOutputs(torch.nn.Module):
    """Stands in for the module inside training_step: `self(x)` returns the outputs given to the loss;
    any other attribute is the module's own."""

    def __init__(self, module, outputs):
        super().__init__()
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_outputs", outputs)

    def forward(self, x):
        return self._outputs

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_module"), name)


def _loss_from_training_step(template, view, manual: bool = False) -> Callable:
    """loss_fn(outputs, y) = what training_step computes from those outputs, so a loss written inside
    training_step (a sum, a sign, a softmax before cross_entropy) is the loss every check scores. Tried
    once on a val batch against training_step itself: a step that does not reach the model through
    `self(x)` gets F.cross_entropy instead (pass RecipeCheck(loss_fn=...) for another), with a warning."""
    step = type(template).training_step

    def read(module, call):
        if not manual:
            return _loss_of(call())
        with _driven(module, _NoStep(), None, backward=False) as losses:
            output = call()
        return losses[-1] if losses else _loss_of(output)

    def from_step(outputs, y):
        return read(template, lambda: step(_GivenOutputs(template, outputs), [outputs, y], 0))

    batch = next(view.batches("val"))
    model = copy.deepcopy(template).eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            direct = read(model, lambda: model.training_step([batch.x, batch.y], 0))
            agree = torch.allclose(from_step(model(batch.x), batch.y), direct, rtol=1e-4, atol=1e-6)
    except Exception:  # the step reads the model some other way (self.net(x), a dict batch)
        agree = False
    if agree:
        return from_step
    warnings.warn("RecipeCheck: training_step's loss could not be read off given outputs (does it call self(x)?); "
                  "the checks score outputs with F.cross_entropy: pass RecipeCheck(loss_fn=...) for another")
    return F.cross_entropy


def _spec_of(module) -> str:
    return f"{type(module).__module__}:{type(module).__qualname__}"
