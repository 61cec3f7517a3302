"""The dead-letter copy: the original key, value and headers, byte for byte, plus `ldc.*`."""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.events import DeadLetterHeaders, Status
from consumer.outcomes import OutcomeMessage
from consumer.records import ConsumedRecord

DEAD_LETTER_STATUSES = frozenset({Status.REJECTED, Status.INVALID, Status.FAILED})


def needs_dead_letter(outcome: OutcomeMessage) -> bool:
    return outcome.status in DEAD_LETTER_STATUSES


def dead_letter_headers(record: ConsumedRecord, outcome: OutcomeMessage) -> list[tuple[str, bytes]]:
    """The original headers, unchanged and in order, followed by the contract's `ldc.*` ones."""
    assert outcome.error is not None
    extra = DeadLetterHeaders(
        status=outcome.status.value,
        error_code=outcome.error.code.value,
        error_message=outcome.error.message,
        original_topic=record.topic,
        original_partition=str(record.partition),
        original_offset=str(record.offset),
        original_timestamp=str(record.timestamp),
        attempts=str(outcome.attempts),
        http_status=str(outcome.http_status) if outcome.http_status is not None else None,
        dead_lettered_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    return [*record.headers, *extra.to_kafka()]
