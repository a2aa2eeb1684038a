"""The README stays short and the docs stay whole: every relative link resolves, docs/checks.md is what its
generator writes from the registry now, and every registered check has its row."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs import generate

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where brackets are not links)."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings (lowercased, punctuation dropped, spaces to hyphens)."""
    found: set[str] = set()
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", re.sub(r"(?ms)^```.*?^```", "", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


def test_the_readme_is_at_most_200_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move the detail to docs/ and link it"


def test_the_pages_link_to_each_other():
    assert {page.name for page in PAGES} >= {"README.md", "checks.md", "usage.md", "zoo.md", "realbugs.md",
                                              "matrices.md", "figures.md"}
    readme_links = set(LINK.findall(prose(README.read_text())))
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= readme_links, "the README links every page of docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not a file of this checkout
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading '#{anchor}' in {file.relative_to(REPO)}")
        elif anchor and file.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not markdown")
    assert not broken, broken


def test_every_registered_check_has_exactly_one_row():
    assert generate.problems() == []


def test_the_checks_page_is_what_the_generator_writes_now():
    assert (REPO / "docs" / "checks.md").read_text() == generate.render(), \
        "docs/checks.md is out of date: run `python -m docs.generate`"


def test_the_checks_page_lists_every_registered_check_in_order():
    from checks.engine.registry import CHECKS_BY_STAGE

    rows = re.findall(r"^\| (\w+) \| `(\w+)` \|", (REPO / "docs" / "checks.md").read_text(), re.M)
    assert rows == [(stage, check.__name__) for stage, checks in CHECKS_BY_STAGE.items() for check in checks]


def test_a_missing_row_is_named(monkeypatch):
    rows = generate.fails_when()
    dropped = next(iter(rows))
    monkeypatch.setattr(generate, "fails_when", lambda: {k: v for k, v in rows.items() if k != dropped})
    assert generate.problems() == [f"{dropped}: registered, but no entry under [fails_when] in check_rows.toml"]
    with pytest.raises(ValueError, match=dropped):
        generate.render()
    monkeypatch.setattr(generate, "fails_when", lambda: {**rows, "no_such_check": "anything"})
    assert generate.problems() == ["no_such_check: an entry in check_rows.toml, but no registered check has this name"]


def test_the_link_checker_sees_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` heading: here\n")
    assert anchors(tmp_path / "a.md") == {"title", "some-code-heading-here"}
    text = "[ok](a.md#title) [code](`not a link`) `[x](y.md)` [web](https://example.com)\n```\n[z](z.md)\n```\n"
    assert LINK.findall(prose(text)) == ["a.md#title", "https://example.com"]
