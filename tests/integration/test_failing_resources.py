"""Resources that fail on every write starve no one (issue 24): with as many failing resources
as request slots, or twice as many, healthy records keep flowing, failing ones end `failed`
within the retry budget, the API gate never closes (/readyz stays ready); and under a pending
limit, one failing resource pauses only its own partition."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from consumer.contract.events import record_key
from consumer.contract.outcomes import Outcome, Status
from consumer.kafka import clients as kafka
from consumer.service.lifecycle import Service
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    Message,
    create_topics,
    make_settings,
    outcomes_covering,
    produce_steadily,
    running,
    seed,
)

pytestmark = pytest.mark.slow

HEALTHY = 24
# Long enough that a healthy record starved behind the failing ones' budgets would show.
RETRY_BUDGET_MS = 12_000
# Healthy records' produce-to-outcome bound: the linger and a few requests, with room for a
# loaded machine; the starvation this guards against took minutes.
HEALTHY_WITHIN_S = 5.0


def _stream(bad: int, count: int) -> list[Message]:
    """`count` events over HEALTHY good and `bad` failing segments, one bad in every
    (HEALTHY + bad) // bad, spread evenly."""
    keys = [f"good{i}" for i in range(HEALTHY)] + [f"bad{i}" for i in range(bad)]
    events = [
        event_dict(key=keys[i % len(keys)], project=PROJECT, env=ENV, values=[f"k{i}"])
        for i in range(count)
    ]
    return [(record_key(e), encode(e), []) for e in events]


@contextlib.asynccontextmanager
async def watching(service: Service, seen: dict[str, Any]) -> AsyncIterator[None]:
    """Samples readiness and pressure every 50 ms while the body runs."""

    async def sample() -> None:
        seen["not_ready"] = 0
        while not service.gate.is_open:  # it opens after its first probe (gate.py, rule 1)
            await asyncio.sleep(0.01)
        while True:
            if not service.vitals.readiness()["api_available"]:
                seen["not_ready"] += 1
                seen.setdefault("why", set()).add(service.vitals.api_closed)
            seen.setdefault("pressed", set()).update(service._pressure.paused)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _latency(outcome: Outcome, produced_ms: dict[tuple[int, int], int]) -> float:
    produced = produced_ms[(outcome.source.partition, outcome.source.offset)]
    return outcome.completedAt.timestamp() - produced / 1000


async def _timestamps(settings: Any, ends: dict[TopicPartition, int]) -> dict[tuple[int, int], int]:
    records = await kafka.read_topic(
        settings,
        settings.consumer_input_topic,
        until=lambda r: len(r) >= sum(ends.values()),
        timeout=30,
    )
    return {(r.partition, r.offset): r.timestamp for r in records}


@pytest.mark.parametrize("bad", [16, 32])
async def test_failing_resources_do_not_starve_the_healthy_ones(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    bad: int,
) -> None:
    segments = {f"good{i}": {} for i in range(HEALTHY)} | {f"bad{i}": {} for i in range(bad)}
    await admin.seed(seed(segments=segments))
    await admin.set_faults(error_rate=1.0, paths=[f"/api/v2/segments/{PROJECT}/{ENV}/bad*"])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_linger_ms=200,  # the defaults: 16 requests in flight, batches of 50
        consumer_batch_max_size=50,
        ld_retry_max_elapsed_ms=RETRY_BUDGET_MS,
        ld_retry_max_delay_ms=3_000,
        ld_retry_base_delay_ms=500,
        ld_outage_window_ms=10_000,  # the default
    )
    await create_topics(settings, partitions=4)
    seen: dict[str, Any] = {}
    async with running(settings) as handle, watching(handle.service, seen):
        ends = await produce_steadily(settings, _stream(bad, 1_200), per_tick=15, tick=0.1)
        results = await outcomes_covering(settings, ends, timeout=90)
        closings = handle.service.gate.closings
    produced = await _timestamps(settings, ends)
    healthy = [o for o in results if o.resource is not None and o.resource.key.startswith("good")]
    failing = [o for o in results if o.resource is not None and o.resource.key.startswith("bad")]
    assert {o.status for o in healthy} == {Status.SUCCEEDED}
    assert {o.status for o in failing} == {Status.FAILED}
    slowest = max(_latency(o, produced) for o in healthy)
    assert slowest < HEALTHY_WITHIN_S, f"a healthy record waited {slowest:.1f} s"
    # Within the budget, and the outage window its last try may wait to tell an outage from a
    # resource failing alone (gate.py, rule 4), when no other write is answered meanwhile.
    latest = max(_latency(o, produced) for o in failing)
    bound = (RETRY_BUDGET_MS + settings.ld_outage_window_ms) / 1000 + HEALTHY_WITHIN_S
    assert latest < bound, f"failed after {latest:.1f} s"
    assert closings == 0 and seen["not_ready"] == 0, seen.get("why")  # the gate never closed


async def test_one_failing_resource_under_a_pending_limit_pauses_only_its_partition(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"good{i}": {} for i in range(HEALTHY)} | {"bad0": {}}))
    await admin.set_faults(error_rate=1.0, paths=[f"/api/v2/segments/{PROJECT}/{ENV}/bad0"])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_max_pending_events=100,
        consumer_batch_max_size=20,
        ld_retry_max_elapsed_ms=RETRY_BUDGET_MS,
        ld_retry_max_delay_ms=1_000,
        ld_retry_base_delay_ms=200,
    )
    await create_topics(settings, partitions=4)
    seen: dict[str, Any] = {}
    async with running(settings) as handle, watching(handle.service, seen):
        ends = await produce_steadily(settings, _stream(1, 1_000), per_tick=20, tick=0.1)
        results = await outcomes_covering(settings, ends, timeout=90)
    bad_partition = {
        o.source.partition for o in results if o.resource is not None and o.resource.key == "bad0"
    }
    pressed = {tp.partition for tp in seen.get("pressed", set())}
    assert pressed <= bad_partition, f"paused {pressed}, the failing resource is on {bad_partition}"
    produced = await _timestamps(settings, ends)
    healthy = [
        o
        for o in results
        if o.resource is not None
        and o.resource.key != "bad0"
        and o.source.partition not in bad_partition
    ]
    assert {o.status for o in healthy} == {Status.SUCCEEDED}
    slowest = max(_latency(o, produced) for o in healthy)
    assert slowest < HEALTHY_WITHIN_S, f"a healthy record waited {slowest:.1f} s"
