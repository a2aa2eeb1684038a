"""`python -m checks.cli.warm_server`: the warm process of recipe/warm.py, serving checks.cli.main's commands.

Its own module so that recipe/warm.py (which the `recipe` client imports first, and which must stay
light) never imports checks.cli.main, and checks.cli.main never imports this."""
from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Callable

from checks.cli import clock, main as cli
from recipe import warm


def serve(preload: Callable[[], None], run: Callable[[list[str], float], int]) -> None:
    """Import once (`preload`), then fork a child per command until IDLE_S pass without one; the child
    calls `run(argv, the client's start time)` (`run_forked` below)."""
    path = warm.socket_path()  # before any import could change the environment
    import torch

    torch.set_num_threads(1)  # no thread pool yet: each fork sets its own (--threads)
    preload()

    if warm.make_folder(path.parent) is not None:
        return  # `recipe warm` said why before it started this process
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    spare = path.with_suffix(f".{os.getpid()}")
    listener.bind(str(spare))
    os.chmod(spare, 0o600)
    listener.listen(8)
    os.replace(spare, path)  # ready: only now can a client connect
    mine = path.stat().st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forks reap themselves
    listener.settimeout(warm.idle_s())
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                return
            conn.settimeout(None)
            with conn:
                if warm.peer_uid(conn) != os.getuid():
                    continue  # another user: not a byte read, not a byte answered
                request, fds = warm._receive(conn, 3)
                if request is None or request.get("ping"):
                    warm._send(conn, {"pong": True})
                    continue
                if request.get("stop"):
                    _release(path, mine)  # before answering: once told "stopped", no socket of ours is left
                    warm._send(conn, {"stopped": True})
                    return
                if os.fork() == 0:
                    listener.close()
                    _run_child(conn, request, fds, run)  # never returns
                for fd in fds:
                    os.close(fd)
    finally:
        _release(path, mine)


def _release(path, mine: int) -> None:
    """Remove the socket's name, unless a newer warm process has taken it since."""
    try:
        if path.stat().st_ino == mine:
            path.unlink()
    except OSError:
        pass


def _run_child(conn: socket.socket, request: dict, fds: list[int], run: Callable[[list[str], float], int]) -> None:
    """Become the client's command: its fds, directory, environment, arguments and start time."""
    import atexit
    import io

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess.wait must see its children
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=sys.stdin.encoding)
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = io.TextIOWrapper(open(fd, "wb", closefd=False), encoding=getattr(sys, name).encoding,
                                      errors="backslashreplace" if fd == 2 else "strict",
                                      line_buffering=os.isatty(fd) or fd == 2)
            setattr(sys, name, stream)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv = ["recipe", *request["argv"]]
        warm._send(conn, {"pid": os.getpid()})
        code = run(request["argv"], request["started"])
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            atexit._run_exitfuncs()
            warm._send(conn, {"exit": code})
        finally:
            os._exit(code)


def run_forked(argv: list[str], started: float) -> int:
    """One command in a fork of the warm process, timed from its client's start."""
    clock.warm_start(started)
    return cli.main(argv)


if __name__ == "__main__":
    serve(cli.preload, run_forked)
