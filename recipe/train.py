"""fit, evaluate and the step contract: plain functions that return metrics instead of printing them.

`fit` runs exactly what the Pipeline holds: its model factory, optimizer factory, optional
scheduler (stepped per batch or per epoch, as the pipeline says), train step and epoch count. It
never rewrites what the user built: the lr each step uses is the one the user's optimizer and
scheduler give. The checks train through the same `training_objects` and `take_step`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from recipe.errors import RecipeError
from recipe.files import atomic_write
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.runs import ctrl_c_noted, raise_if_pressed

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"
OnStep = Callable[[int, torch.optim.Optimizer, torch.Tensor], None]


class StepContractError(RecipeError):
    """The pipeline's train step broke its contract (it must return the batch loss as a tensor)."""


class StopTraining(Exception):
    """Raised by a step or `on_step` to end the run cleanly (the ranks of a distributed run disagree):
    `fit` keeps the history and the last checkpoint, and puts the message in `FitResult.stopped`."""


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed the global RNG (augmentation) and return the shuffle generator for one epoch.

    Deriving both from (seed, epoch) means a run resumed at epoch e draws exactly the batches and
    augmentations an uninterrupted run would, so the final weights are bit-identical.
    """
    torch.manual_seed(seed * 1_000_003 + epoch)
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def training_objects(pipeline: Pipeline, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """(optimizer, scheduler or None) from the pipeline's own factories: what fit and the checks use."""
    optimizer = pipeline.make_optimizer(model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise StepContractError(f"make_optimizer returned {type(optimizer).__name__}, expected a torch.optim.Optimizer")
    scheduler = pipeline.make_scheduler(optimizer) if pipeline.make_scheduler is not None else None
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise StepContractError(f"make_scheduler returned {type(scheduler).__name__}, which has no step() method")
    return optimizer, scheduler


def take_step(pipeline: Pipeline, model: nn.Module, optimizer: torch.optim.Optimizer,
              x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One call of the pipeline's train step, held to its contract: it returns the scalar loss tensor."""
    loss = pipeline.train_step(model, optimizer, pipeline.loss_fn, x, y)
    if not isinstance(loss, torch.Tensor):
        raise StepContractError(
            f"the train step {_name(pipeline.train_step)} returned a {type(loss).__name__} ({loss!r:.40}), not the "
            "loss tensor: return `loss.detach()` rather than `loss.item()` (a Python number also forces a device "
            "sync every step)")
    if loss.numel() != 1:
        raise StepContractError(f"the train step {_name(pipeline.train_step)} returned a tensor of shape "
                                f"{list(loss.shape)}; it must return the batch's scalar loss (reduce with mean)")
    return loss.detach()  # a step may hand back the loss with its graph: no caller needs it, and it holds memory


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__", repr(fn))


def step_scheduler(scheduler, when: str, pipeline: Pipeline, val_loss: float | None = None) -> None:
    """Step the scheduler if `when` ("step" after a batch, "epoch" after an epoch) is its interval."""
    if scheduler is None or when != pipeline.scheduler_interval:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if val_loss is not None:
            scheduler.step(val_loss)
        return
    scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@torch.no_grad()
def evaluate(model: nn.Module, pipeline: Pipeline, split: str, max_batches: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy over the *whole* split (or its first `max_batches`, for a dry run)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    pad_id = pipeline.data.pad_id  # token sequences: padded targets carry no loss and are not scored
    for i, batch in enumerate(pipeline.batches(split, shuffle=False, augment=False)):
        if max_batches is not None and i >= max_batches:
            break
        logits = forward_logits(model, batch.x)  # (B, C) for classes, (B, T, V) for next tokens
        scored = batch.y != pad_id if pad_id is not None else torch.ones_like(batch.y, dtype=torch.bool)
        scored_count = int(scored.sum())
        total_loss += float(pipeline.loss_fn(logits, batch.y)) * scored_count
        correct += ((logits.argmax(-1) == batch.y) & scored).sum().item()
        count += scored_count
    model.train(was_training)
    return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # one row per epoch
    test: dict[str, float] | None = None                # reported once, at the end
    stopped: str | None = None                          # None when all epochs ran, else why it stopped
    checkpoint: Path | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    distributed: dict | None = None                     # the rank checks' record when several processes trained


def progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def fit(pipeline: Pipeline, out_dir: str | Path | None = None, *, resume: bool = False, quiet: bool = False,
        max_epochs: int | None = None, max_batches: int | None = None, on_step: OnStep | None = None,
        monitor=None, write: bool = True) -> FitResult:
    """Train for `pipeline.config.epochs`, evaluating on val after every epoch and on test once.

    With `out_dir`, writes `metrics.csv` and an atomic `checkpoint.pt` after every epoch; `resume`
    continues from that checkpoint. A NaN/Inf loss or Ctrl-C stops the run and keeps the last good
    checkpoint; `FitResult.stopped` says which. `max_epochs` and `max_batches` cut every phase short
    (the preflight's dry run); `on_step(step, optimizer, loss)` sees each step before the scheduler.
    `monitor` (a recipe.monitors.TrainingMonitor) records what the monitors judge after the run.
    `write=False` only reads `out_dir` (to resume): the ranks of a distributed run other than 0.
    """
    from tqdm.auto import tqdm

    config = pipeline.config
    out_dir = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(config.seed)
    model = pipeline.make_model()
    optimizer, scheduler = training_objects(pipeline, model)
    result = FitResult(model=model, optimizer=optimizer, scheduler=scheduler)
    start_epoch = 0
    if resume:
        start_epoch, result.history = load_checkpoint(out_dir, pipeline, model, optimizer, scheduler)
    epochs_total = config.epochs if max_epochs is None else min(max_epochs, config.epochs)
    if monitor is not None:
        monitor.start(model, pipeline, result.history)
    saved = start_epoch  # epochs in the checkpoint on disk: Ctrl-C can land between training and saving
    show = progress_enabled(quiet)
    epochs = tqdm(range(start_epoch, epochs_total), desc="epochs", disable=not show,
                  initial=start_epoch, total=epochs_total)
    try:
        with ctrl_c_noted() as pressed:
            for epoch in epochs:
                row = _train_one_epoch(model, optimizer, scheduler, pipeline, epoch, show, max_batches, on_step,
                                       monitor, pressed)
                if not math.isfinite(row["train_loss"]):
                    result.stopped = (f"training loss became {row['train_loss']} in epoch {epoch + 1}; kept the "
                                      "last good checkpoint. Lower the learning rate or check the loss function")
                    break
                row.update({f"val_{k}": v for k, v in evaluate(model, pipeline, "val", max_batches).items()})
                if monitor is not None:
                    row.update(monitor.end_epoch(model, pipeline, optimizer, row))
                step_scheduler(scheduler, "epoch", pipeline, row["val_loss"])
                result.history.append(row)
                epochs.set_postfix(val_acc=f"{row['val_accuracy']:.4f}")
                if not show and not quiet and max_batches is None:
                    print(f"epoch {row['epoch']}/{epochs_total}: train loss {row['train_loss']:.4f}, val loss "
                          f"{row['val_loss']:.4f}, val accuracy {row['val_accuracy']:.4f}, lr {row['lr']:.3g}, "
                          f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)
                if out_dir is not None and write:
                    result.checkpoint = save_checkpoint(out_dir, pipeline, model, optimizer, scheduler, epoch + 1,
                                                        result.history)
                    saved = epoch + 1
                    write_metrics(out_dir / METRICS_NAME, result.history)
                raise_if_pressed(pressed)  # a Ctrl-C that landed in a finaliser and was lost there
    except StopTraining as stop:
        result.stopped = str(stop)
    except KeyboardInterrupt:
        kept = f"the checkpoint after epoch {saved} is kept" if out_dir is not None and saved else "no checkpoint was saved"
        result.stopped = f"interrupted during epoch {len(result.history) + 1}; {kept}"
    finally:
        epochs.close()
    if result.stopped is None:
        result.test = evaluate(model, pipeline, "test", max_batches)
    return result


def _train_one_epoch(model, optimizer, scheduler, pipeline: Pipeline, epoch: int, show: bool,
                     max_batches: int | None, on_step: OnStep | None, monitor=None,
                     pressed: list[int] | None = None) -> dict:
    from tqdm.auto import tqdm

    model.train()
    generator = seed_epoch(pipeline.config.seed, epoch)
    started = time.perf_counter()
    n_batches = pipeline.steps_per_epoch if max_batches is None else min(max_batches, pipeline.steps_per_epoch)
    augment = pipeline.augment is not None
    lr_at_start = current_lr(optimizer)
    losses, sizes = [], []  # kept on the device and summed once per epoch: no host sync, no op per step
    batches = pipeline.batches("train", shuffle=True, augment=augment, generator=generator)
    for i, batch in enumerate(tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}", leave=False,
                                   disable=not show)):
        if i >= n_batches:
            break
        if monitor is None:
            loss = take_step(pipeline, model, optimizer, batch.x, batch.y)
        else:
            loss = monitor.step(epoch * pipeline.steps_per_epoch + i, optimizer,
                                partial(take_step, pipeline, model, optimizer, batch.x, batch.y))
        if on_step is not None:
            on_step(epoch * pipeline.steps_per_epoch + i, optimizer, loss)
        step_scheduler(scheduler, "step", pipeline)
        losses.append(loss.detach())
        sizes.append(len(batch.y))
        raise_if_pressed(pressed)
    if not losses:
        kept_from = pipeline.drops_last_below
        if kept_from and len(pipeline.data.train) < kept_from:
            raise RecipeError(f"the train loader has drop_last=True and fewer examples ({len(pipeline.data.train)}) "
                              f"than one batch ({kept_from}): it yields no batch; lower the batch size or keep the "
                              "last batch")
        raise RecipeError(f"the train split yielded no batches in epoch {epoch + 1}; is it empty?")
    weights = torch.tensor(sizes, dtype=torch.float32, device=losses[0].device)
    train_loss = (torch.stack(losses).float().reshape(-1) @ weights / sum(sizes)).item()
    return {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr_at_start,
            "seconds": time.perf_counter() - started}


def write_metrics(path: Path, history: list[dict]) -> Path:
    import pandas as pd

    frame = pd.DataFrame(history)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def save_checkpoint(out_dir: Path, pipeline: Pipeline, model, optimizer, scheduler, epochs_done: int,
                    history: list[dict]) -> Path:
    state = {"model": _bare(model).state_dict(), "optimizer": optimizer.state_dict(), "epochs_done": epochs_done,
             "scheduler": _scheduler_state(scheduler),
             "config": pipeline.config.as_dict(), "pipeline": pipeline.name, "data": pipeline.data.source,
             "history": history}
    return atomic_write(out_dir / CHECKPOINT_NAME, lambda tmp: torch.save(state, tmp))


def _bare(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper: checkpoints hold its own keys (no `module.`),
    so one process loads what N saved, and N resume what one saved."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _scheduler_state(scheduler) -> dict | None:
    if scheduler is None or not callable(getattr(scheduler, "state_dict", None)):
        return None
    return scheduler.state_dict()  # LambdaLR keeps its lambdas out of it: the factory rebuilds them


def load_checkpoint(out_dir: Path | None, pipeline: Pipeline, model, optimizer, scheduler=None) -> tuple[int, list[dict]]:
    """Restore model, optimizer and scheduler; returns (epochs already done, their history)."""
    path = (out_dir or Path(".")) / CHECKPOINT_NAME
    if not path.is_file():
        raise RecipeError(f"--resume: no checkpoint at {path}; run without --resume first")
    try:
        state = torch.load(path, map_location=pipeline.device, weights_only=True)
        saved_config = dict(state["config"])
    except Exception as err:  # torch raises many types for a corrupt file
        raise RecipeError(f"--resume: {path} is corrupt or not a recipe checkpoint ({type(err).__name__}); "
                          "delete it to start over") from None
    mine = pipeline.config.as_dict()
    differs = sorted(k for k in mine if k != "epochs" and saved_config.get(k) != mine[k])
    if differs or state.get("pipeline") != pipeline.name or state.get("data") != pipeline.data.source:
        what = ", ".join(f"{k}={saved_config.get(k)!r} (now {mine[k]!r})" for k in differs) or \
            f"pipeline/data {state.get('pipeline')}/{state.get('data')}"
        raise RecipeError(f"--resume: {path} was saved by another config ({what}); "
                          "use the same settings or another --out")
    try:
        _bare(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise RecipeError(f"--resume: {path} does not fit this model ({str(err).splitlines()[0]})") from None
    return int(state["epochs_done"]), list(state["history"])
