"""One outcome per instruction, from one response or one error. Pure, no I/O.

The single assumption about `errors[].instructionIndex` (it counts from 0, the position in
`instructions`) lives in `failed_positions`; see the README's assumptions section.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from consumer.errors import ApiError, ErrorCode
from consumer.events import (
    AddExpireUserTargetDate,
    BatchRef,
    FlagAddExpiringTarget,
    FlagUpdateExpiringTarget,
    HttpRef,
    Instruction,
    Invalid,
    Outcome,
    OutcomeError,
    OutcomeResource,
    SegmentAddExpiringTarget,
    SegmentUpdateExpiringTarget,
    Status,
    TargetingEvent,
    UpdateExpireUserTargetDate,
)
from consumer.records import ConsumedRecord, PendingEvent
from consumer.routing import METHOD

log = structlog.get_logger(__name__)

_MAX_MESSAGE = 1_000


@dataclass(frozen=True, slots=True)
class InstructionResult:
    """What became of one instruction in the last request it went in."""

    status: Status
    batch: BatchRef
    http_status: int | None
    attempts: int
    error: OutcomeError | None = None
    item: dict[str, Any] | None = None


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


def _item_fields(instruction: Instruction) -> dict[str, Any] | None:
    """Fields naming the target an add or update instruction's response item describes."""
    match instruction:
        case AddExpireUserTargetDate() | UpdateExpireUserTargetDate():
            return {"userKey": instruction.userKey, "targetType": instruction.targetType}
        case SegmentAddExpiringTarget() | SegmentUpdateExpiringTarget():
            return {
                "contextKey": instruction.contextKey,
                "contextKind": instruction.contextKind,
                "targetType": instruction.targetType,
            }
        case FlagAddExpiringTarget() | FlagUpdateExpiringTarget():
            return {
                "contextKey": instruction.contextKey,
                "contextKind": instruction.contextKind,
                "variationId": instruction.variationId,
            }
    return None


def match_item(event: TargetingEvent, items: list[Any]) -> dict[str, Any] | None:
    """The response item describing this instruction's target, when exactly one does.

    Matched by content, not position: the API lists items for the applied instructions only,
    and removals have none.
    """
    wanted = _item_fields(event.instruction)
    if wanted is None:
        return None
    found = [
        item
        for item in items
        if isinstance(item, dict) and all(item.get(k) == v for k, v in wanted.items())
    ]
    return found[0] if len(found) == 1 else None


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
    response_items = response_items if isinstance(response_items, list) else []
    results = []
    for index, pending in enumerate(items):
        ref = BatchRef(id=batch_id, size=size, index=index)
        if index in failed:
            error = OutcomeError(code=ErrorCode.INSTRUCTION_ERROR, message=_clip(failed[index]))
            results.append(
                InstructionResult(Status.REJECTED, ref, http_status, attempts[index], error)
            )
        else:
            item = match_item(pending.event, response_items)
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
    outcome_error = OutcomeError(code=error.code, message=_clip(error.message))
    return [
        InstructionResult(
            status,
            BatchRef(id=batch_id, size=size, index=i),
            error.status,
            attempts[i],
            outcome_error,
        )
        for i in range(size)
    ]


def outcome_for(pending: PendingEvent, result: InstructionResult) -> Outcome:
    event = pending.event
    return Outcome(
        eventId=event.eventId,
        status=result.status,
        source=pending.record.source,
        resource=resource_of(event),
        instructionKind=event.instruction.kind,
        batch=result.batch,
        http=HttpRef(
            method=METHOD,
            path=pending.route.path,
            status=result.http_status,
            attempts=result.attempts,
        ),
        error=result.error,
        item=result.item,
        completedAt=now(),
    )


def invalid_outcome(record: ConsumedRecord, invalid: Invalid) -> Outcome:
    return Outcome(
        eventId=invalid.event_id,
        status=Status.INVALID,
        source=record.source,
        resource=None,
        instructionKind=None,
        batch=None,
        http=None,
        error=OutcomeError(code=invalid.code, message=_clip(invalid.message)),
        item=None,
        completedAt=now(),
    )


def resource_of(event: TargetingEvent) -> OutcomeResource:
    return OutcomeResource(
        projectKey=event.projectKey,
        environmentKey=event.environmentKey,
        kind=event.resource.kind,
        key=event.resource.key,
    )


def now() -> datetime:
    return datetime.now(UTC)


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"
