"""The README's own-pipeline example must work as written: a CNN passes every check; its set-up commands are
CI's; docs/zoo.md states the zoo's measured matrix and rates."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from checks import run_all
from checks.engine.result import Verdict
from recipe.config import TrainConfig
from recipe.data import load_data
from recipe.user_code import make_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"
ZOO_PAGE = README.parent / "docs" / "zoo.md"  # the zoo's matrix and rates, moved out of the README


def readme_example() -> str:
    section = README.read_text().split("## Your own pipeline", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_cnn_pipeline_passes_every_check(tmp_path, monkeypatch):
    (tmp_path / "my_cnn.py").write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pipeline = make_pipeline("my_cnn:build", TrainConfig(), load_data("sample", download=False))
    results = run_all(pipeline, gate=False)
    failed = {r.name: r.message for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)}
    assert pipeline.name == "small-cnn"
    assert failed == {}


def test_the_set_up_commands_are_the_ones_ci_and_the_tests_run():
    """The README's two set-up commands, exactly: .ci/run runs the second one's install and test commands."""
    text = README.read_text()
    install_and_run = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && recipe run"
    install_and_test = "pip install -e '.[test]' && python -m pytest -q -n auto --dist loadfile"
    blocks = re.findall(r"```bash\n(.*?)\n```", text.split("## Set up and run", 1)[1], re.S)
    assert blocks[:2] == [install_and_run, install_and_test]
    ci = (README.parent / ".ci" / "run").read_text()
    for command in install_and_test.split(" && "):
        assert f"\n{command}" in ci, command
    assert 'python -m pytest -n auto -m "not slow"' in text  # the fast tier, named once


def test_the_zoo_matrix_has_a_row_for_every_bug_and_says_the_measured_rate():
    from checks.engine.registry import CHECKS
    from tests.zoo.catalogue import ZOO

    section = ZOO_PAGE.read_text()
    matrix = re.search(r"```\n( +1 .*?)```", section, re.S).group(1)
    names = [line.split()[0] for line in matrix.splitlines()[1:] if line and not line.startswith(" ")
             and re.match(r"^[\w:]+ +[PWFESR]", line)]
    assert names == ["clean:linear", "clean:mlp", "clean:cnn"] + [bug.name for bug in ZOO]
    assert len(matrix.splitlines()[0].split()) == len(CHECKS) + 1  # one column per check, then the verdict
    caught = sum("  caught" in line or line.endswith("  refused") for line in matrix.splitlines())
    assert f"detection rate: {caught}/{len(ZOO)} bugs" in matrix
    assert f"lists {len(ZOO)} realistic bugs" in section


def test_the_zoo_section_gives_the_detection_rate_per_data_set():
    from tests.zoo.catalogue import COLOUR_DIGITS, ZOO

    section = ZOO_PAGE.read_text()
    rates = dict(re.findall(r"^\| `([\w-]+)` \|.*?\| (\d+/\d+) \|", section, re.M))
    assert {"sample", COLOUR_DIGITS} <= set(rates)
    matrix_rate = re.search(r"detection rate: (\d+/\d+) bugs", section).group(1)
    assert rates["sample"] == matrix_rate  # the table says what the sample matrix measured
    for data_set in ("sample", COLOUR_DIGITS):
        caught, total = map(int, rates[data_set].split("/"))
        declared = sum(bool(bug.on(data_set).must_fail) for bug in ZOO)
        assert total == len(ZOO) and declared <= caught <= total, data_set  # every declared catch is a catch
