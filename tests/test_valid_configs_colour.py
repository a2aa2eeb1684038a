"""The valid-configuration matrix on a 3-channel data set: the `sample` digits as 3x32x32 colour images,
written as CIFAR-10 batches and read through the `cifar10` source (tests/zoo/catalogue.py `zoo_data`).
Every configuration of tests/zoo/valid.py over seeds 0..1 (0..4 with RECIPE_ALL_SEEDS=1) FAILs no check (all marked slow: about
7 CPU-minutes). A file of its own so that pytest-xdist runs it beside the `sample` matrix."""
from __future__ import annotations

import pytest

from tests.test_valid_configs import assert_fails_no_check, matrix
from tests.zoo.catalogue import COLOUR_DIGITS, zoo_data


@pytest.fixture(scope="module")
def colour_digits():
    return zoo_data(COLOUR_DIGITS)


@pytest.mark.parametrize("name, seed", list(matrix(COLOUR_DIGITS)))
def test_a_valid_configuration_fails_no_check_on_colour_digits(colour_digits, name, seed):
    assert_fails_no_check(name, seed, colour_digits)
