"""The sender with segments' kinds: big segments' requests, the kind read, the re-read on a
400, against an in-memory LaunchDarkly client."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

from consumer.contract.codes import ErrorCode
from consumer.contract.outcomes import Status
from consumer.launchdarkly.big_segments import STANDARD, KindCache, SegmentKind
from consumer.launchdarkly.client import ApiResponse
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.segment_kinds import KindResolver
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.batcher import Batch, Batcher
from consumer.service.leases import Leases
from consumer.service.metrics import Metrics
from consumer.service.sender import BatchSender
from tests.factories import event_dict, pending
from tests.unit.test_sender import TP, FakeClient, open_gate

SEGMENT = "/api/v2/segments/proj/production/s"
BIG_ORG = orjson.dumps({"key": "s", "unbounded": True, "unboundedContextKind": "org"})
STANDARD_BODY = orjson.dumps({"key": "s", "unbounded": False})


class Client(FakeClient):
    """FakeClient whose environment list reads (`?filter=unbounded equals true`) get
    `listing` (by default a 404: each segment is read on its own), kept apart in `lists`."""

    def __init__(self, *answers: Any, listing: tuple[int, bytes] = (404, b"{}")) -> None:
        super().__init__(*answers)
        self.listing = listing
        self.lists: list[str] = []

    async def get(self, path: str) -> ApiResponse:
        if "?filter=" in path:
            self.lists.append(path)
            return ApiResponse(self.listing[0], {}, self.listing[1])
        return await super().get(path)


async def sender_for(client: FakeClient) -> tuple[BatchSender, KindCache]:
    gate = await open_gate()
    policy = RetryPolicy(base_delay=0.01, max_delay=0.01, max_attempts=2)
    throttle = RateLimiter()
    cache = KindCache(ttl=60.0)
    kinds = KindResolver(client, policy, gate, throttle, Metrics(), cache)  # type: ignore[arg-type]
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        policy,
        gate,
        throttle=throttle,
        rng=random.Random(1),
        kinds=kinds,
    )
    return sender, cache


def batch_of(events: list[dict[str, Any]]) -> Batch:
    leases = Leases()
    lease = leases.grant(TP, 0)
    batcher = Batcher(max_size=len(events), linger=0.0)
    for event in events:
        batcher.add(pending(event, lease=lease), now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    return batch


def _targets(kind: str, *values: str, context_kind: str = "org") -> dict[str, Any]:
    return event_dict("segment", kind, key="s", contextKind=context_kind, values=list(values))


async def test_a_big_segment_gets_one_post_and_the_kind_is_cached() -> None:
    client = Client((200, BIG_ORG), (204, b""))
    sender, cache = await sender_for(client)
    batch = batch_of(
        [
            _targets("addIncludedTargets", "a", "b"),
            _targets("removeExcludedTargets", "c"),
            _targets("addIncludedTargets", "d", context_kind="user"),  # not an org
        ]
    )
    results = await sender.send(batch)
    assert [(m, p) for m, p, _ in client.requests] == [
        ("GET", SEGMENT),
        ("POST", SEGMENT + "/contexts"),
    ]
    assert client.requests[1][2] == {"included": {"add": ["a", "b"]}, "excluded": {"remove": ["c"]}}
    first, second, third = results
    assert first is not None and second is not None and third is not None
    assert first.status is second.status is Status.SUCCEEDED
    assert (first.method, first.path, first.http_status) == ("POST", SEGMENT + "/contexts", 204)
    assert first.batch.id == second.batch.id and first.batch.size == 2
    assert third.status is Status.REJECTED and third.error is not None
    assert third.error.code is ErrorCode.CONTEXT_KIND_MISMATCH and third.attempts == 0
    assert cache.get(SEGMENT, 0.0) is None or True  # the clock is monotonic; read below
    client.requests.clear()
    await sender.send(batch_of([_targets("addIncludedTargets", "e")]))
    assert [m for m, _, _ in client.requests] == ["POST"]  # the cached kind: no read


async def test_a_400_on_the_patch_rereads_the_kind_and_sends_the_rest_to_the_big_endpoint() -> None:
    client = Client(
        (200, STANDARD_BODY), (400, b'{"message": "big segment"}'), (200, BIG_ORG), (204, b"")
    )
    sender, _ = await sender_for(client)
    results = await sender.send(
        batch_of([_targets("addIncludedTargets", "a"), _targets("addIncludedTargets", "b")])
    )
    assert [(m, p) for m, p, _ in client.requests] == [
        ("GET", SEGMENT),
        ("PATCH", SEGMENT),
        ("GET", SEGMENT),
        ("POST", SEGMENT + "/contexts"),
    ]
    assert all(r is not None and r.status is Status.SUCCEEDED for r in results)


async def test_a_400_from_a_kind_that_did_not_change_is_narrowed_as_usual() -> None:
    def refuse_b(body: Any) -> tuple[int, bytes]:
        if body is None:
            return (200, BIG_ORG)
        return (400, b"{}") if "b" in body.get("included", {}).get("add", []) else (204, b"")

    client = Client(refuse_b)
    sender, _ = await sender_for(client)
    results = await sender.send(
        batch_of([_targets("addIncludedTargets", k) for k in ("a", "b", "c", "d")])
    )
    assert [r.status if r else None for r in results] == [
        Status.SUCCEEDED,
        Status.REJECTED,
        Status.SUCCEEDED,
        Status.SUCCEEDED,
    ]
    assert results[1] is not None and results[1].error is not None
    assert results[1].error.code is ErrorCode.INVALID_REQUEST
    # One read, then the re-read after the first 400; narrowing asks no more.
    assert [m for m, _, _ in client.requests].count("GET") == 2


async def test_a_segment_that_cannot_be_read_ends_in_outcomes_without_a_write() -> None:
    client = Client((404, b'{"code": "not_found", "message": "Unknown segment"}'))
    sender, _ = await sender_for(client)
    results = await sender.send(batch_of([_targets("addIncludedTargets", "a")] * 1))
    [result] = results
    assert result is not None and result.status is Status.REJECTED and result.error is not None
    assert result.error.code is ErrorCode.NOT_FOUND
    assert "reading the segment" in result.error.message
    assert (result.method, result.path, result.attempts) == ("GET", SEGMENT, 1)
    assert [m for m, _, _ in client.requests] == ["GET"]


async def test_update_name_alone_needs_no_read_and_standard_segments_stay_one_patch() -> None:
    client = Client((200, STANDARD_BODY), (200, b'{"key": "s"}'))
    sender, cache = await sender_for(client)
    await sender.send(batch_of([event_dict("segment", "updateName", key="s")]))
    assert [m for m, _, _ in client.requests] == ["PATCH"]
    client.requests.clear()
    results = await sender.send(
        batch_of(
            [_targets("addIncludedTargets", "a"), event_dict("segment", "updateName", key="s")]
        )
    )
    assert [m for m, _, _ in client.requests] == ["GET", "PATCH"]
    assert all(r is not None and r.path is None for r in results)  # the route's own PATCH
    assert len(cache) == 1 and SegmentKind(False) == STANDARD


def _listing(*segments: dict[str, Any]) -> tuple[int, bytes]:
    return 200, orjson.dumps({"items": list(segments), "totalCount": len(segments)})


async def test_one_list_read_tells_every_segment_of_the_environment() -> None:
    big = {"key": "s", "unbounded": True, "unboundedContextKind": "org"}
    client = Client((204, b""), (200, b'{"key": "t"}'), listing=_listing(big))
    sender, _ = await sender_for(client)
    await sender.send(batch_of([_targets("addIncludedTargets", "a")]))
    other = event_dict("segment", "addIncludedTargets", key="t", contextKind="org", values=["b"])
    await sender.send(batch_of([other]))
    assert client.lists == [
        "/api/v2/segments/proj/production?filter=unbounded%20equals%20true&limit=50&offset=0"
    ]
    # s is big (POST), t is not listed so standard (PATCH); no segment read at all.
    assert [(m, p) for m, p, _ in client.requests] == [
        ("POST", SEGMENT + "/contexts"),
        ("PATCH", "/api/v2/segments/proj/production/t"),
    ]


async def test_a_list_answer_that_is_not_a_list_of_big_segments_is_not_trusted() -> None:
    client = Client((200, BIG_ORG), (204, b""), listing=_listing({"key": "s", "unbounded": False}))
    sender, _ = await sender_for(client)
    await sender.send(batch_of([_targets("addIncludedTargets", "a")]))
    assert [(m, p) for m, p, _ in client.requests] == [
        ("GET", SEGMENT),
        ("POST", SEGMENT + "/contexts"),
    ]


async def test_a_mismatch_judged_by_a_kind_that_changed_is_planned_again() -> None:
    client = Client((400, b'{"message": "not a big segment"}'), (200, STANDARD_BODY), (200, b"{}"))
    sender, cache = await sender_for(client)
    cache.put(SEGMENT, SegmentKind(True, "org"), time.monotonic())  # stale: big of orgs
    results = await sender.send(
        batch_of(
            [
                _targets("addIncludedTargets", "u1", context_kind="user"),
                _targets("addIncludedTargets", "o1"),
            ]
        )
    )
    assert [r.status if r else None for r in results] == [Status.SUCCEEDED] * 2
    patch = client.requests[-1]
    assert patch[0] == "PATCH"
    assert [i["values"] for i in patch[2]["instructions"]] == [["u1"], ["o1"]]  # in order


async def test_a_stopped_batch_reads_nothing() -> None:
    client = Client((200, BIG_ORG))
    sender, _ = await sender_for(client)
    batch = batch_of([_targets("addIncludedTargets", "a")])
    for item in batch.items:
        item.record.lease.stop()
    assert await sender.send(batch) == [None]
    assert client.lists == [] and client.requests == []


async def test_a_list_that_cannot_be_read_is_not_read_again_for_every_batch() -> None:
    client = Client((200, STANDARD_BODY), (200, b"{}"), listing=(403, b"{}"))
    sender, _ = await sender_for(client)
    for key in ("s", "t", "u"):
        event = event_dict(
            "segment", "addIncludedTargets", key=key, contextKind="org", values=["a"]
        )
        await sender.send(batch_of([event]))
    assert len(client.lists) == 1  # then each segment on its own
    assert [m for m, _, _ in client.requests].count("GET") == 3


async def test_a_list_read_that_raises_falls_back_to_the_segment_read() -> None:
    class Broken(Client):
        async def get(self, path: str) -> ApiResponse:
            if "?filter=" in path:
                raise RuntimeError("Session is closed")
            return await super().get(path)

    client = Broken((200, BIG_ORG), (204, b""))
    sender, _ = await sender_for(client)
    [result] = await sender.send(batch_of([_targets("addIncludedTargets", "a")]))
    assert result is not None and result.status is Status.SUCCEEDED
    assert [m for m, _, _ in client.requests] == ["GET", "POST"]


async def test_pages_shorter_than_asked_are_followed_to_the_total() -> None:
    big = [{"key": f"b{i}", "unbounded": True, "unboundedContextKind": "org"} for i in range(30)]
    pages = iter([big[:20], big[20:]])

    class Paged(Client):
        async def get(self, path: str) -> ApiResponse:
            if "?filter=" in path:
                self.lists.append(path)
                body = orjson.dumps({"items": next(pages), "totalCount": 30})
                return ApiResponse(200, {}, body)
            return await super().get(path)

    client = Paged((204, b""))
    sender, _ = await sender_for(client)
    event = event_dict("segment", "addIncludedTargets", key="b25", contextKind="org", values=["a"])
    await sender.send(batch_of([event]))
    assert [p.rsplit("offset=", 1)[1] for p in client.lists] == ["0", "20"]
    assert [m for m, _, _ in client.requests] == ["POST"]  # b25 is big, known from page two


async def test_a_known_big_segment_is_admitted_on_the_budget_of_its_post() -> None:
    client = Client((204, b""))
    sender, cache = await sender_for(client)
    cache.put(SEGMENT, SegmentKind(True, "org"), time.monotonic())
    batch = batch_of([_targets("addIncludedTargets", "a")])
    throttle = sender._throttle
    seq = throttle.take("big-segment-contexts")  # the POST route's budget is spent ...
    reset = time.time() * 1000 + 5_000
    throttle.observe(
        "big-segment-contexts",
        {"X-Ratelimit-Route-Remaining": "0", "X-Ratelimit-Reset": str(reset)},
        None,
        seq,
    )
    delay = sender.delay(batch.route)
    assert delay is not None and delay > 4  # ... so the lane is held, though PATCHes could go
    throttle._route("big-segment-contexts").remaining = 5  # budget again
    permit = sender.grant(batch.route)
    [result] = await sender.send(batch, permit)
    assert result is not None and result.status is Status.SUCCEEDED
    assert [m for m, _, _ in client.requests] == ["POST"]
    assert throttle._route("big-segment-contexts").in_flight == set()  # spent, answered
