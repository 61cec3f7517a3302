"""Who owns a partition's records: one lease per assigned partition. Pure, no I/O.

The ownership rules, enforced here and by their callers (lifecycle.py, rebalancing.py,
pipeline.py, sender.py):

1. **Grant.** A lease is granted when the group assigns the partition to this member, starting
   at the consumer's position for it (the group's committed offset, or where
   `auto_offset_reset` puts a new group). The partition is paused from the moment the
   assignment is known (before the listener awaits anything) until its lease exists, so no
   record of it can be fetched for nobody.
2. **Take.** A fetched run of records is taken only by the *active* lease of its partition,
   and only where it continues the lease (`admit`): offsets below `next` were taken already
   and are skipped; a run that starts past `next` is taken only when the consumer's position
   was set to `next` before that fetch began (the offsets in between are ones the broker
   skips: transaction markers, compacted records). Anything else is not taken and the
   partition is seeked back to `next`, the first offset not taken: no record is ever passed
   over in silence. Runs of a partition without an active lease are not ours: not taken, and
   the next owner reads them from the committed offset.
2b. **Follow.** After every fetch, an active lease synced before it began compares its `next`
   with the consumer's position for the partition (the offset of the next record it would
   return). Past `next`: the consumer passed over offsets that hold no record for us
   (transaction markers, aborted or compacted records, a reset past retention) and `next`
   moves there (offsets.py, rule 5). Before `next`: the log no longer holds what the lease
   took (the offset was out of range and reset: a broker that lost its data, a topic
   re-created), and the lease must start again at the consumer's position (`BEHIND`).
3. **Finish.** A taken record is done when its outcome (and dead-letter copy) is acknowledged
   by the broker; the lease's commit position is its first taken offset not done (offsets.py).
4. **Revoke.** A lease is not active while the member's group membership is not current
   (membership.py: no word from the coordinator for a session, or told its generation or id
   is unknown): no request starts for it, nothing is taken for it (a run fetched meanwhile is
   fetched again), as if revoked, until the coordinator is heard again or the revoke comes.
   A revoked lease stops at once: it takes nothing more, and its batches start no
   request (no new batch, no retry, no narrowing step; the sender asks `Batch.live()` right
   before each request). Requests already on the wire are waited for, bounded by
   CONSUMER_REVOKE_TIMEOUT_MS (> LD_REQUEST_TIMEOUT_MS, so they end in time); outcomes of the
   answered ones are published and the done prefix committed. Then the lease ends: `done()`
   on it changes nothing, and this member sends nothing more for the partition's records.
5. **Rewind.** A partition whose records share a flight with a revoked one stops with it, at
   once (rule 4: a later batch of its own for the same URL would otherwise overtake the
   stopped one), and is rewound: its lease ends and a new one starts at its commit position
   (rules 1-2 again, locally), so the records the stopped batch held are taken and sent
   again, in order, never stranded.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.structs import TopicPartition

from consumer.service.membership import Membership
from consumer.service.offsets import PartitionOffsets


class LeaseState(enum.Enum):
    ACTIVE = "active"
    REVOKING = "revoking"  # no new work; what is on the wire finishes and is committed
    ENDED = "ended"


class Lease:
    """This member's claim on one partition for one assignment."""

    __slots__ = ("_membership", "offsets", "state", "synced_at", "tp")

    def __init__(
        self, tp: TopicPartition, start: int, fetch: int, membership: Membership | None = None
    ) -> None:
        self.tp = tp
        self.state = LeaseState.ACTIVE
        # The group membership it was granted under (membership.py): while it is not current,
        # the lease is not active (rule 4 applied by the member itself).
        self._membership = membership
        self.offsets = PartitionOffsets(start)
        # The fetch (numbered by `Leases.begin_fetch`) during which the consumer's position
        # was last set to `next`: runs of later fetches continue it (rule 2).
        self.synced_at = fetch

    @property
    def active(self) -> bool:
        membership = self._membership
        return self.state is LeaseState.ACTIVE and (membership is None or membership.current())

    def stop(self) -> None:
        """Rule 4's first half for one lease (no more taking or sending); its caller revokes
        or rewinds it."""
        if self.state is LeaseState.ACTIVE:
            self.state = LeaseState.REVOKING

    @property
    def next(self) -> int:
        return self.offsets.next

    def done(self, offset: int) -> bool:
        """An outcome is acknowledged; False (nothing changes) once the lease has ended."""
        if self.state is LeaseState.ENDED:
            return False
        self.offsets.done(offset)
        return True

    def __repr__(self) -> str:
        return f"Lease({self.tp.topic}[{self.tp.partition}], next={self.next}, {self.state.value})"


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with one fetched run of a partition."""

    take_from: int | None = None  # take the run's records from this offset on; None: none
    seek_to: int | None = None  # fetch the partition again from here


NOTHING = Admission()


class Follow(enum.Enum):
    SAME = "same"  # the consumer is where the lease is, or may not be compared now
    SKIPPED = "skipped"  # it passed over offsets without records: the lease moved with it
    BEHIND = "behind"  # its position is below the lease's: the lease must start again


def admit(lease: Lease | None, first: int, last: int, fetch: int) -> Admission:
    """Rule 2 for a run of offsets `first`..`last` returned by fetch number `fetch`."""
    if lease is None or lease.state is not LeaseState.ACTIVE:
        return NOTHING
    start = lease.next
    if not lease.active:  # the membership lapsed: not taken, and fetched again once current
        return Admission(seek_to=start)
    if last < start:
        return NOTHING  # every one was taken already
    if first <= start or lease.synced_at < fetch:
        return Admission(take_from=max(first, start))
    return Admission(seek_to=start)


class Leases:
    """The leases of this member, by partition, and the fetch counter rule 2 needs."""

    def __init__(self, membership: Membership | None = None) -> None:
        self._by_tp: dict[TopicPartition, Lease] = {}
        self.fetch = 0
        self.membership = membership

    def begin_fetch(self) -> int:
        """Number the fetch about to start; call right before `getmany`."""
        self.fetch += 1
        return self.fetch

    def grant(self, tp: TopicPartition, start: int) -> Lease:
        previous = self._by_tp.get(tp)
        if previous is not None:
            previous.state = LeaseState.ENDED
        lease = self._by_tp[tp] = Lease(tp, start, self.fetch, self.membership)
        return lease

    def get(self, tp: TopicPartition) -> Lease | None:
        return self._by_tp.get(tp)

    def admit(self, tp: TopicPartition, first: int, last: int, fetch: int) -> Admission:
        """Rule 2; on `seek_to` the caller seeks the consumer at once (no await between)."""
        lease = self._by_tp.get(tp)
        admission = admit(lease, first, last, fetch)
        if admission.seek_to is not None:
            assert lease is not None
            lease.synced_at = self.fetch
        return admission

    def follow(self, tp: TopicPartition, position: int | None, fetch: int) -> Follow:
        """Rule 2b after fetch number `fetch`: `position` is the consumer's for `tp` (None:
        unknown)."""
        lease = self._by_tp.get(tp)
        if position is None or lease is None or not lease.active or lease.synced_at >= fetch:
            return Follow.SAME
        if position > lease.next:
            lease.offsets.skip_to(position)
            return Follow.SKIPPED
        if position < lease.next:
            return Follow.BEHIND
        return Follow.SAME

    def resync(self) -> dict[TopicPartition, int]:
        """Every active lease is to be fetched again from its `next` (the caller seeks each at
        once, no await between): after a fetch error, aiokafka may have moved positions past
        records it never returned."""
        found = {}
        for tp, lease in self._by_tp.items():
            if lease.state is LeaseState.ACTIVE:  # a lapsed membership included
                lease.synced_at = self.fetch
                found[tp] = lease.next
        return found

    def revoke(self, tps: Iterable[TopicPartition]) -> list[Lease]:
        """Rule 4, first half: the leases of `tps` stop taking and sending. Returns every one
        not ended, those another caller already revokes included: a rebalance during a
        stop (or a stop during a rebalance) must wait for the same wire."""
        revoked = []
        for tp in tps:
            lease = self._by_tp.get(tp)
            if lease is not None and lease.state is not LeaseState.ENDED:
                lease.state = LeaseState.REVOKING
                revoked.append(lease)
        return revoked

    def unended(self) -> list[Lease]:
        return [lease for lease in self._by_tp.values() if lease.state is not LeaseState.ENDED]

    def end(self, leases: Iterable[Lease]) -> None:
        """Rule 4, second half: forget them; late outcomes change nothing."""
        for lease in leases:
            lease.state = LeaseState.ENDED
            if self._by_tp.get(lease.tp) is lease:
                del self._by_tp[lease.tp]

    def all(self) -> list[Lease]:
        return list(self._by_tp.values())

    def active(self) -> list[Lease]:
        return [lease for lease in self._by_tp.values() if lease.active]

    def partitions(self) -> set[TopicPartition]:
        return {tp for tp, lease in self._by_tp.items() if lease.active}

    def to_commit(self, leases: Iterable[Lease] | None = None) -> dict[Lease, int]:
        """Commit positions that moved, of live leases (all, or those given)."""
        chosen = self._by_tp.values() if leases is None else leases
        found: dict[Lease, int] = {}
        for lease in chosen:
            if lease.state is LeaseState.ENDED:
                continue
            position = lease.offsets.to_commit()
            if position is not None:
                found[lease] = position
        return found

    def pending(self, leases: Iterable[Lease] | None = None) -> int:
        chosen = self._by_tp.values() if leases is None else leases
        return sum(
            lease.offsets.pending() for lease in chosen if lease.state is not LeaseState.ENDED
        )
