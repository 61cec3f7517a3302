"""Which partitions to stop fetching while too many records are pending. Pure, no I/O.

Records taken and not finished (`pending`) are bounded by CONSUMER_MAX_PENDING_EVENTS: past
it, fetching pauses until they are down to half of it. A resource that keeps failing holds
its records for its whole retry budget, and everything consumed after them for it waits
behind them (order per resource): its partitions fill up while the others drain as usual.
Pausing every partition then would stop healthy resources for a failing one (issue 24), so:

1. under the limit (or, once past it, until pending is down to half of it), nothing pauses;
2. past it, only the partitions holding more than their fair share (the limit divided by the
   partitions held) pause; the others go on. What they add is bounded by their shares, so
   the total stays under twice the limit;
3. a partition paused for pressure resumes once it is down to half its share, or once the
   pressure is over.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka.structs import TopicPartition


class Backpressure:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.on = False  # past the limit, and not yet down to half of it
        self.paused: set[TopicPartition] = set()

    def update(self, pending: Mapping[TopicPartition, int]) -> set[TopicPartition]:
        """The partitions to keep paused for pressure, given each one's pending records."""
        total = sum(pending.values())
        if total >= self.limit:
            self.on = True
        elif total < max(1, self.limit // 2):
            self.on = False
        if not self.on:
            self.paused = set()
            return self.paused
        share = max(1, self.limit // max(1, len(pending)))
        self.paused = {
            tp
            for tp, count in pending.items()
            if count >= share or (tp in self.paused and count >= max(1, share // 2))
        }
        return self.paused
