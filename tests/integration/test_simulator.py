"""The LaunchDarkly simulator over HTTP, as the seed pages describe the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consumer.launchdarkly.routing import API_VERSION, CONTENT_TYPE
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN
from tests.integration.harness import ENV, PROJECT, VARIATION, seed

RATE_HEADERS = ("X-Ratelimit-Global-Remaining", "X-Ratelimit-Route-Remaining", "X-Ratelimit-Reset")
EXPIRING = f"/api/v2/segments/{PROJECT}/beta/expiring-targets/{ENV}"
USERS = f"/api/v2/segments/{PROJECT}/beta/expiring-user-targets/{ENV}"
FLAG = f"/api/v2/flags/{PROJECT}/checkout/expiring-targets/{ENV}"
PATCH = f"/api/v2/segments/{PROJECT}/{ENV}/beta"


@pytest.fixture
async def http(simulator: RunningSimulator, admin: SimulatorAdmin) -> AsyncIterator[Any]:
    await admin.seed(
        seed(
            segments={"beta": {"user": ["u1", "u2"]}},
            excluded={"beta": {"org": ["bad"]}},
            flags={"checkout": ["u1"]},
        )
    )
    async with aiohttp.ClientSession(simulator.base_url) as session:

        async def call(
            path: str, body: Any, token: str | None = TOKEN, content_type: str = CONTENT_TYPE
        ) -> tuple[int, Any, Any]:
            headers = {"Content-Type": content_type, "LD-API-Version": API_VERSION}
            if token is not None:
                headers["Authorization"] = token
            async with session.patch(path, json=body, headers=headers) as response:
                return response.status, await response.json(), response.headers

        yield call


def _add(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "addExpiringTarget",
        "targetType": "included",
        "contextKey": key,
        "contextKind": "user",
        "value": 1,
        **extra,
    }


async def test_per_instruction_errors_in_a_200(http: Any) -> None:
    status, body, headers = await http(
        EXPIRING, {"instructions": [_add("u1"), _add("nobody"), _add("u2")]}
    )
    assert status == 200
    assert body["errors"] == [{"instructionIndex": 1, "message": body["errors"][0]["message"]}]
    assert "not an individual" in body["errors"][0]["message"]
    assert [i["contextKey"] for i in body["items"]] == ["u1", "u2"]
    assert (
        body["totalInstructions"],
        body["successfulInstructions"],
        body["failedInstructions"],
    ) == (3, 2, 1)
    assert all(name in headers for name in RATE_HEADERS)


async def test_version_mismatch_fails_the_instruction(http: Any) -> None:
    await http(EXPIRING, {"instructions": [_add("u1")]})
    update = {
        "kind": "updateExpiringTarget",
        "targetType": "included",
        "contextKey": "u1",
        "contextKind": "user",
        "value": 5,
    }
    status, body, _ = await http(
        EXPIRING, {"instructions": [{**update, "version": 1}, {**update, "version": 1}]}
    )
    assert status == 200
    assert [e["instructionIndex"] for e in body["errors"]] == [1]
    assert "version" in body["errors"][0]["message"]
    status, body, _ = await http(EXPIRING, {"instructions": [update]})  # no version: no check
    assert status == 200 and body["errors"] == []


async def test_user_form_checks_the_segment_version(http: Any) -> None:
    add = {"kind": "addExpireUserTargetDate", "targetType": "included", "userKey": "u1", "value": 1}
    update = {
        "kind": "updateExpireUserTargetDate",
        "targetType": "included",
        "userKey": "u1",
        "value": 2,
    }
    status, body, _ = await http(
        USERS, {"instructions": [add, {**update, "version": 1}, {**update, "version": 9}]}
    )
    assert status == 200
    assert [e["instructionIndex"] for e in body["errors"]] == [2]
    assert body["items"][0]["userKey"] == "u1"


async def test_flag_expiring_targets(http: Any) -> None:
    add = {
        "kind": "addExpiringTarget",
        "variationId": VARIATION,
        "contextKey": "u1",
        "contextKind": "user",
        "value": 1,
    }
    status, body, _ = await http(
        FLAG,
        {
            "instructions": [
                add,
                {**add, "contextKey": "u9"},
                {**add, "variationId": "nope"},
                {**add, "kind": "removeExpiringTarget", "value": None},
            ]
        },
    )
    assert status == 400  # value: null is not an integer: the request is malformed
    del add["value"]
    remove = {**add, "kind": "removeExpiringTarget"}
    add["value"] = 1
    status, body, _ = await http(
        FLAG,
        {
            "instructions": [
                add,
                {**add, "contextKey": "u9"},
                {**add, "variationId": "nope"},
                remove,
            ]
        },
    )
    assert status == 200
    assert [e["instructionIndex"] for e in body["errors"]] == [1, 2]
    assert body["items"][0]["variationId"] == VARIATION


async def test_segment_patch_is_all_or_nothing(http: Any, admin: SimulatorAdmin) -> None:
    good = {"kind": "addIncludedTargets", "contextKind": "org", "values": ["good"]}
    bad = {"kind": "addIncludedTargets", "contextKind": "org", "values": ["bad"]}
    status, body, headers = await http(PATCH, {"environmentKey": ENV, "instructions": [good, bad]})
    assert status == 400 and body["code"] == "invalid_request"
    assert "both included and excluded" in body["message"]
    assert all(name in headers for name in RATE_HEADERS)
    [segment] = (await admin.state())["segments"]
    assert segment["includedContexts"] == [] and segment["version"] == 1
    status, body, _ = await http(PATCH, {"environmentKey": ENV, "instructions": [good]})
    assert status == 200 and body["version"] == 2
    assert body["includedContexts"] == [{"contextKind": "org", "values": ["good"]}]


async def test_update_name_is_applied_with_the_rest_or_not_at_all(
    http: Any, admin: SimulatorAdmin
) -> None:
    rename = {"kind": "updateName", "value": "Beta testers"}
    bad = {"kind": "addIncludedTargets", "contextKind": "org", "values": ["bad"]}
    status, _, _ = await http(PATCH, {"environmentKey": ENV, "instructions": [rename, bad]})
    assert status == 400
    assert (await admin.state())["segments"][0]["name"] == "beta"
    status, _, _ = await http(
        PATCH, {"environmentKey": ENV, "instructions": [{"kind": "updateName", "value": 3}]}
    )
    assert status == 400
    status, body, _ = await http(PATCH, {"environmentKey": ENV, "instructions": [rename]})
    assert status == 200 and body["name"] == "Beta testers"


async def test_segment_patch_limits(http: Any) -> None:
    many = {"kind": "addIncludedUsers", "values": [f"u{i}" for i in range(1501)]}
    status, body, _ = await http(PATCH, {"environmentKey": ENV, "instructions": [many]})
    assert status == 400 and "1500" in body["message"].replace(",", "")
    status, _, _ = await http(
        PATCH, {"instructions": [{"kind": "addIncludedUsers", "values": ["a"]}]}
    )
    assert status == 400  # environmentKey missing from the body


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/api/v2/segments/{PROJECT}/nope/expiring-targets/{ENV}", 404, "not_found"),
        (f"/api/v2/segments/{PROJECT}/beta/expiring-targets/qa", 404, "not_found"),
        (f"/api/v2/flags/other/checkout/expiring-targets/{ENV}", 404, "not_found"),
        (f"/api/v2/segments/{PROJECT}/{ENV}/nope", 404, "not_found"),
    ],
)
async def test_unknown_resources_are_404(http: Any, path: str, status: int, code: str) -> None:
    got, body, headers = await http(path, {"environmentKey": ENV, "instructions": [_add("u1")]})
    assert (got, body["code"]) == (status, code)
    assert all(name in headers for name in RATE_HEADERS)


async def test_token_and_content_type(http: Any, admin: SimulatorAdmin) -> None:
    status, body, headers = await http(EXPIRING, {"instructions": [_add("u1")]}, token="wrong")
    assert status == 401 and body["code"] == "unauthorized"
    assert all(name in headers for name in RATE_HEADERS)
    status, _, _ = await http(EXPIRING, {"instructions": [_add("u1")]}, token=None)
    assert status == 401
    status, _, _ = await http(
        EXPIRING, {"instructions": [_add("u1")]}, content_type="application/json"
    )
    assert status == 400
    log = await admin.requests()
    assert [r["auth"] for r in log] == ["invalid", "missing", "ok"]
    assert all(TOKEN not in str(r) for r in log)


async def test_malformed_instructions_fail_the_request(http: Any) -> None:
    for instruction in (
        {"kind": "nope"},
        {**_add("u1"), "extra": 1},
        {"kind": "addExpiringTarget"},
    ):
        status, _, _ = await http(EXPIRING, {"instructions": [instruction]})
        assert status == 400


async def test_real_rate_limit_and_reset_header(http: Any, admin: SimulatorAdmin) -> None:
    await admin.set_limits(window_ms=60_000, route_limit=3, global_limit=100)
    remaining = []
    for _ in range(4):
        status, _, headers = await http(EXPIRING, {"instructions": [_add("u1")]})
        remaining.append((status, headers["X-Ratelimit-Route-Remaining"]))
    assert remaining == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
    assert int(headers["X-Ratelimit-Reset"]) > 0
    assert (await admin.stats())["rate_limited"] == 1


async def test_fake_api_command_serves_until_sigterm(tmp_path: Any) -> None:
    import asyncio
    import json
    import signal
    import sys

    from consumer.kafka.tansu import free_port

    port = free_port()
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed(segments={"beta": {"user": ["u1"]}})))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "fake-api",
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--seed",
        str(seed_file),
        "--faults",
        '{"latency_ms": [1, 2]}',
        "--limits",
        '{"route_limit": 5}',
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for _ in range(100):
                try:
                    async with session.get("/admin/faults") as response:
                        settings = await response.json()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert settings["faults"]["latency_ms"] == [1, 2]
            assert settings["limits"]["route_limit"] == 5
            headers = {"Authorization": TOKEN, "Content-Type": CONTENT_TYPE}
            async with session.patch(
                EXPIRING, json={"instructions": [_add("u1")]}, headers=headers
            ) as response:
                assert response.status == 200
                assert response.headers["X-Ratelimit-Route-Remaining"] == "4"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()


async def test_admin_can_rotate_tokens_and_clear_the_log(http: Any, admin: SimulatorAdmin) -> None:
    await admin.set_tokens("api-rotated")
    status, _, _ = await http(EXPIRING, {"instructions": [_add("u1")]})
    assert status == 401
    status, _, _ = await http(EXPIRING, {"instructions": [_add("u1")]}, token="api-rotated")
    assert status == 200
    assert len(await admin.requests()) == 2
    await admin.clear_requests()
    assert await admin.requests() == []


BIG = f"/api/v2/segments/{PROJECT}/{ENV}/vip"


@pytest.fixture
async def big(simulator: RunningSimulator, admin: SimulatorAdmin) -> AsyncIterator[Any]:
    """A big segment of account contexts ('vip'), a big user segment ('crowd'), a standard
    one ('beta'), and a caller for any method."""
    await admin.seed(seed(segments={"beta": {"user": ["u1"]}}))
    await admin.seed(
        {
            "segments": [
                {
                    "projectKey": PROJECT,
                    "environmentKey": ENV,
                    "key": key,
                    "unbounded": True,
                    "unboundedContextKind": kind,
                    "included": {kind: ["m1"]},
                }
                for key, kind in (("vip", "account"), ("crowd", "user"))
            ]
        }
    )
    async with aiohttp.ClientSession(simulator.base_url) as session:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            headers = {"Authorization": TOKEN, "LD-API-Version": API_VERSION}
            if method == "PATCH":
                headers["Content-Type"] = CONTENT_TYPE
            async with session.request(method, path, json=body, headers=headers) as response:
                text = await response.text()
                return response.status, (json.loads(text) if text else None)

        yield call


async def test_big_segment_read_write_and_membership(big: Any, admin: SimulatorAdmin) -> None:
    status, body = await big("GET", BIG)
    assert status == 200 and body["unbounded"] is True
    assert body["unboundedContextKind"] == "account" and body["included"] == []
    state = {"included": {"add": ["a1", "a2"], "remove": ["m1"]}, "excluded": {"add": ["a1"]}}
    status, body = await big("POST", BIG + "/contexts", state)
    assert (status, body) == (204, None)
    assert await big("GET", BIG + "/contexts/a1") == (
        200,
        {"userKey": "a1", "included": True, "excluded": True},
    )
    assert (await big("GET", BIG + "/contexts/m1"))[1]["included"] is False
    [vip] = [s for s in (await admin.state())["segments"] if s["key"] == "vip"]
    assert vip["bigSegmentTargets"] == {"included": ["a1", "a2"], "excluded": ["a1"]}
    # Users only on a big segment of users.
    assert (await big("POST", BIG + "/users", {"included": {"add": ["u"]}}))[0] == 400
    crowd = f"/api/v2/segments/{PROJECT}/{ENV}/crowd"
    assert (await big("POST", crowd + "/users", {"included": {"add": ["u"]}}))[0] == 204
    assert (await big("GET", crowd + "/users/u"))[1]["included"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"included": {"add": ["k"], "remove": ["k"]}},  # one list, both ways: ambiguous
        {"included": {"add": [f"k{i}" for i in range(1_501)]}},
        {"included": {"add": "k"}},
        {"instructions": []},
    ],
)
async def test_big_segment_write_refusals(big: Any, body: Any) -> None:
    assert (await big("POST", BIG + "/contexts", body))[0] == 400


async def test_a_write_for_the_other_kind_of_segment_is_refused(big: Any) -> None:
    add = {"kind": "addIncludedTargets", "contextKind": "account", "values": ["x"]}
    status, body = await big("PATCH", BIG, {"environmentKey": ENV, "instructions": [add]})
    assert status == 400 and "big segment" in body["message"]
    rename = {"kind": "updateName", "value": "VIP"}
    status, body = await big("PATCH", BIG, {"environmentKey": ENV, "instructions": [rename]})
    assert status == 200 and body["name"] == "VIP"
    beta = f"/api/v2/segments/{PROJECT}/{ENV}/beta"
    status, body = await big("POST", beta + "/contexts", {"included": {"add": ["x"]}})
    assert status == 400 and "does not support standard segments" in body["message"]
    assert (await big("GET", beta + "/contexts/u1"))[0] == 400
    assert (await big("POST", f"/api/v2/segments/{PROJECT}/{ENV}/nope/contexts", {}))[0] == 404


async def test_expiring_target_reads(http: Any, big: Any) -> None:
    await http(EXPIRING, {"instructions": [_add("u1")]})
    status, body = await big("GET", EXPIRING)
    assert status == 200 and [i["contextKey"] for i in body["items"]] == ["u1"]
    status, body = await big("GET", USERS)
    assert status == 200 and [i["userKey"] for i in body["items"]] == ["u1"]
    flag_add = {
        "kind": "addExpiringTarget",
        "variationId": VARIATION,
        "contextKey": "u1",
        "contextKind": "user",
        "value": 5,
    }
    await http(FLAG, {"instructions": [flag_add]})
    status, body = await big("GET", FLAG)
    assert status == 200 and body["items"][0]["expirationDate"] == 5


async def test_the_segment_list_filters_big_segments_and_pages(big: Any) -> None:
    listing = f"/api/v2/segments/{PROJECT}/{ENV}"
    status, body = await big("GET", f"{listing}?filter=unbounded%20equals%20true&limit=1")
    assert status == 200 and body["totalCount"] == 2
    assert [s["key"] for s in body["items"]] == ["crowd"]
    status, body = await big("GET", f"{listing}?filter=unbounded%20equals%20true&offset=1")
    assert [(s["key"], s["unbounded"]) for s in body["items"]] == [("vip", True)]
    status, body = await big("GET", f"{listing}?filter=unbounded%20equals%20false")
    assert [s["key"] for s in body["items"]] == ["beta"]
    status, body = await big("GET", f"{listing}?filter=tags%20anyOf%20%5B%22x%22%5D")
    assert status == 400  # a filter the simulator does not know is refused, not ignored
