"""The dead-letter copy: the original key, value and headers, byte for byte, plus `ldc.*`.

Every `ldc.*` header name (those of dead-letter copies and of outcome records) and the
dead-letter headers' model are written here, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from consumer.contract.outcomes import OutcomeMessage, Status
from consumer.service.records import ConsumedRecord

# -- every `ldc.*` header name, written once --------------------------------------------------

PREFIX = "ldc."
# On a dead-letter copy (after the original record's own headers):
STATUS = "ldc.status"
ERROR_CODE = "ldc.error.code"
ERROR_MESSAGE = "ldc.error.message"
ORIGINAL_TOPIC = "ldc.original.topic"
ORIGINAL_PARTITION = "ldc.original.partition"
ORIGINAL_OFFSET = "ldc.original.offset"
ORIGINAL_TIMESTAMP = "ldc.original.timestamp"
ATTEMPTS = "ldc.attempts"
HTTP_STATUS = "ldc.http.status"
DEAD_LETTERED_AT = "ldc.dead-lettered-at"
REPLAY_COUNT = "ldc.replay.count"  # added by replay
# Added by replay: `topic/partition/offset` of the original record (the first one dead-lettered)
# a replayed copy stands for. A dead-letter copy of a replayed copy names that original in its
# `ldc.original.*` headers, so every copy of one original has the same identity (replay.py).
REPLAY_OF = "ldc.replay.of"
# Written by versions before 0.2 on a copy whose value did not fit; now such a record halts its
# partition instead (publisher.py). Replay still recognises old copies.
VALUE_OMITTED = "ldc.value-omitted"
# The outcome record's own headers (`ldc.source.*`, `ldc.outcome.shrunk`) are in outcomes.py.


def _headers_are_strings(schema: dict[str, Any]) -> None:
    # An optional header is absent, never null: publish it as a plain string property.
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if "anyOf" in prop:
            (kept,) = [option for option in prop.pop("anyOf") if option.get("type") != "null"]
            prop.update(kept)
            prop.pop("default", None)


class DeadLetterHeaders(BaseModel):
    """The `ldc.*` headers of a dead-letter copy; all values are UTF-8 strings."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, json_schema_extra=_headers_are_strings
    )

    status: Literal["rejected", "invalid", "failed"] = Field(alias=STATUS)
    error_code: str = Field(alias=ERROR_CODE)
    error_message: str = Field(alias=ERROR_MESSAGE)
    original_topic: str = Field(alias=ORIGINAL_TOPIC)
    original_partition: str = Field(alias=ORIGINAL_PARTITION, pattern=r"^[0-9]+$")
    original_offset: str = Field(alias=ORIGINAL_OFFSET, pattern=r"^[0-9]+$")
    original_timestamp: str = Field(
        alias=ORIGINAL_TIMESTAMP,
        pattern=r"^-?[0-9]+$",
        description="the original record's timestamp, epoch milliseconds",
    )
    attempts: str = Field(alias=ATTEMPTS, pattern=r"^[0-9]+$")
    http_status: str | None = Field(
        None, alias=HTTP_STATUS, pattern=r"^[0-9]{3}$", description="when a response came"
    )
    dead_lettered_at: str = Field(alias=DEAD_LETTERED_AT, description="RFC 3339")
    replay_count: str | None = Field(
        None, alias=REPLAY_COUNT, pattern=r"^[0-9]+$", description="added by replay"
    )
    replay_of: str | None = Field(
        None,
        alias=REPLAY_OF,
        pattern=r"^.+/[0-9]+/[0-9]+$",
        description="added by replay: topic/partition/offset of the original record a replayed"
        " copy stands for (then also in ldc.original.topic, .partition and .offset)",
    )
    value_omitted: str | None = Field(
        None,
        alias=VALUE_OMITTED,
        description="only when the original value was too large for the dead-letter topic:"
        " its size and why it is missing",
    )

    def to_kafka(self) -> list[tuple[str, bytes]]:
        fields = self.model_dump(by_alias=True, exclude_none=True)
        return [(name, str(value).encode()) for name, value in fields.items()]


DEAD_LETTER_STATUSES = frozenset({Status.REJECTED, Status.INVALID, Status.FAILED})


def needs_dead_letter(outcome: OutcomeMessage) -> bool:
    return outcome.status in DEAD_LETTER_STATUSES


Original = tuple[str, int, int]  # topic, partition, offset


def format_original(original: Original) -> str:
    """The `ldc.replay.of` value of an original record."""
    return "/".join(map(str, original))


def replay_of(headers: Iterable[tuple[str, bytes]]) -> Original | None:
    """The original record a replayed copy stands for (its last `ldc.replay.of` header), or
    None for a record that is not a replayed copy (or whose header does not parse)."""
    found: Original | None = None
    for name, value in headers:
        if name != REPLAY_OF:
            continue
        topic, _, rest = value.decode("utf-8", "replace").partition("/")
        partition, _, offset = rest.partition("/")
        if topic and partition.isdigit() and offset.isdigit():
            found = (topic, int(partition), int(offset))
    return found


def dead_letter_headers(record: ConsumedRecord, outcome: OutcomeMessage) -> list[tuple[str, bytes]]:
    """The original headers, unchanged and in order, followed by the contract's `ldc.*` ones.

    `ldc.original.topic`, `.partition` and `.offset` name the original record: the record
    itself, or for a replayed copy the original it stands for (`ldc.replay.of`), so that the
    dead letters of one original, however often it was replayed, are replayed as one.
    `ldc.original.timestamp` is the record's own.
    """
    assert outcome.error is not None
    topic, partition, offset = replay_of(record.headers) or (
        record.topic,
        record.partition,
        record.offset,
    )
    extra = DeadLetterHeaders(
        status=outcome.status.value,
        error_code=outcome.error.code.value,
        error_message=outcome.error.message,
        original_topic=topic,
        original_partition=str(partition),
        original_offset=str(offset),
        original_timestamp=str(record.timestamp),
        attempts=str(outcome.attempts),
        http_status=str(outcome.http_status) if outcome.http_status is not None else None,
        dead_lettered_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    return [*record.headers, *extra.to_kafka()]
