"""One partition's commit position: which taken offsets may be committed. Pure, no I/O.

The commit invariant, enforced here (one `PartitionOffsets` per lease, see leases.py):

1. An offset is taken in the order consumed, each only once, never below one taken before.
2. It is marked done only after its outcome (and its dead-letter copy, where due) has been
   acknowledged by the broker.
3. The commit position is the first taken offset that is not done, or one past the last taken
   offset when every one is done (the start, before anything is taken). Batches for different
   URLs finish in any order; the position never passes a record still in the works.
4. A position is offered for commit only when it moved past the last one committed (the
   start counts as committed: it came from the group's committed offset or its reset).
5. Offsets that hold no record for us (transaction markers, aborted records under
   read_committed, records removed by compaction or retention) are passed over by the
   consumer; once it has passed them, `skip_to` moves `next` past them, so they hold nothing
   up: the commit position reaches them as soon as every record taken before them is done.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    __slots__ = ("_done", "_pending", "committed", "next")

    def __init__(self, start: int) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        # One past the last offset taken: where the next record taken must start, at least.
        self.next = start
        self.committed = start

    def take(self, offset: int) -> bool:
        """Start tracking a consumed record; False (and nothing tracked) for one already
        passed."""
        if offset < self.next:
            return False
        self._pending.append(offset)
        self.next = offset + 1
        return True

    def skip_to(self, offset: int) -> None:
        """Offsets below `offset` not taken yet hold no record for us (rule 5)."""
        if offset > self.next:
            self.next = offset

    def done(self, offset: int) -> None:
        pending = self._pending
        if pending and pending[0] <= offset < self.next:  # a second `done` cannot count twice
            self._done.add(offset)

    def position(self) -> int:
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
        return pending[0] if pending else self.next

    def to_commit(self) -> int | None:
        """The position, when it moved past the last one committed."""
        position = self.position()
        return position if position > self.committed else None

    def mark_committed(self, position: int) -> None:
        self.committed = max(self.committed, position)

    def pending(self) -> int:
        """Taken and not done."""
        return len(self._pending) - len(self._done)
