"""End to end, the way a person looks at it: `recipe run` on sample, then the report in headless Chromium."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from checks.cli.main import main
from tests.conftest import needs_system_package

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]



@pytest.fixture(autouse=True)
def chromium_installed():
    if not Path(CHROMIUM).exists():
        needs_system_package("needs Debian's chromium (apt-get install chromium)")


@pytest.mark.slow
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
            score = page.locator("header.banner .score").inner_text()
            assert f"test accuracy {100 * record['training']['test_accuracy']:.1f}%" in score
            page.locator('table.summary a[href="#loss_at_init"]').click()
            assert page.evaluate("location.hash") == "#loss_at_init"
            assert page.locator("section#loss_at_init").is_visible()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

            page.set_viewport_size({"width": 700, "height": 900})  # half a laptop screen
            assert page.evaluate("document.documentElement.scrollWidth") <= 700, "the page scrolls sideways"
            box = page.locator("#summary .scroll").last  # the check table's box scrolls what does not fit
            assert box.evaluate("el => el.scrollWidth <= el.clientWidth"), "the time column is cut off"
            right = box.evaluate("el => el.getBoundingClientRect().right")
            rights = page.evaluate("Array.from(document.querySelectorAll('#summary table.summary tr > :last-child'))"
                                   ".map(cell => cell.getBoundingClientRect().right)")
            assert len(rights) >= len(record["checks"]) + 1 and max(rights) <= right + 0.5
            page.screenshot(path=str(tmp_path / "report-700.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
