"""One rank of a distributed run: the user's Pipeline as this rank trains it, and the rank checks.

`rank_pipeline` returns the same Pipeline with three parts replaced, so `fit` runs unchanged (one
code path for one process and for N):

- `batches("train", shuffle=True, ...)`: this rank's rows of every global batch, as
  `DistributedSampler` with a per-rank batch of batch_size / N gives them. Every rank draws the same
  permutation from the epoch's generator (`set_epoch`); rank r keeps positions r, r + N, r + 2N, ...
  The last batch is padded with the epoch's first examples until it splits evenly, so every rank
  takes the same number of steps. Augmentation draws from a seed of its own per rank. Val, test and
  unshuffled passes stay whole on every rank: evaluation needs no reduction, and every rank runs it.
- `make_model()`: the user's model in DistributedDataParallel, whose backward averages the gradients
  over the ranks: with batch_size / N rows per rank, an update equals one process's on the global
  batch. (The linear pipeline's closed-form step only takes a bare LinearClassifier, so under DDP it
  falls back to autograd, whose hooks DDP needs to see the gradients.)
- `train_step`: the user's step, with the weights compared before the first one.

The rank checks measure, gather the numbers to every rank (so every rank takes the same decision)
and keep them in a `RankRecord`; `checks/training/distributed_checks.py` judges it. When the ranks disagree,
all stop together: one rank left waiting in a collective would wait forever.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from recipe.data import Batch
from recipe.pipeline import Pipeline
from recipe.train import FitResult, StopTraining, fit, seed_epoch

CHECK_AFTER_STEPS = 3  # the first steps all-reduce once each; a rank whose update differs has drifted by then
BUILT = "built by make_model"  # the weights each rank built, before DDP broadcast rank 0's


@dataclass(frozen=True)
class World:
    """Where this process stands in the run: its rank, how many there are, and how they talk."""
    rank: int
    size: int
    backend: str                # "gloo" (CPU) or "nccl" (CUDA)
    launcher: str = "recipe --nproc"  # or "torchrun"
    local_rank: int = 0


@dataclass
class RankRecord:
    """What the rank checks measured, identical on every rank (each number was gathered from all)."""
    processes: int
    backend: str
    launcher: str
    weights: list[dict] = field(default_factory=list)  # [{"when", "hashes": one per rank}]
    grads: dict | None = None       # after `check_after` steps: {"after_step", "hashes", "norms"}; None: not reached
    batch_counts: list[int] = field(default_factory=list)  # train batches each rank would take in the first epoch
    expected_batches: int = 0       # the pipeline's steps_per_epoch
    examples: int = 0               # len(train)
    drawn: list[int] = field(default_factory=list)  # examples each rank drew in that epoch, padding included
    repeats: int = 0                # draws of an example beyond its first, over all ranks
    padding_allowed: int = 0        # repeats DistributedSampler's padding may add (N - 1)
    missing: int = 0                # train examples no rank drew
    stopped: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def digest(tensors: Iterable[torch.Tensor | None]) -> str | None:
    """A short hash of the tensors' bytes (None when there are none): equal on two ranks iff bit-identical."""
    hashed = hashlib.blake2b(digest_size=12)
    seen = False
    for tensor in tensors:
        if tensor is None:
            continue
        seen = True
        hashed.update(tensor.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return hashed.hexdigest() if seen else None


def gather(value) -> list:
    """`value` from every rank, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def differing(values: list) -> list[int]:
    """The ranks whose value is not rank 0's."""
    return [rank for rank, value in enumerate(values) if value != values[0]]


# ---------------------------------------------------------------- the per-rank pipeline

def shard_batches(batches: Iterator[Batch], rank: int, size: int) -> Iterator[Batch]:
    """This rank's rows of each global batch (positions rank, rank + size, ...); the last batch is
    padded from the epoch's first rows until it splits evenly (DistributedSampler, drop_last=False)."""
    first = pending = None
    for batch in batches:
        if pending is not None:
            yield _rows(pending, rank, size)
        first = batch if first is None else first
        pending = batch
    if pending is None:
        return
    short = -len(pending.y) % size
    if short:
        fill = torch.arange(short, device=first.y.device) % len(first.y)
        pending = Batch(torch.cat([pending.x, first.x.index_select(0, fill.to(first.x.device))]),
                        torch.cat([pending.y, first.y.index_select(0, fill)]),
                        torch.cat([pending.idx, first.idx.index_select(0, fill.to(first.idx.device))]))
    yield _rows(pending, rank, size)


def _rows(batch: Batch, rank: int, size: int) -> Batch:
    return Batch(batch.x[rank::size].contiguous(), batch.y[rank::size], batch.idx[rank::size])


Shard = Callable[[Iterator[Batch], int, int], Iterator[Batch]]
Wrap = Callable[[nn.Module, World], nn.Module]


class RankBatches:
    """The pipeline's batches as one rank draws them (see the module docstring)."""

    def __init__(self, batches, world: World, shard: Shard = shard_batches):
        self.batches, self.world, self.shard = batches, world, shard

    def __call__(self, split: str, *, shuffle: bool = False, augment: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Batch]:
        if split != "train" or not shuffle:
            yield from self.batches(split, shuffle=shuffle, augment=augment, generator=generator)
            return
        # The order comes from `generator`, the same on every rank; augmentation draws from the global
        # RNG, reseeded per rank (and per epoch, through the generator's seed): resumable, and not twinned.
        base = generator.initial_seed() if generator is not None else torch.initial_seed()
        torch.manual_seed((base * 1_000_003 + 7919 * (self.world.rank + 1)) % (2 ** 63))
        yield from self.shard(self.batches(split, shuffle=shuffle, augment=augment, generator=generator),
                              self.world.rank, self.world.size)


def wrap_in_ddp(model: nn.Module, world: World) -> nn.Module:
    """DistributedDataParallel, which broadcasts rank 0's weights now and averages gradients in backward.

    No buffer sync in forward: a forward then runs no collective, so rank 0 may evaluate alone (a
    monitor's train accuracy) without waiting for ranks that never come. Rank 0's buffers, the ones
    saved and evaluated, are the same either way: the sync goes from rank 0."""
    import inspect

    device_ids = [world.local_rank] if world.backend == "nccl" else None
    ddp = nn.parallel.DistributedDataParallel
    no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else {"broadcast_buffers": False})  # older torch: the older name
    return ddp(model, device_ids=device_ids, **no_forward_sync)


def unwrapped(model: nn.Module | None) -> nn.Module | None:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rank_pipeline(pipeline: Pipeline, world: World, watch: "RankWatch", shard: Shard = shard_batches,
                  wrap: Wrap = wrap_in_ddp) -> Pipeline:
    def make_model() -> nn.Module:
        model = pipeline.make_model()
        watch.compare_weights(BUILT, model, stop=False)  # DDP is about to overwrite them with rank 0's
        wrapped = wrap(model, world)
        watch.model = wrapped
        return wrapped

    return replace(pipeline, batches=RankBatches(pipeline.batches, world, shard), make_model=make_model,
                   train_step=_StepWatchedAtStart(pipeline.train_step, watch))


class _StepWatchedAtStart:
    """The pipeline's step; before its first call, the ranks' weights (restored by --resume) are compared."""

    def __init__(self, step, watch: "RankWatch"):
        self.step, self.watch, self.started = step, watch, False
        self.__qualname__ = getattr(step, "__qualname__", type(step).__name__)  # error messages name the user's step

    def __call__(self, model, optimizer, loss_fn, x, y):
        if not self.started:
            self.started = True
            self.watch.compare_weights("at the first step", model)
        return self.step(model, optimizer, loss_fn, x, y)


# ---------------------------------------------------------------- the rank checks

class RankWatch:
    """Takes the rank checks' measurements during one run and stops every rank when they disagree."""

    def __init__(self, world: World, check_after: int = CHECK_AFTER_STEPS):
        self.world, self.check_after = world, check_after
        self.record = RankRecord(world.size, world.backend, world.launcher)
        self.model: nn.Module | None = None
        self.steps_per_epoch = 1
        self.calls = 0
        self.finite: torch.Tensor | None = None  # on the device: no sync per step

    def before_training(self, ranked: Pipeline) -> str | None:
        """The first epoch's batch count and shares, compared before any collective of training; why
        training must not start, or None."""
        self.steps_per_epoch = ranked.steps_per_epoch
        count, positions = 0, []
        generator = seed_epoch(ranked.config.seed, 0)
        for batch in ranked.batches("train", shuffle=True, augment=False, generator=generator):
            if count >= ranked.steps_per_epoch:
                break  # fit takes no more than steps_per_epoch
            count += 1
            positions.append(batch.idx.reshape(-1).cpu())
        mine = torch.cat(positions).tolist() if positions else []
        counts, shares = zip(*gather((count, mine)))
        record, examples = self.record, len(ranked.data.train)
        record.batch_counts, record.expected_batches, record.examples = list(counts), ranked.steps_per_epoch, examples
        drawn = torch.tensor([p for share in shares for p in share], dtype=torch.long)
        times = torch.bincount(drawn[(drawn >= 0) & (drawn < examples)], minlength=examples)
        record.drawn = [len(share) for share in shares]
        record.repeats = int((times - 1).clamp(min=0).sum())
        record.padding_allowed = self.world.size - 1
        record.missing = int((times == 0).sum())
        if len(set(counts)) > 1:
            return (f"the ranks would take different numbers of batches in the first epoch ({list(counts)}); "
                    "training would hang at the first step a rank does not take, so it did not start")
        if record.missing or record.repeats > record.padding_allowed:
            return (f"the ranks' shares of train are not disjoint and covering ({record.repeats} repeated draws, "
                    f"{record.missing} examples never drawn), so it did not start")
        return None

    def compare_weights(self, when: str, model: nn.Module, stop: bool = True) -> None:
        hashes = gather(digest(model.parameters()))
        self.record.weights.append({"when": when, "hashes": hashes})
        if stop and differing(hashes):
            raise StopTraining(self.stopping(f"the weights of rank(s) {differing(hashes)} differ from rank 0's {when}"))

    def on_step(self, step: int, optimizer, loss: torch.Tensor) -> None:
        """fit's on_step: the gradient check after `check_after` steps, and at every epoch's last step the
        weights and whether any rank's loss went non-finite (all then stop, as one process would)."""
        self.calls += 1
        finite = torch.isfinite(loss.detach()).all()
        self.finite = finite if self.finite is None else self.finite & finite
        if self.calls == min(self.check_after, self.steps_per_epoch):
            self._compare_grads(step + 1)
            self.compare_weights(f"after {self.calls} steps", self.model)
        if (step + 1) % self.steps_per_epoch == 0:
            epoch = (step + 1) // self.steps_per_epoch
            finite_on = gather(bool(self.finite))
            self.finite = None
            if not all(finite_on):
                bad = [rank for rank, ok in enumerate(finite_on) if not ok]
                raise StopTraining(self.stopping(f"the training loss became non-finite on rank(s) {bad} in epoch "
                                              f"{epoch}; lower the learning rate or check the loss function"))
            self.compare_weights(f"after epoch {epoch}", self.model)

    def _compare_grads(self, step: int) -> None:
        params = list(self.model.parameters())
        grads = [p.grad for p in params]
        present = [g for g in grads if g is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in present]))) if present else None
        hashes, norms = zip(*gather((digest(grads), norm)))
        self.record.grads = {"after_step": step, "hashes": list(hashes), "norms": list(norms)}
        if any(h is not None for h in hashes) and differing(list(hashes)):
            raise StopTraining(self.stopping(f"the gradients of rank(s) {differing(list(hashes))} differ from rank 0's "
                                          f"after step {step}: they were not averaged over the ranks"))

    def stopping(self, why: str) -> str:
        self.record.stopped = f"rank checks: {why}"
        return self.record.stopped


def fit_on_ranks(pipeline: Pipeline, world: World, out_dir: str | Path | None = None, *, resume: bool = False,
                 quiet: bool = False, write: bool = True, check_after: int = CHECK_AFTER_STEPS,
                 shard: Shard = shard_batches, wrap: Wrap = wrap_in_ddp, **fit_kwargs) -> FitResult:
    """`fit` on this rank, in a joined process group. Every rank calls it with the same pipeline; only
    the one given `write=True` (rank 0) writes into `out_dir`, which the others only read to resume.

    `shard` and `wrap` are the strategies for the batches and the model (the tests plant bad ones).
    Returns fit's result with the bare model (not the DDP wrapper) and the record in `.distributed`."""
    watch = RankWatch(world, check_after)
    ranked = rank_pipeline(pipeline, world, watch, shard, wrap)
    refused = watch.before_training(ranked)
    if refused is not None:
        torch.manual_seed(pipeline.config.seed)
        result = FitResult(model=pipeline.make_model(), stopped=watch.stopping(refused))
    else:
        chained = fit_kwargs.pop("on_step", None)

        def on_step(step, optimizer, loss):
            if chained is not None:
                chained(step, optimizer, loss)
            watch.on_step(step, optimizer, loss)

        result = fit(ranked, out_dir, resume=resume, quiet=quiet or world.rank != 0, write=write,
                     on_step=on_step, **fit_kwargs)
        result.model = unwrapped(result.model)
    result.distributed = watch.record.to_json()
    return result
