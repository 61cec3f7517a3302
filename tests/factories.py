"""Event builders shared by unit and integration tests, and `until` for unit tests that wait
on tasks."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka.structs import TopicPartition

from consumer.contract.events import TargetingEvent, decode, target_operations
from consumer.launchdarkly.routing import route
from consumer.service.leases import Lease, Leases
from consumer.service.records import ConsumedRecord, PendingEvent

# The API token every test uses (the simulator accepts it; the service is configured with it).
TOKEN = "api-test-0123456789abcdef"

VARIATION = "6f0b5f5e-0c57-4d1a-9d3e-0000000000a1"
LATER = 1_798_761_600_000

INSTRUCTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("segment", "addExpiringTarget"): {
        "targetType": "included",
        "contextKey": "u1",
        "contextKind": "user",
        "value": LATER,
    },
    ("segment", "updateExpiringTarget"): {
        "targetType": "included",
        "contextKey": "u1",
        "contextKind": "user",
        "value": LATER,
        "version": 1,
    },
    ("segment", "removeExpiringTarget"): {
        "targetType": "included",
        "contextKey": "u1",
        "contextKind": "user",
    },
    ("segment", "addExpireUserTargetDate"): {
        "targetType": "included",
        "userKey": "u1",
        "value": LATER,
    },
    ("segment", "updateExpireUserTargetDate"): {
        "targetType": "included",
        "userKey": "u1",
        "value": LATER,
        "version": 1,
    },
    ("segment", "removeExpireUserTargetDate"): {"targetType": "included", "userKey": "u1"},
    ("flag", "addExpiringTarget"): {
        "variationId": VARIATION,
        "contextKey": "u1",
        "contextKind": "user",
        "value": LATER,
    },
    ("flag", "updateExpiringTarget"): {
        "variationId": VARIATION,
        "contextKey": "u1",
        "contextKind": "user",
        "value": LATER,
    },
    ("flag", "removeExpiringTarget"): {
        "variationId": VARIATION,
        "contextKey": "u1",
        "contextKind": "user",
    },
    **{
        ("segment", f"{verb}{side}Targets"): {"contextKind": "org", "values": ["o1", "o2"]}
        for verb in ("add", "remove")
        for side in ("Included", "Excluded")
    },
    **{
        ("segment", f"{verb}{side}Users"): {"values": ["u1"]}
        for verb in ("add", "remove")
        for side in ("Included", "Excluded")
    },
    ("segment", "updateName"): {"value": "Renamed segment"},
}

_counter = iter(range(1, 10**9))


def event_dict(
    resource_kind: str = "segment",
    kind: str = "addIncludedTargets",
    *,
    key: str = "beta",
    project: str = "proj",
    env: str = "production",
    comment: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    instruction = {"kind": kind, **INSTRUCTIONS.get((resource_kind, kind), {}), **fields}
    event: dict[str, Any] = {
        "eventId": event_id or f"evt-{next(_counter)}",
        "projectKey": project,
        "environmentKey": env,
        "resource": {"kind": resource_kind, "key": key},
        "instruction": instruction,
    }
    if comment is not None:
        event["comment"] = comment
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def parse(event: dict[str, Any]) -> TargetingEvent:
    decoded = decode(encode(event))
    assert not hasattr(decoded, "code"), decoded
    return decoded  # type: ignore[return-value]


class FetchedRecord:
    """A record as aiokafka's getmany returns it: a segment-target event adding key k{offset}."""

    def __init__(self, tp: TopicPartition, offset: int, segment: str) -> None:
        self.topic, self.partition, self.offset = tp.topic, tp.partition, offset
        self.key = None
        self.value = encode(event_dict(key=segment, values=[f"k{offset}"]))
        self.headers: list[tuple[str, bytes]] = []
        self.timestamp = 0


_leases = Leases()
_offsets = iter(range(10**9))


def lease_for(partition: int = 0, topic: str = "in") -> Lease:
    """The factories' active lease of a partition (granted on first use)."""
    tp = TopicPartition(topic, partition)
    lease = _leases.get(tp)
    if lease is None or not lease.active:
        lease = _leases.grant(tp, 0)
    return lease


def pending(
    event: dict[str, Any] | None = None,
    *,
    partition: int = 0,
    topic: str = "in",
    lease: Lease | None = None,
) -> PendingEvent:
    parsed = parse(event or event_dict())
    lease = lease or lease_for(partition, topic)
    offset = next(_offsets)
    assert lease.offsets.take(offset)
    record = ConsumedRecord(
        topic=lease.tp.topic,
        partition=lease.tp.partition,
        offset=offset,
        key=None,
        value=encode(event or {}),
        headers=(),
        timestamp=int(time.time() * 1000),
        lease=lease,
    )
    return PendingEvent(record, parsed, route(parsed), target_operations(parsed))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `predicate()` holds, checking every 10 ms. A test waits for the state it
    asserts on, never for a fixed time: a sleep fails on a loaded machine, or passes before
    the work it tests has run. After `timeout`, an AssertionError naming the condition."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {_source(predicate)}")
        await asyncio.sleep(0.01)


def _source(predicate: Callable[[], bool]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
