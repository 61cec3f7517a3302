"""`--help` through the console script: every variable with its default and description, what
each command reads, every option explained."""

from __future__ import annotations

import os
import re

import pytest

from consumer.settings import REQUIRED, Settings
from tests.integration.commands import command

COMMANDS = [
    "run",
    "check",
    "produce",
    "replay",
    "outcomes",
    "schemas",
    "fake-api",
    "broker",
    "demo",
]


async def test_run_help_lists_every_variable_with_its_default_and_description() -> None:
    result = await command("run", "--help", env=dict(os.environ))
    assert result.code == 0
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "required"
            if name in REQUIRED
            else "none"
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        description = " ".join((field.description or "").split())
        assert description, f"{name}: no docstring in settings.py"
        line = rf"^  {name.upper()} +{re.escape(shown)} +{re.escape(description)}"
        assert re.search(line, result.out, re.M), name
    assert re.search(
        r"^  LD_API_TOKEN +required .*Required \(or LD_API_TOKEN_FILE\)", result.out, re.M
    )


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "run"])
async def test_every_other_command_says_which_variables_it_reads(name: str) -> None:
    result = await command(name, "--help", env=dict(os.environ))
    assert re.search(r"^environment: ", result.out, re.M), result.out


async def test_produce_help_says_what_an_event_looks_like() -> None:
    result = await command("produce", "--help", env=dict(os.environ))
    for needle in ('"eventId"', '"instruction"', "schemas/event.schema.json", "docs/events.md"):
        assert needle in result.out, needle


@pytest.mark.parametrize("name", COMMANDS)
async def test_every_option_has_help(name: str) -> None:
    result = await command(name, "--help", env=dict(os.environ))
    assert result.code == 0, result.err
    options = result.out.split("options:", 1)[1].split("\n\n", 1)[0]
    entries = re.split(r"\n  (?=-)", "\n" + options.strip("\n"))
    for entry in entries[1:]:
        words = entry.split("  ", 1)
        assert len(words) == 2 and words[1].strip(), f"{name}: no help for {entry!r}"
