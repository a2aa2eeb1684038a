"""A warm process: torch, torch._dynamo and the harness imported once, forked for each command.

Every `recipe check` pays about 2.8 s before its first check on two cores: the interpreter, `import
torch` (1.5 s) and the `torch._dynamo` that the first `Optimizer.step()` imports (1 s). A warm
process pays that once and then waits on a Unix socket. For each command, the `recipe` client sends
its arguments, working directory, environment, start time and its stdin/stdout/stderr (the file
descriptors themselves, so a terminal stays a terminal); the warm process forks, and the fork runs
the command exactly as a fresh process would: the user's pipeline is imported fresh in it, seeds are
set the same way, results are the same. Ctrl-C on the client is passed on to the fork; its exit
code comes back. The same idea as Spring for Rails or the Gradle daemon.

The warm process serves only the code and settings it was started with: the socket's name is a
hash of the Python, the harness's source files and the environment variables torch reads at import,
so an edit or a different `OMP_NUM_THREADS` finds no server and runs cold. It exits after IDLE_S
seconds without a command. `recipe warm` starts one; `recipe check/train/run` on a terminal start
one after a cold run (and say so); RECIPE_WARM=0 turns all of this off.

Nothing here imports torch at module level: the client must stay as light as `recipe --help`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Callable

ENV_SWITCH = "RECIPE_WARM"          # 0: never use or start a warm process
ENV_DIR = "RECIPE_WARM_DIR"         # where sockets live (default: $XDG_RUNTIME_DIR/recipe or /tmp/recipe-<uid>)
ENV_IDLE = "RECIPE_WARM_IDLE_S"
IDLE_S = 900.0
COMMANDS = ("check", "train", "run")  # the ones that load torch; the others answer at once anyway
IMPORT_ENV = ("PYTHON", "OMP_", "MKL_", "KMP_", "CUDA_", "TORCH", "PYTORCH", "LD_", "NVIDIA_", "CUBLAS_", "CUDNN_")
PACKAGES = ("recipe", "checks")


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0" and sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def command_of(argv: list[str]) -> str | None:
    return next((token for token in argv if not token.startswith("-")), None)


def folder() -> Path:
    base = os.environ.get(ENV_DIR) or (Path(os.environ["XDG_RUNTIME_DIR"]) / "recipe" if os.environ.get(
        "XDG_RUNTIME_DIR") else f"/tmp/recipe-{os.getuid()}")
    return Path(base)


def key(environ: dict[str, str] | None = None) -> str:
    """What a warm process must share with a command to serve it: the interpreter, every source file
    of the harness (by size and modification time) and the environment read at import."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}".encode())
    for package in PACKAGES:
        root = Path(__file__).resolve().parents[1] / package
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".j2"):
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    for name in sorted(environ):
        if name.startswith(IMPORT_ENV) and name != ENV_IDLE:
            digest.update(f"{name}={environ[name]}\0".encode())
    return digest.hexdigest()[:20]


def socket_path(environ: dict[str, str] | None = None) -> Path:
    return folder() / f"{key(environ)}.sock"


# ---------------------------------------------------------------- the client

def _send(conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
    body = json.dumps(message).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body)) + body], list(fds))


def _receive(conn: socket.socket, want_fds: int = 0) -> tuple[dict | None, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 4, want_fds)
    if len(data) < 4:
        return None, fds
    size = struct.unpack("!I", data)[0]
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


def run_warm(argv: list[str], started: float) -> int | None:
    """Run this command in a warm process: its exit code, or None when none serves it (run it here)."""
    if not enabled() or command_of(argv) not in COMMANDS or "RANK" in os.environ:
        return None  # under torchrun every rank starts its own process, as torchrun expects
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(socket_path()))
    except OSError:
        conn.close()
        return None
    with conn:
        _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
                     "started": started}, [0, 1, 2])
        child = None

        def forward(signum, frame):
            if child is not None:
                os.kill(child, signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        while True:
            try:
                message, _ = _receive(conn)
            except InterruptedError:
                continue
            except OSError:
                message = None
            if message is None:
                print("recipe: error: the warm process stopped without an exit code; run again with RECIPE_WARM=0 "
                      "to run without it", file=sys.stderr)
                return 1
            if "pid" in message:
                child = message["pid"]
            if "exit" in message:
                return int(message["exit"])


def start_in_background(quiet: bool = False, environ: dict[str, str] | None = None) -> Path:
    """Start a warm process for this code and `environ` (default: this process's; pass the one a
    command started with: importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR). Returns at once; it
    is ready in ~3 s."""
    import subprocess

    environ = dict(os.environ if environ is None else environ)
    path = socket_path(environ)
    subprocess.Popen([sys.executable, "-m", "recipe.warm_server"], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=environ)
    if not quiet:
        print(f"recipe: keeping torch loaded in a background process for {idle_s() / 60:g} min, so the next "
              f"`recipe check` starts at once (RECIPE_WARM=0 turns this off; `recipe warm --stop` stops it)",
              file=sys.stderr)
    return path


def stop() -> bool:
    """Stop the warm process serving this code and environment; whether there was one."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(socket_path()))
    except OSError:
        return False
    with conn:
        _send(conn, {"stop": True})
        _receive(conn)
    return True


def running(environ: dict[str, str] | None = None) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(socket_path(environ)))
        except OSError:
            return False
        _send(conn, {"ping": True})
        return _receive(conn)[0] is not None


def idle_s() -> float:
    return float(os.environ.get(ENV_IDLE, IDLE_S))


def worth_starting(argv: list[str], environ: dict[str, str] | None = None) -> bool:
    """After a cold check/train/run on a terminal, start a warm process for the next one (`environ`:
    what the command started with)."""
    return (enabled() and command_of(argv) in COMMANDS and "RANK" not in os.environ and sys.stderr.isatty()
            and not running(environ))


def command(args) -> int:
    """`recipe warm [--stop]`."""
    import time

    from recipe.errors import RecipeError

    if not enabled():
        raise RecipeError("warm processes need Linux and RECIPE_WARM unset (or not 0)")
    if args.stop:
        print("stopped the warm process" if stop() else "no warm process was running for this code")
        return 0
    if running():
        print(f"a warm process is already running: {socket_path()}")
        return 0
    path = start_in_background(quiet=True)
    for _ in range(300):  # it is ready once its socket exists: about 3 s
        if running():
            print(f"warm process ready: {path} (exits after {idle_s() / 60:g} idle min)")
            return 0
        time.sleep(0.05)
    raise RecipeError("the warm process did not start within 15 s; run `python -m recipe.warm_server` to see why")


# ---------------------------------------------------------------- the warm process

def serve(preload: Callable[[], None], run: Callable[[list[str], float], int]) -> None:
    """Import once (`preload`), then fork a child per command until IDLE_S pass without one; the child
    calls `run(argv, the client's start time)` (recipe/warm_server.py passes recipe.cli's)."""
    path = socket_path()  # before any import could change the environment
    import torch

    torch.set_num_threads(1)  # no thread pool yet: each fork sets its own (--threads)
    preload()

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    spare = path.with_suffix(f".{os.getpid()}")
    listener.bind(str(spare))
    os.chmod(spare, 0o600)
    listener.listen(8)
    os.replace(spare, path)  # ready: only now can a client connect
    mine = path.stat().st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forks reap themselves
    listener.settimeout(idle_s())
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                return
            conn.settimeout(None)
            with conn:
                request, fds = _receive(conn, 3)
                if request is None or request.get("ping"):
                    _send(conn, {"pong": True})
                    continue
                if request.get("stop"):
                    _send(conn, {"stopped": True})
                    return
                if os.fork() == 0:
                    listener.close()
                    _run_child(conn, request, fds, run)  # never returns
                for fd in fds:
                    os.close(fd)
    finally:
        try:
            if path.stat().st_ino == mine:  # a newer warm process may have taken the name since
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
        _send(conn, {"pid": os.getpid()})
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
            _send(conn, {"exit": code})
        finally:
            os._exit(code)
