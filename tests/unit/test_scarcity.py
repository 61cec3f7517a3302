"""Budget-aware cutting (scarcity.py): when a route's budget cannot carry every due lane, small
lanes that are filling wait (up to the maximum wait); with budget to spare nothing changes.

The simulations run the batcher and the dispatch's admission (pipeline.py) against a window
budget on a simulated clock: requests are answered at once, so only the cutting is measured."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.launchdarkly.routing import Route
from consumer.launchdarkly.throttle import Permit, Window
from consumer.service.batcher import Batch, Batcher
from consumer.service.pipeline import _Admission
from consumer.service.scarcity import RouteView, Scarcity
from tests.factories import event_dict, pending

# -- the rule -----------------------------------------------------------------------------------


def view(
    *,
    waiting: int = 100,
    left: int | None = 20,
    ends_in: float | None = 9.0,
    since_added: float = 0.0,
    due_sizes: tuple[int, ...] = (),
    in_flight: int = 0,
) -> RouteView:
    return RouteView(waiting, left, ends_in, since_added, due_sizes, in_flight)


RULE = Scarcity(max_wait=30.0)


def test_with_units_to_spare_or_an_unknown_budget_nothing_is_held() -> None:
    young = {"closed": False, "waited": 0.2, "size": 1}
    assert RULE.hold(view(waiting=20, left=20), **young) is None
    assert RULE.hold(view(waiting=5, left=20), **young) is None
    assert RULE.hold(view(waiting=100, left=None), **young) is None


def test_when_scarce_a_filling_lane_waits_until_the_maximum_wait() -> None:
    assert RULE.hold(view(ends_in=None), closed=False, waited=0.2, size=1) == 1.0
    assert RULE.hold(view(ends_in=None, since_added=0.9), closed=False, waited=0.2, size=1) == (
        pytest.approx(0.1)
    )
    assert RULE.hold(view(ends_in=None), closed=False, waited=29.5, size=30) == 0.5
    assert RULE.hold(view(ends_in=None), closed=False, waited=30.0, size=30) is None


def test_when_scarce_a_closed_lane_or_a_quiet_route_goes_at_once() -> None:
    assert RULE.hold(view(), closed=True, waited=0.2, size=1) is None
    assert RULE.hold(view(since_added=1.0), closed=False, waited=0.2, size=1) is None


def test_at_the_end_of_a_window_what_is_left_goes_to_the_fullest_due_lanes() -> None:
    # Two units left, due lanes of 9, 7, 7 and 3 events: lanes of 7 and more may go.
    ending = view(left=2, ends_in=0.5, due_sizes=(9, 7, 7, 3))
    assert RULE.hold(ending, closed=False, waited=5.0, size=9) is None
    assert RULE.hold(ending, closed=False, waited=5.0, size=7) is None
    assert RULE.hold(ending, closed=False, waited=5.0, size=3) == 1.0  # the quiet second
    # Before the end the same lanes wait for it (the dispatch wakes then).
    early = view(left=2, ends_in=4.0, due_sizes=(9, 7, 7, 3))
    assert RULE.hold(early, closed=False, waited=5.0, size=9) == pytest.approx(1.0)  # quiet
    assert RULE.hold(view(left=2, ends_in=2.6), closed=False, waited=5.0, size=9) == (
        pytest.approx(0.6)
    )


def test_the_spending_at_the_end_of_a_window_keeps_a_quarter_of_what_is_left_on_the_wire() -> None:
    # Others sharing the budget see the same 12 left: 3 of ours at once, then the answers say.
    for in_flight, goes in ((0, True), (2, True), (3, False)):
        ending = view(left=12, ends_in=0.5, due_sizes=(9,) * 20, in_flight=in_flight)
        assert (RULE.hold(ending, closed=False, waited=5.0, size=9) is None) is goes
    # One at a time when little is left.
    assert (
        RULE.hold(
            view(left=2, ends_in=0.5, due_sizes=(9, 9), in_flight=0),
            closed=False,
            waited=5.0,
            size=9,
        )
        is None
    )
    assert (
        RULE.hold(
            view(left=2, ends_in=0.5, due_sizes=(9, 9), in_flight=1),
            closed=False,
            waited=5.0,
            size=9,
        )
        is not None
    )


@settings(max_examples=300, deadline=None)
@given(
    closed=st.booleans(),
    waited=st.floats(0, 100),
    since=st.floats(0, 100),
    waiting=st.integers(0, 200),
    left=st.none() | st.integers(0, 200),
    ends_in=st.none() | st.floats(0, 20),
    sizes=st.lists(st.integers(1, 50), max_size=30),
    size=st.integers(1, 50),
    max_wait=st.floats(0, 60),
)
def test_a_hold_never_outlasts_the_maximum_wait_the_quiet_or_the_window(
    closed: bool,
    waited: float,
    since: float,
    waiting: int,
    left: int | None,
    ends_in: float | None,
    sizes: list[int],
    size: int,
    max_wait: float,
) -> None:
    rule = Scarcity(max_wait=max_wait)
    route = view(
        waiting=waiting,
        left=left,
        ends_in=ends_in,
        since_added=since,
        due_sizes=tuple(sorted(sizes, reverse=True)),
    )
    hold = rule.hold(route, closed=closed, waited=waited, size=size)
    if hold is None:
        return
    assert not closed and left is not None and waiting > left
    assert 0 < hold <= max_wait - waited and hold <= rule.quiet - since
    if ends_in is not None and ends_in > rule.spend_before:
        assert hold <= ends_in - rule.spend_before  # it is looked at again as the window ends


# -- the dispatch against a window budget --------------------------------------------------------


@dataclass
class WindowBudget:
    """One rate-limit route: `capacity` requests per `window` seconds, on a simulated clock."""

    capacity: int
    length: float  # seconds
    tells_reset: bool = True  # answers say when the window resets
    now: float = 0.0
    used: dict[int, int] = field(default_factory=dict)

    def _left(self) -> int:
        return self.capacity - self.used.get(int(self.now // self.length), 0)

    def admitted_on(self, route: Route) -> str:
        return "segments"

    def delay(self, route: Route) -> float | None:
        if self._left() > 0:
            return 0.0
        return self.length - self.now % self.length

    def window(self, route: Route) -> Window:
        if not self.used:
            return Window(None, None)  # no answer yet: the first request finds out
        ends_in = self.length - self.now % self.length if self.tells_reset else None
        return Window(self._left(), ends_in)

    def grant(self, route: Route, waited: float) -> Permit:
        window = int(self.now // self.length)
        self.used[window] = self.used.get(window, 0) + 1
        return Permit(sum(self.used.values()), waited)


@dataclass
class Run:
    sent: list[tuple[float, Batch]]  # (when, batch)

    def applied(self, start: float, end: float) -> int:
        return sum(len(batch) for at, batch in self.sent if start <= at < end)

    def requests(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.sent if start <= at < end)


def simulate(
    arrivals: list[tuple[float, str]],
    *,
    scarcity: Scarcity | None,
    until: float,
    capacity: int = 20,
    window: float = 10.0,
    batch: int = 50,
    linger: float = 0.2,
    step: float = 0.1,
    tells_reset: bool = True,
) -> Run:
    """Events (time, segment) fed to a batcher; a dispatch pass every `step` seconds."""
    budget = WindowBudget(capacity, window, tells_reset)
    batcher = Batcher(max_size=batch, linger=linger)
    held: dict[str, float] = {}
    run = Run([])
    pending_arrivals = sorted(arrivals)
    index = 0
    ticks = int(until / step)
    for tick in range(ticks + 1):
        now = budget.now = round(tick * step, 6)
        while index < len(pending_arrivals) and pending_arrivals[index][0] <= now:
            batcher.add(pending(event_dict(key=pending_arrivals[index][1])), now)
            index += 1
        admission = _Admission(budget, held, now, batcher.heads(now), scarcity)  # type: ignore[arg-type]
        for cut in batcher.ready(now, 16, admission.admit):
            run.sent.append((now, cut))
            batcher.finished(cut.route.resource)  # answered at once
    return run


def steady(rate_per_lane: float, lanes: int, seconds: float) -> list[tuple[float, str]]:
    gap = 1 / rate_per_lane
    return [
        (round(lane / lanes * gap + n * gap, 3), f"s{lane}")
        for lane in range(lanes)
        for n in range(int(seconds * rate_per_lane))
    ]


def test_a_steady_stream_under_a_route_limit_fills_its_requests_from_the_first_window() -> None:
    # 100 events/s over 100 segments, 20 requests of 50 per 10 s: the bound is 100 events/s.
    # Each segment fills at one event per second, so no policy can send more than 4,000 of
    # the first minute's 6,000 events (windows of at most 10, 20, 30, 40 and 50 events per
    # request); spending every window's units on near-empty lanes as they come due sends
    # about 3,000.
    arrivals = steady(1.0, 100, 200)
    held = simulate(arrivals, scarcity=Scarcity(max_wait=60.0), until=220)
    greedy = simulate(arrivals, scarcity=None, until=220)
    assert held.applied(0, 60) >= 0.6 * 6000
    assert held.applied(0, 60) >= 1.2 * greedy.applied(0, 60)
    for run in (held, greedy):
        assert run.applied(120, 180) / (60 * 100) >= 0.98  # the steady state, either way
        assert all(run.requests(k * 10, k * 10 + 10) <= 20 for k in range(22))
    # Holding never made an event wait longer than spending at once did.
    waits = [max(at - batch.created_at for at, batch in run.sent) for run in (held, greedy)]
    assert waits[0] <= waits[1] + 1.0
    # Full requests, or nearly (spent before the window's end), from the seventh window on.
    assert all(len(batch) >= 49 for at, batch in held.sent if 60 <= at < 200)


def test_a_one_off_burst_is_not_held_once_its_route_is_quiet() -> None:
    # 100 segments get one event each, then nothing: holding would only add latency.
    arrivals = [(0.0, f"s{lane}") for lane in range(100)]
    held = simulate(arrivals, scarcity=Scarcity(max_wait=60.0), until=60)
    greedy = simulate(arrivals, scarcity=None, until=60)
    assert sum(len(b) for _, b in held.sent) == 100
    last = max(at for at, _ in held.sent)
    assert last <= max(at for at, _ in greedy.sent) + 1.5  # the quiet second and a step


def test_with_budget_to_spare_the_linger_alone_decides() -> None:
    # 20 events/s over 10 segments, 1,000 requests per 10 s: never fewer units than due lanes.
    arrivals = steady(2.0, 10, 60)
    held = simulate(arrivals, scarcity=Scarcity(max_wait=60.0), until=70, capacity=1000)
    greedy = simulate(arrivals, scarcity=None, until=70, capacity=1000)
    assert len(held.sent) > 100
    assert [(at, len(b)) for at, b in held.sent] == [(at, len(b)) for at, b in greedy.sent]


@pytest.mark.parametrize("max_wait", [5.0, 30.0])
def test_without_a_known_reset_a_filling_lane_is_held_until_the_maximum_wait(
    max_wait: float,
) -> None:
    arrivals = steady(1.0, 100, 120)
    run = simulate(arrivals, scarcity=Scarcity(max_wait=max_wait), until=130, tells_reset=False)
    # The first request finds out what the budget is; then the oldest lanes wait until they
    # have waited the maximum, not longer.
    (probe_at, _), (second_at, second) = run.sent[:2]
    assert probe_at < 1.0
    assert max_wait <= second_at - second.created_at <= max_wait + 0.2
    assert len(second) >= max_wait - 1
