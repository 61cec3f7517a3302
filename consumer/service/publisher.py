"""Publishes outcomes and dead-letter copies, and returns only once the broker has them all.

The producer runs with acks=all; an offset is marked done by the caller only after `publish`
returns, and only for the records it did not refuse. A send that fails for a passing reason is
sent again (alone: the ones that went through are not repeated) with capped backoff until it
succeeds or the task is cancelled at the end of a drain.

A record too large for its topic (the producer's KAFKA_PRODUCER_MAX_REQUEST_SIZE or the topic's
`max.message.bytes`):

- an outcome is sent again shrunk (the API's item dropped, the error message cut), with a
  `ldc.outcome.shrunk` header saying so: nothing an operator needs is in the parts dropped;
- a dead-letter copy is never changed (it is byte-identical to its input, so that replay gives
  the event back as it was): its record is *refused*, gets no outcome, and is not marked done,
  so nothing past it is committed; the caller halts its partition (halts.py).

Any other failure (no authorization) is raised: the service stops rather than block a
partition in silence.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownProducerId,
)

from consumer.contract.dead_letters import dead_letter_headers, needs_dead_letter
from consumer.contract.outcomes import OUTCOME_SHRUNK, OutcomeMessage, shrink, source_headers
from consumer.kafka.clients import KeyPartitioner, value_for_send
from consumer.service.records import ConsumedRecord
from consumer.service.tracing import end_events, trace_headers

log = structlog.get_logger(__name__)


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class _Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None


# The idempotent producer's state broken on the broker's side (aiokafka cannot recover it by
# itself, aio-libs/aiokafka#1017: a leader change, a refused batch): a new producer is made.
PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    UnknownProducerId,
    InvalidProducerIdMapping,
)
# What a record adds to its key, value and headers in a batch of its own (record and batch
# headers, with room to spare): the estimate a topic's limit is compared with.
RECORD_OVERHEAD = 256


class Publisher:
    def __init__(
        self,
        producer: Any,
        *,
        results_topic: str,
        dlq_topic: str,
        renew: Callable[[], Awaitable[Any]] | None = None,
        max_request_size: int | None = None,
    ) -> None:
        self.producer = producer
        self._max_request_size = max_request_size  # KAFKA_PRODUCER_MAX_REQUEST_SIZE
        self._results_topic = results_topic
        self._dlq_topic = dlq_topic
        self._partitioner = KeyPartitioner()
        self._renew = renew
        # Topic -> the largest record it takes (`max.message.bytes`), where known: a record
        # larger is refused here, never sent (a refused batch breaks the producer's sequence).
        self.limits: dict[str, int] = {}

    async def publish(
        self, pairs: Sequence[tuple[ConsumedRecord, OutcomeMessage]]
    ) -> list[Refused]:
        """Send every dead-letter copy, then every outcome, and wait for all acknowledgements;
        returns the records refused (a dead-letter copy the topic cannot take), which got no
        outcome.

        Dead letters go first: an outcome on the results topic then proves its copy is there
        too, which crash recovery relies on when it skips records that have an outcome.
        """
        letters = {
            id(record): _Message(
                self._dlq_topic,
                record.key,
                record.value,
                dead_letter_headers(record, outcome) + trace_headers(record.span),
            )
            for record, outcome in pairs
            if needs_dead_letter(outcome)
        }
        too_large = await self._send_all(list(letters.values()))
        refused = [
            Refused(
                record,
                _refusal(
                    letters[id(record)], too_large[id(letters[id(record)])], "its dead-letter copy"
                ),
            )
            for record, _ in pairs
            if id(record) in letters and id(letters[id(record)]) in too_large
        ]
        unrefused = {id(r.record) for r in refused}
        # Partitioned here, not by the producer: the default partitioner hashes every key
        # again, and a backlog repeats the same few keys.
        count = len(await self.producer.partitions_for(self._results_topic))
        partition_of = self._partitioner.partition
        topic = self._results_topic
        results = {
            id(record): _Message(
                topic,
                record.key,
                outcome.value,
                source_headers(record.topic, record.partition, record.offset)
                + trace_headers(record.span),
                partition_of(record.key, count),
            )
            for record, outcome in pairs
            if id(record) not in unrefused
        }
        too_large = await self._send_all(list(results.values()))
        if too_large:
            by_message = {id(m): key for key, m in results.items()}
            again = {
                by_message[mid]: _shrunk(results[by_message[mid]], error)
                for mid, error in too_large.items()
            }
            still = await self._send_all(list(again.values()))
            for record, _ in pairs:
                message = again.get(id(record))
                if message is not None and id(message) in still:
                    refused.append(
                        Refused(
                            record, _refusal(message, still[id(message)], "its outcome, shrunk,")
                        )
                    )
        end_events([(record, outcome) for record, outcome in pairs if not _in(record, refused)])
        return refused

    async def _send_all(self, pending: list[_Message]) -> dict[int, BaseException]:
        """Send until each is acknowledged or refused as too large; returns the refused ones
        (by `id` of the message) with their error."""
        messages = list(pending)
        failures = 0
        too_large: dict[int, BaseException] = {}
        while pending:
            futures = [await self._send(message) for message in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            retry = []
            broken = False
            for message, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, TOO_LARGE):
                        too_large[id(message)] = result
                        continue
                    if isinstance(result, PRODUCER_STATE_ERRORS) and self._renew is not None:
                        broken = True
                    elif not _passing(result):
                        raise result
                    retry.append(message)
                    log.warning("publish.failed", topic=message.topic, error=type(result).__name__)
            if broken:
                await self._renewed()
            pending = retry
            if pending:
                failures += 1
                await asyncio.sleep(random.uniform(0, min(10.0, 0.2 * 2**failures)))
        # The broker refuses a producer batch as a whole: a record that fits may have been
        # refused only for sharing a batch with one that does not. Each is sent again alone.
        for key in list(too_large):
            message = next(m for m in messages if id(m) == key)
            if self._too_large_here(message):
                continue
            for _ in range(3):  # a renewed producer tries it again
                try:
                    await self._send_alone(message)
                except TOO_LARGE as alone:
                    too_large[key] = alone
                    break
                except PRODUCER_STATE_ERRORS:
                    if self._renew is None:
                        raise
                    await self._renewed()
                else:
                    del too_large[key]
                    break
        return too_large

    async def _send_alone(self, message: _Message) -> None:
        """One record in a producer batch of its own, acknowledged (raises like a send)."""
        producer = self.producer
        partitions = sorted(await producer.partitions_for(message.topic))
        partition = message.partition
        if partition is None:
            partition = self._partitioner.partition(message.key, len(partitions))
        if partition is None:
            partition = random.choice(partitions)
        batch = producer.create_batch()
        appended = batch.append(
            key=message.key,
            value=value_for_send(message.key, message.value),
            timestamp=None,
            headers=message.headers,
        )
        if appended is None:
            raise RecordTooLargeError("the record does not fit a producer batch")
        batch.close()
        future = await producer.send_batch(batch, message.topic, partition=partition)
        await future

    async def _renewed(self) -> None:
        """Replace a producer whose idempotence state the broker refuses (a new producer id);
        what it had not delivered is sent again by the caller (at least once)."""
        assert self._renew is not None
        log.warning("producer.renewed", message="the broker refused the producer's sequence")
        self.producer = await self._renew()

    def _too_large_here(self, message: _Message) -> bool:
        """Larger than its topic or the producer takes: refused before it is sent."""
        limits = [self.limits.get(message.topic), self._max_request_size]
        found = [limit for limit in limits if limit is not None]
        if not found:
            return False
        size = len(message.key or b"") + len(message.value or b"") + RECORD_OVERHEAD
        size += sum(len(name) + len(value or b"") for name, value in message.headers)
        return size > min(found)

    async def _send(self, message: _Message) -> asyncio.Future[Any]:
        future: asyncio.Future[Any]
        if self._too_large_here(message):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(
                RecordTooLargeError(f"larger than {message.topic}'s max.message.bytes")
            )
            return future
        try:
            future = await self.producer.send(
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


@dataclass(frozen=True, slots=True)
class Refused:
    """A record whose dead-letter copy (or outcome, however shrunk) the broker refused as too
    large: it has no outcome and is not done; its partition halts."""

    record: ConsumedRecord
    reason: str


def _in(record: ConsumedRecord, refused: list[Refused]) -> bool:
    return any(r.record is record for r in refused)


def _refusal(message: _Message, error: BaseException, what: str) -> str:
    size = len(message.value or b"") + sum(len(k) + len(v or b"") for k, v in message.headers)
    return (
        f"{what} ({size} bytes with headers) is larger than the topic {message.topic} or the"
        f" producer takes ({type(error).__name__}): raise the topic's max.message.bytes and"
        " KAFKA_PRODUCER_MAX_REQUEST_SIZE (`check` compares them), then restart"
    )


def _shrunk(message: _Message, error: BaseException) -> _Message:
    """The outcome without the API's item and with its error message cut (outcomes.shrink),
    saying so in a header."""
    value = shrink(message.value or b"")
    note = f"{len(message.value or b'')} bytes did not fit ({type(error).__name__})"
    log.warning(
        "outcome.shrunk", topic=message.topic, size=len(message.value or b""), to=len(value)
    )
    return _Message(
        message.topic,
        message.key,
        value,
        [*message.headers, (OUTCOME_SHRUNK, note.encode())],
        message.partition,
    )


def _passing(error: BaseException) -> bool:
    # aiokafka marks a delivery timeout as not retriable; for us it is a broker away for a while.
    return isinstance(error, KafkaError) and (
        error.retriable or isinstance(error, KafkaTimeoutError)
    )
