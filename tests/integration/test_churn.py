"""Ownership under churn: a steady stream while members join, leave and are SIGKILLed, with
slow requests and 5xx so that requests and retries are pending when partitions are revoked.

What must hold (leases.py): every record gets an outcome, the committed offsets reach the end,
and LaunchDarkly's final state equals applying every target's events in order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator

from aiokafka.structs import TopicPartition

from consumer import kafka
from consumer.fake_api import RunningSimulator, chains
from consumer.fake_api.admin_client import SimulatorAdmin
from consumer.outcomes import Status
from consumer.settings import Settings
from tests.factories import encode
from tests.integration.harness import (
    committed,
    create_topics,
    dead_letters,
    make_settings,
    merge_ends,
    outcomes_covering,
    produce,
    running,
    start_process,
)

RATE = 150  # events per second
CHUNK = 15
# Requests take up to LATENCY_MS, so some are on the wire at every revoke, and retries of
# 5xx are waiting; the revoke outlasts the longest request, as the settings require.
LATENCY_MS = (20, 1_000)
CHURN_TIMEOUTS = {"ld_request_timeout_ms": 1_500, "consumer_revoke_timeout_ms": 2_000}


async def steady_stream(
    settings: Settings, found: list[chains.Target], first: int, last: int
) -> tuple[dict[TopicPartition, int], dict[chains.Target, int]]:
    """Produce the chains' steps first..last at RATE events/s, each chunk acknowledged before
    the next is sent (so each target's events keep their order). Returns the end offsets and
    every target's last step."""
    producer = kafka.make_producer(settings)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    last_step: dict[chains.Target, int] = {}
    pending: list[tuple[chains.Target, int, bytes, bytes]] = []
    try:
        for target, step, key, event in chains.rounds(found, first, last):
            pending.append((target, step, key, encode(event)))
            if len(pending) < CHUNK:
                continue
            await _send(producer, settings, pending, ends, last_step)
            pending = []
            await asyncio.sleep(CHUNK / RATE)
        await _send(producer, settings, pending, ends, last_step)
    finally:
        await producer.stop()
    return ends, last_step


async def _send(
    producer: object,
    settings: Settings,
    chunk: list[tuple[chains.Target, int, bytes, bytes]],
    ends: dict[TopicPartition, int],
    last_step: dict[chains.Target, int],
) -> None:
    futures = [
        await producer.send(settings.consumer_input_topic, value, key=key)  # type: ignore[attr-defined]
        for _, _, key, value in chunk
    ]
    for metadata in await asyncio.gather(*futures):
        tp = TopicPartition(metadata.topic, metadata.partition)
        ends[tp] = max(ends.get(tp, 0), metadata.offset + 1)
    for target, step, _, _ in chunk:
        last_step[target] = step


@contextlib.asynccontextmanager
async def member(settings: Settings) -> AsyncIterator[None]:
    async with running(settings, wait=False):
        yield


async def churn(settings: Settings) -> list[str]:
    """Members come and go while the stream runs: joins, clean leaves, a SIGKILL, a SIGTERM."""
    log: list[str] = []
    await asyncio.sleep(2)
    async with member(settings):
        log.append("in-process member joined")
        await asyncio.sleep(3)
    log.append("in-process member left")
    first = await start_process(settings, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(4)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    log.append("process member killed (SIGKILL)")
    second = await start_process(settings, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(3)
    async with member(settings):
        log.append("in-process member joined")
        await asyncio.sleep(3)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
        log.append("process member stopped (SIGTERM)")
        await asyncio.sleep(2)
    log.append("in-process member left")
    return log


async def test_a_steady_stream_through_joins_leaves_and_kills_loses_and_reorders_nothing(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    found = chains.targets(segments=12, per_segment=10)
    await admin.seed(chains.seed(found))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=20,
        consumer_max_in_flight_requests=4,
        # A fetch that waits this long is almost always under way when a rebalance starts:
        # it returns records of the new assignment (leases.py, rule 2).
        kafka_fetch_max_wait_ms=500,
        **CHURN_TIMEOUTS,
    )
    await create_topics(settings, partitions=6)
    # The adds first, applied before the churn: a repeated add is refused by the API, a
    # repeated update is not, and the check is about order, not about repeats.
    adds = [(key, encode(event), []) for _, _, key, event in chains.rounds(found, 0, 0)]
    add_ends = await produce(settings, adds)
    async with running(settings) as steady:
        await outcomes_covering(settings, add_ends)
        # Slow requests and 5xx on the PATCH routes, so that requests and retries are under
        # way at every revoke; the gate's probe is left alone.
        await admin.set_faults(
            latency_ms=list(LATENCY_MS), error_rate=0.1, paths=["/api/v2/segments/*"]
        )
        started = time.monotonic()
        (ends, last_step), log = await asyncio.gather(
            steady_stream(settings, found, 1, 25), churn(settings)
        )
        ends = merge_ends(ends, add_ends)
        results = await outcomes_covering(settings, ends, timeout=90)
        await admin.set_faults()
        await steady.shutdown()
        elapsed = time.monotonic() - started
    seen = Counter((o.source.partition, o.source.offset) for o in results)
    expected = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
    assert set(seen) == expected, f"records without an outcome: {len(expected - set(seen))}"
    assert {o.status for o in results} == {Status.SUCCEEDED}, Counter(o.status for o in results)
    assert await dead_letters(settings, 1, timeout=2) == []
    assert await committed(settings, list(ends)) == ends
    stale = chains.stale(await admin.state(), last_step)
    assert stale == {}, f"{len(stale)} targets not at their last value: {sorted(stale.items())[:5]}"
    assert len(log) == 6 and elapsed < 120
