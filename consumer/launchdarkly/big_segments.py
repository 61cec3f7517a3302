"""Big segments: which segments are big (the kind cache), and how a batch of one segment's
events becomes requests (`plan`). Pure, no I/O; time is passed in.

A big segment (`unbounded: true` in the segment read; list-based segments over 15,000 entries
and synced segments) does not take target changes through the segment PATCH but through
`POST .../contexts` (`.../users` for the `*Users` kinds), whose `SegmentUserState` body lists
keys to add and remove per side. Every event for a segment waits in the segment PATCH's lane
(routing.py), whatever the segment's kind, so one lane keeps them in order; the sender asks
for the kind when it sends the lane's batch, and `plan` turns the batch into requests:

- a standard segment: one segment PATCH, as always;
- a big segment: consecutive target events merge into one body while they go to the same
  endpoint and the request stays within 1,500 distinct keys; otherwise a new request starts
  there. The body is their *net* change (routing.segment_user_state: per side, a key's last
  instruction wins), which leaves what applying them one by one leaves, in one request; an
  event whose change a later one undid (`superseded`) still succeeds with the request, and
  its outcome says so. An event is never split over two requests (it has one outcome).
  `updateName` still goes to the segment PATCH.
- an event whose context kind is not the big segment's (`*Users` events are of kind `user`)
  is rejected before any request (`context_kind_mismatch`); it changes nothing, so merging
  goes on across it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from consumer.contract.events import MAX_TARGET_VALUES, SegmentTargets, SegmentUsers
from consumer.launchdarkly.routing import Endpoint, Route, big_segment_route
from consumer.service.records import PendingEvent

MAX_KEYS_PER_REQUEST = MAX_TARGET_VALUES
# What a big segment without `unboundedContextKind` targets: big segments from before
# contexts were user segments (see docs/assumptions.md).
DEFAULT_CONTEXT_KIND = "user"


@dataclass(frozen=True, slots=True)
class SegmentKind:
    big: bool
    context_kind: str | None = None  # a big segment's `unboundedContextKind`

    @classmethod
    def from_segment(cls, body: Any) -> SegmentKind | None:
        """From the segment read's answer; None when it does not say."""
        if not isinstance(body, dict):
            return None
        unbounded = body.get("unbounded")
        if unbounded is not True:
            return STANDARD if unbounded in (False, None) else None
        kind = body.get("unboundedContextKind")
        return cls(True, kind if isinstance(kind, str) and kind else DEFAULT_CONTEXT_KIND)

    def describe(self) -> str:
        return f"big segment of {self.context_kind} contexts" if self.big else "standard segment"


STANDARD = SegmentKind(False)


def needs_kind(items: list[PendingEvent]) -> bool:
    """Whether where these segment events go depends on the segment's kind."""
    return any(isinstance(p.event.instruction, SegmentTargets | SegmentUsers) for p in items)


# ---------------------------------------------------------------------------------------------
# The kind cache


@dataclass(slots=True)
class KindCache:
    """Segment kinds by segment (the segment PATCH's path), each for `ttl` seconds after it was
    read. An entry is replaced by a fresh read (`put`): after its lifetime, and when a write's
    answer says the segment is not what the entry thought (the sender re-reads then)."""

    ttl: float
    max_entries: int = 10_000
    _entries: OrderedDict[str, tuple[SegmentKind, float]] = field(default_factory=OrderedDict)

    def get(self, segment: str, now: float) -> SegmentKind | None:
        found = self._entries.get(segment)
        if found is None:
            return None
        kind, read_at = found
        if now - read_at >= self.ttl:
            del self._entries[segment]
            return None
        return kind

    def put(self, segment: str, kind: SegmentKind, now: float) -> None:
        self._entries.pop(segment, None)
        self._entries[segment] = (kind, now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, segment: str) -> None:
        self._entries.pop(segment, None)

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------------------------
# Planning a batch


@dataclass(slots=True)
class Step:
    """One request: its route and the events it carries, in order."""

    route: Route
    items: list[PendingEvent] = field(default_factory=list)


@dataclass(slots=True)
class Mismatch:
    """An event rejected before any request: its context kind is not the big segment's."""

    item: PendingEvent
    message: str


@dataclass(slots=True)
class _Body:
    """The key lists of one big-segment request being merged."""

    step: Step
    lists: dict[str, set[str]] = field(default_factory=dict)  # side -> distinct keys
    keys: int = 0

    def takes(self, endpoint: Endpoint, side: str, values: list[str]) -> bool:
        if self.step.route.endpoint is not endpoint:
            return False
        return self.keys + len(self._new(side, values)) <= MAX_KEYS_PER_REQUEST

    def _new(self, side: str, values: list[str]) -> set[str]:
        return set(values) - self.lists.get(side, set())

    def add(self, item: PendingEvent, side: str, values: list[str]) -> None:
        new = self._new(side, values)
        self.lists.setdefault(side, set()).update(new)
        self.keys += len(new)
        self.step.items.append(item)


def plan(segment: Route, items: list[PendingEvent], kind: SegmentKind) -> list[Step | Mismatch]:
    """The requests (and rejections) for one segment's events, in their order."""
    if not kind.big:
        return [Step(segment, list(items))]
    planned: list[Step | Mismatch] = []
    body: _Body | None = None
    patch: Step | None = None
    for item in items:
        instruction = item.event.instruction
        if not isinstance(instruction, SegmentTargets | SegmentUsers):  # updateName
            if patch is None:
                patch = Step(segment)
                planned.append(patch)
                body = None
            patch.items.append(item)
            continue
        if isinstance(instruction, SegmentUsers):
            endpoint, context_kind = Endpoint.BIG_SEGMENT_USERS, "user"
        else:
            endpoint, context_kind = Endpoint.BIG_SEGMENT_CONTEXTS, instruction.contextKind
        if context_kind != kind.context_kind:
            planned.append(
                Mismatch(
                    item,
                    f"{instruction.kind} targets {context_kind} contexts, but this is a big"
                    f" segment of {kind.context_kind} contexts",
                )
            )
            continue
        side = "included" if "Included" in instruction.kind else "excluded"
        values = instruction.values
        if body is None or not body.takes(endpoint, side, values):
            body = _Body(Step(big_segment_route(segment, endpoint)))
            planned.append(body.step)
            patch = None
        body.add(item, side, values)
    return planned


def superseded(items: list[PendingEvent]) -> dict[int, list[str]]:
    """For one big-segment request's events, in order: position -> the keys whose change a
    later event of the request undid (its change was applied as part of the net change that
    the body carries, not as its own)."""
    last: dict[tuple[str, str], int] = {}  # (side, key) -> the position of its last change
    for position, item in enumerate(items):
        instruction = item.event.instruction
        if isinstance(instruction, SegmentTargets | SegmentUsers):
            side = "included" if "Included" in instruction.kind else "excluded"
            for key in instruction.values:
                last[(side, key)] = position
    found: dict[int, list[str]] = {}
    for position, item in enumerate(items):
        instruction = item.event.instruction
        if isinstance(instruction, SegmentTargets | SegmentUsers):
            side = "included" if "Included" in instruction.kind else "excluded"
            undone = [key for key in instruction.values if last[(side, key)] != position]
            if undone:
                found[position] = undone
    return found


def net_change_item(undone: list[str]) -> dict[str, Any]:
    """The outcome `item` of an event applied as part of a net change: the keys whose change
    a later event of the same request undid (docs: outcomes)."""
    return {"netChange": {"undoneKeys": undone}}
