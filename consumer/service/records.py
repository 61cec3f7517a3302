"""A consumed record as the pipeline carries it: the original bytes plus the lease it was
taken under (leases.py), which its outcome marks done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.structs import TopicPartition

from consumer.contract.events import TargetingEvent
from consumer.launchdarkly.routing import Route
from consumer.service.leases import Lease


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int
    lease: Lease
    # Its processing's OpenTelemetry span (tracing.py), None unless tracing is on.
    span: Any = None

    @classmethod
    def from_kafka(cls, record: Any, lease: Lease) -> ConsumedRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            timestamp=record.timestamp,
            lease=lease,
        )

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def done(self) -> None:
        """Its outcome is acknowledged (ignored once its lease has ended)."""
        self.lease.done(self.offset)


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class PendingEvent:
    """A valid event waiting for (or in) a request."""

    record: ConsumedRecord
    event: TargetingEvent
    route: Route
    target_operations: int
