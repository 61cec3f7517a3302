"""When tracing is on (only the standard OTEL_* variables decide), and how trace headers of a
record are read. The spans of a real run: tests/integration/test_tracing.py."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider

from consumer.service.tracing import Tracing, provider_from_environment, trace_headers
from tests.factories import pending

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    "environ",
    [
        {},  # nothing configured: off
        {"OTEL_SERVICE_NAME": "x"},  # no exporter endpoint: off
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"},  # not shipped: off, with a warning
    ],
)
def test_off_unless_an_otlp_endpoint_is_configured(environ: dict[str, str]) -> None:
    assert provider_from_environment(environ) is None


@pytest.mark.parametrize(
    "environ",
    [ENDPOINT, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}],
)
def test_on_with_an_otlp_endpoint(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = provider_from_environment(environ)
    assert isinstance(provider, TracerProvider)
    try:
        assert provider.resource.attributes["service.name"] == "ld-targeting-consumer"
    finally:
        provider.shutdown()


def test_the_service_name_of_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "targeting-eu")  # read by the SDK itself
    provider = provider_from_environment(ENDPOINT)
    assert isinstance(provider, TracerProvider)
    try:
        assert provider.resource.attributes["service.name"] == "targeting-eu"
    finally:
        provider.shutdown()


def test_without_a_provider_nothing_is_traced() -> None:
    tracing = Tracing(None)
    record = pending().record
    assert not tracing.enabled
    assert tracing.start_event(record, "e1") is None
    assert trace_headers(None) == []


def test_the_last_traceparent_of_a_record_is_its_parent() -> None:
    """A replayed dead-letter copy carries its original's traceparent and then the one of the
    processing that dead-lettered it: the trace continues from the latter."""
    first = "00-11111111111111111111111111111111-1111111111111111-01"
    last = "00-22222222222222222222222222222222-2222222222222222-01"
    provider = TracerProvider()
    record = pending().record
    record.headers = (
        ("traceparent", first.encode()),
        ("ldc.x", b"1"),
        ("traceparent", last.encode()),
    )
    span = Tracing(provider, group_id="g").start_event(record, "e1")
    assert span is not None
    assert f"{span.get_span_context().trace_id:032x}" == "2" * 32
    (name, value), *_ = trace_headers(span)
    assert name == "traceparent" and value.decode().split("-")[1] == "2" * 32
    span.end()
