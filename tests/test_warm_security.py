"""No other user can serve or see a `recipe` command through the warm process (recipe/warm.py).

The attack this guards against, on a shared machine without XDG_RUNTIME_DIR: user B creates
/tmp/recipe-<uid of A> open to all before A runs `recipe`, then listens on A's socket name. A's next
command would hand B its environment and its terminal, and B could answer with a fake PASS. Each step
is refused here: a folder that is not A's own 0700 folder, and a server (or client) of another uid.
Tests that need a second real uid run as root (CI does) and chown or setuid to one.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm processes are Linux only")
STRANGER = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (CI runs as root)")


def recipe(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "checks.cli", *argv], env=env, capture_output=True, text=True, timeout=300)


def open_to_all(tmp_path: Path) -> Path:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def link_to_own(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    return tmp_path / "link"


def owned_by_another(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, STRANGER, STRANGER)
    else:  # without root no file can belong to another uid: become another uid in this process instead
        mine = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: mine + 1)
    return folder


UNTRUSTED = {"another owner": (owned_by_another, "belongs to uid"), "mode 0777": (lambda t, m: open_to_all(t), "mode 0777"),
             "a symbolic link": (lambda t, m: link_to_own(t), "symbolic link")}


@pytest.mark.parametrize("kind", UNTRUSTED)
def test_an_untrusted_folder_is_refused_by_client_and_server(kind, tmp_path, monkeypatch, capsys):
    from recipe import warm
    from recipe.errors import RecipeError

    make, words = UNTRUSTED[kind]
    folder = make(tmp_path, monkeypatch)
    monkeypatch.setenv("RECIPE_WARM", "1")
    monkeypatch.setenv("RECIPE_WARM_DIR", str(folder))
    monkeypatch.delenv("RANK", raising=False)
    assert words in warm.why_untrusted(folder)
    assert warm.make_folder(folder) == warm.why_untrusted(folder)  # an existing folder is never taken over

    assert warm.run_warm(["check", "--data", "sample"], time.time()) is None  # runs cold
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("recipe: not using a warm process") and words in said[0]
    assert not warm.running() and not warm.stop()

    with pytest.raises(RecipeError, match=words):  # `recipe warm` starts nothing there
        warm.command(type("Args", (), {"stop": False})())
    assert not list(Path(os.path.realpath(folder)).glob("*.sock*"))


def test_a_fresh_folder_is_made_private(tmp_path):
    from recipe import warm

    folder = tmp_path / "deep" / "recipe"
    assert warm.make_folder(folder) is None
    assert (folder.stat().st_mode & 0o777) == 0o700 and folder.stat().st_uid == os.getuid()


def test_peer_uid_reads_the_kernels_record():
    from recipe import warm

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert warm.peer_uid(left) == warm.peer_uid(right) == os.getuid()


def listen_as(uid_of_peer, path: Path, monkeypatch):
    """A listener on this user's socket name; the client is told (patched) that `uid_of_peer` owns it."""
    from recipe import warm

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    monkeypatch.setattr(warm, "peer_uid", lambda conn: uid_of_peer)
    return listener


def test_a_server_of_another_uid_gets_nothing(tmp_path, monkeypatch, capsys):
    """The client asks the kernel who serves the socket before it sends a byte or a descriptor."""
    from recipe import warm

    monkeypatch.setenv("RECIPE_WARM", "1")
    monkeypatch.setenv("RECIPE_WARM_DIR", str(tmp_path / "warm"))
    assert warm.make_folder(tmp_path / "warm") is None
    with listen_as(os.getuid() + 1, warm.socket_path(), monkeypatch) as listener:
        assert warm.run_warm(["check"], time.time()) is None
        said = capsys.readouterr().err
        assert "served by uid" in said and "running cold" in said
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data, fds, _, _ = socket.recv_fds(conn, 4096, 3)
        assert data == b"" and fds == []  # closed before anything was sent


@as_root
@pytest.mark.slow
def test_a_real_server_of_another_uid_gets_nothing(tmp_path):
    """As the attack goes: B listens on A's socket name (bound by root here, then B's uid listens, as
    SO_PEERCRED records the listener's credentials at listen()). A's command runs cold and B reads nothing."""
    folder = tmp_path / "warm"
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(folder))
    probe = subprocess.run([PYTHON, "-c", "from recipe import warm; print(warm.socket_path())"], env=env,
                           capture_output=True, text=True, check=True)
    path = Path(probe.stdout.strip())
    folder.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # user B
        try:
            os.close(read)
            os.setgid(STRANGER)
            os.setuid(STRANGER)
            listener.listen(1)
            os.write(write, b"L")
            listener.settimeout(60)
            conn, _ = listener.accept()
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            os.write(write, f"{len(data)} {len(fds)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    listener.close()
    assert os.read(read, 1) == b"L"
    done = recipe(env, "check", "--data", "sample", "--quiet", "--report-dir", str(tmp_path / "runs"))
    got = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert done.returncode == 0 and f"served by uid {STRANGER}" in done.stderr, done.stderr
    assert got == "0 0"  # not a byte of A's environment, not one of A's descriptors


@as_root
@pytest.mark.slow
def test_a_folder_planted_by_another_user_runs_cold_end_to_end(tmp_path):
    folder = tmp_path / "planted"
    folder.mkdir()
    folder.chmod(0o777)
    os.chown(folder, STRANGER, STRANGER)
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(folder))
    started = recipe(env, "warm")
    assert started.returncode == 2 and "belongs to uid" in started.stderr
    assert len(started.stderr.strip().splitlines()) == 1 and "Traceback" not in started.stderr
    done = recipe(env, "check", "--data", "sample", "--quiet", "--report-dir", str(tmp_path / "runs"))
    assert done.returncode == 0 and "running cold" in done.stderr
    assert not list(folder.iterdir())


SERVER_THAT_SEES_A_STRANGER = """
import sys
from pathlib import Path
from recipe import warm
from checks.cli import warm_server
warm.peer_uid = lambda conn: 99999  # every client looks like another user's
marker = Path(sys.argv[1])
warm_server.serve(lambda: None, lambda argv, started: marker.write_text("ran") and 0)
"""


@pytest.mark.slow
def test_the_server_answers_no_client_of_another_uid(tmp_path):
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(tmp_path / "warm"), RECIPE_WARM_IDLE_S="30")
    marker = tmp_path / "ran"
    server = subprocess.Popen([PYTHON, "-c", SERVER_THAT_SEES_A_STRANGER, str(marker)], env=env)
    try:
        deadline = time.time() + 60
        while not list((tmp_path / "warm").glob("*.sock")) and time.time() < deadline:
            time.sleep(0.1)
        assert list((tmp_path / "warm").glob("*.sock"))
        pinged = subprocess.run([PYTHON, "-c", "from recipe import warm; print(warm.running())"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert pinged.stdout.strip() == "False", pinged.stderr
        done = recipe(env, "check", "--data", "sample", "--quiet", "--report-dir", str(tmp_path / "runs"))
        assert done.returncode == 0 and "preflight PASS" in done.stdout, done.stderr  # it ran here, cold
        assert not marker.exists()  # nothing ran in the server
    finally:
        server.kill()
        server.wait()
