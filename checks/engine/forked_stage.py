"""The data stage in a forked copy of this process, while this process runs the later stages.

On two cores the preflight's halves share nothing but the pipeline: the data checks read the
tensors (on full Fashion-MNIST, 2.7 s of them), the skeleton and baseline checks step the model
(and the first optimizer step imports torch._dynamo, about 1 s). A fork gives the copy the loaded
data and the imported pipeline for free. The copy runs the data stage in registry order and sends
each result back; this process runs the later stages meanwhile, stopping early once a data check
blocks. `iter_forked` then yields everything in registry order and gated exactly as one process
would (a data FAIL turns every later result into SKIP), so a report cannot tell the two apart.

Only where a fork is safe and helps: Linux, a CPU pipeline with CUDA never touched, no process
group, one Python thread, two cores or more, a large train split. Otherwise the caller runs the
stages one after the other. A result the copy cannot send (it does not pickle) or a copy that dies is run here instead.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Callable, Iterator

from checks.engine.result import STAGES, CheckResult

FIRST = STAGES[0]        # the stage that runs in the copy
SERIAL_ENV = "RECIPE_SERIAL_CHECKS"  # set to 1 to run every stage in this process
# The data stage's cost grows with the images; the figures' (drawn in one worker process) does not.
# Below this many train images the data stage is short, and a third busy process on two cores only
# delays the drawing: `recipe check --data sample` (3,500) took 4.1-4.3 s forked, 3.9-4.1 s not; on
# Fashion-MNIST (60,000) 4.9-5.1 s forked, 5.7-6.0 s not.
FORK_FROM_IMAGES = 20_000


def fork_helps(pipeline) -> bool:
    """Whether the data stage may run in a forked copy of this process."""
    if os.environ.get(SERIAL_ENV) or not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    if len(pipeline.data.train) < FORK_FROM_IMAGES:
        return False
    if threading.active_count() > 1 or len(os.sched_getaffinity(0)) < 2:
        return False  # a fork copies no thread, but every lock one held; one core gains nothing
    import torch

    if getattr(getattr(pipeline, "device", None), "type", "cpu") != "cpu" or torch.cuda.is_initialized():
        return False  # CUDA does not survive a fork
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


class ForkedStage:
    """A forked copy of this process running `checks` in order; their results come back one by one."""

    def __init__(self, checks: list[Callable[..., CheckResult]], pipeline, run_check):
        from multiprocessing.connection import Pipe

        self.checks, self.received = list(checks), 0
        self._inbox: queue.Queue = queue.Queue()
        reader, writer = Pipe(duplex=False)
        sys.stdout.flush()
        sys.stderr.flush()  # or the copy would print this process's buffered lines again
        self.pid = os.fork()
        if self.pid == 0:  # the copy: never returns
            reader.close()
            _serve(self.checks, pipeline, run_check, writer)
        writer.close()
        threading.Thread(target=self._receive, args=(reader,), daemon=True).start()  # the pipe never fills

    def _receive(self, reader) -> None:
        try:
            while True:
                self._inbox.put(reader.recv())
        except (EOFError, OSError):
            self._inbox.put(None)  # the copy has finished, or died

    def next(self, block: bool) -> CheckResult | str | None:
        """The next result in order; the name of a check the copy could not send or run (run it here);
        None when nothing has come yet (block=False)."""
        try:
            message = self._inbox.get(block=block)
        except queue.Empty:
            return None
        if message is None:  # the copy is gone: what it did not send is run here
            self._inbox.put(None)
            message = self.checks[self.received].__name__
        self.received += 1
        return message

    @property
    def pending(self) -> bool:
        return self.received < len(self.checks)

    def close(self) -> None:
        """Stop the copy if it still runs (an interrupt, a FAIL elsewhere) and reap it."""
        try:
            if self.pending:
                os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _serve(checks, pipeline, run_check, writer) -> None:
    """The copy's whole life: run the checks, send each result, exit without running this process's exit code."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports; the copy just goes
    try:
        for check in checks:
            result = run_check(check, pipeline, FIRST)
            try:
                writer.send(result)
            except Exception:  # it does not pickle (a user object in its details): the parent runs it
                writer.send(check.__name__)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def iter_forked(pipeline, checks_by_stage: dict, gate: bool, wanted: Callable[[Callable], bool],
                on_start: Callable[[str, str], None] | None, on_done: Callable[[CheckResult], None] | None,
                run_check) -> Iterator[CheckResult]:
    """What the runner's serial loop yields, with the first stage run in a forked copy."""
    first = [check for check in checks_by_stage.get(FIRST, []) if wanted(check)]
    later = [(stage, check) for stage in STAGES[1:] for check in checks_by_stage.get(stage, []) if wanted(check)]
    first_blocks = False

    def arrived(block: bool) -> Iterator[CheckResult]:
        nonlocal first_blocks
        while copy.pending:
            check = first[copy.received]
            if block and on_start is not None:  # shown while it is awaited
                on_start(check.__name__, FIRST)
            message = copy.next(block)
            if message is None:
                return
            if not block and on_start is not None:  # it had come already: every check is announced once
                on_start(check.__name__, FIRST)
            result = run_check(check, pipeline, FIRST) if isinstance(message, str) else message
            if on_done is not None:
                on_done(result)
            first_blocks = first_blocks or result.verdict.blocks
            yield result

    copy = None
    try:
        copy = ForkedStage(first, pipeline, run_check)
        held, blocked_by, stage_blocks = {}, None, False
        for index, (stage, check) in enumerate(later):
            yield from arrived(block=False)
            if gate and first_blocks:
                break  # everything from here on is SKIP: no need to finish it
            if index and later[index - 1][0] != stage:  # a new stage: the gate between later stages
                blocked_by = blocked_by or (later[index - 1][0] if gate and stage_blocks else None)
                stage_blocks = False
            held[check.__name__] = run_check(check, pipeline, stage, blocked_by)
            if on_done is not None:  # its figures can be drawn now, though it is yielded later
                on_done(held[check.__name__])
            stage_blocks = stage_blocks or held[check.__name__].verdict.blocks
        yield from arrived(block=True)
        for stage, check in later:
            if on_start is not None:
                on_start(check.__name__, stage)
            if gate and first_blocks:
                skipped = run_check(check, pipeline, stage, FIRST)
                if on_done is not None:
                    on_done(skipped)
                yield skipped
            else:
                yield held[check.__name__]
    finally:
        if copy is not None:
            copy.close()
