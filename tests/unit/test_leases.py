"""The ownership rules of leases.py: what a fetched run may be taken by, and the lease's
lifecycle. The property test drives a model of a partition log and a consumer whose fetches
may straddle a new assignment and return runs from anywhere."""

from __future__ import annotations

from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.service.leases import Admission, Follow, Lease, Leases, LeaseState, admit

TP = TopicPartition("in", 0)


def test_a_run_that_continues_the_lease_is_taken() -> None:
    lease = Lease(TP, start=10, fetch=0)
    assert admit(lease, 10, 19, fetch=1) == Admission(take_from=10)


def test_offsets_taken_before_are_skipped() -> None:
    lease = Lease(TP, start=10, fetch=0)
    lease.offsets.take(10)
    lease.offsets.take(11)
    assert admit(lease, 8, 15, fetch=1) == Admission(take_from=12)
    assert admit(lease, 8, 11, fetch=1) == Admission()


def test_a_gap_is_trusted_only_when_the_position_was_set_before_the_fetch() -> None:
    lease = Lease(TP, start=10, fetch=5)
    # Fetch 5 was under way when the lease was granted: its run may come from anywhere.
    assert admit(lease, 14, 20, fetch=5) == Admission(seek_to=10)
    # Fetch 6 began after: the broker skipped 10-13 (transaction markers, compaction).
    assert admit(lease, 14, 20, fetch=6) == Admission(take_from=14)


def test_runs_are_not_taken_without_an_active_lease() -> None:
    lease = Lease(TP, start=0, fetch=0)
    assert admit(None, 0, 5, fetch=1) == Admission()
    lease.state = LeaseState.REVOKING
    assert admit(lease, 0, 5, fetch=1) == Admission()


def test_a_seek_resyncs_the_lease() -> None:
    leases = Leases()
    fetch = leases.begin_fetch()
    leases.grant(TP, 3)
    assert leases.admit(TP, 7, 9, fetch) == Admission(seek_to=3)
    following = leases.begin_fetch()
    assert leases.admit(TP, 5, 9, following) == Admission(take_from=5)


def test_done_after_the_end_changes_nothing() -> None:
    leases = Leases()
    lease = leases.grant(TP, 0)
    lease.offsets.take(0)
    assert leases.revoke([TP]) == [lease]
    assert lease.done(0)  # a revoking lease still finishes what was on the wire
    assert leases.to_commit() == {lease: 1}
    lease.offsets.take(1)
    leases.end([lease])
    assert not lease.done(1)
    assert leases.get(TP) is None
    assert leases.to_commit([lease]) == {}
    assert leases.pending([lease]) == 0


def test_a_new_grant_ends_the_previous_lease() -> None:
    leases = Leases()
    old = leases.grant(TP, 0)
    new = leases.grant(TP, 5)
    assert old.state is LeaseState.ENDED and new.active
    assert leases.partitions() == {TP}


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_lease_takes_every_record_from_its_start_in_order_once(data: st.DataObject) -> None:
    """Rule 2 as a property. The log has gaps (offsets the broker skips). A fetch returns a
    run from the consumer's position, except one under way while a new lease was granted,
    which may return a run from anywhere in the log (a fetch straddling a rebalance). Records
    taken are finished in any order; a new lease starts at the previous one's commit
    position. Whatever happens, each lease takes exactly the log's offsets from its start to
    its `next`, in order, and once the straddling stops, everything is taken."""
    gaps = data.draw(st.lists(st.integers(min_value=1, max_value=3), min_size=5, max_size=40))
    log, offset = [], 0
    for gap in gaps:
        offset += gap
        log.append(offset)
    leases = Leases()
    lease = leases.grant(TP, 0)
    starts = {id(lease): 0}
    taken: dict[int, list[int]] = {id(lease): []}
    position = 0  # the consumer's fetch position

    def run_from(start: int, count: int) -> list[int]:
        return [o for o in log if o >= start][:count]

    def check(current: Lease) -> None:
        expected = [o for o in log if starts[id(current)] <= o < current.next]
        assert taken[id(current)] == expected

    def fetch(straddle: bool) -> None:
        nonlocal lease, position
        number = leases.begin_fetch()
        if straddle:  # a rebalance completes while this fetch waits: a new lease
            restart = lease.offsets.position()
            leases.end([lease])
            lease = leases.grant(TP, restart)
            starts[id(lease)], taken[id(lease)] = restart, []
            position = restart
            start = data.draw(st.sampled_from([0, *log]))
        else:
            start = position
        run = run_from(start, data.draw(st.integers(min_value=1, max_value=6)))
        if not run:
            return
        position = run[-1] + 1
        decision = leases.admit(TP, run[0], run[-1], number)
        if decision.seek_to is not None:
            position = decision.seek_to
        elif decision.take_from is not None:
            for o in run:
                if o >= decision.take_from and lease.offsets.take(o):
                    taken[id(lease)].append(o)
        check(lease)

    for _ in range(data.draw(st.integers(min_value=0, max_value=30))):
        fetch(straddle=data.draw(st.booleans()))
        for o in list(taken[id(lease)]):
            if data.draw(st.booleans()):
                lease.done(o)
    for _ in range(len(log) + 2):  # no more straddling: everything is reached
        fetch(straddle=False)
    assert lease.next == log[-1] + 1
    check(lease)


def test_a_revoke_returns_leases_another_caller_is_revoking() -> None:
    """A rebalance during a stop (or the reverse) must wait for the same requests."""
    leases = Leases()
    lease = leases.grant(TP, 0)
    assert leases.revoke([TP]) == [lease]  # the stop
    assert leases.revoke([TP]) == [lease]  # then the rebalance
    leases.end([lease])
    assert leases.revoke([TP]) == []


def test_a_lease_follows_the_consumer_past_offsets_without_records() -> None:
    """Rule 2b: the consumer passed a marker (or aborted records): the lease moves with it,
    but only when its position was set before the fetch began."""
    leases = Leases()
    leases.begin_fetch()
    lease = leases.grant(TP, 10)
    assert leases.follow(TP, 12, fetch=1) is Follow.SAME  # fetch 1 began before the grant
    fetch = leases.begin_fetch()
    assert leases.follow(TP, 10, fetch) is Follow.SAME
    assert leases.follow(TP, None, fetch) is Follow.SAME
    assert leases.follow(TP, 12, fetch) is Follow.SKIPPED
    assert lease.next == 12 and lease.offsets.to_commit() == 12


def test_a_position_below_the_lease_means_the_log_lost_what_it_took() -> None:
    leases = Leases()
    lease = leases.grant(TP, 0)
    for offset in range(5):
        lease.offsets.take(offset)
    fetch = leases.begin_fetch()
    assert leases.follow(TP, 0, fetch) is Follow.BEHIND
    lease.stop()
    assert leases.follow(TP, 0, fetch) is Follow.SAME  # not active: nothing to follow


def test_resync_sets_every_active_lease_to_be_fetched_again_from_next() -> None:
    leases = Leases()
    other = TopicPartition("in", 1)
    first = leases.grant(TP, 3)
    leases.grant(other, 7).stop()
    fetch = leases.begin_fetch()
    assert leases.resync() == {TP: 3}
    assert first.synced_at == fetch
    # A run of that same fetch past `next` is no longer trusted as a gap.
    assert leases.admit(TP, 5, 9, fetch) == Admission(seek_to=3)
