"""Big segments: the kind cache, and how one segment's events become requests."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.launchdarkly.big_segments import (
    MAX_KEYS_PER_REQUEST,
    STANDARD,
    KindCache,
    Mismatch,
    SegmentKind,
    Step,
    needs_kind,
    plan,
    superseded,
)
from consumer.launchdarkly.routing import Endpoint, request_body, route
from consumer.service.records import PendingEvent
from tests.factories import event_dict, parse, pending

BIG_ORGS = SegmentKind(True, "org")
BIG_USERS = SegmentKind(True, "user")
PATCH = "/api/v2/segments/proj/production/beta"


def _event(kind: str, values: list[str], context_kind: str = "org") -> PendingEvent:
    fields: dict[str, Any] = {"values": values}
    if kind.endswith("Targets"):
        fields["contextKind"] = context_kind
    return pending(event_dict("segment", kind, **fields))


def _bodies(steps: list[Step | Mismatch]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for step in steps:
        assert isinstance(step, Step)
        instructions = [dict(vars(p.event.instruction)) for p in step.items]
        out.append((step.route.path, request_body(step.route, instructions, "c")))
    return out


def test_kind_from_the_segment_read() -> None:
    assert SegmentKind.from_segment({"unbounded": False}) == STANDARD
    assert SegmentKind.from_segment({"key": "s"}) == STANDARD  # absent: not big
    assert SegmentKind.from_segment(
        {"unbounded": True, "unboundedContextKind": "org"}
    ) == SegmentKind(True, "org")
    assert SegmentKind.from_segment({"unbounded": True}) == SegmentKind(True, "user")
    assert SegmentKind.from_segment({"unbounded": "yes"}) is None
    assert SegmentKind.from_segment([1]) is None


def test_cache_lifetime_refresh_and_bound() -> None:
    cache = KindCache(ttl=10.0, max_entries=2)
    assert cache.get("a", 0.0) is None
    cache.put("a", STANDARD, 0.0)
    assert cache.get("a", 9.9) == STANDARD
    assert cache.get("a", 10.0) is None  # expired: read again
    assert len(cache) == 0
    cache.put("a", STANDARD, 20.0)
    cache.put("a", BIG_ORGS, 25.0)  # a fresh read replaces the entry and its age
    assert cache.get("a", 34.0) == BIG_ORGS
    cache.put("b", STANDARD, 25.0)
    cache.put("c", STANDARD, 25.0)  # over the bound: the oldest entry goes
    assert cache.get("a", 26.0) is None and cache.get("c", 26.0) == STANDARD
    cache.forget("c")
    assert cache.get("c", 26.0) is None


def test_a_standard_segment_is_one_patch() -> None:
    items = [_event("addIncludedTargets", ["a"]), _event("removeIncludedTargets", ["a"])]
    [step] = plan(items[0].route, items, STANDARD)
    assert isinstance(step, Step) and step.route is items[0].route and step.items == items


def test_only_target_changes_need_the_kind() -> None:
    assert needs_kind([_event("addIncludedUsers", ["u"])])
    assert not needs_kind([pending(event_dict("segment", "updateName"))])


def test_big_segment_events_merge_in_order_into_one_body() -> None:
    items = [
        _event("addIncludedTargets", ["a", "b"]),
        _event("addExcludedTargets", ["x"]),
        _event("removeIncludedTargets", ["c"]),
        _event("addIncludedTargets", ["b", "d"]),  # b again: listed once
    ]
    steps = plan(items[0].route, items, BIG_ORGS)
    assert [s.items for s in steps if isinstance(s, Step)] == [items]
    assert _bodies(steps) == [
        (
            PATCH + "/contexts",
            {
                "included": {"add": ["a", "b", "d"], "remove": ["c"]},
                "excluded": {"add": ["x"]},
            },
        )
    ]


def test_add_remove_and_add_again_go_as_one_net_change() -> None:
    """Issue 23: a key added, removed and added again in one batch is one net change in one
    request; the events it undid say so in their outcome's item."""
    items = [
        _event("addIncludedTargets", ["a", "b"]),
        _event("removeIncludedTargets", ["a"]),
        _event("addIncludedTargets", ["a"]),
        _event("addExcludedTargets", ["a"]),  # another list: its own change
        _event("removeIncludedTargets", ["b"]),
    ]
    steps = plan(items[0].route, items, BIG_ORGS)
    assert [[items.index(i) for i in s.items] for s in steps if isinstance(s, Step)] == [
        [0, 1, 2, 3, 4]
    ]
    assert [body for _, body in _bodies(steps)] == [
        {"included": {"add": ["a"], "remove": ["b"]}, "excluded": {"add": ["a"]}},
    ]
    assert superseded(items) == {0: ["a", "b"], 1: ["a"]}


def test_at_most_1500_keys_per_request_and_an_event_is_never_split() -> None:
    first = _event("addIncludedTargets", [f"k{i}" for i in range(1_000)])
    second = _event("addIncludedTargets", [f"k{i}" for i in range(900, 1_400)])  # 400 new
    third = _event("addExcludedTargets", [f"x{i}" for i in range(101)])  # 1,501: too many
    fourth = _event("addExcludedTargets", [f"x{i}" for i in range(100)])
    steps = plan(first.route, [first, second, third, fourth], BIG_ORGS)
    assert [s.items for s in steps if isinstance(s, Step)] == [[first, second], [third, fourth]]
    for _, body in _bodies(steps):
        keys = sum(len(v) for side in body.values() for v in side.values())
        assert keys <= MAX_KEYS_PER_REQUEST


def test_users_go_to_users_and_a_context_kind_mismatch_is_rejected_in_place() -> None:
    items = [
        _event("addIncludedUsers", ["u1"]),
        _event("addIncludedTargets", ["o1"], context_kind="org"),  # not a user segment's kind
        _event("removeIncludedUsers", ["u2"]),
        _event("addIncludedTargets", ["u3"], context_kind="user"),  # /contexts: a new request
    ]
    steps = plan(items[0].route, items, BIG_USERS)
    assert isinstance(steps[1], Mismatch) and steps[1].item is items[1]
    assert "org" in steps[1].message and "user" in steps[1].message
    requests = [s for s in steps if isinstance(s, Step)]
    assert [s.route.endpoint for s in requests] == [
        Endpoint.BIG_SEGMENT_USERS,
        Endpoint.BIG_SEGMENT_CONTEXTS,
    ]
    assert [s.items for s in requests] == [[items[0], items[2]], [items[3]]]
    assert requests[0].route.path == PATCH + "/users"
    # A big segment of org contexts takes no *Users event.
    [mismatch] = plan(items[0].route, [items[0]], BIG_ORGS)
    assert isinstance(mismatch, Mismatch)


def test_update_name_stays_on_the_segment_patch_in_its_place() -> None:
    rename = pending(event_dict("segment", "updateName"))
    items = [_event("addIncludedTargets", ["a"]), rename, _event("addIncludedTargets", ["b"])]
    steps = plan(items[0].route, items, BIG_ORGS)
    assert [(s.route.endpoint, s.items) for s in steps if isinstance(s, Step)] == [
        (Endpoint.BIG_SEGMENT_CONTEXTS, [items[0]]),
        (Endpoint.SEGMENT_TARGETS, [rename]),
        (Endpoint.BIG_SEGMENT_CONTEXTS, [items[2]]),
    ]


@pytest.mark.parametrize("seed", range(20))
def test_applying_the_requests_equals_applying_the_events_in_order(seed: int) -> None:
    import random

    rng = random.Random(seed)
    items = [
        _event(
            f"{rng.choice(['add', 'remove'])}{rng.choice(['Included', 'Excluded'])}Targets",
            rng.sample([f"k{i}" for i in range(8)], rng.randint(1, 3)),
        )
        for _ in range(40)
    ]

    def apply(state: dict[str, set[str]], side: str, verb: str, keys: list[str]) -> None:
        if verb == "add":
            state[side].update(keys)
        else:
            state[side].difference_update(keys)

    expected: dict[str, set[str]] = {"included": set(), "excluded": set()}
    for item in items:
        kind = item.event.instruction.kind
        apply(
            expected,
            "included" if "Included" in kind else "excluded",
            "add" if kind.startswith("add") else "remove",
            item.event.instruction.values,  # type: ignore[union-attr]
        )
    found: dict[str, set[str]] = {"included": set(), "excluded": set()}
    steps = plan(items[0].route, items, BIG_ORGS)
    for _, body in _bodies(steps):
        for side, lists in body.items():
            assert not set(lists.get("add", [])) & set(lists.get("remove", []))
            for verb, keys in lists.items():
                apply(found, side, verb, keys)  # either order: the lists are disjoint
    assert found == expected
    assert len(steps) < len(items)


def test_the_route_table_never_picks_a_big_segment_endpoint() -> None:
    for kind in ("addIncludedTargets", "removeExcludedUsers", "updateName"):
        assert route(parse(event_dict("segment", kind))).endpoint is Endpoint.SEGMENT_TARGETS
