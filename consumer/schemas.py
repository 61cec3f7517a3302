"""The JSON Schemas of every message, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumer.events import EVENT_ADAPTER, DeadLetterHeaders, Outcome

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://github.com/ld-targeting-consumer/ld-targeting-consumer/schemas/"


def _decorate(schema: dict[str, Any], name: str, title: str, description: str) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": BASE_ID + name,
        "title": title,
        "description": description,
        **{k: v for k, v in schema.items() if k not in {"title", "description"}},
    }


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema."""
    return {
        "event.schema.json": _decorate(
            EVENT_ADAPTER.json_schema(),
            "event.schema.json",
            "Targeting-change event",
            "A record value of the input topic: one LaunchDarkly semantic-patch instruction.",
        ),
        "outcome.schema.json": _decorate(
            Outcome.model_json_schema(),
            "outcome.schema.json",
            "Outcome",
            "A record value of the results topic: exactly one per input record processed.",
        ),
        "dead-letter-headers.schema.json": _decorate(
            DeadLetterHeaders.model_json_schema(by_alias=True),
            "dead-letter-headers.schema.json",
            "Dead-letter headers",
            "The ldc.* headers added to the original key, value and headers of a dead-letter"
            " record (Kafka header name -> UTF-8 value).",
        ),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    problems = []
    for name, schema in generate().items():
        path = directory / name
        if not path.exists() or path.read_text() != render(schema):
            problems.append(name)
    return problems
