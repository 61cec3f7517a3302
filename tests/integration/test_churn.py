"""Ownership under churn: a steady stream while members join, leave and are SIGKILLed, with
slow requests and 5xx so that requests and retries are pending when partitions are revoked.

What must hold (leases.py): every record gets an outcome, the committed offsets reach the end,
and LaunchDarkly's final state equals applying every target's events in order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import pytest

from consumer.settings import Settings
from consumer.simulator import RunningSimulator, chains
from consumer.simulator.admin_client import SimulatorAdmin
from tests.integration.harness import (
    create_topics,
    make_settings,
    merge_ends,
    outcomes_covering,
    running,
    start_process,
)
from tests.integration.streams import (
    CHURN_TIMEOUTS,
    LATENCY_MS,
    assert_stream_held,
    produce_adds,
    steady_stream,
)

pytestmark = pytest.mark.slow


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
    add_ends = await produce_adds(settings, found)
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
    await assert_stream_held(settings, admin, ends, last_step, results)
    assert len(log) == 6 and elapsed < 120
