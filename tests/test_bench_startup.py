"""The `startup` bench part: what it measures and how it reads its runs (no time is asserted)."""
from __future__ import annotations

import json

from bench import run, startup


def test_startup_rows_compare_each_check_with_the_import_torch_floor(monkeypatch, tmp_path):
    walls = iter([1.0, 1.0, 2.0, 2.0, 0.2, 0.2] * 3)
    monkeypatch.setattr(startup, "_wall", lambda argv, cwd: (next(walls), 0))
    fake = {"sample": (4.0, 0, {"data_load_s": 0.5, "checks_s": 2.0}),
            "fashion-mnist": (6.0, 1, {"data_load_s": 1.0, "checks_s": 3.0})}
    monkeypatch.setattr(startup, "check_once", lambda data, cwd: fake[data])
    monkeypatch.setattr(startup, "fashion_available", lambda: True)
    rows = {row.item: row for row in startup.run(repeats=2)["rows"]}
    sample = rows["recipe check --data sample (whole command)"]
    assert sample.value == 4.0 and sample.ratio == 4.0 and sample.met is False and sample.target == "<= 3 s"
    fashion = rows["recipe check --data fashion-mnist (whole command)"]
    assert fashion.met is False and "exit codes [1, 1]" in fashion.note
    rest = [row for row in startup.run(repeats=2)["rows"] if "the rest" in row.item]
    assert [row.value for row in rest] == [1.5, 2.0]


def test_startup_is_a_part_of_the_bench(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(startup, "run", lambda repeats: {"rows": [startup.Row("startup", "x", 1.0, "s")]})
    out = tmp_path / "b.json"
    assert run.main(["--parts", "startup", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["parts"]["startup"]["rows"][0]["item"] == "x"
