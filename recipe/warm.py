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
seconds without a command. Only `recipe warm` starts one (nothing starts in the background unasked);
RECIPE_WARM=0 turns all of this off.

No other user may serve or see a command: the client hands over its environment and its terminal.
So the socket's folder must be the user's own, mode 0700 and not a link (checked with lstat: on a
shared /tmp another user can create /tmp/recipe-<uid> first), and each side checks the other's uid
with SO_PEERCRED before it sends anything. Anything else is refused, and the command runs cold.

Nothing here imports torch at module level: the client must stay as light as `recipe --help`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
from pathlib import Path

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


def why_untrusted(path: Path) -> str | None:
    """Why `path` may not hold this user's sockets (None: it may). lstat, so a link is seen as one."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder"
    if info.st_uid != os.getuid():
        return f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    if stat.S_IMODE(info.st_mode) != 0o700:
        return f"{path} has mode {stat.S_IMODE(info.st_mode):04o}, not 0700: other users could enter it"
    return None


def make_folder(path: Path) -> str | None:
    """Create the sockets' folder, mode 0700, if it is missing; why it may not be used (None: it may)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass  # whoever made it, why_untrusted decides
    return why_untrusted(path)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel recorded it."""
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _refusal(reason: str) -> str:
    return (f"recipe: not using a warm process ({reason}); running cold. Remove it, or set {ENV_DIR} to a "
            f"folder of your own")


def _connect() -> tuple[socket.socket | None, str | None]:
    """A connection to this user's own warm process for this code, or (None, why not). A missing
    folder or socket is no reason worth saying: no warm process was started."""
    path = socket_path()
    if not os.path.lexists(path.parent):
        return None, None
    reason = why_untrusted(path.parent)
    if reason is not None:
        return None, reason
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None, None
    uid = peer_uid(conn)
    if uid != os.getuid():
        conn.close()
        return None, f"{path} is served by uid {uid}, not by you (uid {os.getuid()})"
    return conn, None


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
    conn, reason = _connect()
    if conn is None:
        if reason is not None:
            print(_refusal(reason), file=sys.stderr)
        return None
    with conn:
        try:
            _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
                         "started": started}, [0, 1, 2])
        except OSError:  # it closed before reading: nothing ran there, so run here
            return None
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
            if message is None and child is None:
                return None  # it closed before starting the command (it refused us): run it here
            if message is None:
                print("recipe: error: the warm process stopped without an exit code; run again with RECIPE_WARM=0 "
                      "to run without it", file=sys.stderr)
                return 1
            if "pid" in message:
                child = message["pid"]
            if "exit" in message:
                return int(message["exit"])


def start_in_background() -> Path:
    """Start a warm process for this code and environment (`recipe warm` only). Returns at once; it is
    ready in ~3 s."""
    import subprocess

    path = socket_path()
    subprocess.Popen([sys.executable, "-m", "checks.cli.warm_server"], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return path


def stop() -> bool:
    """Stop the warm process serving this code and environment; whether there was one."""
    conn, _ = _connect()
    if conn is None:
        return False
    with conn:
        _send(conn, {"stop": True})
        _receive(conn)
    return True


def running() -> bool:
    conn, _ = _connect()
    if conn is None:
        return False
    with conn:
        try:
            _send(conn, {"ping": True})
            return _receive(conn)[0] is not None
        except OSError:  # it closed on us: not a warm process that serves this user
            return False


def idle_s() -> float:
    return float(os.environ.get(ENV_IDLE, IDLE_S))


def command(args) -> int:
    """`recipe warm [--stop]`."""
    import time

    from recipe.errors import RecipeError

    if not enabled():
        raise RecipeError("warm processes need Linux and RECIPE_WARM unset (or not 0)")
    if args.stop:
        print("stopped the warm process" if stop() else "no warm process was running for this code")
        return 0
    reason = make_folder(socket_path().parent)
    if reason is not None:
        raise RecipeError(f"cannot keep a warm process there: {reason}. Remove it, or set {ENV_DIR} to a folder "
                          f"of your own")
    if running():
        print(f"a warm process is already running: {socket_path()}")
        return 0
    path = start_in_background()
    for _ in range(300):  # it is ready once its socket exists: about 3 s
        if running():
            print(f"warm process ready: {path} (exits after {idle_s() / 60:g} idle min)")
            return 0
        time.sleep(0.05)
    raise RecipeError("the warm process did not start within 15 s; run `python -m checks.cli.warm_server` to see why")
