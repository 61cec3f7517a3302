"""Invariant 3: with units left >= lanes waiting, behaviour is exactly as before.

_Admission.admit decrements the pass's RouteView.units_left after each grant but keeps
waiting_lanes (and due_sizes) as they were: the lane just cut still counts as waiting, so a
route with exactly enough units turns 'scarce' within the pass and the second lane is held."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from consumer.launchdarkly.routing import Route
from consumer.launchdarkly.throttle import Permit, Window
from consumer.service.batcher import Batch, Batcher
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline, _Admission
from consumer.service.scarcity import Scarcity
from tests.factories import event_dict, pending, until
from tests.unit.test_pipeline import Publisher, Sender
from tests.unit.test_scarcity import simulate


def test_sim_two_lanes_two_units_both_go_in_the_same_pass() -> None:
    # One probe at t=0 makes the budget known; at t=10 (a new window of 2 units) two segments
    # get one event each. 2 lanes waiting, 2 units left: not scarce, the linger decides.
    arrivals = [(0.0, "probe"), (10.0, "s1"), (10.0, "s2")]
    kw = {"until": 15, "capacity": 2, "window": 10.0}
    held = simulate(arrivals, scarcity=Scarcity(max_wait=60.0), **kw)
    greedy = simulate(arrivals, scarcity=None, **kw)
    assert [(at, len(b)) for at, b in greedy.sent] == [(0.2, 1), (10.2, 1), (10.2, 1)]
    assert [(at, len(b)) for at, b in held.sent] == [(at, len(b)) for at, b in greedy.sent]


class Units:
    """A route whose budget is known: `left` units, no reset known."""

    def __init__(self, left: int) -> None:
        self.left = left

    def admitted_on(self, route: Route) -> str:
        return "segments"

    def delay(self, route: Route) -> float | None:
        return 0.0 if self.left > 0 else 5.0

    def window(self, route: Route) -> Window:
        return Window(self.left, None)

    def grant(self, route: Route, waited: float) -> Permit:
        self.left -= 1
        return Permit(1, waited)


def test_one_pass_k_lanes_k_units_all_go() -> None:
    for k in (2, 3, 8):
        batcher = Batcher(max_size=50, linger=0.2)
        for n in range(k):
            batcher.add(pending(event_dict(key=f"s{n}")), 0.0)
        now = 0.25  # due; the route took an event 0.25 s ago (not quiet)
        admission = _Admission(Units(k), {}, now, batcher.heads(now), Scarcity(max_wait=60.0))  # type: ignore[arg-type]
        cut = batcher.ready(now, 16, admission.admit)
        assert len(cut) == k, f"{k} lanes, {k} units: only {len(cut)} cut, wait={admission.wait}"


class LiveSender(Sender):
    """test_pipeline's Sender (answers only when told) on one rate-limit route with a known
    budget of `left` units (the limiter takes one per grant, like RateLimiter)."""

    def __init__(self, left: int) -> None:
        super().__init__()
        self.left = left
        self.sent_at: dict[str, float] = {}

    def admitted_on(self, route: Route) -> str:
        return "segments"

    def window(self, route: Route) -> Window:
        return Window(self.left, None, len(self.granted))

    def grant(self, route: Route, waited: float) -> Permit:
        self.left -= 1
        return super().grant(route, waited)

    async def send(self, batch, permit=None, hold=None):  # type: ignore[no-untyped-def]
        self.sent_at[batch.route.resource] = time.monotonic()
        return await super().send(batch, permit, hold)


def cut_per_pass(pipeline: Pipeline) -> list[list[str]]:
    """The resources each dispatch pass cut (passes that cut nothing left out)."""
    passes: list[list[str]] = []
    ready = pipeline.batcher.ready

    def recording(*args: Any, **kwargs: Any) -> list[Batch]:
        cut = ready(*args, **kwargs)
        if cut:
            passes.append([batch.route.resource for batch in cut])
        return cut

    pipeline.batcher.ready = recording  # type: ignore[method-assign]
    return passes


@pytest.mark.asyncio
@pytest.mark.parametrize("scarcity", [None, Scarcity(max_wait=60.0)], ids=["before", "after"])
async def test_dispatch_two_lanes_with_two_units_go_in_one_pass(
    scarcity: Scarcity | None,
) -> None:
    sender = LiveSender(left=2)
    pipeline = Pipeline(
        Batcher(max_size=50, linger=0.2),
        sender,
        Publisher(),
        Metrics(),
        max_in_flight=4,
        scarcity=scarcity,
    )
    passes = cut_per_pass(pipeline)
    start = time.monotonic()
    pipeline.batcher.add(pending(event_dict(key="s1")), start)
    pipeline.batcher.add(pending(event_dict(key="s2")), start)
    dispatch = asyncio.create_task(pipeline.dispatch())
    try:
        await until(lambda: len(sender.sent_at) == 2)
    finally:
        dispatch.cancel()
    # Both were due together and the budget carries both: one pass cuts both (held, the
    # second would wait for the route's quiet second).
    assert len(passes) == 1 and len(passes[0]) == 2, passes


class AnsweringSender(LiveSender):
    """Answers every request `rtt` seconds after it starts."""

    rtt = 0.15

    async def send(self, batch, permit=None, hold=None):  # type: ignore[no-untyped-def]
        asyncio.get_running_loop().call_later(
            self.rtt, lambda: self.answer.setdefault(batch.id, asyncio.Event()).set()
        )
        return await super().send(batch, permit, hold)


@pytest.mark.asyncio
@pytest.mark.parametrize("scarcity", [None, Scarcity(max_wait=60.0)], ids=["before", "after"])
async def test_dispatch_k_lanes_with_k_units_go_in_one_pass(scarcity: Scarcity | None) -> None:
    k = 4
    sender = AnsweringSender(left=k)
    pipeline = Pipeline(
        Batcher(max_size=50, linger=0.2),
        sender,
        Publisher(),
        Metrics(),
        max_in_flight=8,
        scarcity=scarcity,
    )
    passes = cut_per_pass(pipeline)
    start = time.monotonic()
    for n in range(k):
        pipeline.batcher.add(pending(event_dict(key=f"s{n}")), start)
    dispatch = asyncio.create_task(pipeline.dispatch())
    try:
        await until(lambda: len(sender.sent_at) == k)
    finally:
        dispatch.cancel()
    # Not one lane per answer: every lane goes in the first pass that cuts any.
    assert len(passes) == 1 and len(passes[0]) == k, passes
