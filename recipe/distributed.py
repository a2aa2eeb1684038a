"""Training on several processes with torch.distributed: how `recipe train --nproc N` and
`torchrun --nproc-per-node N -m checks.cli train ...` start, agree and finish.

- The preflight runs once, in one process: rank 0, the process you started (`--nproc`) or the one
  torchrun gives RANK=0. The other ranks load the same pipeline and wait for rank 0's plan.
- `--nproc N`: this process is rank 0. Only once the gate lets training start does it start ranks
  1..N-1 (torch.multiprocessing, spawn), each running this same command with RANK set, as torchrun
  would; they meet on a TCPStore that rank 0 opened on a free port. If the gate refuses, none starts.
- torchrun: every rank runs the command; rank 0 broadcasts the plan (train or not, and the run
  folder a --resume continues), so all ranks train or none does.
- Every rank then trains its share through `recipe.ranks.fit_on_ranks`; only rank 0 writes the
  checkpoint, the metrics and the report.

Backend: gloo on the CPU, nccl on CUDA (one GPU per rank, `cuda:LOCAL_RANK`). This module imports
torch only inside its functions, so `recipe --help` stays fast.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Callable

from recipe.errors import RecipeError

if TYPE_CHECKING:  # imported where used: recipe.ranks imports torch
    from recipe.ranks import World

WAIT = timedelta(minutes=30)  # how long a rank waits for the others: under torchrun, for rank 0's preflight
LAUNCHER_ENV = "RECIPE_LAUNCHER"  # set on the ranks `--nproc` starts, so they meet on rank 0's store
SPAWNED = "recipe --nproc"
EXIT_REFUSED = 1


def world_of(args) -> "World | None":
    """This process's place in a distributed run, or None for a plain one-process run."""
    from recipe.ranks import World

    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise RecipeError(f"--nproc must be at least 1, got {nproc}")
    if size > 1 and "RANK" in env:  # started by torchrun (or by `--nproc` below)
        if args.command == "check":
            raise RecipeError("`recipe check` runs in one process; start it without torchrun (the preflight of "
                              "`recipe train` under torchrun runs once, on rank 0)")
        if nproc not in (1, size):
            raise RecipeError(f"--nproc {nproc} under a launcher that started {size} processes: leave --nproc out")
        launcher = env.get(LAUNCHER_ENV, "torchrun")
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    elif nproc > 1:
        size, rank, local_rank, launcher = nproc, 0, 0, SPAWNED
    else:
        return None
    if args.batch_size % size:
        raise RecipeError(f"--batch-size {args.batch_size} is the global batch (each step sees that many examples, "
                          f"split over the processes); it must divide evenly by the {size} processes")
    return World(rank=rank, size=size, backend=_backend(args.device, local_rank, size), launcher=launcher,
                 local_rank=local_rank)


def _backend(device: str, local_rank: int, size: int) -> str:
    import torch

    from recipe.pipeline import resolve_device

    if resolve_device(device).type != "cuda":
        return "gloo"
    if torch.cuda.device_count() < size:
        raise RecipeError(f"{size} processes on CUDA need {size} GPUs (one each); "
                          f"{torch.cuda.device_count()} visible")
    torch.cuda.set_device(local_rank)  # before any data lands on "cuda": this rank's own GPU
    return "nccl"


def run_on_ranks(args, world, argv: list[str], command: Callable, load: Callable, entry: Callable) -> int:
    """Run `command` as rank 0 (its training goes through `args.launch.fit`), or follow rank 0.

    `load(args)` builds the pipeline; `entry(argv)` is the CLI's main, which the ranks `--nproc`
    starts run (passed in: this module does not import the CLI)."""
    if world.rank != 0:
        return follow(args, world, load)
    args.launch = Launch(world, argv, entry)
    try:
        return command(args)
    finally:
        args.launch.close()


class Launch:
    """Rank 0's side: starting the other ranks (under --nproc), the plan, and the end."""

    def __init__(self, world, argv: list[str], entry: Callable):
        self.world, self.argv, self.entry = world, argv, entry
        self.store = self.context = None
        self.planned = self.finished = False

    def fit(self, pipeline, out_dir=None, *, resume: bool = False, quiet: bool = False, **fit_kwargs):
        """The training `train_and_report` runs: start the others, tell them to train, train rank 0's share."""
        from recipe.ranks import fit_on_ranks

        if self.world.launcher == SPAWNED:
            self._start_ranks()
        join(self.world, self.store, self._check_ranks_alive)
        self._send({"train": True, "resume_dir": str(out_dir) if resume else None})
        result = fit_on_ranks(pipeline, self.world, out_dir, resume=resume, quiet=quiet, **fit_kwargs)
        self.finished = result.stopped is None  # else (Ctrl-C on rank 0) the others may wait for it: end them
        return result

    def _start_ranks(self) -> None:
        import torch.distributed as dist
        import torch.multiprocessing as mp

        self.store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False, timeout=WAIT)
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.store.port), "WORLD_SIZE": str(self.world.size),
               LAUNCHER_ENV: SPAWNED}
        self.context = mp.start_processes(_spawned_rank, args=(self.entry, self.argv, env), nprocs=self.world.size - 1,
                                          join=False, start_method="spawn")

    def _check_ranks_alive(self) -> None:
        for i, process in enumerate(self.context.processes if self.context else []):
            if process.exitcode is not None:
                raise RecipeError(f"rank {i + 1} ended (exit code {process.exitcode}) before training started; "
                                  "its error is above")

    def _send(self, plan: dict) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([plan], src=0)
        self.planned = True

    def close(self) -> None:
        """Tell waiting ranks not to train (torchrun, when rank 0 did not plan training), then end the run."""
        import torch.distributed as dist

        if not self.planned and self.world.launcher != SPAWNED:
            try:
                join(self.world, None, lambda: None)
                self._send({"train": False})
            except Exception:  # rank 0 is failing anyway; torchrun stops the others when it exits
                pass
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.context is not None:  # the others end with their share; a failed run does not wait for them
            deadline = time.monotonic() + (60 if self.finished else 0)
            for process in self.context.processes:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.exitcode is None:
                    process.terminate()
                    process.join(5)


def _spawned_rank(index: int, entry: Callable, argv: list[str], env: dict) -> None:
    """A rank `--nproc` started: the same command, with the environment torchrun would give it."""
    rank = index + 1
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it then ends this process
    sys.exit(entry(argv))  # a normal exit: multiprocessing releases what this process held


def join(world, store=None, check_alive: Callable[[], None] = lambda: None) -> None:
    """Join the process group (once). Under --nproc, on rank 0's store: rank 0 waits for each rank to
    say it is there, looking after the started processes meanwhile, so a rank that fails at start
    ends the wait instead of letting it run out."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if world.launcher != SPAWNED:
        dist.init_process_group(world.backend, init_method="env://", rank=world.rank, world_size=world.size,
                                timeout=WAIT)
        return
    if store is None:  # a started rank: reach rank 0's store and say so
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, is_master=False,
                              timeout=WAIT)
        store.set(f"recipe/here/{world.rank}", "1")
    else:
        deadline = time.monotonic() + WAIT.total_seconds()
        while not store.check([f"recipe/here/{rank}" for rank in range(1, world.size)]):
            check_alive()
            if time.monotonic() > deadline:
                raise RecipeError(f"the other ranks did not start within {WAIT}")
            time.sleep(0.05)
    dist.init_process_group(world.backend, store=dist.PrefixStore("recipe/pg", store), rank=world.rank,
                            world_size=world.size, timeout=WAIT)


def follow(args, world, load: Callable) -> int:
    """A rank other than 0: load the pipeline, wait for rank 0's plan, train this rank's share."""
    import torch.distributed as dist

    from recipe.ranks import fit_on_ranks

    args.quiet = True  # rank 0 speaks for the run
    pipeline = load(args)
    join(world)
    plan = [None]
    dist.broadcast_object_list(plan, src=0)
    if not plan[0]["train"]:
        dist.destroy_process_group()
        return EXIT_REFUSED
    resume_dir = plan[0]["resume_dir"]
    result = fit_on_ranks(pipeline, world, resume_dir, resume=resume_dir is not None, quiet=True, write=False)
    dist.destroy_process_group()
    return 1 if result.stopped else 0


def trainer(args) -> Callable:
    """What `train_and_report` trains with: `fit`, or rank 0's side of a distributed run."""
    launch = getattr(args, "launch", None)
    if launch is not None:
        return launch.fit
    from recipe.train import fit

    return fit
