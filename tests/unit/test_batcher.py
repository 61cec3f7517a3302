import pytest
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.service.batcher import COMMENT_SEPARATOR, Batcher, Head
from consumer.service.leases import Leases
from consumer.service.records import PendingEvent
from tests.factories import event_dict, pending


def seg(
    key: str = "beta", *, values: int = 1, comment: str | None = None, partition: int = 0
) -> PendingEvent:
    return pending(
        event_dict(key=key, values=[f"k{i}" for i in range(values)], comment=comment),
        partition=partition,
    )


def test_closes_at_max_size_and_keeps_order() -> None:
    batcher = Batcher(max_size=3, linger=10.0)
    items = [seg() for _ in range(7)]
    for item in items:
        batcher.add(item, now=0.0)
    first = batcher.ready(now=0.0, limit=10)
    assert [len(b) for b in first] == [3]  # one in flight per path, the open one still lingers
    assert first[0].items == items[:3]
    assert batcher.ready(now=0.0, limit=10) == []
    batcher.finished(first[0].route.resource)
    second = batcher.ready(now=0.0, limit=10)
    assert second[0].items == items[3:6]
    batcher.finished(second[0].route.resource)
    assert batcher.ready(now=1.0, limit=10) == []
    third = batcher.ready(now=10.0, limit=10)
    assert third[0].items == items[6:]
    batcher.finished(third[0].route.resource)
    assert batcher.idle() and batcher.waiting == 0


def test_linger_counts_from_the_oldest_event() -> None:
    batcher = Batcher(max_size=50, linger=0.2)
    batcher.add(seg(), now=1.0)
    batcher.add(seg(), now=1.15)
    assert batcher.next_due(now=1.15) == pytest.approx(0.05)
    assert batcher.ready(now=1.19, limit=5) == []
    [batch] = batcher.ready(now=1.2, limit=5)
    assert len(batch) == 2
    assert batcher.next_due(now=1.2) is None


def test_paths_in_parallel_up_to_the_limit_oldest_first() -> None:
    batcher = Batcher(max_size=1, linger=0.0)
    for i, key in enumerate(["a", "b", "c", "d"]):
        batcher.add(seg(key), now=float(i))
    batches = batcher.ready(now=10.0, limit=2)
    assert [b.route.path.rsplit("/", 1)[1] for b in batches] == ["a", "b"]
    assert batcher.in_flight == 2
    rest = batcher.ready(now=10.0, limit=5)
    assert [b.route.path.rsplit("/", 1)[1] for b in rest] == ["c", "d"]


def test_one_request_in_flight_per_path() -> None:
    batcher = Batcher(max_size=1, linger=0.0)
    batcher.add(seg(), now=0.0)
    batcher.add(seg(), now=0.0)
    [batch] = batcher.ready(now=1.0, limit=5)
    assert batcher.next_due(now=1.0) is None  # the only path is busy
    assert batcher.ready(now=1.0, limit=5) == []
    batcher.finished(batch.route.resource)
    assert batcher.next_due(now=1.0) is None  # due already: the caller's to hand out
    assert len(batcher.ready(now=1.0, limit=5)) == 1


def test_segment_patch_never_passes_1500_target_operations() -> None:
    batcher = Batcher(max_size=50, linger=0.0)
    sizes = [700, 700, 200, 1500, 1]
    for size in sizes:
        batcher.add(seg(values=size), now=0.0)
    seen = []
    while not batcher.idle():
        for batch in batcher.ready(now=1.0, limit=1):
            seen.append([item.target_operations for item in batch.items])
            assert batch.target_operations <= 1500
            batcher.finished(batch.route.resource)
    assert seen == [[700, 700], [200], [1500], [1]]


def test_expiring_targets_are_not_limited_by_target_operations() -> None:
    batcher = Batcher(max_size=2000, linger=0.0)
    for _ in range(1600):
        batcher.add(pending(event_dict("segment", "addExpiringTarget")), now=0.0)
    [batch] = batcher.ready(now=1.0, limit=1)
    assert len(batch) == 1600


def test_comments_are_joined_without_repeats_and_never_lost() -> None:
    batcher = Batcher(max_size=50, linger=0.0, comment_max_chars=1_000)
    batcher.add(seg(comment="ticket A"), now=0.0)
    batcher.add(seg(comment=None), now=0.0)
    batcher.add(seg(comment="ticket B"), now=0.0)
    batcher.add(seg(comment="ticket A"), now=0.0)
    [batch] = batcher.ready(now=1.0, limit=1)
    assert batch.comment == f"ticket A{COMMENT_SEPARATOR}ticket B"
    assert len(batch) == 4


def test_a_comment_that_does_not_fit_starts_a_new_batch() -> None:
    batcher = Batcher(max_size=50, linger=0.0, comment_max_chars=1_000)
    long_a, long_b = "a" * 600, "b" * 600
    batcher.add(seg(comment=long_a), now=0.0)
    batcher.add(seg(comment=long_b), now=0.0)
    batcher.add(seg(comment=long_b), now=0.0)
    comments = []
    while not batcher.idle():
        for batch in batcher.ready(now=1.0, limit=1):
            comments.append((batch.comment, len(batch)))
            batcher.finished(batch.route.resource)
    assert comments == [(long_a, 1), (long_b, 2)]


def test_flush_makes_open_batches_due_at_once() -> None:
    batcher = Batcher(max_size=50, linger=60.0)
    batcher.add(seg("a", partition=0), now=0.0)
    batcher.add(seg("b", partition=1), now=0.0)
    assert batcher.ready(now=1.0, limit=5) == []
    batcher.flush(lambda batch: batch.path.endswith("/b"))
    [batch] = batcher.ready(now=1.0, limit=5)
    assert batch.route.path.endswith("/b")
    batcher.flush()
    assert len(batcher.ready(now=1.0, limit=5)) == 1


def test_drop_leases_takes_back_waiting_events_only() -> None:
    batcher = Batcher(max_size=2, linger=60.0)
    keep, drop_1, drop_2, kept_2 = (
        seg(partition=0),
        seg(partition=1),
        seg(partition=1),
        seg(partition=0),
    )
    for item in (keep, drop_1, drop_2, kept_2):
        batcher.add(item, now=0.0)
    in_flight = batcher.ready(now=0.0, limit=5)  # [keep, drop_1] goes out
    assert in_flight[0].items == [keep, drop_1]
    dropped = batcher.drop_leases([drop_1.record.lease])
    assert dropped == [drop_2]
    assert batcher.waiting == 1
    batcher.finished(in_flight[0].route.resource)
    [rest] = batcher.ready(now=100.0, limit=5)
    assert rest.items == [kept_2]


def test_a_batch_is_live_while_every_lease_it_holds_is_active() -> None:
    one, other = Leases(), Leases()
    a = pending(lease=one.grant(TopicPartition("in", 0), 0))
    b = pending(lease=other.grant(TopicPartition("in", 1), 0))
    batcher = Batcher(max_size=2, linger=0.0)
    batcher.add(a, now=0.0)
    batcher.add(b, now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    assert batch.live() and batch.leases() == {a.record.lease, b.record.lease}
    other.revoke([TopicPartition("in", 1)])
    assert not batch.live()


def test_waiting_counts_events_not_handed_out() -> None:
    batcher = Batcher(max_size=2, linger=0.0)
    for _ in range(5):
        batcher.add(seg(), now=0.0)
    assert batcher.waiting == 5
    [batch] = batcher.ready(now=0.0, limit=5)
    assert batcher.waiting == 3
    batcher.finished(batch.route.resource)


def test_sub_batches_get_their_own_id() -> None:
    batcher = Batcher(max_size=4, linger=0.0)
    items = [seg() for _ in range(4)]
    for item in items:
        batcher.add(item, now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    half = batch.sub(batch.items[:2])
    assert half.id != batch.id and half.items == items[:2] and half.route == batch.route


def test_offset_ranges_per_partition() -> None:
    batcher = Batcher(max_size=10, linger=0.0)
    items = [seg(partition=p) for p in (0, 1, 0, 0)]
    for item in items:
        batcher.add(item, now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    ranges = batch.offset_ranges()
    zero = [i.record.offset for i in items if i.record.partition == 0]
    assert ranges["in[0]"] == f"{min(zero)}-{max(zero)}"
    assert ranges["in[1]"] == f"{items[1].record.offset}-{items[1].record.offset}"


def test_linger_counts_from_the_record_timestamp_when_the_wall_clock_is_given() -> None:
    batcher = Batcher(max_size=50, linger=0.2)
    item = seg()
    wall_ms = item.record.timestamp + 150  # the record waited 150 ms in the topic
    batcher.add(item, now=10.0, wall_ms=wall_ms)
    assert batcher.next_due(now=10.0) == pytest.approx(0.05)
    old = seg("old")
    batcher.add(old, now=10.0, wall_ms=old.record.timestamp + 60_000)  # waited long: due now
    assert batcher.next_due(now=10.0) == pytest.approx(0.05)  # "old" is due, not counted
    future = seg("future")  # a producer clock ahead of ours: counts from now, never longer
    batcher.add(future, now=10.0, wall_ms=future.record.timestamp - 5_000)
    ready = batcher.ready(now=10.0, limit=10)
    assert [b.path.rsplit("/", 1)[-1] for b in ready] == ["old"]
    assert batcher.ready(now=10.2, limit=10)[0].path.endswith("/beta")


# -- late binding: a lane is cut only when its request may go ------------------------------------


def test_a_lane_not_admitted_is_not_cut_and_keeps_filling_to_the_cap() -> None:
    batcher = Batcher(max_size=5, linger=0.1)
    batcher.add(seg(), now=0.0)
    assert batcher.ready(now=1.0, limit=5, admit=lambda due: False) == []
    for _ in range(11):
        batcher.add(seg(), now=1.0)
    assert batcher.waiting == 12
    [batch] = batcher.ready(now=2.0, limit=5)
    assert len(batch) == 5  # the lane filled to the cap while it was held back
    batcher.finished(batch.route.resource)
    [batch] = batcher.ready(now=2.0, limit=5)
    assert len(batch) == 5
    batcher.finished(batch.route.resource)
    [batch] = batcher.ready(now=2.0, limit=5)
    assert len(batch) == 2


def test_admit_is_asked_oldest_lane_first_and_a_refusal_does_not_hold_up_others() -> None:
    batcher = Batcher(max_size=50, linger=0.0)
    for i, key in enumerate(["a", "b", "c", "d"]):
        batcher.add(seg(key), now=float(i))
    asked: list[str] = []

    def admit(due: Head) -> bool:
        key = due.head.route.path.rsplit("/", 1)[1]
        asked.append(key)
        return key != "a"

    batches = batcher.ready(now=10.0, limit=2, admit=admit)
    assert asked == ["a", "b", "c"]  # stops asking once the limit is handed out
    assert [b.route.path.rsplit("/", 1)[1] for b in batches] == ["b", "c"]
    late = batcher.ready(now=10.0, limit=5)
    assert [b.route.path.rsplit("/", 1)[1] for b in late] == ["a", "d"]  # oldest first still


def test_admit_is_not_asked_for_lanes_not_due_or_in_flight() -> None:
    batcher = Batcher(max_size=50, linger=1.0)
    batcher.add(seg("busy"), now=0.0)
    [busy] = batcher.ready(now=1.0, limit=5)
    batcher.add(seg("busy"), now=1.0)
    batcher.add(seg("young"), now=1.5)
    asked: list[str] = []
    batcher.ready(now=2.2, limit=5, admit=lambda due: asked.append(due.head.path) is None)
    assert asked == []
    assert batcher.next_due(now=2.2) == pytest.approx(0.3)
    batcher.finished(busy.route.resource)


def test_full_batches_of_a_held_lane_go_in_order() -> None:
    batcher = Batcher(max_size=2, linger=0.0)
    items = [seg() for _ in range(5)]
    for item in items:
        batcher.add(item, now=0.0)
    batcher.ready(now=1.0, limit=5, admit=lambda due: False)
    sent: list[PendingEvent] = []
    while not batcher.idle():
        for batch in batcher.ready(now=1.0, limit=5):
            sent.extend(batch.items)
            batcher.finished(batch.route.resource)
    assert sent == items


def test_order_holds_per_resource_across_its_paths() -> None:
    """Add u to segment S, then schedule u's removal, then add another: three requests on two
    URLs of one resource, handed out one at a time in consumption order; another resource's
    request goes beside them."""
    batcher = Batcher(max_size=10, linger=0.0)
    add = pending(event_dict(key="s", values=["u"]))
    expire = pending(event_dict("segment", "addExpiringTarget", key="s", contextKey="u"))
    again = pending(event_dict(key="s", values=["v"]))
    other = pending(event_dict(key="t", values=["w"]))
    for item in (add, expire, again, other):
        batcher.add(item, now=0.0)
    assert add.route.path != expire.route.path and add.route.resource == expire.route.resource
    first = batcher.ready(now=1.0, limit=10)
    assert [b.items for b in first] == [[add], [other]]  # one per resource at a time
    assert batcher.ready(now=1.0, limit=10) == []
    batcher.finished(first[0].route.resource)
    [second] = batcher.ready(now=1.0, limit=10)
    assert second.items == [expire] and second.path == expire.route.path
    batcher.finished(second.route.resource)
    [third] = batcher.ready(now=1.0, limit=10)
    assert third.items == [again]


def test_a_flag_and_a_segment_of_one_key_are_different_resources() -> None:
    batcher = Batcher(max_size=10, linger=0.0)
    segment = pending(event_dict("segment", "addExpiringTarget", key="x"))
    flag = pending(event_dict("flag", "addExpiringTarget", key="x"))
    batcher.add(segment, now=0.0)
    batcher.add(flag, now=0.0)
    assert len(batcher.ready(now=1.0, limit=10)) == 2


_KINDS = [
    ("segment", "addIncludedTargets"),
    ("segment", "addExpiringTarget"),
    ("segment", "addExpireUserTargetDate"),
    ("flag", "addExpiringTarget"),
]


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(range(len(_KINDS)))),
        min_size=1,
        max_size=40,
    ),
    steps=st.lists(st.sampled_from(["add", "ready", "finish", "flush"]), max_size=80),
    max_size=st.integers(1, 5),
)
def test_every_resource_is_sent_in_consumption_order_one_batch_at_a_time(
    events: list[tuple[str, int]], steps: list[str], max_size: int
) -> None:
    batcher = Batcher(max_size=max_size, linger=0.5)
    queue = [pending(event_dict(*_KINDS[kind], key=key)) for key, kind in events]
    added: dict[str, list[PendingEvent]] = {}
    sent: dict[str, list[PendingEvent]] = {}
    flying: dict[str, object] = {}
    now = 0.0
    for step in [*steps, *["flush", "ready", "finish"] * (len(queue) + 1)]:
        now += 0.2
        if step == "add" and queue:
            item = queue.pop(0)
            batcher.add(item, now)
            added.setdefault(item.route.resource, []).append(item)
        elif step == "ready":
            for batch in batcher.ready(now, limit=3):
                resource = batch.route.resource
                assert resource not in flying  # one batch per resource at a time
                assert {i.route.path for i in batch.items} == {batch.path}
                flying[resource] = batch
                sent.setdefault(resource, []).extend(batch.items)
        elif step == "finish" and flying:
            resource = sorted(flying)[0]
            del flying[resource]
            batcher.finished(resource)
        elif step == "flush":
            batcher.flush()
        if not queue and step == "finish" and not flying and batcher.idle():
            break
    for item in queue:
        added.setdefault(item.route.resource, [])
    for resource, items in sent.items():
        assert items == added[resource][: len(items)]  # a prefix, in consumption order
