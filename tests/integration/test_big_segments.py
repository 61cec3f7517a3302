"""Big segments end to end: a real broker, the simulator over HTTP, the service in-process."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema

from consumer.contract.codes import ErrorCode
from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    Message,
    create_topics,
    dead_letters,
    make_settings,
    outcomes,
    produce,
    running,
)

OPENAPI = json.loads((Path(__file__).parents[1] / "data" / "ld_openapi_requests.json").read_text())
SEGMENTS = f"/api/v2/segments/{PROJECT}/{ENV}"


def _validator(suffix: str) -> jsonschema.protocols.Validator:
    name = OPENAPI["paths"][
        f"/api/v2/segments/{{projectKey}}/{{environmentKey}}/{{segmentKey}}/{suffix}"
    ]
    assert name == "SegmentUserState"
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(schema)


def _seed() -> dict[str, Any]:
    def segment(key: str, **fields: Any) -> dict[str, Any]:
        return {"projectKey": PROJECT, "environmentKey": ENV, "key": key, **fields}

    return {
        "projects": [{"key": PROJECT, "environments": [ENV]}],
        "segments": [
            segment("beta", included={"user": ["u1"]}),
            segment("vip", unbounded=True, unboundedContextKind="account"),
            segment("crowd", unbounded=True, unboundedContextKind="user"),
        ],
    }


def _targets(segment: str, kind: str, values: list[str], context_kind: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"values": values}
    if kind.endswith("Targets"):
        fields["contextKind"] = context_kind
    return event_dict("segment", kind, key=segment, project=PROJECT, env=ENV, **fields)


def _message(event: dict[str, Any]) -> Message:
    return record_key(event), encode(event), []


def _apply(members: dict[str, set[str]], kind: str, values: list[str]) -> None:
    side = "included" if "Included" in kind else "excluded"
    if kind.startswith("add"):
        members[side].update(values)
    else:
        members[side].difference_update(values)


async def test_big_and_standard_segments_in_one_stream(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(_seed())
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    rng = random.Random(13)
    events: list[dict[str, Any]] = []
    expected = {s: {"included": set(), "excluded": set()} for s in ("vip", "crowd")}
    for i in range(240):
        segment = rng.choice(["vip", "vip", "crowd", "beta"])
        verb, side = rng.choice(["add", "add", "remove"]), rng.choice(["Included", "Excluded"])
        keys = rng.sample([f"k{n}" for n in range(30)], rng.randint(1, 4))
        if segment == "beta":
            # Standard: org targets, none both included and excluded.
            events.append(
                _targets("beta", f"add{side}Targets", [f"o{i}-{side}"], context_kind="org")
            )
        elif segment == "crowd":
            what = rng.choice(["Users", "Targets"])
            events.append(_targets("crowd", f"{verb}{side}{what}", keys, context_kind="user"))
            _apply(expected["crowd"], f"{verb}{side}", keys)
        else:
            events.append(_targets("vip", f"{verb}{side}Targets", keys, context_kind="account"))
            _apply(expected["vip"], f"{verb}{side}", keys)
    mismatch = _targets("vip", "addIncludedTargets", ["k0"], context_kind="user")
    users_on_accounts = _targets("vip", "removeExcludedUsers", ["k1"], context_kind="user")
    rename = event_dict("segment", "updateName", key="vip", project=PROJECT, env=ENV)
    events[100:100] = [mismatch, rename, users_on_accounts]
    await produce(settings, [_message(e) for e in events])
    async with running(settings):
        results = await outcomes(settings, len(events))
    by_event = {o.eventId: o for o in results}
    assert len(by_event) == len(events)
    for event_id in (mismatch["eventId"], users_on_accounts["eventId"]):
        outcome = by_event[event_id]
        assert outcome.status is Status.REJECTED and outcome.error is not None
        assert outcome.error.code is ErrorCode.CONTEXT_KIND_MISMATCH
    assert Counter(o.status for o in results) == {
        Status.SUCCEEDED: len(events) - 2,
        Status.REJECTED: 2,
    }
    assert len(await dead_letters(settings, 2)) == 2
    state = {s["key"]: s for s in (await admin.state())["segments"]}
    # The final membership is what applying the events in order gives.
    for key in ("vip", "crowd"):
        found = state[key]["bigSegmentTargets"]
        assert {side: set(keys) for side, keys in found.items()} == expected[key], key
    assert state["vip"]["name"] == "Renamed segment"
    assert len(state["beta"]["includedContexts"][0]["values"]) > 0
    requests = await admin.requests()
    writes = [r for r in requests if r["method"] in ("POST", "PATCH")]
    big = [r for r in writes if r["path"].endswith(("/contexts", "/users"))]
    big_events = sum(1 for e in events if e["resource"]["key"] in ("vip", "crowd"))
    assert {r["path"] for r in big} <= {
        f"{SEGMENTS}/vip/contexts",
        f"{SEGMENTS}/crowd/contexts",
        f"{SEGMENTS}/crowd/users",
    }
    assert len(big) < big_events
    # Net changes (issue 23): a request ends at the batch's end (50 events), at another
    # endpoint (`updateName` once), not where a key is added and removed again.
    vip_events = sum(1 for e in events if e["resource"]["key"] == "vip")
    vip_posts = sum(1 for r in big if r["path"].endswith("/vip/contexts"))
    assert vip_posts <= -(-vip_events // 50) + 2, (vip_posts, vip_events)
    assert all(r["status"] == 204 for r in big)
    # Bodies validate against LaunchDarkly's OpenAPI document (SegmentUserState), and no key
    # is both added to and removed from one side of one request (a net change).
    for request in big:
        _validator(request["path"].rsplit("/", 1)[1]).validate(request["body"])
        for lists in request["body"].values():
            assert not set(lists.get("add", [])) & set(lists.get("remove", []))
    # The standard segment still gets its semantic PATCH; the big ones only `updateName`.
    patches = Counter(r["path"] for r in writes if r["method"] == "PATCH")
    assert set(patches) == {f"{SEGMENTS}/beta", f"{SEGMENTS}/vip"}
    assert all(
        i["kind"] == "updateName"
        for r in writes
        if r["method"] == "PATCH" and r["path"].endswith("/vip")
        for i in r["body"]["instructions"]
    )
    # The kinds came from one read of the environment's big segments (the cache's lifetime is
    # longer than the run): no segment was read on its own.
    reads = Counter(
        r["path"] for r in requests if r["method"] == "GET" and r["path"].startswith(SEGMENTS)
    )
    assert reads == {SEGMENTS: 1}
    # Outcomes name the request each event went in.
    vip_add = next(e for e in events if e["resource"]["key"] == "vip" and e is not rename)
    outcome = by_event[vip_add["eventId"]]
    assert outcome.http is not None and outcome.http.method == "POST"
    assert outcome.http.path == f"{SEGMENTS}/vip/contexts" and outcome.http.status == 204
    # An event whose change a later one in its request undid says so in its item.
    undone = [o for o in results if o.item is not None and "netChange" in o.item]
    assert undone and all(o.status is Status.SUCCEEDED for o in undone)


async def test_a_400_on_a_big_segment_is_narrowed_to_the_event_that_fails(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(_seed())
    await admin.set_faults(refused_keys=["bad-*"])
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    events = [
        _targets("vip", "addIncludedTargets", [f"a{i}"], context_kind="account") for i in range(8)
    ]
    events[5] = _targets("vip", "addIncludedTargets", ["bad-1", "a5"], context_kind="account")
    await produce(settings, [_message(e) for e in events], partition=0)
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, len(events))}
    bad = results[events[5]["eventId"]]
    assert bad.status is Status.REJECTED and bad.error is not None
    assert bad.error.code is ErrorCode.INVALID_REQUEST and bad.http is not None
    assert bad.http.status == 400
    assert all(
        results[e["eventId"]].status is Status.SUCCEEDED for e in events if e is not events[5]
    )
    [vip] = [s for s in (await admin.state())["segments"] if s["key"] == "vip"]
    assert vip["bigSegmentTargets"]["included"] == [f"a{i}" for i in range(8) if i != 5]
