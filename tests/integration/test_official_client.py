"""The simulator as LaunchDarkly's official Python REST client (`launchdarkly_api`) sees it.

Every answer goes through the client's own deserialization (`_preload_content=True`, the
default) into its pydantic models, which require what LaunchDarkly's OpenAPI document declares
required: an answer the real API would give must parse, and so must the simulator's. Error
answers parse too: the client raises its `ApiException` subclass with the error model in
`data`.

The client is synchronous (urllib3) while the simulator serves on this test's event loop, so
every call runs in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import launchdarkly_api as ld
import pytest
from launchdarkly_api.models import (
    BigSegmentTarget,
    CallerIdentityRep,
    ExpiringTargetGetResponse,
    ExpiringTargetPatchResponse,
    ExpiringUserTargetGetResponse,
    ExpiringUserTargetPatchResponse,
    FeatureFlag,
    InvalidRequestErrorRep,
    NotFoundErrorRep,
    PatchFlagsRequest,
    PatchOperation,
    PatchSegmentExpiringTargetInputRep,
    PatchSegmentExpiringTargetInstruction,
    PatchSegmentInstruction,
    PatchSegmentRequest,
    PatchWithComment,
    RateLimitedErrorRep,
    SegmentTarget,
    SegmentUserList,
    SegmentUserState,
    StatusConflictErrorRep,
    UnauthorizedErrorRep,
    UserSegment,
    UserSegments,
)

from consumer.launchdarkly.routing import CONTENT_TYPE
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import LATER, TOKEN
from tests.integration.harness import ENV, PROJECT, VARIATION, seed

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
# The answers `patch_segment` declares (its `_response_types_map`), for the bodies the client's
# model cannot express (a semantic patch, a merge patch, a bare JSON patch list).
PATCH_SEGMENT_TYPES = {
    "200": "UserSegment",
    "400": "InvalidRequestErrorRep",
    "401": "UnauthorizedErrorRep",
    "404": "NotFoundErrorRep",
    "409": "StatusConflictErrorRep",
    "429": "RateLimitedErrorRep",
}


@dataclass
class Client:
    segments: ld.SegmentsApi
    flags: ld.FeatureFlagsApi
    other: ld.OtherApi

    async def __call__(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    async def patch_segment_raw(
        self, segment: str, body: Any, content_type: str = "application/json"
    ) -> UserSegment:
        """PATCH a segment with any body, through the client's own request building and answer
        deserialization: `patch_segment` only takes a JSON patch (`PatchWithComment`), the one
        form LaunchDarkly's OpenAPI document declares for it."""
        api = self.segments

        def call() -> UserSegment:
            request = api._patch_segment_serialize(
                project_key=PROJECT,
                environment_key=ENV,
                segment_key=segment,
                patch_with_comment=body,
                dry_run=None,
                _request_auth=None,
                _content_type=content_type,
                _headers=None,
                _host_index=0,
            )
            response = api.api_client.call_api(*request)
            response.read()
            result = api.api_client.response_deserialize(response, PATCH_SEGMENT_TYPES).data
            assert isinstance(result, UserSegment)
            return result

        return await asyncio.to_thread(call)


def client_for(simulator: RunningSimulator, token: str = TOKEN) -> ld.ApiClient:
    # The API token goes into `Authorization` as it is (the client's `ApiKey` scheme).
    return ld.ApiClient(ld.Configuration(host=simulator.base_url, api_key={"ApiKey": token}))


@pytest.fixture
async def client(simulator: RunningSimulator, admin: SimulatorAdmin) -> AsyncIterator[Client]:
    """'beta': a standard segment (users u1, u2; org o1 included, org 'bad' excluded);
    'vip' a big segment of account contexts, 'crowd' one of users; flag 'checkout' with u1
    on VARIATION."""
    await admin.seed(
        seed(
            segments={"beta": {"user": ["u1", "u2"], "org": ["o1"]}},
            excluded={"beta": {"org": ["bad"]}},
            flags={"checkout": ["u1"]},
        )
    )
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
    with client_for(simulator) as api_client:
        yield Client(
            ld.SegmentsApi(api_client), ld.FeatureFlagsApi(api_client), ld.OtherApi(api_client)
        )


def contexts(targets: list[SegmentTarget] | None) -> dict[str, list[str]]:
    return {t.context_kind or "": t.values or [] for t in targets or []}


async def test_segment_reads(client: Client, admin: SimulatorAdmin) -> None:
    before = int(time.time() * 1000)
    beta = await client(client.segments.get_segment, PROJECT, ENV, "beta")
    assert isinstance(beta, UserSegment)
    assert (beta.key, beta.name, beta.version, beta.deleted) == ("beta", "beta", 1, False)
    assert beta.included == ["u1", "u2"] and beta.excluded == []
    assert contexts(beta.included_contexts) == {"org": ["o1"]}
    assert contexts(beta.excluded_contexts) == {"org": ["bad"]}
    assert (beta.tags, beta.rules, beta.generation, beta.unbounded) == ([], [], 1, False)
    assert 0 < beta.creation_date <= before and beta.last_modified_date == beta.creation_date
    assert beta.links["self"].href == f"/api/v2/segments/{PROJECT}/{ENV}/beta"

    vip = await client(client.segments.get_segment, PROJECT, ENV, "vip")
    assert vip.unbounded is True and vip.unbounded_context_kind == "account"
    assert vip.unbounded_metadata is not None and vip.unbounded_metadata.included_count == 1

    # Created again under the same key: a new generation, from version 1.
    await admin.seed(seed(segments={"beta": {"user": ["u1"]}}))
    again = await client(client.segments.get_segment, PROJECT, ENV, "beta")
    assert (again.generation, again.version, again.included) == (2, 1, ["u1"])


async def test_segment_list_with_and_without_the_unbounded_filter(client: Client) -> None:
    every = await client(client.segments.get_segments, PROJECT, ENV)
    assert isinstance(every, UserSegments)
    assert [s.key for s in every.items] == ["beta", "crowd", "vip"] and every.total_count == 3
    # The filter the consumer's segment-kind cache reads (`segment_kinds.py`), paged.
    big = await client(
        client.segments.get_segments, PROJECT, ENV, limit=1, filter="unbounded equals true"
    )
    assert [s.key for s in big.items] == ["crowd"] and big.total_count == 2
    standard = await client(
        client.segments.get_segments, PROJECT, ENV, filter="unbounded equals false"
    )
    assert [(s.key, s.unbounded) for s in standard.items] == [("beta", False)]


async def test_semantic_patch_as_the_service_sends_it(client: Client) -> None:
    before = await client(client.segments.get_segment, PROJECT, ENV, "beta")
    body = {
        "environmentKey": ENV,
        "comment": "from the official client",
        "instructions": [
            {"kind": "addIncludedTargets", "contextKind": "org", "values": ["o2"]},
            {"kind": "removeIncludedTargets", "contextKind": "org", "values": ["o1"]},
            {"kind": "addIncludedUsers", "values": ["u3"]},
            {"kind": "removeIncludedUsers", "values": ["u2"]},
            {"kind": "addExcludedUsers", "values": ["u4"]},
            {"kind": "removeExcludedTargets", "contextKind": "org", "values": ["bad"]},
            {"kind": "updateName", "value": "Beta testers"},
        ],
    }
    patched = await client.patch_segment_raw("beta", body, CONTENT_TYPE)
    assert patched.name == "Beta testers" and patched.version == before.version + 1
    assert patched.included == ["u1", "u3"] and patched.excluded == ["u4"]
    assert contexts(patched.included_contexts) == {"org": ["o2"]}
    assert contexts(patched.excluded_contexts) == {}
    assert patched.creation_date == before.creation_date
    assert patched.last_modified_date >= before.last_modified_date
    assert await client(client.segments.get_segment, PROJECT, ENV, "beta") == patched


async def test_json_patch_with_the_client_model(client: Client) -> None:
    patch = PatchWithComment(
        comment="JSON patch",
        patch=[
            PatchOperation(op="test", path="/version", value=1),
            PatchOperation(op="replace", path="/description", value="early adopters"),
            PatchOperation(op="add", path="/tags/-", value="beta"),
            PatchOperation(op="remove", path="/included/0"),
            PatchOperation(op="add", path="/included/-", value="u9"),
            PatchOperation(
                op="add",
                path="/excludedContexts/-",
                value={"contextKind": "device", "values": ["d1"]},
            ),
            PatchOperation(
                op="add",
                path="/rules/0",
                value={
                    "clauses": [
                        {
                            "attribute": "email",
                            "op": "endsWith",
                            "values": [".edu"],
                            "negate": False,
                        }
                    ]
                },
            ),
        ],
    )
    patched = await client(client.segments.patch_segment, PROJECT, ENV, "beta", patch)
    assert isinstance(patched, UserSegment)
    assert (patched.description, patched.tags, patched.version) == ("early adopters", ["beta"], 2)
    assert patched.included == ["u2", "u9"]
    assert contexts(patched.excluded_contexts) == {"org": ["bad"], "device": ["d1"]}
    [rule] = patched.rules
    assert rule.id and rule.clauses[0].attribute == "email" and rule.clauses[0].id
    # A dry run answers the result and keeps nothing.
    rename = PatchWithComment(patch=[PatchOperation(op="replace", path="/name", value="Dry")])
    dry = await client(client.segments.patch_segment, PROJECT, ENV, "beta", rename, dry_run=True)
    assert (dry.name, dry.version) == ("Dry", 3)
    assert (await client(client.segments.get_segment, PROJECT, ENV, "beta")) == patched
    # A failed `test` applies nothing: the version is 2 now.
    stale = PatchWithComment(
        patch=[
            PatchOperation(op="test", path="/version", value=1),
            PatchOperation(op="replace", path="/name", value="never"),
        ]
    )
    with pytest.raises(ld.exceptions.BadRequestException) as refused:
        await client(client.segments.patch_segment, PROJECT, ENV, "beta", stale)
    assert isinstance(refused.value.data, InvalidRequestErrorRep)
    assert refused.value.data.code == "invalid_request"
    assert (await client(client.segments.get_segment, PROJECT, ENV, "beta")).name == "beta"


async def test_json_patch_forms_and_refusals(client: Client) -> None:
    # The bare RFC 6902 list, as the general API documentation shows it.
    bare = [{"op": "replace", "path": "/name", "value": "Beta"}]
    assert (await client.patch_segment_raw("beta", bare)).name == "Beta"
    for refused in (
        [{"op": "replace", "path": "/key", "value": "other"}],  # read-only
        [{"op": "add", "path": "/excluded/-", "value": "u1"}],  # included and excluded
        [{"op": "remove", "path": "/nothing"}],
        [{"op": "move", "path": "/name"}],  # no `from`
        {"instructions": [{"kind": "updateName", "value": "x"}]},  # semantic, without its type
    ):
        with pytest.raises(ld.exceptions.BadRequestException) as error:
            await client.patch_segment_raw("beta", refused)
        assert isinstance(error.value.data, InvalidRequestErrorRep), refused
    # Targets of a big segment change through POST .../contexts, not a patch.
    with pytest.raises(ld.exceptions.BadRequestException):
        await client.patch_segment_raw("vip", [{"op": "add", "path": "/included/-", "value": "x"}])
    renamed = await client.patch_segment_raw(
        "vip", [{"op": "replace", "path": "/name", "value": "VIP"}]
    )
    assert (renamed.name, renamed.unbounded) == ("VIP", True)


async def test_json_merge_patch(client: Client) -> None:
    merged = await client.patch_segment_raw(
        "beta",
        {"description": "merged", "tags": ["a", "b"], "included": ["u1"], "name": "Merged"},
        MERGE_PATCH,
    )
    assert (merged.name, merged.description, merged.tags) == ("Merged", "merged", ["a", "b"])
    assert merged.included == ["u1"] and merged.version == 2
    # With a comment: `{"comment", "merge"}` as plain JSON; null removes a member.
    cleared = await client.patch_segment_raw(
        "beta", {"comment": "clear it", "merge": {"description": None}}
    )
    assert cleared.description is None and cleared.name == "Merged" and cleared.version == 3
    with pytest.raises(ld.exceptions.BadRequestException):
        await client.patch_segment_raw("beta", {"version": 10}, MERGE_PATCH)


async def test_expiring_targets(client: Client) -> None:
    """The expiring-targets endpoints are semantic patches only ("you must append
    domain-model=launchdarkly.semanticpatch to your Content-Type header", their pages say),
    while the client sends plain `application/json` unless told: `_content_type` tells it."""
    body = PatchSegmentExpiringTargetInputRep(
        comment="expire u1",
        instructions=[
            PatchSegmentExpiringTargetInstruction(
                kind="addExpiringTarget",
                targetType="included",
                contextKey=key,
                contextKind="user",
                value=LATER,
            )
            for key in ("u1", "nobody")
        ],
    )
    answer = await client(
        client.segments.patch_expiring_targets_for_segment,
        PROJECT,
        ENV,
        "beta",
        body,
        _content_type=CONTENT_TYPE,
    )
    assert isinstance(answer, ExpiringTargetPatchResponse)
    assert [(i.context_key, i.expiration_date) for i in answer.items] == [("u1", LATER)]
    assert answer.errors is not None and [e.instruction_index for e in answer.errors] == [1]
    read = await client(client.segments.get_expiring_targets_for_segment, PROJECT, ENV, "beta")
    assert isinstance(read, ExpiringTargetGetResponse) and read.items[0].context_key == "u1"

    # The legacy user form: its `version` is the segment's.
    users = PatchSegmentRequest(
        instructions=[
            PatchSegmentInstruction(
                kind="updateExpireUserTargetDate",
                targetType="included",
                userKey="u1",
                value=LATER + 1,
                version=1,
            )
        ]
    )
    answer_users = await client(
        client.segments.patch_expiring_user_targets_for_segment,
        PROJECT,
        ENV,
        "beta",
        users,
        _content_type=CONTENT_TYPE,
    )
    assert isinstance(answer_users, ExpiringUserTargetPatchResponse)
    assert [(i.user_key, i.expiration_date) for i in answer_users.items] == [("u1", LATER + 1)]
    read_users = await client(
        client.segments.get_expiring_user_targets_for_segment, PROJECT, ENV, "beta"
    )
    assert isinstance(read_users, ExpiringUserTargetGetResponse)
    assert read_users.items[0].user_key == "u1"

    flag_body = PatchFlagsRequest(
        instructions=[
            {
                "kind": "addExpiringTarget",
                "variationId": VARIATION,
                "contextKey": "u1",
                "contextKind": "user",
                "value": LATER,
            }
        ]
    )
    flag_answer = await client(
        client.flags.patch_expiring_targets,
        PROJECT,
        ENV,
        "checkout",
        flag_body,
        _content_type=CONTENT_TYPE,
    )
    assert isinstance(flag_answer, ExpiringTargetPatchResponse)
    assert [(i.context_key, i.variation_id) for i in flag_answer.items] == [("u1", VARIATION)]
    flag_read = await client(client.flags.get_expiring_context_targets, PROJECT, ENV, "checkout")
    assert [i.expiration_date for i in flag_read.items] == [LATER]


async def test_big_segment_writes_and_membership_reads(client: Client) -> None:
    state = SegmentUserState(
        included=SegmentUserList(add=["a1"], remove=["m1"]), excluded=SegmentUserList(add=["a2"])
    )
    written = await client(
        client.segments.update_big_segment_context_targets, PROJECT, ENV, "vip", state
    )
    assert written is None  # 204
    a1 = await client(client.segments.get_segment_membership_for_context, PROJECT, ENV, "vip", "a1")
    assert isinstance(a1, BigSegmentTarget)
    assert (a1.user_key, a1.included, a1.excluded) == ("a1", True, False)
    m1 = await client(client.segments.get_segment_membership_for_context, PROJECT, ENV, "vip", "m1")
    assert (m1.included, m1.excluded) == (False, False)
    vip = await client(client.segments.get_segment, PROJECT, ENV, "vip")
    assert vip.version == 2 and vip.unbounded_metadata is not None
    assert (vip.unbounded_metadata.included_count, vip.unbounded_metadata.excluded_count) == (1, 1)

    users = SegmentUserState(included=SegmentUserList(add=["u7"]))
    await client(client.segments.update_big_segment_targets, PROJECT, ENV, "crowd", users)
    u7 = await client(client.segments.get_segment_membership_for_user, PROJECT, ENV, "crowd", "u7")
    assert (u7.user_key, u7.included) == ("u7", True)


async def test_flag_and_caller_identity(client: Client) -> None:
    flag = await client(client.flags.get_feature_flag, PROJECT, "checkout")
    assert isinstance(flag, FeatureFlag)
    assert flag.key == "checkout" and flag.variations[0].id == VARIATION
    assert flag.kind == "boolean" and flag.archived is False and flag.tags == []
    assert flag.environments is not None
    production = flag.environments[ENV]
    assert [(t.variation, t.values) for t in production.targets or []] == [(0, ["u1"])]
    filtered = await client(client.flags.get_feature_flag, PROJECT, "checkout", env=ENV)
    assert filtered.environments is not None and list(filtered.environments) == [ENV]

    me = await client(client.other.get_caller_identity)
    assert isinstance(me, CallerIdentityRep) and me.token_kind == "auth"


async def test_error_answers_parse_as_the_client_errors(
    client: Client, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    with pytest.raises(ld.exceptions.NotFoundException) as missing:
        await client(client.segments.get_segment, PROJECT, ENV, "nope")
    assert missing.value.status == 404 and isinstance(missing.value.data, NotFoundErrorRep)

    with (
        client_for(simulator, token="wrong") as stranger,
        pytest.raises(ld.exceptions.UnauthorizedException) as refused,
    ):
        await client(ld.SegmentsApi(stranger).get_segment, PROJECT, ENV, "beta")
    assert refused.value.status == 401 and isinstance(refused.value.data, UnauthorizedErrorRep)

    # An add without its date; then the right body without the semantic-patch Content-Type.
    no_value = PatchSegmentRequest(
        instructions=[
            PatchSegmentInstruction(
                kind="addExpireUserTargetDate", userKey="u1", targetType="included"
            )
        ]
    )
    users = client.segments.patch_expiring_user_targets_for_segment
    for content_type in (CONTENT_TYPE, None):
        with pytest.raises(ld.exceptions.BadRequestException) as invalid:
            await client(users, PROJECT, ENV, "beta", no_value, _content_type=content_type)
        assert invalid.value.status == 400
        assert isinstance(invalid.value.data, InvalidRequestErrorRep)

    await admin.set_faults(conflict_rate=1.0)
    rename = PatchWithComment(patch=[PatchOperation(op="replace", path="/name", value="x")])
    with pytest.raises(ld.exceptions.ConflictException) as conflict:
        await client(client.segments.patch_segment, PROJECT, ENV, "beta", rename)
    assert isinstance(conflict.value.data, StatusConflictErrorRep)
    assert conflict.value.data.code == "optimistic_locking_error"
    await admin.set_faults()

    await admin.set_limits(window_ms=60_000, route_limit=1)
    await client(client.segments.get_segment, PROJECT, ENV, "beta")
    with pytest.raises(ld.exceptions.ApiException) as limited:
        await client(client.segments.get_segment, PROJECT, ENV, "beta")
    assert limited.value.status == 429 and isinstance(limited.value.data, RateLimitedErrorRep)
    assert limited.value.headers is not None
    assert int(limited.value.headers["X-Ratelimit-Reset"]) > time.time() * 1000


async def test_a_per_token_limit_names_its_own_reset(client: Client, admin: SimulatorAdmin) -> None:
    await admin.set_limits(window_ms=60_000, token_limit=1)
    first = await asyncio.to_thread(
        client.segments.get_segment_with_http_info, PROJECT, ENV, "beta"
    )
    assert first.headers is not None and first.headers["X-Ratelimit-Auth-Token-Remaining"] == "0"
    with pytest.raises(ld.exceptions.ApiException) as limited:
        await client(client.segments.get_segment, PROJECT, ENV, "beta")
    headers = limited.value.headers
    assert limited.value.status == 429 and isinstance(limited.value.data, RateLimitedErrorRep)
    assert headers is not None
    assert int(headers["X-Ratelimit-Auth-Token-Reset"]) > time.time() * 1000
    assert "X-Ratelimit-Reset" not in headers and "Retry-After" not in headers
