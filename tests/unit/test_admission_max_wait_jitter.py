"""Invariant 2: a lane held for scarcity is cut no later than CONSUMER_BATCH_MAX_WAIT_MS.

Pipeline.dispatch adds the group jitter (uniform 0..JITTER_MS = 100 ms) to `admission.wait`
whatever held the lane; a scarcity hold ending exactly at the maximum wait therefore ends up
to 100 ms after it. The draw is forced high here (seed 2: 95.6 ms) instead of waiting for a
lucky one."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from consumer.service.batcher import Batcher
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline
from consumer.service.scarcity import Scarcity
from tests.factories import event_dict, pending
from tests.unit.test_admission_spare_budget import LiveSender
from tests.unit.test_pipeline import Publisher


@pytest.mark.asyncio
async def test_a_hold_ends_at_the_maximum_wait_not_after_it() -> None:
    max_wait = 0.5
    sender = LiveSender(left=1)  # one unit left, no reset known
    pipeline = Pipeline(
        Batcher(max_size=50, linger=0.05),
        sender,
        Publisher(),
        Metrics(),
        max_in_flight=4,
        scarcity=Scarcity(max_wait=max_wait),
    )
    pipeline._rng = random.Random(2)  # the first jitter draw: 95.6 ms
    start = time.monotonic()
    # Two lanes on one route with one unit left: scarce; the route is not quiet for 1 s.
    pipeline.batcher.add(pending(event_dict(key="s1")), start)
    pipeline.batcher.add(pending(event_dict(key="s2")), start)
    dispatch = asyncio.create_task(pipeline.dispatch())
    try:
        await asyncio.sleep(0.9)
    finally:
        dispatch.cancel()
    first = min(sender.sent_at.values()) - start
    assert first <= max_wait + 0.03, f"held {first:.3f} s, CONSUMER_BATCH_MAX_WAIT_MS={max_wait}"
