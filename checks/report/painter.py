"""Drawing the figures on another core while the checks still run.

Drawing is about as slow as the checks themselves on `sample` (matplotlib, ~0.1 s a figure), and the
checks use one core. A `Painter` draws each check's figures in one worker process as soon as the
check finishes, so by the time the last check is done most figures are PNGs already. The worker only
needs numpy and matplotlib: figure data is copied to plain numpy/Python before it crosses over.

Anything going wrong in the worker (it cannot start, it dies, Ctrl-C reached it) costs no figure:
`drawn()` draws whatever the worker did not, in this process, exactly as `write_report` would.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from typing import Any, Mapping

from checks.result import Figure


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
    or `workers=0`, nothing is started and `drawn()` draws in this process."""

    def __init__(self, workers: int | None = None):
        self._submitted: dict[str, list[Figure]] = {}
        self._order: list[tuple[str, int]] = []   # (check name, position) of each figure sent, in order
        self._entries: list[dict[str, Any]] = []  # what came back, in the same order
        self._outbox: queue.Queue = queue.Queue()
        self._child = None
        if workers is None:
            workers = 1 if (os.cpu_count() or 1) > 1 else 0
        self._wanted = workers > 0  # started with the first figure: a fork before it copies no thread

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:  # its own session: Ctrl-C in the terminal is the command's to handle, not the worker's
            self._child = subprocess.Popen([sys.executable, "-m", "checks.report.painter"], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return
        # Two threads so neither side ever blocks on a full pipe while the checks run.
        threading.Thread(target=self._send, daemon=True).start()
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _send(self) -> None:
        try:
            while (figure := self._outbox.get()) is not None:
                pickle.dump(figure, self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._child.stdin.flush()
            self._child.stdin.close()
        except (OSError, ValueError, pickle.PicklingError):
            pass  # the worker is gone: drawn() draws the rest here

    def _receive(self) -> None:
        try:
            while True:
                self._entries.append(pickle.load(self._child.stdout))
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            pass

    def submit(self, name: str, figures: list[Figure]) -> None:
        if figures and self._wanted:
            self._wanted = False
            self._start()
        group = self._submitted.setdefault(name, [])
        for figure in figures:
            if self._child is not None:
                self._order.append((name, len(group)))
                self._outbox.put(Figure(figure.kind, figure.title, plain(figure.data)))
            group.append(figure)

    def drawn(self) -> dict[str, list[dict[str, Any]]]:
        """Every submitted figure, drawn: waits for the worker, then draws here what it could not."""
        self.close()
        done = {key: entry for key, entry in zip(self._order, self._entries)}
        return {name: [done.get((name, i)) or draw_entry(figure) for i, figure in enumerate(group)]
                for name, group in self._submitted.items()}

    def close(self) -> None:
        """Let the worker finish what it was sent, then let it exit."""
        if self._child is None:
            return
        self._outbox.put(None)
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
