"""Drawing the figures on another core while the checks still run.

Drawing is about as slow as the checks themselves on `sample` (matplotlib, ~0.1 s a figure), and the
checks use one core. A `Painter` draws each check's figures in one worker process as soon as the
check finishes, so by the time the last check is done most figures are PNGs already. The worker only
needs numpy and matplotlib: figure data is copied to plain numpy/Python before it crosses over.

Anything going wrong in the worker (it cannot start, it dies, Ctrl-C reached it) costs no figure:
`drawn()` draws whatever the worker did not, in this process, exactly as `write_report` would.
"""
from __future__ import annotations

import collections
import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import Any, Mapping

from checks.engine.result import Figure


def draw_entry(figure: Figure) -> dict[str, Any]:
    """One stored figure: its title and PNG (base64), or the reason it could not be drawn."""
    import base64

    from checks.report.figures import render_png  # matplotlib only where something is drawn

    try:
        png = base64.b64encode(render_png(figure)).decode("ascii")
        return {"title": figure.title, "png_base64": png}
    except Exception as err:  # a drawing bug must not lose the results
        return {"title": figure.title, "png_base64": None,
                "error": f"could not draw this {figure.kind!r} figure: {type(err).__name__}: {err}"}


def plain(value: Any) -> Any:
    """`value` with torch tensors turned into numpy arrays, so the worker never needs torch."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


class Painter:
    """Draws figures in a worker process; `drawn()` returns them as `write_report` stores them.

    The worker is a plain `python -m checks.report.painter` child fed pickled figures over a pipe (not
    multiprocessing: its spawn would re-run the user's `__main__` script in the child). With one CPU,
    or `workers=0`, nothing is started and `drawn()` draws in this process.

    Only IN_FLIGHT figures are ever sent ahead of what came back, so a backlog stays here: when the
    checks are done and many figures are still waiting (the worker had to share two cores with them),
    `drawn()` draws from the far end of the backlog in this process while the worker draws from the
    near end, and both cores finish the drawing."""

    IN_FLIGHT = 2        # one being drawn, one waiting: the worker never idles on the pipe
    STEAL_FROM = 6       # figures still waiting at the end worth importing matplotlib here (~0.4 s) for
    CLOSE_WAIT_S = 60.0  # a backlog takes ~0.1 s a figure; far longer means the worker is stuck

    def __init__(self, workers: int | None = None):
        self._submitted: dict[str, list[Figure]] = {}
        self._waiting: collections.deque = collections.deque()  # (key, figure) not yet sent
        self._sent: list[tuple[str, int]] = []     # keys sent, in order
        self._entries: list[dict[str, Any]] = []   # what came back, in the same order
        self._state = threading.Condition()
        self._closing = self._gone = False
        self._child = None
        if workers is None:
            workers = 1 if (os.cpu_count() or 1) > 1 else 0
        self._threads_started = False  # with the first figure: a fork before it copies no thread
        if workers > 0:
            self._start()  # at once: its matplotlib import overlaps the first checks

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:  # its own session: Ctrl-C in the terminal is the command's to handle, not the worker's
            self._child = subprocess.Popen([sys.executable, "-m", "checks.report.painter"], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return

    def _start_threads(self) -> None:
        """A sender and a receiver, so neither side ever blocks on a full pipe while the checks run."""
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._threads_started = True
        self._sender.start()
        self._reader.start()

    def _send(self) -> None:
        def ready() -> bool:  # something to do: send the next figure, or stop
            room = len(self._sent) - len(self._entries) < self.IN_FLIGHT
            return self._gone or (bool(self._waiting) and room) or (self._closing and not self._waiting)

        try:
            while True:
                with self._state:
                    self._state.wait_for(ready)
                    if self._gone or not self._waiting:
                        break  # closing with nothing left to send
                    key, figure = self._waiting.popleft()
                    self._sent.append(key)
                pickle.dump(figure, self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._child.stdin.flush()
            self._child.stdin.close()
        except (OSError, ValueError, pickle.PicklingError):
            pass  # the worker is gone: drawn() draws the rest here

    def _receive(self) -> None:
        try:
            while True:
                entry = pickle.load(self._child.stdout)
                with self._state:
                    self._entries.append(entry)
                    self._state.notify_all()
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            with self._state:
                self._gone = True
                self._state.notify_all()

    def submit(self, name: str, figures: list[Figure]) -> None:
        if figures and self._child is not None and not self._threads_started:
            self._start_threads()
        group = self._submitted.setdefault(name, [])
        for figure in figures:
            if self._child is not None:
                with self._state:
                    self._waiting.append(((name, len(group)), Figure(figure.kind, figure.title, plain(figure.data))))
                    self._state.notify_all()
            group.append(figure)

    def drawn(self) -> dict[str, list[dict[str, Any]]]:
        """Every submitted figure, drawn: this process takes the far end of a long backlog, waits
        for the worker, then draws here whatever it could not."""
        here = {}
        if self._child is not None and len(self._waiting) >= self.STEAL_FROM:
            while True:
                with self._state:
                    if len(self._waiting) <= 1:  # the worker takes the last one
                        break
                    key, figure = self._waiting.pop()
                here[key] = draw_entry(figure)
        self.drawn_here = len(here)
        self.close()
        with self._state:
            done = {**dict(zip(self._sent, self._entries)), **here}
        return {name: [done.get((name, i)) or draw_entry(figure) for i, figure in enumerate(group)]
                for name, group in self._submitted.items()}

    def close(self) -> None:
        """Let the worker finish what it was sent, then let it exit."""
        if self._child is None:
            return
        if not self._threads_started:
            self._start_threads()  # nothing was sent: let the worker see its input end
        with self._state:
            self._closing = True
            self._state.notify_all()
        for thread in (self._sender, self._reader):
            if thread.ident is None:  # a Ctrl-C came between creating and starting it
                try:
                    thread.start()
                except RuntimeError:  # it had started after all
                    pass
        self._sender.join(timeout=self.CLOSE_WAIT_S)
        self._reader.join(timeout=self.CLOSE_WAIT_S)  # it ends when the worker exits
        if self._sender.is_alive() or self._reader.is_alive():  # a worker that stopped answering must not
            self._child.kill()                                   # hang the command: drawn() draws the rest
            with self._state:
                self._gone = True
                self._state.notify_all()
            self._sender.join()
            self._reader.join()
        self._child.wait()
        self._child = None

    def __enter__(self) -> "Painter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve() -> None:
    """The worker: figures in on stdin, stored entries out on stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from checks.report import figures  # noqa: F401  matplotlib now, while the command imports torch
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            figure = pickle.load(source)
        except EOFError:
            return
        pickle.dump(draw_entry(figure), sink, protocol=pickle.HIGHEST_PROTOCOL)
        sink.flush()


if __name__ == "__main__":
    serve()
