"""Groups valid events into requests, per resource and path. Pure, no I/O; time is passed in.

Rules (contract section 2):
- one *lane* per resource (a segment or flag in one environment, `Route.resource`): its
  events wait in the order they were consumed, whatever path (URL) each goes to;
- consecutive events for one path join one batch; an event for another path of the same
  resource closes the open batch (a batch is one request: one path);
- a batch closes at `max_size` instructions, before it would pass `max_target_operations`
  (the segment PATCH takes at most 1,500 keys), or before a new distinct comment would make
  the joined comment longer than `comment_max_chars`: no comment is ever dropped;
- an open batch becomes due when its oldest event has waited `linger` seconds (counted from
  the record's timestamp when the caller gives the wall clock, as it does unless it reads a
  backlog: `reading_backlog`), or at once when flushed (stop); a closed batch is due at once;
- the waiting events of revoked leases are taken back out (`drop_leases`): their new owner
  sends them; a batch handed out is `live()` only while every lease it holds records of is
  active (leases.py, rule 4);
- **order per resource**: at most one batch per resource is handed out at a time (`ready`
  ... `finished`), and only the lane's head: a later change to a resource is never sent
  while an earlier one, to any of its paths, is unsent or in flight (the caller holds the
  lane until the batch is finished, including while its outcome is unknown: sender.py);
  lanes that wait longest go first;
- late binding: a due lane is cut into a request only when the caller's `admit` says that
  request can go now (rate limits, the API gate). Until then its events stay in the lane,
  which keeps filling up to the size cap: a throttled path sends full requests, not the
  small batches that were due when the budget ran out.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka.structs import TopicPartition

from consumer.launchdarkly.routing import Route
from consumer.service.leases import Lease
from consumer.service.records import PendingEvent

COMMENT_SEPARATOR = "; "


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class Batch:
    route: Route
    created_at: float
    id: str = field(default_factory=new_batch_id)
    items: list[PendingEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    target_operations: int = 0

    @property
    def path(self) -> str:
        return self.route.path

    @property
    def comment(self) -> str | None:
        return COMMENT_SEPARATOR.join(self.comments) or None

    def comment_length_with(self, comment: str | None) -> int:
        current = len(self.comment or "")
        if not comment or comment in self.comments:
            return current
        return current + (len(COMMENT_SEPARATOR) if self.comments else 0) + len(comment)

    def append(self, item: PendingEvent) -> None:
        self.items.append(item)
        self.target_operations += item.target_operations
        comment = item.event.comment
        if comment and comment not in self.comments:
            self.comments.append(comment)

    def partitions(self) -> set[TopicPartition]:
        return {item.record.tp for item in self.items}

    def leases(self) -> set[Lease]:
        return {item.record.lease for item in self.items}

    def live(self) -> bool:
        """Whether a request may still be sent for it: every lease it holds records of is
        active. Asked right before each request (a batch rarely spans more than one)."""
        lease = None
        for item in self.items:
            if item.record.lease is not lease:
                lease = item.record.lease
                if not lease.active:
                    return False
        return True

    def offset_ranges(self) -> dict[str, str]:
        """`topic[partition]` -> `first-last` offsets of the events in this batch."""
        ranges: dict[tuple[str, int], list[int]] = {}
        for item in self.items:
            record = item.record
            found = ranges.get((record.topic, record.partition))
            if found is None:
                ranges[(record.topic, record.partition)] = [record.offset, record.offset]
            elif record.offset < found[0]:
                found[0] = record.offset
            elif record.offset > found[1]:
                found[1] = record.offset
        return {f"{t}[{p}]": f"{first}-{last}" for (t, p), (first, last) in ranges.items()}

    def sub(self, items: list[PendingEvent]) -> Batch:
        """A new request made of some of this batch's items (narrowing down a failure)."""
        batch = Batch(self.route, self.created_at)
        for item in items:
            batch.append(item)
        return batch

    def __len__(self) -> int:
        return len(self.items)


class Head(NamedTuple):
    """A lane's head: what cutting the lane now would send."""

    head: Batch
    closed: bool  # the head can no longer grow
    due: bool  # closed, or its oldest event waited the linger
    last_added: float  # when the lane last took an event (monotonic seconds)


@dataclass(slots=True)
class _Lane:
    """Everything waiting for one resource, in consumption order."""

    closed: deque[Batch] = field(default_factory=deque)
    open: Batch | None = None
    in_flight: bool = False
    last_added: float = 0.0

    def head(self) -> Batch:
        head = self.closed[0] if self.closed else self.open
        assert head is not None
        return head

    def empty(self) -> bool:
        return not self.closed and self.open is None


class Batcher:
    def __init__(
        self,
        *,
        max_size: int,
        linger: float,
        comment_max_chars: int = 4_000,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.linger = linger
        self.comment_max_chars = comment_max_chars
        self._lanes: dict[str, _Lane] = {}
        self._waiting = 0

    # -- adding ---------------------------------------------------------------------------

    def add(self, item: PendingEvent, now: float, wall_ms: float | None = None) -> None:
        """Add an event consumed at `now` (monotonic seconds).

        `wall_ms`: the wall clock now, in epoch milliseconds; with it, the linger counts from
        the record's timestamp rather than from `now`, since the time it spent in the topic
        is time it already waited (at most the linger; a timestamp in the future counts as
        now, so clock skew can shorten a wait, never lengthen it).
        """
        lane = self._lanes.get(item.route.resource)
        if lane is None:
            lane = self._lanes[item.route.resource] = _Lane()
        batch = lane.open
        if batch is not None and not self._fits(batch, item):
            self._close(lane)
            batch = None
        if batch is None:
            created_at = now
            timestamp = item.record.timestamp
            if wall_ms is not None and timestamp > 0:
                created_at -= min(self.linger, max(0.0, (wall_ms - timestamp) / 1000))
            batch = lane.open = Batch(item.route, created_at)
        batch.append(item)
        lane.last_added = now
        self._waiting += 1
        if len(batch) >= self.max_size:
            self._close(lane)

    def _fits(self, batch: Batch, item: PendingEvent) -> bool:
        if batch.route.path != item.route.path:
            return False  # another path of the resource: a request of its own, after this one
        limit = item.route.spec.max_target_operations
        if limit is not None and batch.target_operations + item.target_operations > limit:
            return False
        comment = item.event.comment
        if not comment or comment in batch.comments:
            return True  # the joined comment does not grow
        return batch.comment_length_with(comment) <= self.comment_max_chars

    @staticmethod
    def _close(lane: _Lane) -> None:
        if lane.open is not None:
            lane.closed.append(lane.open)
            lane.open = None

    # -- handing out ------------------------------------------------------------------------

    def ready(
        self, now: float, limit: int, admit: Callable[[Head], bool] = lambda due: True
    ) -> list[Batch]:
        """Up to `limit` due batches, oldest first, each the head of a resource's lane with
        nothing in flight, and admitted: `admit(due)` is asked once per due lane, oldest
        first, and a lane is cut only when it answers True (it takes whatever the request
        needs, e.g. a rate-limit unit). A lane not admitted is left as it is and goes on
        filling."""
        if limit <= 0:
            return []
        batches: list[Batch] = []
        for due in self.due(now):
            if not admit(due):
                continue
            lane = self._lanes[due.head.route.resource]
            if not lane.closed:
                self._close(lane)
            batch = lane.closed.popleft()
            lane.in_flight = True
            self._waiting -= len(batch)
            batches.append(batch)
            if len(batches) >= limit:
                break
        return batches

    def heads(self, now: float) -> list[Head]:
        """The head of every lane with nothing in flight, due or not."""
        return [
            Head(
                lane.head(),
                bool(lane.closed),
                bool(lane.closed) or now >= lane.head().created_at + self.linger,
                lane.last_added,
            )
            for lane in self._lanes.values()
            if not lane.in_flight
        ]

    def due(self, now: float) -> list[Head]:
        """The heads of the lanes that are due (closed, or the linger passed), oldest first."""
        due = [head for head in self.heads(now) if head.due]
        due.sort(key=lambda head: (head.head.created_at, head.head.route.resource))
        return due

    def finished(self, resource: str) -> None:
        """The batch handed out for `resource` is finished; the next one may go."""
        lane = self._lanes.get(resource)
        if lane is None:
            return
        lane.in_flight = False
        if lane.empty():
            del self._lanes[resource]

    def next_due(self, now: float) -> float | None:
        """Seconds until a lane that is not due yet becomes due; None when there is none.

        Lanes already due are not counted: they wait for a slot or for `admit`, and the
        caller knows when those come free."""
        soonest: float | None = None
        for lane in self._lanes.values():
            if lane.in_flight or lane.closed or lane.open is None:
                continue
            wait = lane.open.created_at + self.linger - now
            if wait <= 0:
                continue
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    # -- flushing and giving up ---------------------------------------------------------------

    def flush(self, predicate: Callable[[Batch], bool] | None = None) -> None:
        """Close open batches (all, or those matching) so they are due at once."""
        for lane in self._lanes.values():
            if lane.open is not None and (predicate is None or predicate(lane.open)):
                self._close(lane)

    def drop_leases(self, leases: Iterable[Lease]) -> list[PendingEvent]:
        """Take back every waiting (not handed out) event taken under these leases."""
        wanted = set(leases)
        dropped: list[PendingEvent] = []

        def without(batch: Batch) -> Batch | None:
            keep = [item for item in batch.items if item.record.lease not in wanted]
            if len(keep) == len(batch):
                return batch
            dropped.extend(item for item in batch.items if item.record.lease in wanted)
            return batch.sub(keep) if keep else None

        for resource in list(self._lanes):
            lane = self._lanes[resource]
            lane.closed = deque(b for b in map(without, lane.closed) if b is not None)
            lane.open = without(lane.open) if lane.open is not None else None
            if lane.empty() and not lane.in_flight:
                del self._lanes[resource]
        self._waiting -= len(dropped)
        return dropped

    # -- state ----------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Events not yet handed out."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Resources with a batch handed out."""
        return sum(1 for lane in self._lanes.values() if lane.in_flight)

    def idle(self) -> bool:
        return not self._lanes


# Fetches that come back empty for this long end a backlog whatever the end offsets say.
BACKLOG_STALL = 1.0


def reading_backlog(
    fetched: dict[TopicPartition, int],
    ends: dict[TopicPartition, int | None],
    *,
    since_records: float,
    threshold: int,
) -> bool:
    """Whether a backlog is being read: at least `threshold` records (a full fetch) wait on
    the broker or in the fetch buffer beyond the offsets handed to us, and fetches still
    return records (`since_records`: seconds since one last did). A steady stream leaves a
    few records behind each fetch, not a full one; one empty fetch while the next response
    is on its way does not end a backlog, but offsets that never come back as records (an
    aborted transaction at the end of a partition) must not keep batches open for long."""
    if since_records > BACKLOG_STALL:
        return False
    lag = 0
    for tp, position in fetched.items():
        end = ends.get(tp)
        if end is not None and end > position:
            lag += end - position
    return lag >= threshold
