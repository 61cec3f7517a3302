"""OpenTelemetry tracing through a real run (the SDK's in-memory exporter): trace context from
input headers to outcomes and dead letters, and the spans of events, batches and requests."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumer.contract.events import record_key
from consumer.kafka import clients as kafka
from consumer.listening import start_site
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN, encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    dead_letters,
    make_settings,
    produce,
    running,
    seed,
    start_process,
)

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01".encode()
SEGMENT_TEMPLATE = "/api/v2/segments/{project}/{environment}/{resource}"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # exported as each span ends
    yield provider, exporter
    provider.shutdown()


def _headers(record: Any) -> list[tuple[str, bytes]]:
    return list(record.headers or ())


def _last(headers: list[tuple[str, bytes]], name: str) -> str:
    return [value for key, value in headers if key == name][-1].decode()


def _ids(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def _hex(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _everything_recorded(found: list[ReadableSpan]) -> str:
    return json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "status": s.status.description,
            }
            for s in found
        ],
        default=str,
    )


async def test_trace_context_flows_from_input_to_outcomes_dead_letters_and_requests(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    await admin.seed(
        seed(segments={"s0": {}, "s1": {}, "s2": {}}, excluded={"s1": {"org": ["bad"]}})
    )
    await admin.set_faults(error_rate=1.0, paths=["/api/v2/segments/*/s2"])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        ld_retry_max_attempts=2,
        consumer_batch_linger_ms=300,
    )
    await create_topics(settings, partitions=1)
    upstream = [("traceparent", TRACEPARENT), ("tracestate", b"vendor=1")]
    good = event_dict(key="s0", project=PROJECT, env=ENV, values=["k0"])
    untraced = event_dict(key="s0", project=PROJECT, env=ENV, values=["k1"])
    # s1: one bad instruction among good ones (a 400, narrowed down); s2: always 5xx (retries).
    narrowed = [
        event_dict(key="s1", project=PROJECT, env=ENV, contextKind="org", values=[value])
        for value in ("fine-a", "bad", "fine-b")
    ]
    failing = event_dict(key="s2", project=PROJECT, env=ENV)
    messages = [
        (record_key(good), encode(good), upstream),
        (record_key(untraced), encode(untraced), []),
        *[(record_key(e), encode(e), upstream) for e in narrowed],
        (record_key(failing), encode(failing), upstream),
        (None, b"not json", upstream),
    ]
    # Produced before the service starts: each resource's events arrive in one fetch, one batch.
    await produce(settings, messages)
    async with running(settings, tracer_provider=provider):
        results = await kafka.read_topic(
            settings, settings.consumer_results_topic, until=lambda r: len(r) >= 7, timeout=30
        )
        letters = await dead_letters(settings, 3)
    found = exporter.get_finished_spans()

    events = {
        s.attributes["messaging.kafka.offset"]: s
        for s in found
        if s.kind is SpanKind.CONSUMER and s.attributes
    }
    assert sorted(events) == list(range(7))
    by_offset = {json.loads(r.value)["source"]["offset"]: r for r in results}
    for offset, record in by_offset.items():
        span = events[offset]
        trace_id, span_id = _ids(_last(_headers(record), "traceparent"))
        # The outcome names the event's span; the span's parent is the input's traceparent.
        assert (trace_id, span_id) == _hex(span)
        if offset == 1:  # no trace headers in: a trace of its own
            assert trace_id != UPSTREAM_TRACE and span.parent is None
        else:
            assert trace_id == UPSTREAM_TRACE
            assert span.parent is not None and f"{span.parent.span_id:016x}" == UPSTREAM_SPAN
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.destination.name"] == settings.consumer_input_topic
        assert span.attributes["messaging.destination.partition.id"] == "0"
        assert span.attributes["messaging.consumer.group.name"] == settings.consumer_group_id
        outcome = json.loads(record.value)
        assert span.attributes["ldc.outcome.status"] == outcome["status"]
        if outcome["eventId"] is not None:
            assert span.attributes["messaging.message.id"] == outcome["eventId"]
        if outcome["status"] != "succeeded":
            assert span.status.status_code is StatusCode.ERROR

    # Dead letters: the original headers byte for byte first, then the event span's.
    assert len(letters) == 3
    for letter in letters:
        headers = _headers(letter)
        assert headers[:2] == upstream
        offset = int(dict(headers)["ldc.original.offset"])
        assert _ids(_last(headers, "traceparent")) == _hex(events[offset])

    # Requests: route templates, linked to the events they carry; children of their batch.
    requests = [s for s in found if s.kind is SpanKind.CLIENT]
    assert requests and {s.name for s in requests} == {f"PATCH {SEGMENT_TEMPLATE}"}
    batches = {s.context.span_id: s for s in found if s.name == "send segment-targets"}
    for request in requests:
        assert request.attributes["url.template"] == SEGMENT_TEMPLATE
        assert request.attributes["server.address"] == "127.0.0.1"
        assert request.parent is not None and request.parent.span_id in batches
        assert request.links
    event_contexts = {s.context.span_id: offset for offset, s in events.items()}
    linked = {event_contexts[link.context.span_id] for r in requests for link in r.links}
    assert linked == {0, 1, 2, 3, 4, 5}  # every valid event; the invalid one is never sent

    # Narrowing: the 400 on s1's batch of three, then requests of halves marked as narrowing.
    s1_batch = next(
        b
        for b in batches.values()
        if {event_contexts[k.context.span_id] for k in b.links} == {2, 3, 4}
    )
    assert [e.name for e in s1_batch.events].count("batch.narrowing") >= 1
    narrowing = [r for r in requests if r.parent.span_id == s1_batch.context.span_id]
    assert narrowing[0].attributes["ldc.narrowing"] is False  # the first try: the whole batch
    assert any(r.attributes["ldc.narrowing"] for r in narrowing)
    assert 400 in {r.attributes.get("http.response.status_code") for r in narrowing}
    # Retries: s2's batch records each one; its failed requests carry the error.
    s2_batch = next(
        b for b in batches.values() if {event_contexts[k.context.span_id] for k in b.links} == {5}
    )
    retries = [e for e in s2_batch.events if e.name == "ld.retry"]
    assert retries and retries[0].attributes["error.type"] == "server_error"
    s2_requests = [r for r in requests if r.parent.span_id == s2_batch.context.span_id]
    assert all(r.status.status_code is StatusCode.ERROR for r in s2_requests)
    assert all(r.attributes["error.type"].startswith("5") for r in s2_requests)

    # Never the token, never a raw path (keys of resources) in a span.
    recorded = _everything_recorded(found)
    assert TOKEN not in recorded
    assert "/segments/proj/production/" not in recorded


async def test_rate_limit_waits_are_spans_of_their_batch(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    await admin.seed(seed(segments={"s0": {}, "s1": {}}))
    # One request per route per window: the second batch waits for the next window.
    await admin.set_limits(route_limit=1, window_ms=500)
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=1)
    found_events = [event_dict(key=key, project=PROJECT, env=ENV) for key in ("s0", "s1")]
    await produce(settings, [(record_key(e), encode(e), []) for e in found_events])
    async with running(settings, tracer_provider=provider):
        await kafka.read_topic(
            settings, settings.consumer_results_topic, until=lambda r: len(r) >= 2, timeout=30
        )
    found = exporter.get_finished_spans()
    waits = [s for s in found if s.name == "rate-limit wait"]
    assert waits
    batches = {s.context.span_id for s in found if s.name.startswith("send ")}
    assert all(w.parent is not None and w.parent.span_id in batches for w in waits)
    assert all(w.attributes["ldc.wait_s"] > 0 for w in waits)


async def test_run_exports_over_otlp_when_the_standard_variables_say_so(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """`ld-targeting-consumer run` as users start it: OTEL_EXPORTER_OTLP_ENDPOINT alone turns
    tracing on, and the spans reach an OTLP/HTTP receiver (here a stand-in that keeps bodies)."""
    received: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner, port = await start_site(app, "127.0.0.1", 0)
    await admin.seed(seed(segments={"s0": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=1)
    event = event_dict(key="s0", project=PROJECT, env=ENV)
    await produce(settings, [(record_key(event), encode(event), [("traceparent", TRACEPARENT)])])
    process = await start_process(
        settings,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        (result,) = await kafka.read_topic(
            settings, settings.consumer_results_topic, until=lambda r: len(r) >= 1, timeout=30
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
        await runner.cleanup()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert '"tracing.enabled"' in stderr.decode()
    assert _ids(_last(_headers(result), "traceparent"))[0] == UPSTREAM_TRACE
    exported = b"".join(received)  # OTLP protobuf: ids as raw bytes, names as UTF-8
    assert bytes.fromhex(UPSTREAM_TRACE) in exported
    assert f"process {settings.consumer_input_topic}".encode() in exported
    assert f"PATCH {SEGMENT_TEMPLATE}".encode() in exported
    assert TOKEN.encode() not in exported
