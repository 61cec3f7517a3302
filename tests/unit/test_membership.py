"""membership.py: a member that has not heard from the group coordinator for its bound, or was
told it is unknown, stops starting requests (its leases are not active) until it hears again."""

from aiokafka.structs import TopicPartition

from consumer.service.leases import Admission, Leases
from consumer.service.membership import Membership, bound

TP = TopicPartition("in", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bound_is_the_session_less_a_heartbeat() -> None:
    assert bound(10_000, 3_000) == 7.0
    assert bound(3_000, 2_500) == 1.5  # never below half the session


def test_silence_past_the_bound_deactivates_every_lease_until_the_next_assignment() -> None:
    clock = Clock()
    membership = Membership(7.0, clock)
    leases = Leases(membership)
    lease = leases.grant(TP, 5)
    assert lease.active
    clock.now += 6.9
    assert lease.active
    clock.now += 0.2  # a SIGSTOP, a GC pause, a cut-off coordinator
    assert not lease.active and leases.partitions() == set()
    # A run fetched meanwhile is not taken, and is fetched again.
    fetch = leases.begin_fetch()
    assert leases.admit(TP, 5, 9, fetch) == Admission(seek_to=5)
    membership.heard()  # a heartbeat answered late: records stopped meanwhile need a rejoin
    assert not lease.active
    membership.assigned()
    assert lease.active


def test_an_unknown_member_id_deactivates_at_once() -> None:
    clock = Clock()
    membership = Membership(7.0, clock)
    lease = Leases(membership).grant(TP, 0)
    membership.lost()
    assert not lease.active
    membership.assigned()  # the next assignment
    assert lease.active
