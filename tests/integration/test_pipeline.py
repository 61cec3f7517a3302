"""The service end to end: a real broker, the simulator over HTTP, the service in-process."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.kafka import clients as kafka
from consumer.launchdarkly.routing import API_VERSION, CONTENT_TYPE, ROUTES
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    Message,
    by_offset,
    committed,
    create_topics,
    dead_letters,
    make_settings,
    outcomes,
    outcomes_covering,
    produce,
    produce_steadily,
    running,
    seed,
)

OPENAPI = json.loads((Path(__file__).parents[1] / "data" / "ld_openapi_requests.json").read_text())


def _event(*args: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("project", PROJECT)
    kwargs.setdefault("env", ENV)
    return event_dict(*args, **kwargs)


def _message(event: dict[str, Any], headers: list[tuple[str, bytes]] | None = None) -> Message:
    return record_key(event), encode(event), headers or []


def _openapi_validator(path_template: str) -> jsonschema.protocols.Validator | None:
    name = OPENAPI["paths"].get(path_template)
    if name is None:
        return None
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(schema)


def _template_for(path: str) -> str | None:
    """The OpenAPI path template of an expiring-targets request path."""
    parts = path.split("/")  # ['', 'api', 'v2', base, project, key, endpoint, environment]
    if len(parts) != 8 or parts[6] not in ("expiring-targets", "expiring-user-targets"):
        return None
    key = "segmentKey" if parts[3] == "segments" else "featureFlagKey"
    return f"/api/v2/{parts[3]}/{{projectKey}}/{{{key}}}/{parts[6]}/{{environmentKey}}"


async def test_every_instruction_kind_reaches_its_url_with_its_body(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"beta": {"user": ["u1"]}}, flags={"beta": ["u1"]}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    events = [
        _event(kind_resource, kind, comment=f"c-{kind}") for kind_resource, kind in sorted(ROUTES)
    ]
    await produce(settings, [_message(e) for e in events])
    async with running(settings):
        results = await outcomes(settings, len(events))
    assert len(results) == len(events)
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    by_event = {o.eventId: o for o in results}
    for event in events:
        outcome = by_event[event["eventId"]]
        assert outcome.http is not None and outcome.batch is not None
        resource = event["resource"]
        endpoint = ROUTES[(resource["kind"], event["instruction"]["kind"])]
        sent = [r for r in requests if r["path"] == outcome.http.path]
        assert sent, f"no request to {outcome.http.path}"
        # The instruction sits at the outcome's batch index of a request to its URL.
        assert any(
            len(r["body"]["instructions"]) == outcome.batch.size
            and r["body"]["instructions"][outcome.batch.index] == event["instruction"]
            and event["comment"] in r["body"].get("comment", "")
            for r in sent
        ), event
        if endpoint.value == "segment-targets":
            assert outcome.http.path == f"/api/v2/segments/{PROJECT}/{ENV}/{resource['key']}"
        else:
            base = "segments" if resource["kind"] == "segment" else "flags"
            suffix = (
                "expiring-user-targets"
                if "User" in event["instruction"]["kind"]
                else "expiring-targets"
            )
            assert outcome.http.path == f"/api/v2/{base}/{PROJECT}/{resource['key']}/{suffix}/{ENV}"
    for request in requests:
        assert request["auth"] == "ok"
        assert request["contentType"] == CONTENT_TYPE
        assert request["apiVersion"] == API_VERSION
        segment_patch = request["path"] == f"/api/v2/segments/{PROJECT}/{ENV}/beta"
        assert ("environmentKey" in request["body"]) is segment_patch
        if segment_patch:
            assert request["body"]["environmentKey"] == ENV
    # Bodies validate against LaunchDarkly's own OpenAPI document where it declares them.
    checked = set()
    for request in requests:
        template = _template_for(request["path"])
        validator = _openapi_validator(template) if template else None
        if validator is not None:
            validator.validate(request["body"])
            checked.add(template)
    assert len(checked) == 3


async def test_batches_by_size_and_linger(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"a": {}, "b": {}}))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=5,
        consumer_batch_linger_ms=300,
    )
    await create_topics(settings)
    first = [_event(key="a", values=[f"k{i}"]) for i in range(23)]
    second = [_event(key="b", values=[f"k{i}"]) for i in range(3)]
    await produce(settings, [_message(e) for e in first + second])
    async with running(settings):
        results = await outcomes(settings, 26)
    assert Counter(o.status for o in results) == {Status.SUCCEEDED: 26}
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    sizes = {
        path: [len(r["body"]["instructions"]) for r in requests if r["path"] == path]
        for path in {r["path"] for r in requests}
    }
    assert sorted(sizes[f"/api/v2/segments/{PROJECT}/{ENV}/a"]) == [3, 5, 5, 5, 5]
    assert sizes[f"/api/v2/segments/{PROJECT}/{ENV}/b"] == [3]
    # Input order is kept: the keys come out in the order they were produced.
    sent_a = [
        i["values"][0]
        for r in requests
        if r["path"].endswith("/a")
        for i in r["body"]["instructions"]
    ]
    assert sent_a == [f"k{i}" for i in range(23)]


async def test_a_lone_event_waits_for_the_linger(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"a": {}}))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=50,
        consumer_batch_linger_ms=400,
    )
    await create_topics(settings)
    async with running(settings):
        events = [_event(key="a", values=[f"k{i}"]) for i in range(3)]
        await produce(settings, [_message(e) for e in events])
        results = await outcomes(settings, 3)
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    assert len(requests) == 1 and len(requests[0]["body"]["instructions"]) == 3
    assert {o.batch.size for o in results if o.batch} == {3}


@pytest.mark.parametrize("batch_size", [1, 50])
async def test_order_within_a_url(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    batch_size: int,
) -> None:
    await admin.seed(seed(segments={"beta": {"user": ["u1"]}}))
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_max_size=batch_size
    )
    await create_topics(settings)
    add = _event("segment", "addExpiringTarget")
    update = _event("segment", "updateExpiringTarget", version=1, value=1_900_000_000_000)
    again = _event("segment", "updateExpiringTarget", version=1, value=1_900_000_000_001)
    await produce(settings, [_message(e) for e in (add, update, again)])
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, 3)}
    assert results[add["eventId"]].status is Status.SUCCEEDED
    assert results[update["eventId"]].status is Status.SUCCEEDED
    failed = results[again["eventId"]]
    assert failed.status is Status.REJECTED
    assert failed.error is not None and "version" in failed.error.message
    assert failed.http is not None and failed.http.status == 200
    [segment] = (await admin.state())["segments"]
    [expiring] = segment["expiringTargets"]
    assert expiring["expirationDate"] == 1_900_000_000_000 and expiring["_version"] == 2


async def test_per_instruction_errors_land_on_the_right_events(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"beta": {"user": ["u0", "u1", "u3", "u4"]}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    events = [_event("segment", "addExpiringTarget", contextKey=f"u{i}") for i in range(6)]
    await produce(settings, [_message(e) for e in events])
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, 6)}
        letters = await dead_letters(settings, 2)
    statuses = [results[e["eventId"]].status for e in events]
    assert statuses == [Status.SUCCEEDED] * 2 + [Status.REJECTED] + [Status.SUCCEEDED] * 2 + [
        Status.REJECTED
    ]
    rejected = results[events[2]["eventId"]]
    assert rejected.error is not None and "u2" in rejected.error.message
    assert rejected.batch is not None and rejected.batch.index == 2 and rejected.batch.size == 6
    succeeded = results[events[0]["eventId"]]
    assert succeeded.item is not None and succeeded.item["contextKey"] == "u0"
    assert sorted(json.loads(r.value)["eventId"] for r in letters) == sorted(
        [events[2]["eventId"], events[5]["eventId"]]
    )


async def test_unknown_resource_is_rejected_with_404(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"beta": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    missing = _event(key="gone")
    present = _event(key="beta")
    await produce(settings, [_message(missing), _message(present)])
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, 2)}
        [letter] = await dead_letters(settings, 1)
    outcome = results[missing["eventId"]]
    assert outcome.status is Status.REJECTED
    assert outcome.error is not None and outcome.error.code == "not_found"
    assert outcome.http is not None and outcome.http.status == 404
    assert results[present["eventId"]].status is Status.SUCCEEDED
    headers = dict(letter.headers)
    assert headers["ldc.http.status"] == b"404" and headers["ldc.status"] == b"rejected"


INVALID: list[tuple[str, bytes]] = [
    ("not utf-8", b"\xc3\x28 broken"),
    ("not json", b"{'single': 'quotes'}"),
    ("array", b"[{}]"),
    ("unknown kind", encode(event_dict(kind="deleteAll"))),
    ("unknown field", encode({**event_dict(), "contextkey": "x"})),
    ("wrong type", encode(event_dict("segment", "addExpiringTarget", value="1754092860000"))),
    ("dots", encode(event_dict(key=".."))),
    ("slash", encode(event_dict(key="a/b"))),
    ("encoded slash", encode(event_dict(project="a%2Fb"))),
]


async def test_invalid_records_are_dead_lettered_byte_for_byte_and_the_stream_moves_on(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"beta": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=1)
    messages: list[Message] = []
    valid_ids = []
    for index, (name, value) in enumerate(INVALID):
        headers = [("trace", f"t-{index}".encode()), ("dup", b""), ("dup", b"\x00\xff")]
        messages.append((f"key-{name}".encode() if index % 2 else None, value, headers))
        valid = _event(values=[f"after-{index}"])
        valid_ids.append(valid["eventId"])
        messages.append(_message(valid))
    ends = await produce(settings, messages, partition=0)
    async with running(settings) as handle:
        results = await outcomes(settings, len(messages))
        letters = await dead_letters(settings, len(INVALID))
        await handle.shutdown()
    assert len(results) == len(messages)
    outcome_at = by_offset(results)
    for offset in range(len(messages)):
        outcome = outcome_at[(0, offset)]
        if offset % 2 == 0:
            assert outcome.status is Status.INVALID, INVALID[offset // 2][0]
            assert outcome.error is not None and outcome.batch is None and outcome.http is None
        else:
            assert outcome.status is Status.SUCCEEDED
    assert len(letters) == len(INVALID)
    for letter in letters:
        offset = int(dict(letter.headers)["ldc.original.offset"])
        key, value, headers = messages[offset]
        assert letter.key == key and letter.value == value
        assert list(letter.headers[: len(headers)]) == headers  # originals first, unchanged
        extra = dict(letter.headers[len(headers) :])
        assert extra["ldc.status"] == b"invalid"
        assert extra["ldc.original.topic"] == settings.consumer_input_topic.encode()
        assert extra["ldc.original.partition"] == b"0"
        assert extra["ldc.attempts"] == b"0"
        assert "ldc.http.status" not in extra
        assert extra["ldc.error.code"].decode() == outcome_at[(0, offset)].error.code  # type: ignore[union-attr]
        for name in ("ldc.error.message", "ldc.original.timestamp", "ldc.dead-lettered-at"):
            assert extra[name]
    assert await committed(settings, list(ends)) == ends


async def test_committed_offsets_reach_the_end_after_a_drain(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(5)}))
    await admin.set_faults(latency_ms=[20, 60])
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_max_size=7
    )
    await create_topics(settings, partitions=3)
    events = [_event(key=f"s{i % 5}", values=[f"k{i}"]) for i in range(120)]
    ends = await produce(settings, [_message(e) for e in events])
    async with running(settings) as handle:
        await outcomes(settings, 40)
        await handle.shutdown()  # drains what was taken, however far it got
    positions = await committed(settings, list(ends))
    results = await outcomes(settings, 120, timeout=5)
    done = by_offset(results)
    for tp, position in positions.items():
        assert all((tp.partition, o) in done for o in range(position))
    # A second run takes the rest and everything ends committed.
    async with running(settings) as handle:
        results = await outcomes(settings, 120)
        await handle.shutdown()
    assert {(o.source.partition, o.source.offset) for o in results} == {
        (tp.partition, o) for tp, end in ends.items() for o in range(end)
    }
    assert await committed(settings, list(ends)) == ends


async def test_all_or_nothing_batch_is_narrowed_down(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"orgs": {}}, excluded={"orgs": {"org": ["banned"]}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    events = [_event(key="orgs", contextKind="org", values=[f"o{i}"]) for i in range(9)]
    events.insert(5, _event(key="orgs", contextKind="org", values=["banned"]))
    await produce(settings, [_message(e) for e in events])
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, len(events))}
    statuses = [results[e["eventId"]].status for e in events]
    assert statuses == [Status.SUCCEEDED] * 5 + [Status.REJECTED] + [Status.SUCCEEDED] * 4
    bad = results[events[5]["eventId"]]
    assert bad.error is not None and bad.error.code == "invalid_request"
    assert (
        bad.batch is not None
        and bad.batch.size == 1
        and bad.http is not None
        and bad.http.status == 400
    )
    [segment] = (await admin.state())["segments"]
    assert segment["includedContexts"] == [
        {"contextKind": "org", "values": [f"o{i}" for i in range(9)]}
    ]


async def test_a_record_without_key_or_value_is_dead_lettered_as_it_was(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    from consumer.kafka import clients as kafka

    await admin.seed(seed(segments={"beta": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=1)
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        # Other clients can write these; aiokafka's send() needs the NULL_VALUE stand-in.
        await producer.send_and_wait(
            settings.consumer_input_topic, kafka.NULL_VALUE, key=None, headers=[("h", None)]
        )
    finally:
        await producer.stop()
    after = _event(key="beta")
    ends = await produce(settings, [_message(after)], partition=0)
    async with running(settings) as handle:
        results = by_offset(await outcomes(settings, 2))
        [letter] = await dead_letters(settings, 1)
        await handle.shutdown()
    assert results[(0, 0)].status is Status.INVALID and results[(0, 0)].eventId is None
    assert results[(0, 1)].status is Status.SUCCEEDED
    assert letter.key is None and letter.value is None
    assert letter.headers[0] == ("h", None)
    assert await committed(settings, list(ends)) == ends


async def test_a_backlog_fills_every_batch_even_without_a_linger(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """Under a rate limit requests are what is scarce: a backlog read with no linger at all
    still goes out in full batches."""
    keys = [f"s{i}" for i in range(10)]
    await admin.seed(seed(segments={key: {} for key in keys}))
    await admin.set_limits(route_limit=10, window_ms=1_000)
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=50,
        consumer_batch_linger_ms=0,  # every batch is due as soon as it opens
        kafka_max_poll_records=100,  # several fetches to read the backlog
    )
    await create_topics(settings)
    count = 2_000
    events = [_event(key=keys[i % len(keys)], values=[f"k{i}"]) for i in range(count)]
    ends = await produce(settings, [_message(e) for e in events])  # the backlog, then the service
    async with running(settings):
        results = await outcomes_covering(settings, ends)
    assert {o.status for o in results} == {Status.SUCCEEDED}
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    sizes = [len(r["body"]["instructions"]) for r in requests if r["status"] == 200]
    assert sum(sizes) == count
    assert count / len(sizes) >= 0.9 * 50, Counter(sizes)


async def test_a_steady_stream_under_a_route_limit_goes_out_in_full_requests(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """Late binding: events arriving steadily for many URLs of one route, faster than its limit
    lets requests go. A lane is cut only when its request may go, so while the limit holds
    requests back every one of them is full, not what happened to be due when the budget ran
    out."""
    keys = [f"s{i}" for i in range(16)]
    await admin.seed(seed(segments={key: {} for key in keys}))
    await admin.set_limits(route_limit=8, window_ms=2_000)  # 40 events/s at 10 per request
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=10,
        consumer_batch_linger_ms=50,
    )
    await create_topics(settings)
    count, per_tick = 320, 8  # 80 events/s for 4 s
    events = [_event(key=keys[i % len(keys)], values=[f"k{i}"]) for i in range(count)]
    async with running(settings):
        ends = await produce_steadily(settings, [_message(e) for e in events], per_tick, 0.1)
        results = await outcomes_covering(settings, ends)
    assert {o.status for o in results} == {Status.SUCCEEDED}
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    assert not [r for r in requests if r["status"] == 429]
    sizes = [len(r["body"]["instructions"]) for r in requests]
    assert sum(sizes) == count
    # Every URL's requests are full but its first (the budget was not known yet, or the URL
    # was served before it had filled) and its last (the stream had ended).
    per_url: dict[str, list[int]] = {}
    for r in requests:
        per_url.setdefault(r["path"], []).append(len(r["body"]["instructions"]))
    middles = {path: found[1:-1] for path, found in per_url.items()}
    assert all(size == 10 for found in middles.values() for size in found), middles
    for segment in (await admin.state())["segments"]:  # applied in the order produced
        expected = [f"k{i}" for i in range(count) if keys[i % len(keys)] == segment["key"]]
        assert segment["includedContexts"] == [{"contextKind": "org", "values": expected}]


async def test_the_linger_counts_from_the_record_timestamp(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"a": {}}))
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_linger_ms=20_000
    )
    await create_topics(settings)
    async with running(settings):
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            event = _event(key="a", values=["k1"])
            key, value, _ = _message(event)
            sent = time.monotonic()
            await producer.send_and_wait(
                settings.consumer_input_topic,
                value,
                key=key,
                timestamp_ms=int(time.time() * 1000) - 19_000,  # waited 19 s already
            )
        finally:
            await producer.stop()
        [result] = await outcomes(settings, 1, timeout=15)
        # At most the linger's last second plus the trip, far from 20 s.
        assert time.monotonic() - sent < 10
    assert result.status is Status.SUCCEEDED
