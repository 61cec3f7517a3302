"""verify's pure parts: expectations from outcomes, grouped reads, found values, drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.commands.filters import Filter
from consumer.commands.verify import drift, expectations, keeps, takes
from consumer.contract.events import TargetingEvent
from consumer.contract.outcomes import Outcome, Status
from consumer.launchdarkly.effects import (
    FLAG_EXPIRING,
    MEMBERSHIP,
    SEGMENT,
    SEGMENT_EXPIRING,
    SEGMENT_EXPIRING_USERS,
    Read,
    Target,
    found_in,
    reads,
)
from tests.factories import VARIATION, event_dict, parse

T0 = datetime(2026, 11, 1, tzinfo=UTC)
BETA = "proj/production/segment/beta"
_offsets = iter(range(10**6))


def _pair(
    event: dict[str, Any],
    *,
    status: Status = Status.SUCCEEDED,
    path: str | None = None,
    seconds: int = 0,
) -> tuple[Outcome, TargetingEvent]:
    parsed = parse(event)
    resource = event["resource"]
    outcome = Outcome(
        eventId=event["eventId"],
        status=status,
        source={"topic": "in", "partition": 0, "offset": next(_offsets)},
        resource={
            "projectKey": event["projectKey"],
            "environmentKey": event["environmentKey"],
            "kind": resource["kind"],
            "key": resource["key"],
        },
        instructionKind=event["instruction"]["kind"],
        batch={"id": "b", "size": 1, "index": 0},
        http={"method": "PATCH", "path": path or "/p", "status": 200, "attempts": 1},
        error=None if status is Status.SUCCEEDED else {"code": "not_found", "message": "x"},
        item=None,
        completedAt=T0 + timedelta(seconds=seconds),
    )
    return outcome, parsed


def test_the_latest_succeeded_outcome_sets_each_target() -> None:
    add = event_dict(values=["o1", "o2"])  # addIncludedTargets, org
    remove = event_dict("segment", "removeIncludedTargets", values=["o1"])
    refused = event_dict("segment", "removeIncludedTargets", values=["o2"])
    pairs = [
        _pair(remove, seconds=2),  # read out of order: applied after `add`
        _pair(add, seconds=1),
        _pair(refused, seconds=3, status=Status.REJECTED),  # says nothing about LaunchDarkly
    ]
    found = expectations(pairs)
    o1, o2 = Target(BETA, "included", "org", "o1"), Target(BETA, "included", "org", "o2")
    assert found[o1].value is False and found[o1].set_by.event_id == remove["eventId"]
    assert found[o1].events == {add["eventId"], remove["eventId"]}
    assert found[o2].value is True and found[o2].read == SEGMENT


def test_big_segment_members_expiring_targets_flags_and_names() -> None:
    big = _pair(
        event_dict(key="vip", values=["a1"], contextKind="account"),
        path="/api/v2/segments/proj/production/vip/contexts",
    )
    users = _pair(event_dict("segment", "addExcludedUsers", values=["u9"]))
    expiring = _pair(event_dict("segment", "addExpiringTarget"), seconds=1)
    updated = _pair(event_dict("segment", "updateExpireUserTargetDate", value=5), seconds=2)
    flag = _pair(event_dict("flag", "addExpiringTarget", key="f"))
    name = _pair(event_dict("segment", "updateName", key="vip"))
    found = expectations([big, users, expiring, updated, flag, name])
    vip = "proj/production/segment/vip"
    assert found[Target(vip, "included", "account", "a1")].read == MEMBERSHIP
    assert found[Target(BETA, "excluded", "user", "u9")].value is True
    # One scheduled removal, whichever form wrote it last; read where it was written.
    scheduled = found[Target(BETA, "expires included", "user", "u1")]
    assert scheduled.value == 5 and scheduled.read == SEGMENT_EXPIRING_USERS
    assert found[Target("proj/production/flag/f", "expires", "user", "u1")].value == {
        "variationId": VARIATION,
        "value": 1_798_761_600_000,
    }
    assert found[Target(vip, "name")].value == "Renamed segment"


def test_removing_a_target_drops_its_scheduled_removal_from_the_claims() -> None:
    pairs = [
        _pair(event_dict("segment", "addExpiringTarget"), seconds=1),
        _pair(event_dict("segment", "removeIncludedUsers", values=["u1"]), seconds=2),
    ]
    found = expectations(pairs)
    assert Target(BETA, "expires included", "user", "u1") not in found
    assert found[Target(BETA, "included", "user", "u1")].value is False


def test_reads_are_grouped_per_resource_and_per_context_for_big_segments() -> None:
    pairs = [
        _pair(event_dict(values=["o1", "o2", "o3"])),
        _pair(event_dict("segment", "updateName")),
        _pair(event_dict("segment", "addExpiringTarget", contextKey="a")),
        _pair(event_dict("segment", "addExpiringTarget", contextKey="b")),
        _pair(
            event_dict(key="vip", values=["x", "y"], contextKind="account"),
            path="/api/v2/segments/proj/production/vip/contexts",
        ),
        _pair(
            event_dict(
                "segment", "addExcludedTargets", key="vip", values=["x"], contextKind="account"
            ),
            path="/api/v2/segments/proj/production/vip/contexts",
        ),
    ]
    planned = reads(expectations(pairs).values())
    assert sorted((r.kind, r.path, len(r.targets)) for r in planned) == [
        (MEMBERSHIP, "/api/v2/segments/proj/production/vip/contexts/x", 2),
        (MEMBERSHIP, "/api/v2/segments/proj/production/vip/contexts/y", 1),
        (SEGMENT, "/api/v2/segments/proj/production/beta", 4),
        (SEGMENT_EXPIRING, "/api/v2/segments/proj/beta/expiring-targets/production", 2),
    ]


def test_found_values_and_drift() -> None:
    pairs = [
        _pair(event_dict(values=["o1", "o2"])),
        _pair(event_dict("segment", "updateName")),
        _pair(event_dict("flag", "addExpiringTarget", key="f")),
        _pair(event_dict("segment", "addExpiringTarget")),
    ]
    expected = expectations(pairs)
    found: dict[Target, Any] = {}
    for read in reads(expected.values()):
        if read.kind == SEGMENT:
            body = {
                "name": "Renamed segment",
                "includedContexts": [{"contextKind": "org", "values": ["o1"]}],
            }
            found.update(found_in(read, 200, body))
        elif read.kind == FLAG_EXPIRING:
            item = {
                "contextKind": "user",
                "contextKey": "u1",
                "variationId": VARIATION,
                "expirationDate": 1_798_761_600_000,
            }
            found.update(found_in(read, 200, {"items": [item]}))
        else:
            found.update(found_in(read, 503, None))  # never answered: not verified
    differs, unread = drift(expected, found)
    assert [(d.target.key, d.expected, d.found) for d in differs] == [("o2", True, False)]
    assert differs[0].set_by.event_id == pairs[0][0].eventId
    assert [d.target.aspect for d in unread] == ["expires included"]
    gone = found_in(Read(SEGMENT, "/x", [Target(BETA, "name")]), 404, None)
    assert gone == {Target(BETA, "name"): "(resource not found)"}
    member = Target(BETA, "included", "org", "k")
    assert found_in(Read(MEMBERSHIP, "/x", [member]), 404, None) == {member: False}


def test_selection_by_time_resource_and_event() -> None:
    outcome, _ = _pair(event_dict(key="beta"), seconds=10)
    at = int((T0 + timedelta(seconds=10)).timestamp() * 1000)
    assert takes(Filter(since_ms=at, until_ms=at), outcome)  # verify's --until is inclusive
    assert not takes(Filter(since_ms=at + 1), outcome)
    assert not takes(Filter(until_ms=at - 1), outcome)
    assert takes(Filter(resource="proj/production/segment/b*"), outcome)
    assert not takes(Filter(resource="proj/*/flag/*"), outcome)
    expected = next(iter(expectations([(outcome, parse(event_dict(key="beta")))]).values()))
    assert keeps(Filter(event_ids=frozenset({outcome.eventId or ""})), expected)
    assert not keeps(Filter(event_ids=frozenset({"other"})), expected)
    assert keeps(Filter(), expected)


def test_rate_limit_headers_read_as_budgets_limits_and_reset_times() -> None:
    from consumer.commands.check import describe_rate_limits

    now = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    headers = {
        "X-Ratelimit-Global-Remaining": "900",
        "X-Ratelimit-Route-Remaining": "45",
        "X-Ratelimit-Reset": str(now + 7_000),
        "X-Ratelimit-Auth-Token-Limit": "100",
        "X-Ratelimit-Auth-Token-Remaining": "99",
        "X-Ratelimit-Auth-Token-Reset": str(now + 60_000),
    }
    assert describe_rate_limits(headers, now) == (
        "global: 900 left; route: 45 left; token: 99 left of 100, resets at 00:01:00 UTC"
        " (in 60 s); window resets at 00:00:07 UTC (in 7 s)"
    )
    assert describe_rate_limits({}, now) == "no rate-limit headers in the answer"
