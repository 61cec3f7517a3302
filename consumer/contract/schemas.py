"""The JSON Schemas of every message, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumer import __version__
from consumer.contract import outcomes
from consumer.contract.dead_letters import DeadLetterHeaders
from consumer.contract.events import EVENT_ADAPTER
from consumer.contract.outcomes import Outcome

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
        "asyncapi.json": asyncapi(),
        "dead-letter-headers.schema.json": _decorate(
            DeadLetterHeaders.model_json_schema(by_alias=True),
            "dead-letter-headers.schema.json",
            "Dead-letter headers",
            "The ldc.* headers added to the original key, value and headers of a dead-letter"
            " record (Kafka header name -> UTF-8 value).",
        ),
    }


# W3C trace context of the event's processing span (tracing.py), when tracing is on.
TRACE_HEADERS: dict[str, Any] = {
    "traceparent": {
        "type": "string",
        "description": "W3C trace context of the event's processing span (OpenTelemetry on)",
    },
    "tracestate": {"type": "string", "description": "W3C trace state, when there is one"},
}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3 document of the three topics; payloads refer to the JSON Schema files."""

    def schema(ref: str) -> dict[str, Any]:
        return {
            "schemaFormat": "application/schema+json;version=draft-2020-12",
            "schema": {"$ref": ref},
        }

    string = {"type": "string"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ld-targeting-consumer",
            "version": __version__,
            "description": (
                "Targeting-change events in, one outcome per input record out, failures copied"
                " byte for byte to a dead-letter topic. Topic names are the defaults; each is a"
                " setting (CONSUMER_INPUT_TOPIC, CONSUMER_RESULTS_TOPIC, CONSUMER_DLQ_TOPIC)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "targetingChanges": {
                "address": "ld.targeting-changes",
                "description": "One record = one LaunchDarkly semantic-patch instruction.",
                "messages": {"targetingChange": {"$ref": "#/components/messages/TargetingChange"}},
            },
            "targetingResults": {
                "address": "ld.targeting-results",
                "description": "Exactly one outcome per input record processed.",
                "messages": {"outcome": {"$ref": "#/components/messages/Outcome"}},
            },
            "deadLetters": {
                "address": "ld.targeting-changes.dlq",
                "description": "Rejected, invalid and failed records, byte for byte,"
                " with ldc.* headers.",
                "messages": {"deadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            },
        },
        "operations": {
            "consumeTargetingChanges": {
                "action": "receive",
                "channel": {"$ref": "#/channels/targetingChanges"},
            },
            "publishOutcomes": {
                "action": "send",
                "channel": {"$ref": "#/channels/targetingResults"},
            },
            "publishDeadLetters": {"action": "send", "channel": {"$ref": "#/channels/deadLetters"}},
        },
        "components": {
            "messages": {
                "TargetingChange": {
                    "name": "TargetingChange",
                    "title": "Targeting-change event",
                    "payload": schema("event.schema.json"),
                    "bindings": {
                        "kafka": {
                            "key": {
                                **string,
                                "description": "Recommended: {projectKey}/{environmentKey}/"
                                "{resource.kind}/{resource.key}; other keys are processed too.",
                            },
                            "bindingVersion": "0.5.0",
                        }
                    },
                },
                "Outcome": {
                    "name": "Outcome",
                    "title": "Outcome of one input record",
                    "payload": schema("outcome.schema.json"),
                    "headers": {
                        "type": "object",
                        "properties": {
                            outcomes.SOURCE_TOPIC: string,
                            outcomes.SOURCE_PARTITION: {**string, "pattern": "^[0-9]+$"},
                            outcomes.SOURCE_OFFSET: {**string, "pattern": "^[0-9]+$"},
                            **TRACE_HEADERS,
                        },
                    },
                    "bindings": {
                        "kafka": {
                            "key": {**string, "description": "The input record's key."},
                            "bindingVersion": "0.5.0",
                        }
                    },
                },
                "DeadLetter": {
                    "name": "DeadLetter",
                    "title": "Dead-letter copy",
                    "contentType": "application/octet-stream",
                    "payload": {"description": "The original record value, byte for byte."},
                    "description": "Headers: the original record's, byte for byte, then the"
                    " ldc.* ones, then (when tracing is on) the trace headers of the event's"
                    " processing (the last traceparent).",
                    "headers": schema("dead-letter-headers.schema.json"),
                },
            }
        },
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
