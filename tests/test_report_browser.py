"""End to end, the way a person looks at it: `recipe run` on sample, then the report in headless Chromium."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recipe.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")


def test_recipe_run_report_renders_in_chromium(tmp_path: Path, capsys):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    report_dir = tmp_path / "reports"
    code = main(["run", "--data", "sample", "--no-download", "--epochs", "2", "--quiet",
                 "--report-dir", str(report_dir)])
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    run_dir = (report_dir / "latest").resolve()
    record = json.loads((run_dir / "results.json").read_text())
    index = run_dir / "index.html"
    assert index.stat().st_size < 3_000_000
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(index.as_uri())
            banner = page.locator("header.banner .big")
            assert banner.is_visible()
            assert banner.inner_text().startswith(record["overall"])
            rows = page.locator("table.summary tbody tr").all_inner_texts()
            for check in record["checks"]:
                assert any(check["name"] in row and check["verdict"] in row for row in rows), check["name"]
            widths = page.evaluate("Array.from(document.images).map(img => img.complete ? img.naturalWidth : 0)")
            assert len(widths) >= 10 and min(widths) > 0
            assert page.locator("#training").is_visible()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
