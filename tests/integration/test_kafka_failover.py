"""Brokers that fail under a steady stream, on Apache Kafka: a partition leader killed (input,
then results) in a three-node cluster, the group coordinator killed, a single broker
restarted with its data. What must hold: every record an outcome, 0 stale targets (final
state = in-order application), nothing committed early, duplicates bounded by the wire."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.kafka.apache import ApacheKafka
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
    LATENCY_MS,
    assert_stream_held,
    commits_reach,
    produce_adds,
    steady_stream,
)

pytestmark = pytest.mark.slow

BATCH, IN_FLIGHT = 20, 4
# A record is applied twice only when its outcome was not yet committed at a rebalance, and
# its request was on the wire: at most every request in flight, on each of a few rebalances.
DUPLICATES_AT_MOST = 3 * BATCH * IN_FLIGHT


def _settings(bootstrap: str, simulator: RunningSimulator) -> Settings:
    return make_settings(
        bootstrap,
        simulator.base_url,
        on_tansu=False,
        consumer_batch_max_size=BATCH,
        consumer_max_in_flight_requests=IN_FLIGHT,
        ld_request_timeout_ms=1_500,
        consumer_revoke_timeout_ms=2_000,
    )


async def _kill_for(
    cluster: ApacheKafka, node: int, seconds: float, log: list[str], what: str
) -> None:
    await asyncio.to_thread(cluster.kill, node)
    log.append(f"{what}: node {node} killed")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(cluster.restart, node)
    log.append(f"{what}: node {node} back")


async def test_leaders_and_the_coordinator_killed_under_a_steady_stream(
    kafka_cluster: ApacheKafka, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    found = chains.targets(segments=8, per_segment=8)
    await admin.seed(chains.seed(found))
    settings = _settings(kafka_cluster.bootstrap_servers, simulator)
    await create_topics(settings, partitions=4, replication=3)
    add_ends = await produce_adds(settings, found)
    log: list[str] = []

    async def failures() -> None:
        await asyncio.sleep(2)
        leader = await asyncio.to_thread(kafka_cluster.leader, settings.consumer_input_topic, 0)
        await _kill_for(kafka_cluster, leader, 4, log, "input partition 0's leader")
        await asyncio.sleep(2)
        leader = await asyncio.to_thread(kafka_cluster.leader, settings.consumer_results_topic, 0)
        await _kill_for(kafka_cluster, leader, 4, log, "results partition 0's leader")
        await asyncio.sleep(2)
        coordinator = await asyncio.to_thread(kafka_cluster.coordinator, settings.consumer_group_id)
        await _kill_for(kafka_cluster, coordinator, 4, log, "the group coordinator")

    # Two members: one in this process, one a child process, so a rebalance has work to move.
    async with running(settings) as steady:
        await outcomes_covering(settings, add_ends)
        other = await start_process(settings)
        try:
            await admin.set_faults(latency_ms=list(LATENCY_MS), paths=["/api/v2/segments/*"])
            (ends, last_step), _ = await asyncio.gather(
                steady_stream(settings, found, 1, 20), failures()
            )
            ends = merge_ends(ends, add_ends)
            results = await outcomes_covering(settings, ends, timeout=120)
            await admin.set_faults()
            # The coordinator was killed last: the group settles before the members stop.
            await commits_reach(settings, ends)
        finally:
            if other.returncode is None:
                other.terminate()
            _, stderr = await asyncio.wait_for(other.communicate(), 40)
        # The other member ran through the failures and drained on SIGTERM.
        assert other.returncode == 0, stderr.decode()[-2_000:]
        await steady.shutdown()
    assert len(log) == 6
    await assert_stream_held(
        settings, admin, ends, last_step, results, duplicates_at_most=DUPLICATES_AT_MOST
    )


async def test_a_broker_restarted_with_its_data_is_reconnected_to(
    broker_kind: str, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    if broker_kind != "apache":
        pytest.skip("starts its own Apache Kafka (Java and Maven needed)")
    found = chains.targets(segments=6, per_segment=6)
    await admin.seed(chains.seed(found))
    with ApacheKafka(nodes=1) as single:
        settings = _settings(single.bootstrap_servers, simulator)
        await create_topics(settings, partitions=3)
        add_ends = await produce_adds(settings, found)
        log: list[str] = []

        async def restart() -> None:
            await asyncio.sleep(2)
            await _kill_for(single, 1, 5, log, "the only broker")

        async with running(settings) as steady:
            await outcomes_covering(settings, add_ends)
            started = time.monotonic()
            (ends, last_step), _ = await asyncio.gather(
                steady_stream(settings, found, 1, 15), restart()
            )
            ends = merge_ends(ends, add_ends)
            results = await outcomes_covering(settings, ends, timeout=120)
            assert not steady.task.done()  # the member never exited
            await steady.shutdown()
        assert time.monotonic() - started < 120
        await assert_stream_held(
            settings, admin, ends, last_step, results, duplicates_at_most=DUPLICATES_AT_MOST
        )
