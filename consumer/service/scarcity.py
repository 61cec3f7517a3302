"""When a route's budget cannot carry every lane: which due lanes are worth a unit now.

LaunchDarkly's rate limits are per route and window, and shared with every other client of
the account: a unit spent on a request carrying one event is a unit that neither a full
request of ours nor another client gets. Late binding (batcher.py) keeps a throttled lane
filling while the budget is spent; this adds the other half, at the start of a window and
after a quiet period. A route is *scarce* when the lanes waiting on it (due, or still in
their linger: each will want a request) outnumber the units left in its window. On a scarce
route a due lane is cut only when waiting cannot make it fuller, has lasted long enough, or
would waste the window:

1. its head batch is closed: full, or ended by another path, the comment limit or a flush;
2. its oldest event has waited `max_wait` (no lane starves);
3. its route is quiet: no event joined any of its lanes for `quiet` seconds, so nothing is
   filling and waiting would only add latency (a one-off burst);
4. the window ends within `spend_before` seconds and the lane is among the fullest due ones
   the units left can carry: a unit left at the reset is lost to us, so what is left goes to
   the lanes that gained most from waiting. A quarter of what is left at most is on the wire
   at once (at least one request): the others sharing the budget see the same number left
   and spend it too, and each answer says what all of them have spent, so the spending stays
   within the budget rather than each client spending all of it at once;

otherwise it is held and keeps filling. With units to spare, or while the budget is not known
(no answer on the route yet: the first request finds out), the linger alone decides, as it
always did: a stream the budget can carry sees no change in latency. Several members sharing
a route each read what is left from the server's answers (throttle.py), so each holds back on
its own and spends what it sees left at the window's end.

Pure: time and the budget are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

# A route whose lanes took no event for this long is not filling: waiting gains nothing. One
# second covers streams of one event per second per route and more; sparser routes are not
# worth holding for.
QUIET_S = 1.0
# What is left of a window is spent this long before its reset: enough for requests sent a
# quarter at a time to reach the server in that window.
SPEND_BEFORE_S = 2.0


@dataclass(frozen=True, slots=True)
class RouteView:
    """One rate-limit route as a dispatch pass sees it."""

    waiting_lanes: int  # lanes with events waiting, due or not
    units_left: int | None  # what its budget can still give in this window (None: not known)
    window_ends_in: float | None  # seconds until the window resets (None: not known)
    since_added: float  # seconds since any of its lanes took an event
    due_sizes: Sequence[int]  # events in the head of each due lane, fullest first
    in_flight: int = 0  # requests of ours on the route not answered yet

    @property
    def scarce(self) -> bool:
        return self.units_left is not None and self.waiting_lanes > self.units_left

    def granted(self, size: int) -> RouteView:
        """The same route after one of its due lanes (of `size` events) took a unit."""
        sizes = list(self.due_sizes)
        if size in sizes:
            sizes.remove(size)
        return replace(
            self,
            waiting_lanes=self.waiting_lanes - 1,
            units_left=None if self.units_left is None else self.units_left - 1,
            due_sizes=tuple(sizes),
            in_flight=self.in_flight + 1,
        )

    def spending(self) -> bool:
        """Another request may go in the spending at the window's end (rule 4)."""
        assert self.units_left is not None
        return self.in_flight < max(1, self.units_left // 4)

    def fullest(self) -> int:
        """The size a due lane needs to be among those the units left can carry."""
        assert self.units_left is not None
        if not self.due_sizes or self.units_left <= 0:
            return 0
        return self.due_sizes[min(self.units_left, len(self.due_sizes)) - 1]


@dataclass(frozen=True, slots=True)
class Scarcity:
    max_wait: float  # seconds a due lane may be held to fill
    quiet: float = QUIET_S
    spend_before: float = SPEND_BEFORE_S

    def hold(self, route: RouteView, *, closed: bool, waited: float, size: int) -> float | None:
        """Seconds to hold a due lane back to let it fill; None: cut it now (if admitted).

        `waited`: age of the lane's oldest event; `size`: events its head would send."""
        if not route.scarce or closed:
            return None
        holds = [self.max_wait - waited, self.quiet - route.since_added]
        if route.window_ends_in is not None:
            ending = route.window_ends_in - self.spend_before
            if ending <= 0 and size >= route.fullest() and route.spending():
                return None
            if ending > 0:
                holds.append(ending)
        hold = min(holds)
        return hold if hold > 0 else None
