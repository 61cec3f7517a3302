"""Publishes outcomes and dead-letter copies, and returns only once the broker has them all.

The producer runs with acks=all; an offset is marked done by the caller only after `publish`
returns. A send that fails for a passing reason is sent again (alone: the ones that went through
are not repeated) with capped backoff until it succeeds or the task is cancelled at the end of a
drain. Any other failure (a record too large for the topic, no authorization) is raised: the
service stops rather than block a partition in silence.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from consumer.dlq import VALUE_OMITTED, dead_letter_headers, needs_dead_letter
from consumer.kafka import KeyPartitioner, value_for_send
from consumer.outcomes import OutcomeMessage
from consumer.records import ConsumedRecord
from consumer.recovery import source_headers
from consumer.tracing import end_events, trace_headers

log = structlog.get_logger(__name__)


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class _Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None


class Publisher:
    def __init__(self, producer: Any, *, results_topic: str, dlq_topic: str) -> None:
        self._producer = producer
        self._results_topic = results_topic
        self._dlq_topic = dlq_topic
        self._partitioner = KeyPartitioner()

    async def publish(self, pairs: Sequence[tuple[ConsumedRecord, OutcomeMessage]]) -> None:
        """Send every dead-letter copy, then every outcome, and wait for all acknowledgements.

        Dead letters go first: an outcome on the results topic then proves its copy is there
        too, which crash recovery relies on when it skips records that have an outcome.
        """
        letters = [
            _Message(
                self._dlq_topic,
                record.key,
                record.value,
                dead_letter_headers(record, outcome) + trace_headers(record.span),
            )
            for record, outcome in pairs
            if needs_dead_letter(outcome)
        ]
        await self._send_all(letters)
        # Partitioned here, not by the producer: the default partitioner hashes every key
        # again, and a backlog repeats the same few keys.
        count = len(await self._producer.partitions_for(self._results_topic))
        partition_of = self._partitioner.partition
        topic = self._results_topic
        await self._send_all(
            [
                _Message(
                    topic,
                    record.key,
                    outcome.value,
                    source_headers(record.topic, record.partition, record.offset)
                    + trace_headers(record.span),
                    partition_of(record.key, count),
                )
                for record, outcome in pairs
            ]
        )
        end_events(pairs)

    async def _send_all(self, pending: list[_Message]) -> None:
        failures = 0
        while pending:
            futures = [await self._send(message) for message in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            retry = []
            for message, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, TOO_LARGE) and message.topic == self._dlq_topic:
                        retry.append(_without_value(message))
                        log.error("dlq.value_omitted", reason=type(result).__name__)
                        continue
                    if not _passing(result):
                        raise result
                    retry.append(message)
                    log.warning("publish.failed", topic=message.topic, error=type(result).__name__)
            pending = retry
            if pending:
                failures += 1
                await asyncio.sleep(random.uniform(0, min(10.0, 0.2 * 2**failures)))

    async def _send(self, message: _Message) -> asyncio.Future[Any]:
        future: asyncio.Future[Any]
        try:
            future = await self._producer.send(
                message.topic,
                value=value_for_send(message.key, message.value),
                key=message.key,
                headers=message.headers,
                partition=message.partition,
            )
        except KafkaError as exc:  # raised before the record was queued
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return future


TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


def _without_value(message: _Message) -> _Message:
    """A dead-letter copy the topic cannot take: keep key and headers, say why the value is gone.

    Better than a poison pill that stops the service on every restart; the original stays on
    the input topic until retention, at the offset the headers name.
    """
    size = len(message.value or b"")
    note = f"{size} bytes: too large for the dead-letter topic".encode()
    return _Message(
        message.topic,
        message.key,
        None,
        [*message.headers, (VALUE_OMITTED, note)],
        message.partition,
    )


def _passing(error: BaseException) -> bool:
    # aiokafka marks a delivery timeout as not retriable; for us it is a broker away for a while.
    return isinstance(error, KafkaError) and (
        error.retriable or isinstance(error, KafkaTimeoutError)
    )
