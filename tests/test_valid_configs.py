"""The valid-configuration matrix: what careful users legitimately train with FAILs no check.

A PASS promises that the code that will train is sane; the other half of that promise is that a
sane setup is not refused. Each configuration of tests/zoo/valid.py runs through every check
(`checks.run_all`, gate off) over seeds 0..1 in CI, 0..4 with RECIPE_ALL_SEEDS=1, on `sample` (here) and on the 3x32x32 colour digits
(tests/test_valid_configs_colour.py): seed 0 on `sample` in the quick run (about 40 s on one core),
the rest marked slow. Every result must also show a number that agrees with its verdict.
"""
from __future__ import annotations

import pytest
import torch

from checks import run_all
from recipe.config import TrainConfig
from tests.seeds import ALL_SEEDS, EVIDENCE_SEEDS
from tests.test_verdicts import disagreements
from tests.zoo.valid import VALID
from tests.zoo.valid_tricks import IN_CI, TRICKS

SEEDS = EVIDENCE_SEEDS  # 0..4 with RECIPE_ALL_SEEDS=1 (tests/seeds.py)


def matrix(data_set: str):
    """(configuration, seed) pairs; only seed 0 on `sample` is quick."""
    for name in VALID:
        for seed in SEEDS:
            marks = [pytest.mark.slow] if seed > 0 or data_set != "sample" else []
            yield pytest.param(name, seed, marks=marks, id=f"{name}-seed{seed}")


def assert_fails_no_check(name: str, seed: int, data) -> None:
    pipeline = VALID[name](TrainConfig(seed=seed), data)
    torch.manual_seed(seed)
    assert_nothing_blocks(run_all(pipeline, gate=False), f"{name} (seed {seed}, {data.source})")


def assert_nothing_blocks(results, label: str) -> None:
    """No FAIL or ERROR among `results`, and every shown number agrees with its verdict."""
    blocking = [f"{r.name}: {r.verdict.value}: {r.message}" for r in results if r.verdict.blocks]
    assert not blocking, f"{label}:\n" + "\n".join(blocking)
    assert not disagreements(results)


@pytest.mark.parametrize("name, seed", list(matrix("sample")))
@pytest.mark.slow
def test_a_valid_configuration_fails_no_check(sample_data, name, seed):
    assert_fails_no_check(name, seed, sample_data)


@pytest.mark.parametrize("name", [pytest.param(name, marks=[] if name in IN_CI or ALL_SEEDS else [pytest.mark.skip(
    reason="fine-tuning and training tricks beyond the two CI runs: RECIPE_ALL_SEEDS=1 runs them")]) for name in TRICKS])
@pytest.mark.slow
def test_a_training_trick_or_fine_tuning_setup_fails_no_check(sample_data, name):
    pipeline = TRICKS[name](TrainConfig(seed=0), sample_data)
    torch.manual_seed(0)
    assert_nothing_blocks(run_all(pipeline, gate=False), f"{name} (seed 0, sample)")
