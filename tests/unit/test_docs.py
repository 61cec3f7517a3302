"""The documentation is checked against the code: every log event and every setting is
documented, every rule between settings too, throughput figures live in one place, and every
relative link of the README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs import (
    BEGIN,
    CONFIGURATION,
    ROOT,
    generated_block,
    logged_events,
    setting_rules,
    settings_table,
)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_log_event_the_code_emits_is_in_docs_logs() -> None:
    page = (ROOT / "docs" / "logs.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", page, re.M))
    missing = {name: where for name, where in logged_events().items() if name not in documented}
    assert not missing, f"log events not in docs/logs.md: {missing}"
    assert "batch.sent" in documented and "broker.unreachable" in documented


def test_the_settings_table_is_generated_from_the_settings() -> None:
    text = CONFIGURATION.read_text()
    assert BEGIN in text
    assert generated_block(text) == settings_table(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m tests.docs`"
    )


def test_every_rule_between_settings_is_documented() -> None:
    text = CONFIGURATION.read_text()
    section = text.split("\n## Rules between settings\n", 1)[1].split("\n## ", 1)[0]
    items = section.split("\n- ")[1:]
    for names in setting_rules():
        assert any(all(f"`{name}`" in item for name in names) for item in items), (
            f"no rule naming {names} under 'Rules between settings' in docs/configuration.md"
        )


# A throughput figure: thousands of events (or records) per second.
THROUGHPUT = re.compile(r"\b\d{1,3}(,\d{3})+(-\d{1,3}(,\d{3})+)? (events|records)/s")


def test_throughput_figures_are_only_in_docs_performance() -> None:
    elsewhere = {
        str(page.relative_to(ROOT)): THROUGHPUT.findall(page.read_text())
        for page in [*PAGES, ROOT / "DEVELOPERS.md", *(ROOT / "deploy").rglob("*.md")]
        if page.name != "performance.md"
    }
    assert not {page: found for page, found in elsewhere.items() if found}


def _anchors(page: Path) -> set[str]:
    anchors = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            found = (page.parent / path).resolve() if path else page
            if not found.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and found.suffix == ".md" and anchor not in _anchors(found):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name
