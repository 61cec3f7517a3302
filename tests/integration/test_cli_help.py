"""`--help` through the console script: every variable with its default, every option explained."""

from __future__ import annotations

import os
import re

import pytest

from consumer.settings import Settings
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


async def test_run_help_lists_every_variable_with_its_default() -> None:
    result = await command("run", "--help", env=dict(os.environ))
    assert result.code == 0
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "none"
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        assert re.search(rf"^  {name.upper()} +{re.escape(shown)}$", result.out, re.M), name


@pytest.mark.parametrize("name", COMMANDS)
async def test_every_option_has_help(name: str) -> None:
    result = await command(name, "--help", env=dict(os.environ))
    assert result.code == 0, result.err
    options = result.out.split("options:", 1)[1].split("\n\n", 1)[0]
    entries = re.split(r"\n  (?=-)", "\n" + options.strip("\n"))
    for entry in entries[1:]:
        words = entry.split("  ", 1)
        assert len(words) == 2 and words[1].strip(), f"{name}: no help for {entry!r}"
