"""Order per resource across its URLs, under a steady stream (contract section 2).

A segment takes target changes through its PATCH URL and scheduled removals through its
expiring-targets URL. Keyed as recommended and consumed in order:

- pattern 1a: add user u to segment S, then schedule u's removal: the schedule is refused
  ("not an individual included target") when it overtakes the add;
- pattern 1b: schedule u's removal, remove u, add u again: in order, u ends included without a
  scheduled removal (a removal clears it); a schedule that lands after the remove and re-add
  leaves one.

With slow requests, lanes per URL sent in parallel broke both (issue 24); with one lane per
resource, neither a wrong rejection nor a stale target may remain, on one member or two.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.kafka import clients as kafka
from consumer.settings import Settings
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
    running,
    seed,
)

SEGMENTS, USERS = 6, 12
LATER = 1_900_000_000_000


def _event(kind: str, segment: str, user: str, **fields: Any) -> Message:
    if kind in ("addExpiringTarget",):
        found = event_dict(
            "segment",
            kind,
            key=segment,
            project=PROJECT,
            env=ENV,
            contextKey=user,
            contextKind="user",
            targetType="included",
            value=LATER,
        )
    else:
        found = event_dict(
            "segment",
            kind,
            key=segment,
            project=PROJECT,
            env=ENV,
            contextKind="user",
            values=[user],
            **fields,
        )
    return record_key(found), encode(found), []


def _pairs() -> list[tuple[str, str]]:
    return [(f"s{s}", f"u{u}") for s in range(SEGMENTS) for u in range(USERS)]


def pattern_1a() -> list[Message]:
    """Per (segment, user), interleaved over all of them: add, then schedule the removal."""
    return [
        _event(kind, segment, user)
        for kind in ("addIncludedTargets", "addExpiringTarget")
        for segment, user in _pairs()
    ]


def pattern_1b() -> list[Message]:
    """Per (segment, user): schedule the removal, remove, add again."""
    return [
        _event(kind, segment, user)
        for kind in ("addExpiringTarget", "removeIncludedTargets", "addIncludedTargets")
        for segment, user in _pairs()
    ]


async def _stream(settings: Settings, messages: list[Message], per_tick: int = 12) -> dict:  # type: ignore[type-arg]
    """A steady stream, each chunk acknowledged before the next (order within a key holds)."""
    producer = kafka.make_producer(settings)
    await producer.start()
    ends: dict[Any, int] = {}
    try:
        for start in range(0, len(messages), per_tick):
            futures = [
                await producer.send(settings.consumer_input_topic, value, key=key)
                for key, value, _ in messages[start : start + per_tick]
            ]
            for meta in await asyncio.gather(*futures):
                tp = TopicPartition(meta.topic, meta.partition)
                ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
    return ends


def _state_by_pair(state: dict[str, Any]) -> dict[tuple[str, str], tuple[bool, int | None]]:
    """(segment, user) -> (included, scheduled removal or None)."""
    found: dict[tuple[str, str], tuple[bool, int | None]] = {}
    for segment in state["segments"]:
        included = set(segment.get("included") or [])
        for target in segment.get("includedContexts") or []:
            if target.get("contextKind") == "user":
                included |= set(target["values"])
        expiring = {
            item["contextKey"]: item["expirationDate"]
            for item in segment.get("expiringTargets", [])
        }
        for user in included | set(expiring):
            found[(segment["key"], user)] = (user in included, expiring.get(user))
    return found


@pytest.mark.parametrize("members", [1, 2])
@pytest.mark.parametrize("pattern", ["1a", "1b"])
async def test_changes_to_one_resource_over_two_urls_apply_in_order(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    pattern: str,
    members: int,
) -> None:
    users = [f"u{u}" for u in range(USERS)]
    included = {} if pattern == "1a" else {"user": users}
    await admin.seed(seed(segments={f"s{s}": included for s in range(SEGMENTS)}))
    await admin.set_faults(latency_ms=[20, 300], paths=["/api/v2/segments/*"])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=10,
        consumer_batch_linger_ms=100,
    )
    await create_topics(settings, partitions=4)
    messages = pattern_1a() if pattern == "1a" else pattern_1b()
    async with running(settings):
        second = running(settings, wait=False) if members == 2 else None
        if second is not None:
            await second.__aenter__()
        try:
            ends = await _stream(settings, messages)
            results = await outcomes_covering(settings, ends, timeout=90)
        finally:
            if second is not None:
                await second.__aexit__(None, None, None)
    wrong = [o for o in results if o.status is not Status.SUCCEEDED]
    assert wrong == [], f"{len(wrong)} not succeeded, e.g. {wrong[0].error}"
    state = _state_by_pair(await admin.state())
    wanted = (True, LATER) if pattern == "1a" else (True, None)
    stale = {pair: state.get(pair) for pair in _pairs() if state.get(pair) != wanted}
    assert stale == {}, f"{len(stale)} stale, e.g. {sorted(stale.items())[:3]}"
