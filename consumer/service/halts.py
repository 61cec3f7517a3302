"""Partitions this member stopped reading, and why. Pure, no I/O.

Some records cannot be handled by this member however often it tries, and skipping them would
drop an event in silence: a fetch that cannot be decoded (a corrupt batch, a compression codec
the client library lacks), an offset out of range with CONSUMER_AUTO_OFFSET_RESET=none, a
dead-letter copy larger than the dead-letter topic takes. Such a partition is *halted*:

1. it is paused at once and nothing more of it is taken (the other partitions go on);
2. what it took before the halt is finished as usual; the commit position stops at the first
   record not done, so nothing past the halt is committed;
3. `/readyz` and one error line name the partition, the offset and the reason; the
   `ldc_partitions_halted` gauge counts them;
4. the halt lasts as long as this member holds the partition: a restart (or the next owner)
   reads from the committed offset again, so once the cause is fixed it goes on by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.errors import (
    CorruptRecordException,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedCodecError,
)
from aiokafka.structs import TopicPartition


@dataclass(frozen=True, slots=True)
class Halt:
    tp: TopicPartition
    offset: int | None  # the first offset not handled (None: not known)
    reason: str

    def describe(self) -> str:
        at = f" at offset {self.offset}" if self.offset is not None else ""
        return f"partition {self.tp.topic}[{self.tp.partition}] stopped{at}: {self.reason}"


class Halts:
    def __init__(self) -> None:
        self._by_tp: dict[TopicPartition, Halt] = {}

    def add(self, halt: Halt) -> bool:
        """Record a halt; False when the partition was halted already (the first reason
        stays)."""
        if halt.tp in self._by_tp:
            return False
        self._by_tp[halt.tp] = halt
        return True

    def clear(self, tps: set[TopicPartition] | frozenset[TopicPartition]) -> None:
        """The partitions are no longer this member's (revoked): their halts end with them."""
        for tp in tps:
            self._by_tp.pop(tp, None)

    def partitions(self) -> set[TopicPartition]:
        return set(self._by_tp)

    def describe(self) -> list[str]:
        return [self._by_tp[tp].describe() for tp in sorted(self._by_tp)]

    def __len__(self) -> int:
        return len(self._by_tp)

    def __contains__(self, tp: object) -> bool:
        return tp in self._by_tp


CORRUPT_FETCH_TRIES = 3  # fetches of a batch that fails its CRC check before its partition halts


def out_of_range_offset(exc: Exception) -> int | None:
    """The offset an OffsetOutOfRangeError names, if any."""
    if isinstance(exc, OffsetOutOfRangeError) and exc.args and isinstance(exc.args[0], dict):
        for offset in exc.args[0].values():
            return int(offset)
    return None


def fetch_error_reason(exc: Exception, reset_policy: str) -> str:
    """One line for a partition halted by a fetch error: what the client library could not do, and
    what would fix it. The broker is not to blame for any of these."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, UnsupportedCodecError):
        return (
            f"aiokafka (the Kafka client library) cannot decompress its records ({detail});"
            " the codecs come with this package (cramjam): reinstall it"
        )
    if isinstance(exc, CorruptRecordException):
        return (
            f"aiokafka (the Kafka client library) found a corrupt record batch ({detail}),"
            f" {CORRUPT_FETCH_TRIES} times in a row"
        )
    if isinstance(exc, RecordTooLargeError):
        return f"aiokafka (the Kafka client library) cannot fetch a record this large ({detail})"
    if isinstance(exc, OffsetOutOfRangeError):
        return (
            "the committed offset is out of range (records deleted by retention before they"
            " were processed?) and CONSUMER_AUTO_OFFSET_RESET="
            f"{reset_policy}: set it to earliest or latest to go on"
        )
    if isinstance(exc, NoOffsetForPartitionError):
        return (
            "the group has no committed offset for it and CONSUMER_AUTO_OFFSET_RESET=none:"
            " set it to earliest or latest, or commit an offset for the group"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        return f"not authorized to read the topic ({detail})"
    return f"aiokafka (the Kafka client library) could not fetch it: {detail}"
