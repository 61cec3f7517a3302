"""An upstream producer that is not ours: confluent-kafka (librdkafka), as Java-like producers
behave (compression, their own partitioners, idempotence, transactions).

librdkafka's API is synchronous; tests call these from a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

from tests.integration.harness import Message

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# librdkafka's default (consistent_random: CRC32 of the key) and the Java client's (murmur2).
PARTITIONERS = ("consistent_random", "murmur2_random")


def producer(bootstrap: str, **config: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            # One batch per flush, so a codec's batch holds many records.
            "batch.num.messages": 1000,
            **config,
        }
    )


def send(
    bootstrap: str,
    topic: str,
    messages: Sequence[Message],
    *,
    partition: int | None = None,
    **config: Any,
) -> list[tuple[int, int]]:
    """Produce and flush; returns (partition, offset) of each record, in order. Raises on any
    delivery error."""
    made = producer(bootstrap, **config)
    delivered: list[tuple[int, int] | None] = [None] * len(messages)
    errors: list[str] = []

    def report(index: int) -> Any:
        def callback(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))
            else:
                delivered[index] = (message.partition(), message.offset())

        return callback

    for index, (key, value, headers) in enumerate(messages):
        extra = {"partition": partition} if partition is not None else {}
        made.produce(topic, value, key, headers=headers, on_delivery=report(index), **extra)
        made.poll(0)
    remaining = made.flush(30)
    if errors or remaining:
        raise KafkaException(f"delivery failed: {errors[:3]}, {remaining} not delivered")
    return [found for found in delivered if found is not None]


def transaction(
    bootstrap: str,
    topic: str,
    batches: Sequence[tuple[Sequence[Message], bool]],
    *,
    partition: int | None = None,
    compression: str = "lz4",
) -> None:
    """One transactional producer; each (messages, commit) is one transaction, committed or
    aborted."""
    made = producer(
        bootstrap,
        **{"transactional.id": f"txn-{uuid.uuid4().hex[:8]}", "compression.type": compression},
    )
    made.init_transactions(30)
    for messages, commit in batches:
        made.begin_transaction()
        for key, value, headers in messages:
            extra = {"partition": partition} if partition is not None else {}
            made.produce(topic, value, key, headers=headers, **extra)
        made.flush(30)
        if commit:
            made.commit_transaction(30)
        else:
            made.abort_transaction(30)
    made.flush(30)
