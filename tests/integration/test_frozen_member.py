"""A member frozen for longer than its session (SIGSTOP: a GC or VM pause), then resumed,
while a steady stream flows (issue 24): the group gave its partitions to the other member, so
on waking it must start no request (membership.py) before it has rejoined. With in-flight 16
and a linger of 1 s, the old code cut a dozen batches on waking and sent them for partitions
it no longer owned: stale targets and duplicate outcomes."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

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
from tests.integration.streams import assert_stream_held, produce_adds, steady_stream

pytestmark = pytest.mark.slow

FROZEN_S = 8.0  # well past the test session (3 s on Apache Kafka, 2 s on Tansu)


async def test_a_member_frozen_past_its_session_sends_nothing_stale_when_it_wakes(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    found = chains.targets(segments=8, per_segment=8)
    await admin.seed(chains.seed(found))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_max_in_flight_requests=16,
        consumer_batch_linger_ms=1_000,
        consumer_batch_max_size=50,
    )
    await create_topics(settings, partitions=4)
    add_ends = await produce_adds(settings, found)
    await admin.set_faults(latency_ms=[20, 200], paths=["/api/v2/segments/*"])
    frozen = await start_process(settings)
    try:
        async with running(settings) as steady:
            await outcomes_covering(settings, add_ends)

            async def freeze() -> None:
                await asyncio.sleep(3)
                frozen.send_signal(signal.SIGSTOP)
                await asyncio.sleep(FROZEN_S)
                frozen.send_signal(signal.SIGCONT)

            (ends, last_step), _ = await asyncio.gather(
                steady_stream(settings, found, 1, 20), freeze()
            )
            ends = merge_ends(ends, add_ends)
            results = await outcomes_covering(settings, ends, timeout=90)
            await steady.shutdown()
    finally:
        if frozen.returncode is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.terminate()
        _, stderr = await asyncio.wait_for(frozen.communicate(), 40)
    events = [json.loads(line).get("event") for line in stderr.decode().splitlines() if line]
    assert "group.membership_lapsed" in events  # it noticed on waking, by itself
    await assert_stream_held(settings, admin, ends, last_step, results)
