"""A warm process (recipe/warm.py) runs `recipe` commands exactly as a fresh process would: the same
results, output, exit codes and Ctrl-C; it serves only the code and environment it was started with."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checks.engine.registry import CHECKS

from tests.conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm processes are Linux only")
SAMPLE = ["--data", "sample", "--quiet"]


def recipe(env: dict, *argv: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "checks.cli", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kwargs)


def record(report_dir: Path) -> dict:
    return json.loads(sorted(report_dir.glob("2*/results.json"))[-1].read_text())


@pytest.fixture(scope="module")
def warm_env(tmp_path_factory):
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(tmp_path_factory.mktemp("warm")),
               RECIPE_WARM_IDLE_S="120")
    started = recipe(env, "warm")
    assert started.returncode == 0 and "warm process ready" in started.stdout, started.stderr
    assert "already running" in recipe(env, "warm").stdout
    yield env
    stopped = recipe(env, "warm", "--stop")
    assert stopped.stdout.startswith("stopped"), (stopped.stdout, stopped.stderr)
    assert not list(Path(env["RECIPE_WARM_DIR"]).glob("*.sock"))


@pytest.mark.slow
def test_a_warm_check_gives_what_a_cold_one_gives(warm_env, tmp_path):
    warm = recipe(warm_env, "check", "--data", "sample", "--report-dir", str(tmp_path / "warm"))
    cold = recipe(dict(warm_env, RECIPE_WARM="0"), "check", "--data", "sample", "--report-dir", str(tmp_path / "cold"))
    assert warm.returncode == cold.returncode == 0, warm.stderr
    assert warm.stdout.startswith("preflight PASS") and f"[{len(CHECKS)}/{len(CHECKS)}] baselines/" in warm.stderr  # the client's own pipes
    a, b = record(tmp_path / "warm"), record(tmp_path / "cold")
    assert (a["timings"]["process"], b["timings"]["process"]) == ("warm", "cold")
    assert a["timings"]["total_s"] > a["timings"]["checks_s"]  # counted from the client's start
    fields = ("name", "verdict", "value", "threshold", "message", "details")
    assert [[c[f] for f in fields] for c in a["checks"]] == [[c[f] for f in fields] for c in b["checks"]]


@pytest.mark.slow
def test_user_errors_and_the_working_directory_come_through(warm_env, tmp_path):
    missing = recipe(warm_env, "check", *SAMPLE, "--pipeline", "nosuch_net.py", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("recipe: error:") and "nosuch_net.py" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    (tmp_path / "my_net.py").write_text(
        "from recipe.pipeline import default_pipeline\n"
        "def make(config, data):\n    print('my pipeline, from', __file__)\n    return default_pipeline(config, data)\n")
    mine = recipe(warm_env, "check", *SAMPLE, "--pipeline", "my_net.py:make", "--report-dir", "runs", cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    assert f"my pipeline, from {tmp_path / 'my_net.py'}" in mine.stdout
    assert record(tmp_path / "runs")["timings"]["process"] == "warm"


@pytest.mark.slow
def test_another_environment_runs_cold(warm_env, tmp_path):
    other = recipe(dict(warm_env, OMP_NUM_THREADS="2"), "check", *SAMPLE,
                   "--report-dir", str(tmp_path))
    assert record(tmp_path)["timings"]["process"] == "cold", other.stderr


SLOW_NET = """
import time
from dataclasses import replace
from torch import nn
from recipe.pipeline import mlp_pipeline

class Slow(nn.Module):  # every forward takes 20 ms: the checks take long enough to be interrupted
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, x):
        time.sleep(0.02)
        return self.inner(x)

def make(config, data):
    pipeline = mlp_pipeline(config, data)
    return replace(pipeline, make_model=lambda: Slow(pipeline.make_model()))
"""


@pytest.mark.slow
def test_ctrl_c_reaches_the_warm_command(warm_env, tmp_path):
    (tmp_path / "slow_net.py").write_text(SLOW_NET)
    client = subprocess.Popen([PYTHON, "-m", "checks.cli", "check", "--data", "sample", "--pipeline",
                               "slow_net.py:make", "--report-dir", "runs"], cwd=tmp_path, env=warm_env,
                              stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("data/integrity" in line for line in lines):  # the checks have begun
        lines.append(client.stderr.readline())
        assert lines[-1], "".join(lines)
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 130, "".join(lines) + err
    assert "interrupted after" in err  # the command's own Ctrl-C path: the finished checks are kept
    assert record(tmp_path / "runs")["timings"]["process"] == "warm"


@pytest.mark.slow
def test_an_idle_warm_process_exits(tmp_path):
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(tmp_path), RECIPE_WARM_IDLE_S="1")
    assert recipe(env, "warm").returncode == 0
    deadline = time.time() + 30
    while list(tmp_path.glob("*.sock")) and time.time() < deadline:
        time.sleep(0.2)
    assert not list(tmp_path.glob("*.sock"))
    assert "no warm process" in recipe(env, "warm", "--stop").stdout


def test_the_key_is_taken_from_the_environment_the_command_started_with(monkeypatch):
    """Importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR: a warm process started after a cold run
    with the environment as it is then would never serve the next command."""
    from recipe import warm

    started_with = dict(os.environ)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/set-by-torch")
    assert warm.key(started_with) != warm.key()
    assert warm.socket_path(started_with).name == f"{warm.key(started_with)}.sock"


@pytest.mark.skipif(not shutil.which("script"), reason="needs util-linux `script` for a terminal")
@pytest.mark.slow
def test_a_cold_check_on_a_terminal_starts_nothing_in_the_background(tmp_path):
    """Only `recipe warm` starts a warm process: a command the user typed leaves no process behind."""
    env = dict(subprocess_env(), RECIPE_WARM="1", RECIPE_WARM_DIR=str(tmp_path / "warm"), RECIPE_WARM_IDLE_S="60")
    command = f"{PYTHON} -m checks.cli check --data sample --quiet --report-dir {tmp_path / 'runs'}"
    try:
        first = subprocess.run(["script", "-qec", command, "/dev/null"], env=env, capture_output=True, text=True,
                               timeout=300)
        assert first.returncode == 0, first.stdout
        assert "background" not in first.stdout
        time.sleep(3)  # a warm process would have bound its socket by now (~3 s)
        assert not (tmp_path / "warm").exists() or not list((tmp_path / "warm").glob("*.sock"))
        recipe(env, "check", *SAMPLE, "--report-dir", str(tmp_path / "runs"))
        kinds = [json.loads(p.read_text())["timings"]["process"] for p in sorted((tmp_path / "runs").glob("2*/results.json"))]
        assert kinds == ["cold", "cold"], first.stdout
    finally:
        recipe(env, "warm", "--stop")


def test_the_socket_is_gone_before_stop_answers(tmp_path, monkeypatch):
    """`recipe warm --stop` returns once told "stopped"; the socket must be gone by then, or a command
    started right after connects to a process that is exiting (seen as a flaky CI teardown)."""
    import threading

    from checks.cli import warm_server
    from recipe import warm

    folder = tmp_path / "warm"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("RECIPE_WARM_DIR", str(folder))
    path = warm.socket_path()
    seen = []
    send = warm._send

    def watching_send(conn, message, fds=()):
        if message.get("stopped"):
            seen.append(path.exists())
        send(conn, message, fds)

    monkeypatch.setattr(warm, "_send", watching_send)

    def stop_once_ready():
        for _ in range(400):
            if path.exists():
                seen.append(warm.stop())
                return
            time.sleep(0.025)

    client = threading.Thread(target=stop_once_ready)
    client.start()
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        warm_server.serve(lambda: None, lambda argv, started: 0)
    finally:
        signal.signal(signal.SIGCHLD, previous)
        client.join()
    assert seen == [False, True]  # no socket when "stopped" went out; the client was answered
    assert not path.exists()
