"""A consumed record as the pipeline carries it: the original bytes plus its offset ticket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.structs import TopicPartition

from consumer.events import Source, TargetingEvent
from consumer.offsets import Ticket
from consumer.routing import Route


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int
    ticket: Ticket

    @classmethod
    def from_kafka(cls, record: Any, ticket: Ticket) -> ConsumedRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            timestamp=record.timestamp,
            ticket=ticket,
        )

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def source(self) -> Source:
        return Source(topic=self.topic, partition=self.partition, offset=self.offset)


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class PendingEvent:
    """A valid event waiting for (or in) a request."""

    record: ConsumedRecord
    event: TargetingEvent
    route: Route
    target_operations: int
