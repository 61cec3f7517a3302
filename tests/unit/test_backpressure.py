"""backpressure.py: past the pending limit, only the partitions holding more than their share
stop; the others go on."""

from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from consumer.service.backpressure import Backpressure

P = [TopicPartition("in", p) for p in range(4)]


def test_nothing_pauses_under_the_limit() -> None:
    pressure = Backpressure(400)
    assert pressure.update({P[0]: 390, P[1]: 5}) == set()


def test_past_the_limit_only_the_partition_holding_a_failing_resource_pauses() -> None:
    pressure = Backpressure(400)  # share: 100 each
    assert pressure.update({P[0]: 380, P[1]: 10, P[2]: 5, P[3]: 20}) == {P[0]}
    # The others go on; P0 stays paused until down to half its share, or the pressure ends.
    assert pressure.update({P[0]: 150, P[1]: 60, P[2]: 10, P[3]: 30}) == {P[0]}
    assert pressure.update({P[0]: 60, P[1]: 80, P[2]: 10, P[3]: 60}) == {P[0]}
    assert pressure.update({P[0]: 40, P[1]: 80, P[2]: 10, P[3]: 100}) == {P[3]}
    assert pressure.update({P[0]: 40, P[1]: 80, P[2]: 10, P[3]: 80}) == {P[3]}
    assert pressure.update({P[0]: 40, P[1]: 80, P[2]: 10, P[3]: 40}) == set()  # under 200


@given(st.lists(st.integers(0, 1_000), min_size=1, max_size=8), st.integers(1, 2_000))
def test_some_partition_pauses_whenever_the_limit_is_reached(counts: list[int], limit: int) -> None:
    pressure = Backpressure(limit)
    pending = {TopicPartition("in", i): n for i, n in enumerate(counts)}
    paused = pressure.update(pending)
    if sum(counts) >= limit:
        assert paused  # never unbounded
    assert all(pending[tp] >= 1 for tp in paused)
