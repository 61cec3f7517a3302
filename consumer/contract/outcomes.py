"""The outcome, the results topic's contract: its model (`Outcome`, `Status`) and one outcome
per instruction, from one response or one error. Pure, no I/O.

The single assumption about `errors[].instructionIndex` (it counts from 0, the position in
`instructions`) lives in `failed_positions`; see docs/assumptions.md.

Outcomes are written straight to bytes (`encode`): they are the hot path's output, one per
event, and building a pydantic model for each costs more than everything else an event
needs. `Outcome` is the schema they follow; the tests read every one back with it and
compare the bytes with pydantic's.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
import structlog
from aiokafka import ConsumerRecord
from pydantic import BaseModel, ConfigDict, Field, model_validator

from consumer.contract.codes import ErrorCode
from consumer.contract.events import (
    AddExpireUserTargetDate,
    FlagAddExpiringTarget,
    FlagUpdateExpiringTarget,
    Instruction,
    Invalid,
    SegmentAddExpiringTarget,
    SegmentUpdateExpiringTarget,
    TargetingEvent,
    UpdateExpireUserTargetDate,
)
from consumer.launchdarkly.errors import ApiError
from consumer.launchdarkly.routing import METHOD
from consumer.service.records import ConsumedRecord, PendingEvent

log = structlog.get_logger(__name__)

_MAX_MESSAGE = 1_000


# ---------------------------------------------------------------------------------------------
# The outcome's model (the results topic's contract; `encode` below writes the same bytes)


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    INVALID = "invalid"
    FAILED = "failed"


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    topic: str
    partition: int
    offset: int


class OutcomeResource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    projectKey: str
    environmentKey: str
    kind: Literal["segment", "flag"]
    key: str


class BatchRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    size: int = Field(ge=1)
    index: int = Field(ge=0, description="position of the instruction in `instructions`")


class HttpRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str
    path: str
    status: int | None = Field(description="the last response's status; null when none came")
    attempts: int = Field(ge=0)


class OutcomeError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    code: ErrorCode
    message: str


class Outcome(BaseModel):
    """Exactly one per input record processed; keyed like the input record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    eventId: str | None = Field(description="null only when the record could not be parsed")
    status: Status
    source: Source
    resource: OutcomeResource | None
    instructionKind: str | None
    batch: BatchRef | None
    http: HttpRef | None
    error: OutcomeError | None = Field(description="null exactly when status is succeeded")
    item: dict[str, Any] | None = Field(
        description="the API's response item for this instruction, when it returned one"
    )
    completedAt: datetime

    @model_validator(mode="after")
    def _error_iff_not_succeeded(self) -> Outcome:
        if (self.error is None) != (self.status is Status.SUCCEEDED):
            raise ValueError("error must be null exactly when status is succeeded")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class BatchPosition:
    id: str
    size: int
    index: int


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class Failure:
    """The outcome's `error`: a code from the contract's list and a one-line message."""

    code: ErrorCode
    message: str


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class InstructionResult:
    """What became of one instruction in the last request it went in."""

    status: Status
    batch: BatchPosition
    http_status: int | None
    attempts: int
    error: Failure | None = None
    item: dict[str, Any] | None = None
    # The request it went in, when not its route's PATCH (a big segment's POST).
    method: str | None = None
    path: str | None = None


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class OutcomeMessage:
    """An outcome ready to publish: the serialised record value plus what the publisher,
    the dead-letter copy and the metrics need to know about it."""

    status: Status
    error: Failure | None
    http_status: int | None
    attempts: int
    value: bytes


def failed_positions(body: dict[str, Any], size: int) -> dict[int, str]:
    """Positions (0-based) of the instructions a 200 answer lists in `errors`.

    The seed pages show `"instructionIndex": 1` for a one-instruction request, which is
    placeholder data; the index is read as the position in `instructions`, counting from 0.
    Entries that name no position of this request are logged and otherwise ignored.
    """
    positions: dict[int, str] = {}
    for entry in body.get("errors") or []:
        index = entry.get("instructionIndex") if isinstance(entry, dict) else None
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size:
            message = entry.get("message")
            positions.setdefault(index, str(message) if message else "instruction failed")
        else:
            log.warning("ld.error_entry_unplaced", entry=str(entry)[:200], size=size)
    return positions


# Per instruction model, the fields naming the target that its response item describes.
_ITEM_FIELDS: dict[type, tuple[str, ...]] = {
    AddExpireUserTargetDate: ("userKey", "targetType"),
    UpdateExpireUserTargetDate: ("userKey", "targetType"),
    SegmentAddExpiringTarget: ("contextKey", "contextKind", "targetType"),
    SegmentUpdateExpiringTarget: ("contextKey", "contextKind", "targetType"),
    FlagAddExpiringTarget: ("contextKey", "contextKind", "variationId"),
    FlagUpdateExpiringTarget: ("contextKey", "contextKind", "variationId"),
}


def _item_fields(instruction: Instruction) -> dict[str, Any] | None:
    """Fields naming the target an add or update instruction's response item describes."""
    names = _ITEM_FIELDS.get(type(instruction))
    if names is None:
        return None
    return {name: getattr(instruction, name) for name in names}


_SIGNATURES = (
    ("userKey", "targetType"),
    ("contextKey", "contextKind", "targetType"),
    ("contextKey", "contextKind", "variationId"),
)


class ItemIndex:
    """A response's items by the fields that name their target, built once per response."""

    def __init__(self, items: list[Any]) -> None:
        self._items: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            for signature in _SIGNATURES:
                key = (signature, *(item.get(name) for name in signature))
                try:
                    self._items.setdefault(key, []).append(item)
                except TypeError:  # an unhashable value cannot equal a string from an event
                    continue

    def match(self, event: TargetingEvent) -> dict[str, Any] | None:
        """The item describing this instruction's target, when exactly one does.

        Matched by content, not position: the API lists items for the applied instructions
        only, and removals have none.
        """
        wanted = _item_fields(event.instruction)
        if wanted is None:
            return None
        found = self._items.get((tuple(wanted), *wanted.values()), [])
        return found[0] if len(found) == 1 else None


def match_item(event: TargetingEvent, items: list[Any]) -> dict[str, Any] | None:
    return ItemIndex(items).match(event)


def results_from_body(
    batch_id: str,
    items: list[PendingEvent],
    body: dict[str, Any],
    *,
    http_status: int,
    attempts: list[int],
    per_instruction_errors: bool,
) -> list[InstructionResult]:
    """Per-instruction results of a 2xx answer."""
    size = len(items)
    failed = failed_positions(body, size) if per_instruction_errors else {}
    response_items = body.get("items") if per_instruction_errors else None
    index_of_items = ItemIndex(response_items if isinstance(response_items, list) else [])
    results = []
    for index, pending in enumerate(items):
        ref = BatchPosition(batch_id, size, index)
        if index in failed:
            error = Failure(ErrorCode.INSTRUCTION_ERROR, _clip(failed[index]))
            results.append(
                InstructionResult(Status.REJECTED, ref, http_status, attempts[index], error)
            )
        else:
            item = index_of_items.match(pending.event)
            results.append(
                InstructionResult(Status.SUCCEEDED, ref, http_status, attempts[index], item=item)
            )
    return results


def results_from_error(
    batch_id: str,
    items: list[PendingEvent],
    error: ApiError,
    *,
    status: Status,
    attempts: list[int],
) -> list[InstructionResult]:
    """The same error pinned on every instruction of a request."""
    size = len(items)
    outcome_error = Failure(error.code, _clip(error.message))
    return [
        InstructionResult(
            status,
            BatchPosition(batch_id, size, i),
            error.status,
            attempts[i],
            outcome_error,
        )
        for i in range(size)
    ]


def outcome_for(
    pending: PendingEvent, result: InstructionResult, completed_at: str
) -> OutcomeMessage:
    event = pending.event
    record = pending.record
    batch = result.batch
    error = result.error
    value = encode(
        {
            "eventId": event.eventId,
            "status": result.status.value,
            "source": _source(record),
            "resource": {
                "projectKey": event.projectKey,
                "environmentKey": event.environmentKey,
                "kind": event.resource.kind,
                "key": event.resource.key,
            },
            "instructionKind": event.instruction.kind,
            "batch": {"id": batch.id, "size": batch.size, "index": batch.index},
            "http": {
                "method": result.method or METHOD,
                "path": result.path or pending.route.path,
                "status": result.http_status,
                "attempts": result.attempts,
            },
            "error": None
            if error is None
            else {"code": error.code.value, "message": error.message},
            "item": result.item,
            "completedAt": completed_at,
        }
    )
    return OutcomeMessage(result.status, error, result.http_status, result.attempts, value)


def invalid_outcome(
    record: ConsumedRecord, invalid: Invalid, completed_at: str | None = None
) -> OutcomeMessage:
    error = Failure(invalid.code, _clip(invalid.message))
    value = encode(
        {
            "eventId": invalid.event_id,
            "status": Status.INVALID.value,
            "source": _source(record),
            "resource": None,
            "instructionKind": None,
            "batch": None,
            "http": None,
            "error": {"code": error.code.value, "message": error.message},
            "item": None,
            "completedAt": completed_at or completed_now(),
        }
    )
    return OutcomeMessage(Status.INVALID, error, None, 0, value)


def _source(record: ConsumedRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


# What a shrunk outcome's error message keeps (publisher.py: an outcome too large to publish).
SHRUNK_MESSAGE = 200


def shrink(value: bytes) -> bytes:
    """An outcome's value without the API's `item` and with its error message cut to
    SHRUNK_MESSAGE characters: what is left (status, ids, source, code) is bounded by the
    event's own limits."""
    outcome = json.loads(value)
    outcome["item"] = None
    error = outcome.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
        if len(message) > SHRUNK_MESSAGE:
            error["message"] = message[: SHRUNK_MESSAGE - 1] + "…"
    return encode(outcome)


def encode(outcome: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(outcome)
    except TypeError:  # an integer past 64 bits in an API item: exact, just slower
        return json.dumps(outcome, separators=(",", ":"), ensure_ascii=False).encode()


def completed_now() -> str:
    """The time for `completedAt`, as pydantic writes a UTC datetime (RFC 3339, `Z`)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


# -- the outcome record's headers: written and read here ----------------------------------------

# The input record an outcome record is about (crash recovery and `produce --wait` read them
# without parsing the value).
SOURCE_TOPIC = "ldc.source.topic"
SOURCE_PARTITION = "ldc.source.partition"
SOURCE_OFFSET = "ldc.source.offset"
# On an outcome that was too large for the results topic and was shrunk to fit.
OUTCOME_SHRUNK = "ldc.outcome.shrunk"


@functools.lru_cache(maxsize=64)
def _encoded(topic: str) -> bytes:
    return topic.encode()


def source_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        (SOURCE_TOPIC, _encoded(topic)),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
    ]


def source_of(record: ConsumerRecord) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the input record an outcome record is about."""
    headers = dict(record.headers or ())
    try:
        if SOURCE_OFFSET in headers:
            return (
                headers[SOURCE_TOPIC].decode(),
                int(headers[SOURCE_PARTITION]),
                int(headers[SOURCE_OFFSET]),
            )
        source = json.loads(record.value)["source"]
        return str(source["topic"]), int(source["partition"]), int(source["offset"])
    except (KeyError, ValueError, TypeError):
        return None
