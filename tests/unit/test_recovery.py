"""Crash recovery's skipping rule (recovery.Recovered): for one URL, only a prefix of the
records waiting may be skipped, so nothing sent again is ever applied after a later change."""

from __future__ import annotations

from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.service.recovery import Recovered

TP, OTHER = TopicPartition("in", 0), TopicPartition("in", 1)


def test_after_a_record_is_sent_again_later_ones_for_its_url_are_too() -> None:
    recovered = Recovered({TP: {1, 3, 4}})
    assert recovered.skip(TP, 1, "/u")  # done, and the first for /u
    assert not recovered.skip(TP, 2, "/u")  # no outcome: sent again
    assert not recovered.skip(TP, 3, "/u")  # done, but after 2: sent again, in order
    assert recovered.skip(TP, 4, "/v")  # another URL: its prefix is still intact
    assert not recovered


def test_records_that_are_not_events_are_skipped_whenever_they_are_done() -> None:
    recovered = Recovered({TP: {2}})
    assert not recovered.skip(TP, 1, "/u")
    assert recovered.skip(TP, 2, None)


def test_forgotten_partitions_skip_nothing() -> None:
    recovered = Recovered({TP: {0}, OTHER: {0}})
    recovered.forget([TP])
    assert not recovered.skip(TP, 0, "/u")
    assert recovered.skip(OTHER, 0, "/w")


records = st.lists(
    st.tuples(st.sampled_from([TP, OTHER]), st.sampled_from(["/a", "/b", "/c", None])),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(records, st.data())
def test_skipped_records_are_a_prefix_of_each_url(
    found: list[tuple[TopicPartition, str | None]], data: st.DataObject
) -> None:
    offsets: dict[TopicPartition, int] = {}
    stream = []
    for tp, path in found:
        offsets[tp] = offsets.get(tp, -1) + 1
        stream.append((tp, offsets[tp], path))
    done = {(tp, o) for tp, o, _ in stream if data.draw(st.booleans())}
    recovered = Recovered(
        {tp: {o for t, o in done if t == tp} for tp in (TP, OTHER) if any(t == tp for t, _ in done)}
    )
    decisions = [(tp, o, path, recovered.skip(tp, o, path)) for tp, o, path in stream]
    for tp, o, _path, skipped in decisions:
        assert not skipped or (tp, o) in done
    for url in ("/a", "/b", "/c"):
        mine = [skipped for _, _, path, skipped in decisions if path == url]
        first_sent = mine.index(False) if False in mine else len(mine)
        assert not any(mine[first_sent:]), f"{url}: a record skipped after one was sent again"
        # and the prefix is as long as it can be: every done record before the first sent
        prefix = [(tp, o) for tp, o, path, _ in decisions if path == url][:first_sent]
        assert all(key in done for key in prefix)
