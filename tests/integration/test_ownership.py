"""Ownership at the edges of a member's life: an assignment whose recovery scan outlives the
session, and a stop that must not leave a request on the wire behind it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumer.service.leases import Leases
from consumer.service.wiring import Parts, build
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.integration.harness import (
    committed,
    create_topics,
    events,
    make_settings,
    outcomes_covering,
    produce,
    running,
    seed,
)


def spying_on_sends(name: str, parts: Parts, members: dict[str, Leases], found: list[str]) -> Parts:
    """These parts, noting every batch their member starts sending for a partition another
    member holds."""
    members[name] = parts.leases
    send = parts.sender.send

    async def checked(batch: Any) -> Any:
        for tp in batch.partitions():
            for other, leases in members.items():
                if other != name and tp in leases.partitions():
                    found.append(f"{name} sent for p{tp.partition}, held by {other}")
        return await send(batch)

    parts.sender.send = checked  # type: ignore[method-assign]
    return parts


async def test_a_recovery_scan_longer_than_the_session_grants_nothing_stale(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """aiokafka does not heartbeat while the assignment callback runs: a member whose scan ran
    there would be expelled and then grant and send for partitions given to another."""
    await admin.seed(seed(segments={f"s{i}": {} for i in range(4)}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=2)
    session_s = settings.kafka_session_timeout_ms / 1000
    members: dict[str, Leases] = {}
    overlaps: list[str] = []
    stop = asyncio.Event()

    async def feed() -> dict[Any, int]:
        ends: dict[Any, int] = {}
        while not stop.is_set():
            for tp, end in (await produce(settings, events(8, 4))).items():
                ends[tp] = max(ends.get(tp, 0), end)
            await asyncio.sleep(0.25)
        return ends

    a_parts = spying_on_sends("A", build(settings), members, overlaps)
    async with running(settings, parts=a_parts) as a:
        recovery = a.service.recovery
        assert recovery is not None
        scan = recovery.already_done

        async def slow_scan(positions: Any) -> Any:  # A's next scans outlive its session
            found = await scan(positions)
            await asyncio.sleep(2 * session_s)
            return found

        recovery.already_done = slow_scan  # type: ignore[method-assign]
        feeding = asyncio.create_task(feed())
        await asyncio.sleep(1)
        b_parts = spying_on_sends("B", build(settings), members, overlaps)
        async with running(settings, wait=False, parts=b_parts) as b:
            await b.wait_assigned()
            await asyncio.sleep(4 * session_s)
            stop.set()
            ends = await feeding
            await outcomes_covering(settings, ends)
            assert a.service.assigned and b.service.assigned  # nobody was expelled
            await b.shutdown()
        await a.shutdown()
    assert overlaps == []
    assert await committed(settings, list(ends)) == ends


async def test_a_stop_starts_no_request_it_could_not_wait_for(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """A slow API and more batches than slots when the stop comes: requests stop starting a
    request timeout before the end, so none is cancelled on the wire (the next owner could
    otherwise be overtaken by one LaunchDarkly still applies)."""
    keys = 12
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    await admin.set_faults(latency_ms=[900, 1_100])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_max_in_flight_requests=2,
        consumer_batch_max_size=2,
        consumer_shutdown_timeout_ms=3_000,
        ld_request_timeout_ms=1_500,
    )
    await create_topics(settings, partitions=2)
    await produce(settings, events(120, keys))
    async with running(settings) as handle:
        await asyncio.sleep(1.5)  # requests under way, many batches waiting
        started = time.monotonic()
        await handle.shutdown()
        stopped_s = time.monotonic() - started
        metrics = handle.service.metrics
    assert metrics.abandoned._value.get() == 0
    assert metrics.requests.labels(endpoint="segment-targets", status="200")._value.get() > 0
    assert stopped_s < 3 + 5
