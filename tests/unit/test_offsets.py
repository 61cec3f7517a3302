from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import OffsetTracker

TP = TopicPartition("in", 0)
OTHER = TopicPartition("in", 1)


def test_commits_only_the_done_prefix() -> None:
    tracker = OffsetTracker()
    tickets = [tracker.track(TP, offset) for offset in range(5)]
    assert tracker.positions() == {}
    tracker.done(tickets[1])  # type: ignore[arg-type]
    tracker.done(tickets[2])  # type: ignore[arg-type]
    assert tracker.positions() == {}
    tracker.done(tickets[0])  # type: ignore[arg-type]
    assert tracker.positions() == {TP: 3}
    tracker.committed({TP: 3})
    assert tracker.positions() == {}
    tracker.done(tickets[4])  # type: ignore[arg-type]
    tracker.done(tickets[3])  # type: ignore[arg-type]
    assert tracker.positions() == {TP: 5}
    assert tracker.pending() == 0


def test_gaps_in_offsets_commit_past_the_highest() -> None:
    tracker = OffsetTracker()
    tickets = [tracker.track(TP, offset) for offset in (10, 12, 15)]
    for ticket in tickets:
        tracker.done(ticket)  # type: ignore[arg-type]
    assert tracker.positions() == {TP: 16}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    a = tracker.track(TP, 0)
    b = tracker.track(OTHER, 7)
    tracker.done(b)  # type: ignore[arg-type]
    assert tracker.positions() == {OTHER: 8}
    assert tracker.pending([TP]) == 1 and tracker.pending([OTHER]) == 0
    assert a is not None


def test_stale_tickets_are_ignored_after_revoke() -> None:
    tracker = OffsetTracker()
    old = tracker.track(TP, 0)
    tracker.revoke([TP])
    new = tracker.track(TP, 0)
    assert old is not None and new is not None
    assert tracker.done(old) is False
    assert tracker.positions() == {}
    assert tracker.done(new) is True
    assert tracker.positions() == {TP: 1}


def test_duplicate_offsets_are_refused() -> None:
    tracker = OffsetTracker()
    assert tracker.track(TP, 3) is not None
    assert tracker.track(TP, 3) is None
    assert tracker.track(TP, 2) is None
    assert tracker.pending() == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
    st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_position_never_passes_an_unfinished_record(
    gaps: list[int], rnd: object, commit_points: list[bool]
) -> None:
    """Whatever the order outcomes complete in, the commit position is always the first
    unfinished offset (or one past the last when all are done), and it never goes back."""
    import random

    assert isinstance(rnd, random.Random)
    tracker = OffsetTracker()
    offsets, offset = [], 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
    tickets = [tracker.track(TP, o) for o in offsets]
    order = list(range(len(offsets)))
    rnd.shuffle(order)
    done: set[int] = set()
    last_committed = -1
    for step, index in enumerate(order):
        tracker.done(tickets[index])  # type: ignore[arg-type]
        done.add(offsets[index])
        unfinished = [o for o in offsets if o not in done]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        positions = tracker.positions()
        if TP in positions:
            assert positions[TP] == expected
            assert positions[TP] > last_committed
            assert all(o in done for o in offsets if o < positions[TP])
            if commit_points[step % len(commit_points)]:
                tracker.committed(positions)
                last_committed = positions[TP]
        else:
            # Nothing new to commit: the first offset is unfinished or nothing moved.
            assert expected == offsets[0] or expected <= last_committed
            assert offsets[0] not in done or expected <= last_committed
        assert tracker.pending() == len(unfinished)
    assert tracker.positions([TP]).get(TP, last_committed) == offsets[-1] + 1
