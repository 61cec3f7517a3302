"""Invariant 6: no exception in the dispatch loop from the new code.

BatchSender.admitted_on reads the segment-kind cache, whose entries expire on the resolver's
clock (KindCache.get deletes an entry once `now - read_at >= ttl`). _Admission.admit asks
admitted_on(due) for the key, then _view asks admitted_on again for every head to collect
`on_route`. If a big segment's entry expires between those calls (one dispatch pass straddles
the expiry instant; entries from one environment list read all expire at the same instant),
the due lane maps to 'segment-targets' in the filter while `key` is 'big-segment-contexts':
on_route is empty and `max(h.last_added for h in on_route)` raises ValueError, which ends the
dispatch task (lifecycle then stops the service)."""

from __future__ import annotations

import asyncio
import random

import pytest

from consumer.launchdarkly.big_segments import KindCache, SegmentKind
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.segment_kinds import KindResolver
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.batcher import Batcher
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline, _Admission
from consumer.service.scarcity import Scarcity
from consumer.service.sender import BatchSender
from tests.factories import event_dict, pending
from tests.unit.test_pipeline import Publisher
from tests.unit.test_sender import FakeClient, open_gate

SEGMENT = "/api/v2/segments/proj/production/s"
TTL = 60.0


class Clock:
    """The resolver's monotonic clock: each read is a microsecond after the last (time passes
    while a dispatch pass runs)."""

    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1e-6
        return self.t


async def big_segment_sender(clock: Clock) -> BatchSender:
    client = FakeClient((204, b""))
    gate = await open_gate()
    policy = RetryPolicy(base_delay=0.01, max_delay=0.01, max_attempts=2)
    throttle = RateLimiter()
    cache = KindCache(ttl=TTL)
    # Read at 0: it expires at TTL. The pass starts 1.5 us before that.
    cache.put(SEGMENT, SegmentKind(True, "org"), 0.0)
    kinds = KindResolver(client, policy, gate, throttle, Metrics(), cache, clock=clock)  # type: ignore[arg-type]
    return BatchSender(client, policy, gate, throttle=throttle, rng=random.Random(1), kinds=kinds)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_pass_straddling_the_kind_cache_expiry_raises() -> None:
    sender = await big_segment_sender(Clock(TTL - 2.5e-6))
    batcher = Batcher(max_size=50, linger=0.0)
    batcher.add(pending(event_dict("segment", "addIncludedTargets", key="s")), 0.0)
    admission = _Admission(sender, {}, 1.0, batcher.heads(1.0), Scarcity(max_wait=60.0))
    # Before the change (no scarcity) the lane is simply cut; here the pass must not raise.
    batcher.ready(1.0, 16, admission.admit)


@pytest.mark.asyncio
async def test_the_dispatch_task_dies() -> None:
    sender = await big_segment_sender(Clock(TTL - 2.5e-6))
    pipeline = Pipeline(
        Batcher(max_size=50, linger=0.0),
        sender,
        Publisher(),
        Metrics(),
        max_in_flight=4,
        scarcity=Scarcity(max_wait=60.0),
    )
    pipeline.batcher.add(pending(event_dict("segment", "addIncludedTargets", key="s")), 0.0)
    dispatch = asyncio.create_task(pipeline.dispatch())
    await asyncio.sleep(0.05)
    dead = dispatch.done() and not dispatch.cancelled() and dispatch.exception()
    dispatch.cancel()
    assert not dead, f"dispatch ended with {dead!r}"
