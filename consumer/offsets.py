"""Per-partition offset tracking: which input offsets may be committed. Pure, no I/O.

The commit invariant, enforced here:

1. An offset is tracked when its record is consumed, in the order consumed.
2. It is marked done only after its outcome (and its dead-letter copy, where due) has been
   acknowledged by the broker.
3. A partition's commit position is its first tracked offset that is not done, or one past the
   highest tracked offset when every one is done. Batches for different URLs finish in any
   order; the position never passes a record still in the works.
4. A position is offered for commit only when it moved past the last one committed (or past
   the first offset tracked, before any commit).
5. A revoked partition is forgotten. Tickets from an earlier assignment of the same partition
   carry an older generation and are ignored, so late work can never advance a new owner's
   position.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

_generations = itertools.count(1)


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ is slow
class Ticket:
    """The claim of one consumed record on its partition's commit position."""

    tp: TopicPartition
    offset: int
    generation: int


@dataclass(slots=True)
class _Partition:
    generation: int
    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    highest: int = -1
    # The position the partition started from, or the last one committed.
    committed: int | None = None

    def position(self) -> int | None:
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())
        if self.pending:
            return self.pending[0]
        return self.highest + 1 if self.highest >= 0 else None


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {}

    def track(self, tp: TopicPartition, offset: int) -> Ticket | None:
        """Start tracking a consumed record; None when this offset is already tracked."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _Partition(next(_generations))
        if offset <= state.highest:
            return None
        if state.committed is None:
            state.committed = offset  # where consumption started: nothing to commit before it
        state.pending.append(offset)
        state.highest = offset
        return Ticket(tp, offset, state.generation)

    def done(self, ticket: Ticket) -> bool:
        """Mark a record's outcome acknowledged; False for a ticket of an earlier assignment."""
        state = self._partitions.get(ticket.tp)
        if state is None or state.generation != ticket.generation:
            return False
        state.done.add(ticket.offset)
        return True

    def positions(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Commit positions that moved past the last committed ones."""
        chosen = self._partitions if tps is None else dict.fromkeys(tps)
        result: dict[TopicPartition, int] = {}
        for tp in chosen:
            state = self._partitions.get(tp)
            if state is None:
                continue
            position = state.position()
            if position is not None and state.committed is not None and position > state.committed:
                result[tp] = position
        return result

    def position(self, tp: TopicPartition) -> int | None:
        """The commit position now (whether or not it was committed yet)."""
        state = self._partitions.get(tp)
        return state.position() if state is not None else None

    def committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or position > state.committed):
                state.committed = position

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._partitions.pop(tp, None)

    def pending(self, tps: Iterable[TopicPartition] | None = None) -> int:
        """Records tracked and not yet done (in the given partitions, or in all)."""
        chosen = self._partitions.keys() if tps is None else tps
        total = 0
        for tp in chosen:
            state = self._partitions.get(tp)
            if state is not None:
                total += len(state.pending) - len(state.done)
        return total

    def partitions(self) -> list[TopicPartition]:
        return list(self._partitions)
