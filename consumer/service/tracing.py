"""OpenTelemetry tracing: every span, attribute and trace header of the service, in one module.

Optional (the `otel` extra) and off unless configured: `provider_from_environment` builds an
SDK tracer provider with the OTLP exporter only when OpenTelemetry is installed and an endpoint
is set by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn it off). The SDK reads the rest itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`, ...).
Without a provider every hook below is a no-op (and without the extra nothing is imported).

What is traced:

- **An input record** (`process <topic>`, kind CONSUMER, messaging conventions): from when it is
  taken until its outcome (and dead-letter copy) is acknowledged. Its parent is the record's
  W3C `traceparent`/`tracestate` headers (through the configured propagators); when a record
  carries `traceparent` more than once, the last one counts (Kafka's `lastHeader`), so a
  replayed dead-letter copy continues the trace of the processing that dead-lettered it.
  Records handed over at a revoke, or already done (crash recovery), end no span.
- **A batch** (`send <endpoint>`, INTERNAL): linked to the spans of its events, with an event per
  retry (`ld.retry`) and per narrowing step (`batch.narrowing`), and as children:
- **each LaunchDarkly request** (`PATCH <route template>`, CLIENT, HTTP client conventions with
  `url.template`, never the raw path, which holds resource keys), linked to the spans of the
  events it carries, and `rate-limit wait` spans for the time a request was held back.
- **Outcome and dead-letter records** carry the `traceparent` (and `tracestate`) of their
  event's span, after all their other headers (a dead-letter copy keeps the original's too).

Never recorded: the API token, request and response bodies, event values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from consumer import __version__
from consumer.launchdarkly.errors import ApiError

# Without the `otel` extra these names stay undefined: no span is ever made, so none is used.
with contextlib.suppress(ImportError):
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from consumer.contract.outcomes import OutcomeMessage
    from consumer.service.batcher import Batch
    from consumer.service.records import ConsumedRecord

log = structlog.get_logger(__name__)

SCOPE = "ld-targeting-consumer"
# Trace headers added to outcome and dead-letter records (what the propagators inject).
Headers = list[tuple[str, bytes]]


def provider_from_environment(environ: Mapping[str, str]) -> TracerProvider | None:
    """An SDK tracer provider exporting over OTLP, or None when tracing is not configured (or
    the `otel` extra is not installed). The caller shuts it down (flushing what is left)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporters == "none" or not endpoint:
        return None
    if exporters != "otlp":
        log.warning("tracing.exporter_unsupported", exporter=exporters, message="only otlp")
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing.not_installed", message="pip install 'ld-targeting-consumer[otel]'")
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    try:
        if protocol == "grpc":  # not in the extra: installed separately when wanted
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("tracing.exporter_not_installed", protocol=protocol)
        return None
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; this name only replaces the SDK's
    # "unknown_service".
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SCOPE}))
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing.enabled", endpoint=endpoint, protocol=protocol)
    return provider


class Tracing:
    """The hooks the pipeline, the sender and the publisher call. `Tracing(None)` (or a
    service without a provider) does nothing."""

    def __init__(
        self,
        provider: TracerProvider | None,
        *,
        group_id: str = "",
        base_url: str = "",
    ) -> None:
        self.enabled = provider is not None
        self._tracer: Any = None
        self._group_id = group_id
        self._server: dict[str, Any] = {}
        if provider is None:
            return
        self._tracer = provider.get_tracer(SCOPE, __version__)
        url = urlsplit(base_url)
        if url.hostname:
            self._server["server.address"] = url.hostname
            self._server["server.port"] = url.port or (443 if url.scheme == "https" else 80)

    # -- events (pipeline.py, publisher.py) -------------------------------------------------

    def start_event(self, record: ConsumedRecord, event_id: str | None) -> Span | None:
        """The span of one input record's processing, child of its trace headers."""
        if self._tracer is None:
            return None

        parent = propagate.extract(record.headers, getter=_HEADERS)
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self._group_id,
        }
        if event_id is not None:
            attributes["messaging.message.id"] = event_id
        span: Span = self._tracer.start_span(
            f"process {record.topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        return span

    # -- batches and requests (sender.py) ---------------------------------------------------

    @contextlib.contextmanager
    def batch(self, batch: Batch) -> Iterator[None]:
        """The span of one batch until it has its results; current while it runs."""
        if self._tracer is None:
            yield
            return
        span = self._tracer.start_span(
            f"send {batch.route.endpoint.value}",
            links=_links(batch),
            attributes={
                "ldc.batch.id": batch.id,
                "ldc.batch.size": len(batch),
                "ldc.endpoint": batch.route.endpoint.value,
            },
        )
        with trace.use_span(span, end_on_exit=True):
            yield

    @contextlib.contextmanager
    def request(self, batch: Batch, method: str, *, narrowing: bool) -> Iterator[RequestSpan]:
        """The span of one request, a child of its batch's."""
        if self._tracer is None:
            yield _NO_REQUEST
            return
        template = batch.route.spec.template
        with self._tracer.start_as_current_span(
            f"{method} {template}",
            kind=SpanKind.CLIENT,
            links=_links(batch),
            attributes={
                "http.request.method": method,
                "url.template": template,
                **self._server,
                "ldc.batch.id": batch.id,
                "ldc.batch.size": len(batch),
                "ldc.narrowing": narrowing,
            },
            record_exception=False,  # exception messages are ours to choose, not the SDK's
        ) as span:
            yield RequestSpan(span)

    def rate_limit_wait(self, waited: float) -> None:
        """A request was held back `waited` seconds by the rate limiter (a span ending now)."""
        if self._tracer is None or waited <= 0:
            return
        end = time.time_ns()
        span = self._tracer.start_span(
            "rate-limit wait",
            start_time=end - int(waited * 1e9),
            attributes={"ldc.wait_s": round(waited, 3)},
        )
        span.end(end_time=end)

    def retry(self, error: ApiError, delay: float, failures: int) -> None:
        if self._tracer is None:
            return
        attributes: dict[str, Any] = {
            "error.type": error.code.value,
            "ldc.delay_s": round(delay, 3),
            "ldc.failures": failures,
        }
        if error.status is not None:
            attributes["http.response.status_code"] = error.status
        trace.get_current_span().add_event("ld.retry", attributes)

    def narrowing(self, size: int, error: ApiError) -> None:
        if self._tracer is None:
            return
        attributes: dict[str, Any] = {"ldc.batch.size": size}
        if error.status is not None:
            attributes["http.response.status_code"] = error.status
        trace.get_current_span().add_event("batch.narrowing", attributes)


class RequestSpan:
    """What a request's span learns from its answer."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def answered(self, status: int | None, error: ApiError | None) -> None:
        span = self._span
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            # HTTP client conventions: the status code, or the kind of failure when none came.
            span.set_attribute("error.type", str(status) if status else error.code.value)
            span.set_status(Status(StatusCode.ERROR, error.code.value))


_NO_REQUEST = RequestSpan(None)


def trace_headers(span: Span | None) -> Headers:
    """The trace headers of an event's span, for its outcome and dead-letter records."""
    if span is None:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return [(name, value.encode()) for name, value in carrier.items()]


def end_events(pairs: Sequence[tuple[ConsumedRecord, OutcomeMessage]]) -> None:
    """The outcomes are acknowledged: their events' spans end, with what became of them."""
    for record, outcome in pairs:
        span = record.span
        if span is None:
            continue
        span.set_attribute("ldc.outcome.status", outcome.status.value)
        span.set_attribute("ldc.attempts", outcome.attempts)
        if outcome.http_status is not None:
            span.set_attribute("http.response.status_code", outcome.http_status)
        if outcome.error is not None:
            span.set_attribute("error.type", outcome.error.code.value)
            span.set_status(Status(StatusCode.ERROR, outcome.error.code.value))
        span.end()
        record.span = None


def _links(batch: Batch) -> list[Any]:
    return [
        Link(item.record.span.get_span_context())
        for item in batch.items
        if item.record.span is not None
    ]


_Carrier = Sequence[tuple[str, bytes | None]]


class _HeaderGetter:
    """Kafka headers (a sequence of (name, bytes)) for the propagators; the last value of a
    repeated header comes first, since propagators read the first."""

    def get(self, carrier: _Carrier, key: str) -> list[str] | None:
        found = [value or b"" for name, value in carrier if name.lower() == key]
        if not found:
            return None
        return [value.decode("utf-8", "replace") for value in reversed(found)]

    def keys(self, carrier: _Carrier) -> list[str]:
        return [name for name, _ in carrier]


# A propagator's Getter by its methods: the class must exist without the extra installed.
_HEADERS: Any = _HeaderGetter()
