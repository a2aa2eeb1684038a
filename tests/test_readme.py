"""The README's own-pipeline example must work as written: a CNN passes every check."""
from __future__ import annotations

import re
from pathlib import Path

from checks import run_all
from checks.result import Verdict
from recipe.config import TrainConfig
from recipe.data import load_data
from recipe.user_code import make_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Your own pipeline", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_cnn_pipeline_passes_every_check(tmp_path, monkeypatch):
    (tmp_path / "my_cnn.py").write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pipeline = make_pipeline("my_cnn:build", TrainConfig(), load_data("sample", download=False))
    results = run_all(pipeline, gate=False)
    failed = {r.name: r.message for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)}
    assert pipeline.name == "small-cnn"
    assert failed == {}
