"""A steady stream of chained changes (consumer/simulator/chains.py) for the ownership and
failover tests: produced at a fixed rate while members, or brokers, come and go."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka.structs import TopicPartition

from consumer.contract.outcomes import Outcome, Status
from consumer.kafka import clients as kafka
from consumer.settings import Settings
from consumer.simulator import chains
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode
from tests.integration.harness import committed, dead_letters, produce

RATE = 150  # events per second
CHUNK = 15
# Requests take up to LATENCY_MS, so some are on the wire at every revoke, and retries of
# 5xx are waiting; the revoke outlasts the longest request, as the settings require.
LATENCY_MS = (20, 1_000)
CHURN_TIMEOUTS = {"ld_request_timeout_ms": 1_500, "consumer_revoke_timeout_ms": 2_000}


async def produce_adds(settings: Settings, found: list[chains.Target]) -> dict[TopicPartition, int]:
    """Every target's first step (its add), as a backlog: applied before a stream of updates,
    since a repeated add is refused by the API and a repeated update is not (the checks are
    about order, not repeats). Returns the end offsets."""
    adds = [(key, encode(event), []) for _, _, key, event in chains.rounds(found, 0, 0)]
    return await produce(settings, adds)


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


async def commits_reach(
    settings: Settings, ends: dict[TopicPartition, int], timeout: float = 60.0
) -> None:
    """Wait, with the members still running, until the group's commits reach `ends`: after
    the last failure the group may still be rebalancing, and a member whose membership lapsed
    commits nothing (its partitions' next owner does). Whether they get there is what
    `assert_stream_held` checks."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await committed(settings, list(ends)) != ends:
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.5)


async def assert_stream_held(
    settings: Settings,
    admin: SimulatorAdmin,
    ends: dict[TopicPartition, int],
    last_step: dict[chains.Target, int],
    results: list[Outcome],
    *,
    duplicates_at_most: int | None = None,
) -> None:
    """What a steady stream must end with, whatever came and went: every record an outcome,
    all succeeded, nothing dead-lettered, the committed offsets at the end, and LaunchDarkly's
    final state equal to applying every target's events in order (0 stale). Records given a
    second outcome (at least once) are at most `duplicates_at_most`, when given."""
    seen = Counter((o.source.partition, o.source.offset) for o in results)
    expected = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
    assert set(seen) == expected, f"records without an outcome: {len(expected - set(seen))}"
    assert {o.status for o in results} == {Status.SUCCEEDED}, Counter(o.status for o in results)
    assert await dead_letters(settings, 1, timeout=2) == []
    found = await committed(settings, list(ends))
    assert found == ends, f"committed {found}, ends {ends}"
    stale = chains.stale(await admin.state(), last_step)
    assert stale == {}, f"{len(stale)} targets not at their last value: {sorted(stale.items())[:5]}"
    if duplicates_at_most is not None:
        repeated = sum(count - 1 for count in seen.values())
        assert repeated <= duplicates_at_most, f"{repeated} duplicate outcomes"
