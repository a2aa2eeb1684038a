"""The `startup` bench part: what it measures and how it reads its runs (no time is asserted)."""
from __future__ import annotations

import json

from bench import run, startup


def test_startup_rows_compare_each_check_with_the_import_torch_floor(monkeypatch, tmp_path):
    walls = iter([1.0, 1.0, 2.0, 2.0, 0.2, 0.2, 3.0, 0.1] * 3)
    monkeypatch.setattr(startup, "_wall", lambda argv, cwd, warm_dir=None: (next(walls), 0))
    fake = {("sample", False): (4.0, 0, {"data_load_s": 0.5, "checks_s": 2.0, "process": "cold"}),
            ("fashion-mnist", False): (6.0, 1, {"data_load_s": 1.0, "checks_s": 3.0, "process": "cold"}),
            ("sample", True): (1.5, 0, {"process": "warm"}), ("fashion-mnist", True): (4.5, 0, {"process": "warm"})}
    monkeypatch.setattr(startup, "check_once", lambda data, cwd, warm_dir=None: fake[data, warm_dir is not None])
    monkeypatch.setattr(startup, "fashion_available", lambda: True)
    rows = {row.item: row for row in startup.run(repeats=2)["rows"]}
    sample = rows["recipe check --data sample (whole command), cold"]
    assert sample.value == 4.0 and sample.ratio == 4.0 and sample.met is False and sample.target == "<= 3 s"
    fashion = rows["recipe check --data fashion-mnist (whole command), cold"]
    assert fashion.met is False and "exit codes [1, 1]" in fashion.note
    warm = rows["recipe check --data sample, warm"]
    assert warm.value == 1.5 and warm.met is True and "ran warm" in warm.note
    assert rows["recipe warm (once: start the warm process)"].value == 3.0
    walls = iter([1.0, 1.0, 2.0, 2.0, 0.2, 0.2, 3.0, 0.1] * 3)
    rest = [row for row in startup.run(repeats=2)["rows"] if "the rest" in row.item]
    assert [row.value for row in rest] == [1.5, 2.0]


def test_startup_is_a_part_of_the_bench(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(startup, "run", lambda repeats: {"rows": [startup.Row("startup", "x", 1.0, "s")]})
    out = tmp_path / "b.json"
    assert run.main(["--parts", "startup", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["parts"]["startup"]["rows"][0]["item"] == "x"
