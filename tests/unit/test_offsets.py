import random

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.service.offsets import PartitionOffsets


def test_commits_only_the_done_prefix() -> None:
    offsets = PartitionOffsets(0)
    for offset in range(5):
        assert offsets.take(offset)
    assert offsets.to_commit() is None
    offsets.done(1)
    offsets.done(2)
    assert offsets.to_commit() is None
    offsets.done(0)
    assert offsets.to_commit() == 3
    offsets.mark_committed(3)
    assert offsets.to_commit() is None
    offsets.done(4)
    offsets.done(3)
    assert offsets.to_commit() == 5
    assert offsets.pending() == 0


def test_gaps_in_offsets_commit_past_the_last_taken() -> None:
    offsets = PartitionOffsets(10)
    for offset in (10, 12, 15):
        offsets.take(offset)
        offsets.done(offset)
    assert offsets.to_commit() == 16


def test_the_start_counts_as_committed() -> None:
    offsets = PartitionOffsets(7)
    assert offsets.position() == 7
    assert offsets.to_commit() is None
    offsets.take(7)
    assert offsets.to_commit() is None
    offsets.done(7)
    assert offsets.to_commit() == 8


def test_offsets_already_passed_are_refused() -> None:
    offsets = PartitionOffsets(0)
    assert offsets.take(3)
    assert not offsets.take(3)
    assert not offsets.take(2)
    assert offsets.pending() == 1
    assert offsets.next == 4


def test_a_second_done_counts_once() -> None:
    offsets = PartitionOffsets(0)
    offsets.take(0)
    offsets.take(1)
    offsets.done(0)
    assert offsets.position() == 1
    offsets.done(0)  # after it left the pending queue
    assert offsets.pending() == 1
    offsets.done(1)
    offsets.done(1)
    assert offsets.pending() == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
    st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_position_never_passes_an_unfinished_record(
    gaps: list[int], rnd: random.Random, commit_points: list[bool]
) -> None:
    """Whatever the order outcomes complete in, the commit position is always the first
    unfinished offset (or one past the last when all are done), and it never goes back."""
    tracked = PartitionOffsets(0)
    offsets, offset = [], 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
        assert tracked.take(offset)
    order = list(range(len(offsets)))
    rnd.shuffle(order)
    done: set[int] = set()
    last_committed = 0
    for step, index in enumerate(order):
        tracked.done(offsets[index])
        done.add(offsets[index])
        unfinished = [o for o in offsets if o not in done]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert tracked.position() == expected
        proposed = tracked.to_commit()
        if proposed is not None:
            assert proposed == expected > last_committed
            assert all(o in done for o in offsets if o < proposed)
            if commit_points[step % len(commit_points)]:
                tracked.mark_committed(proposed)
                last_committed = proposed
        else:
            assert expected <= last_committed
        assert tracked.pending() == len(unfinished)
    assert tracked.position() == offsets[-1] + 1


def test_offsets_passed_over_hold_nothing_up_once_the_records_before_are_done() -> None:
    """Rule 5: a partition ending on a transaction marker (offset 3) commits past it."""
    offsets = PartitionOffsets(0)
    for offset in range(3):
        offsets.take(offset)
    offsets.skip_to(4)  # the consumer passed the marker at 3
    assert offsets.to_commit() is None  # 0-2 still in the works
    for offset in range(3):
        offsets.done(offset)
    assert offsets.to_commit() == 4
    offsets.skip_to(2)  # never backwards
    assert offsets.next == 4
