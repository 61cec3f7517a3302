"""Helpers for integration tests: topics per test, the service in-process, reading results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from consumer.contract.events import record_key
from consumer.contract.outcomes import Outcome, Status
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TANSU_SETTINGS
from consumer.service.lifecycle import Service
from consumer.service.wiring import Parts, build
from consumer.settings import Settings, settings_environment
from tests.brokers import APACHE_TEST_SETTINGS
from tests.factories import TOKEN, encode, event_dict

PROJECT, ENV = "proj", "production"
VARIATION = "6f0b5f5e-0c57-4d1a-9d3e-0000000000a1"

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def make_settings(bootstrap: str, base_url: str, *, on_tansu: bool, **overrides: Any) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    # A broker the user runs keeps the settings' defaults (its minimum session may be 6 s).
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    values: dict[str, Any] = dict(
        TANSU_SETTINGS if on_tansu else {} if external else APACHE_TEST_SETTINGS
    )
    # The tests' own timeouts (short, nested as the settings require) win over the broker's.
    values |= {
        "kafka_bootstrap_servers": bootstrap,
        "ld_api_token": TOKEN,
        "ld_base_url": base_url,
        "consumer_group_id": f"group-{suffix}",
        "consumer_input_topic": f"in-{suffix}",
        "consumer_results_topic": f"results-{suffix}",
        "consumer_dlq_topic": f"dlq-{suffix}",
        "consumer_http_port": 0,
        "consumer_batch_linger_ms": 50,
        "consumer_commit_interval_ms": 200,
        "consumer_shutdown_timeout_ms": 10_000,
        "consumer_revoke_timeout_ms": 2_000,
        "ld_request_timeout_ms": 1_500,
        "ld_unknown_outcome_settle_ms": 300,
        "kafka_commit_timeout_ms": 1_000,
        "ld_outage_window_ms": 1_000,
        "ld_retry_base_delay_ms": 20,
        "ld_retry_max_delay_ms": 200,
        "log_level": "debug",
    }
    values.update(overrides)
    return Settings(**values)


async def create_topics(settings: Settings, partitions: int = 2, *, replication: int = 1) -> None:
    await kafka.ensure_topics(
        settings,
        kafka.service_topics(settings, partitions, 2, 1),
        replication_factor=replication,
        configs=kafka.service_topic_configs(settings),
    )


async def produce(
    settings: Settings, messages: Sequence[Message], *, partition: int | None = None
) -> dict[TopicPartition, int]:
    """Publish and return the end offset (last + 1) of every partition written."""
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.consumer_input_topic, value, key=key, headers=headers, partition=partition
            )
            for key, value, headers in messages
        ]
        ends = _end_offsets(await asyncio.gather(*futures))
    finally:
        await producer.stop()
    return ends


def _end_offsets(written: Sequence[Any]) -> dict[TopicPartition, int]:
    """The end offset (last + 1) of every partition in these records' metadata."""
    ends: dict[TopicPartition, int] = {}
    for metadata in written:
        tp = TopicPartition(metadata.topic, metadata.partition)
        ends[tp] = max(ends.get(tp, 0), metadata.offset + 1)
    return ends


async def produce_steadily(
    settings: Settings, messages: Sequence[Message], per_tick: int, tick: float
) -> dict[TopicPartition, int]:
    """Publish `per_tick` messages every `tick` seconds (a steady stream, not a backlog);
    returns the end offsets like `produce`."""
    producer = kafka.make_producer(settings)
    await producer.start()
    futures = []
    try:
        for start in range(0, len(messages), per_tick):
            for key, value, headers in messages[start : start + per_tick]:
                futures.append(
                    await producer.send(
                        settings.consumer_input_topic, value, key=key, headers=headers
                    )
                )
            await asyncio.sleep(tick)
        ends = _end_offsets(await asyncio.gather(*futures))
    finally:
        await producer.stop()
    return ends


async def assert_all_succeeded(
    settings: Settings, results: Sequence[Outcome], ends: dict[TopicPartition, int]
) -> None:
    """Every outcome `succeeded`, nothing dead-lettered, the committed offsets at the end."""
    assert {o.status for o in results} == {Status.SUCCEEDED}
    assert await dead_letters(settings, 1, timeout=1) == []
    assert await committed(settings, list(ends)) == ends


def merge_ends(*found: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """End offsets of several `produce` calls together."""
    ends: dict[TopicPartition, int] = {}
    for one in found:
        for tp, end in one.items():
            ends[tp] = max(ends.get(tp, 0), end)
    return ends


async def outcomes(settings: Settings, count: int, timeout: float = 30.0) -> list[Outcome]:
    records = await kafka.read_topic(
        settings, settings.consumer_results_topic, until=lambda r: len(r) >= count, timeout=timeout
    )
    return [Outcome.model_validate_json(r.value) for r in records]


async def outcomes_covering(
    settings: Settings, ends: dict[TopicPartition, int], timeout: float = 60.0
) -> list[Outcome]:
    """Read outcomes until every offset below `ends` has at least one."""
    wanted = sum(ends.values())

    def covered(records: list[ConsumerRecord]) -> bool:
        seen = {(o["partition"], o["offset"]) for o in (_source(r) for r in records)}
        return len(seen) >= wanted

    records = await kafka.read_topic(
        settings, settings.consumer_results_topic, until=covered, timeout=timeout
    )
    return [Outcome.model_validate_json(r.value) for r in records]


def _source(record: ConsumerRecord) -> dict[str, Any]:
    source: dict[str, Any] = json.loads(record.value)["source"]
    return source


async def dead_letters(
    settings: Settings, count: int, timeout: float = 15.0
) -> list[ConsumerRecord]:
    return await kafka.read_topic(
        settings, settings.consumer_dlq_topic, until=lambda r: len(r) >= count, timeout=timeout
    )


async def committed(settings: Settings, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(**kafka.common_config(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            settings.consumer_group_id, partitions=list(tps)
        )
    finally:
        await admin.close()
    return {
        tp: meta.offset for tp, meta in offsets.items() if meta is not None and meta.offset >= 0
    }


@dataclass
class RunningService:
    service: Service
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def wait_assigned(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.service.assigned:
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("no partitions assigned")
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, wait: bool = True, parts: Parts | None = None, **options: Any
) -> AsyncIterator[RunningService]:
    """The service in-process, made of `parts` or of what `build` makes from the settings
    and `options` (e.g. `tracer_provider`)."""
    stop = asyncio.Event()
    service = Service(parts or build(settings, **options))
    handle = RunningService(service, stop, asyncio.create_task(service.run(stop)))
    try:
        if wait:
            await handle.wait_assigned()
        yield handle
    finally:
        if not handle.task.done():
            await handle.shutdown()


def by_offset(items: Sequence[Outcome]) -> dict[tuple[int, int], Outcome]:
    return {(o.source.partition, o.source.offset): o for o in items}


def seed(
    *,
    segments: dict[str, dict[str, list[str]]] | None = None,
    excluded: dict[str, dict[str, list[str]]] | None = None,
    flags: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """segments: key -> {context kind: included keys}; flags: key -> users on VARIATION."""
    return {
        "projects": [{"key": PROJECT, "environments": [ENV]}],
        "segments": [
            {
                "projectKey": PROJECT,
                "environmentKey": ENV,
                "key": key,
                "included": included,
                "excluded": (excluded or {}).get(key, {}),
            }
            for key, included in (segments or {}).items()
        ],
        "flags": [
            {
                "projectKey": PROJECT,
                "key": key,
                "variations": [
                    {"_id": VARIATION, "value": True},
                    {"_id": "6f0b5f5e-0c57-4d1a-9d3e-0000000000b2", "value": False},
                ],
                "targets": {
                    ENV: [{"variationId": VARIATION, "contextKind": "user", "values": users}]
                },
            }
            for key, users in (flags or {}).items()
        ],
    }


def events(count: int, keys: int) -> list[Message]:
    """`count` segment-target events over `keys` segments s0..s{keys-1}, each adding key k{i}."""
    found = [
        event_dict(key=f"s{i % keys}", project=PROJECT, env=ENV, values=[f"k{i}"])
        for i in range(count)
    ]
    return [(record_key(e), encode(e), []) for e in found]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The settings as the environment variables `run` reads."""
    return {
        **os.environ,
        **settings_environment(settings),
        "LD_API_TOKEN": TOKEN,
        "LOG_FORMAT": "json",
        **extra,
    }


async def start_process(
    settings: Settings, *, stderr: int | None = asyncio.subprocess.PIPE, **extra: str
) -> asyncio.subprocess.Process:
    """`ld-targeting-consumer run` as a child process, configured by the environment."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        env=environment(settings, **extra),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)
