"""The rank checks' twins: distributed runs with one bug planted, and clean runs no rank check may FAIL.

Each bug is a pipeline a user could write (reading its rank from torch.distributed, as user code
does), or a bad strategy for what recipe/ranks.py does around it (`shard`: how a rank takes its
share of the batches; `wrap`: how the model becomes DDP), since with torchrun those are user code
too (a hand-made sampler, a hand-written DDP setup). Several of each fault kind:

- batch counts: drop_last on one rank only; a hand-made split of the data by rank with unequal sizes.
- shares: no sampler (every rank the whole data); a rank index ignored (every rank takes rank 0's
  rows); a permutation drawn from the global RNG instead of the epoch's generator (per-rank seeds).
- weights: weights reinitialised on one rank after DDP wrapped the model; a rank-seeded model with
  DDP's initial broadcast off; an lr that depends on the rank; (WARN) a rank-seeded model that
  DDP's broadcast repairs.
- gradients: a step calling `model.module(x)`; a gradient written by hand (the linear closed form on
  the bare module); backward always inside `no_sync()`.

`run_scenarios` is the worker the tests spawn: every rank trains each named scenario for one epoch
and saves what `fit_on_ranks` returned.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from recipe.config import TrainConfig
from recipe.data import Batch, DataBundle, normalize
from recipe.linear_step import linear_softmax_step
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline
from recipe.ranks import World, fit_on_ranks, shard_batches, wrap_in_ddp
from recipe.steps import train_step
from tests.zoo import valid


@dataclass(frozen=True)
class Scenario:
    build: Callable[[TrainConfig, DataBundle], Pipeline] = default_pipeline
    shard: Callable = shard_batches
    wrap: Callable = wrap_in_ddp
    config: dict | None = None  # TrainConfig fields other than the defaults (epochs=1)
    fails: str | None = None    # the rank check it must FAIL (None: a clean run, every rank check PASS or N/A)
    warns: str | None = None


# ---------------------------------------------------------------- batch counts

def drop_last_on_rank_1(batches, rank: int, size: int):
    """drop_last=True on rank 1 only: its short last batch is dropped, the others' is not."""
    full = None
    for batch in shard_batches(batches, rank, size):
        full = len(batch.y) if full is None else full
        if rank == 1 and len(batch.y) < full:
            return
        yield batch


def uneven_split_by_rank(batches, rank: int, size: int):
    """A hand-made split: rank 0 takes the first 60% of the epoch's order, the others share the rest."""
    rows = list(batches)
    x, y, idx = (torch.cat([getattr(b, f) for b in rows]) for f in ("x", "y", "idx"))
    cut = int(0.6 * len(y))
    mine = slice(0, cut) if rank == 0 else slice(cut, None)
    per_rank = len(rows[0].y) // size
    for start in range(0, len(y[mine]), per_rank):
        part = slice(start, start + per_rank)
        yield Batch(x[mine][part], y[mine][part], idx[mine][part])


# ---------------------------------------------------------------- shares

def whole_data_on_every_rank(batches, rank: int, size: int):
    """No DistributedSampler: every rank trains on every global batch."""
    yield from batches


def rank_index_ignored(batches, rank: int, size: int):
    """DistributedSampler(rank=0) written by hand: every rank takes rank 0's rows."""
    yield from shard_batches(batches, 0, size)  # the bug: 0, not rank


def order_from_global_rng(config: TrainConfig, data: DataBundle) -> Pipeline:
    """The batches shuffle with torch.randperm on the global RNG, ignoring the epoch's generator: each rank's
    RNG is seeded per rank (as augmentation wants), so each rank walks its own order."""
    clean = default_pipeline(config, data)

    def batches(split, *, shuffle=False, augment=False, generator=None):
        if not shuffle:
            yield from clean.batches(split, augment=augment)
            return
        source = data.split(split)
        order = torch.randperm(len(source))  # the bug: no generator=generator
        x = normalize(source.images, clean.norm)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            yield Batch(x[idx], source.labels[idx], idx)

    return replace(clean, batches=batches)


# ---------------------------------------------------------------- weights

def _rank() -> int:
    return dist.get_rank()


def reinitialised_on_rank_1_after_wrap(model: nn.Module, world: World) -> nn.Module:
    """Weights set on one rank after DDP wrapped the model (a checkpoint loaded, or an init run, on rank 1 only)."""
    wrapped = wrap_in_ddp(model, world)
    if world.rank == 1:
        torch.manual_seed(1234)
        with torch.no_grad():
            for p in wrapped.parameters():
                p.normal_(0, 0.01)
    return wrapped


def seeded_by_rank(config: TrainConfig, data: DataBundle) -> Pipeline:
    """make_model seeds with the rank (`torch.manual_seed(seed + rank)`): each rank builds other weights (an
    MLP: the linear classifier starts from zeros, whatever the seed)."""
    clean = mlp_pipeline(config, data)

    def make_model() -> nn.Module:
        torch.manual_seed(config.seed + _rank())
        return clean.make_model()

    return replace(clean, make_model=make_model)


def ddp_without_initial_broadcast(model: nn.Module, world: World) -> nn.Module:
    """DDP with init_sync=False: rank 0's weights are not broadcast at the start."""
    return nn.parallel.DistributedDataParallel(model, init_sync=False)


def lr_scaled_by_rank(config: TrainConfig, data: DataBundle) -> Pipeline:
    """The linear-scaling rule applied per rank: lr * (rank + 1); the averaged gradient moves each rank apart."""
    clean = default_pipeline(config, data)
    return replace(clean, make_optimizer=lambda params: torch.optim.Adam(params, lr=config.lr * (_rank() + 1)))


# ---------------------------------------------------------------- gradients

def _through_module(model, optimizer, loss_fn, x, y):
    """The default step, but the forward goes through `model.module`: DDP's hooks never see it."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model.module(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _hand_written_gradient(model, optimizer, loss_fn, x, y):
    """The closed-form linear step run on the bare module: it writes .grad itself, past DDP."""
    return linear_softmax_step(model.module, optimizer, loss_fn, x, y)


def _always_no_sync(model, optimizer, loss_fn, x, y):
    """Backward inside no_sync() every time (meant for all but the last micro-batch of an accumulation)."""
    with model.no_sync():
        return train_step(model, optimizer, loss_fn, x, y)


def _with_step(step) -> Callable[[TrainConfig, DataBundle], Pipeline]:
    return lambda config, data: replace(default_pipeline(config, data), train_step=step)


# ---------------------------------------------------------------- a non-finite loss on one rank only

class _NanOnRank1AtTheEpochsEnd:
    """Rank 1's last step of the epoch reports a NaN loss (its weights stay finite): only rank 1's epoch mean is
    NaN, the case where ranks would otherwise take different decisions and one would wait forever."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, optimizer, loss_fn, x, y):
        loss = train_step(model, optimizer, loss_fn, x, y)
        self.calls += 1
        return loss * float("nan") if _rank() == 1 and self.calls == 55 else loss


SCENARIOS: dict[str, Scenario] = {
    # clean: no rank check may FAIL
    "linear": Scenario(),
    "linear_sgd": Scenario(config={"optimizer": "sgd"}),  # SGD, unlike Adam, sees a gradient summed instead of averaged
    "linear_augmented": Scenario(config={"augment": "shift-rotate"}),
    "dropout": Scenario(build=valid.dropout),
    "batchnorm_cnn": Scenario(build=valid.batchnorm_cnn),
    "gradient_accumulation": Scenario(build=valid.gradient_accumulation),
    "gradient_clipping": Scenario(build=valid.gradient_clipping),
    "sgd_steplr": Scenario(build=valid.sgd_steplr),
    # batch counts
    "drop_last_on_rank_1": Scenario(shard=drop_last_on_rank_1, fails="batch_counts_equal"),
    "uneven_split_by_rank": Scenario(shard=uneven_split_by_rank, fails="batch_counts_equal"),
    # shares
    "whole_data_on_every_rank": Scenario(shard=whole_data_on_every_rank, fails="shares_disjoint_and_covering"),
    "rank_index_ignored": Scenario(shard=rank_index_ignored, fails="shares_disjoint_and_covering"),
    "order_from_global_rng": Scenario(build=order_from_global_rng, fails="shares_disjoint_and_covering"),
    # weights
    "reinitialised_on_rank_1": Scenario(wrap=reinitialised_on_rank_1_after_wrap, fails="weights_identical"),
    "seeded_by_rank_not_broadcast": Scenario(build=seeded_by_rank, wrap=ddp_without_initial_broadcast,
                                             fails="weights_identical"),
    "lr_scaled_by_rank": Scenario(build=lr_scaled_by_rank, fails="weights_identical"),
    "seeded_by_rank": Scenario(build=seeded_by_rank, warns="weights_identical"),
    # gradients
    "forward_through_module": Scenario(build=_with_step(_through_module), fails="gradients_synchronised"),
    "hand_written_gradient": Scenario(build=_with_step(_hand_written_gradient), fails="gradients_synchronised"),
    "always_no_sync": Scenario(build=_with_step(_always_no_sync), fails="gradients_synchronised"),
    # one rank's loss non-finite: every rank stops, none hangs
    "nan_on_rank_1": Scenario(build=lambda config, data: replace(default_pipeline(config, data),
                                                                 train_step=_NanOnRank1AtTheEpochsEnd())),
}


def run_scenarios(rank: int, size: int, store: str, data: DataBundle, names: list[str], out: str,
                  timeout_s: float) -> None:
    """One rank (torch.multiprocessing.spawn's worker): each scenario for one epoch, results saved per rank."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    world = World(rank, size, "gloo", launcher="test")
    for name in names:
        scenario = SCENARIOS[name]
        config = TrainConfig(epochs=1, **(scenario.config or {}))
        result = fit_on_ranks(scenario.build(config, data), world, quiet=True, shard=scenario.shard,
                              wrap=scenario.wrap)
        torch.save({"record": result.distributed, "stopped": result.stopped, "history": result.history,
                    "state": result.model.state_dict()}, Path(out) / f"{name}.rank{rank}.pt")
        dist.barrier()
    dist.destroy_process_group()
