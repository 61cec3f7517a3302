"""Prometheus metrics of one service instance (its own registry, so instances never collide)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from consumer import __version__
from consumer.contract.codes import STATUS_OF_CODE
from consumer.contract.outcomes import Status
from consumer.launchdarkly.errors import retry_reasons
from consumer.launchdarkly.routing import Endpoint

# No `*_created` series: they double /metrics and say only when the process started.
disable_created_metrics()  # type: ignore[no-untyped-call]

BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1500)
LATENCIES = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        Info("ldc_build", "Build information", registry=r).info({"version": __version__})
        self.records_consumed = Counter(
            "ldc_records_consumed", "Input records taken from Kafka", registry=r
        )
        self.records_skipped = Counter(
            "ldc_records_already_done",
            "Records consumed again whose outcome was already published (crash recovery)",
            registry=r,
        )
        self.outcomes = Counter(
            "ldc_outcomes", "Outcomes published, by status", ["status"], registry=r
        )
        # The code as well as the status: the dashboard's "what went wrong" panel and the
        # dead-letter alert's first question. Bounded: one series per error code (errors.py).
        self.outcome_errors = Counter(
            "ldc_outcome_errors",
            "Outcomes with an error (every status but succeeded), by status and error code",
            ["status", "code"],
            registry=r,
        )
        self.dead_letters = Counter(
            "ldc_dead_letters", "Dead-letter copies published, by status", ["status"], registry=r
        )
        self.batches = Counter(
            "ldc_batches_sent", "Batches sent (one or more requests each)", ["endpoint"], registry=r
        )
        self.batch_size = Histogram(
            "ldc_batch_size",
            "Instructions per batch",
            ["endpoint"],
            buckets=BATCH_SIZES,
            registry=r,
        )
        self.requests = Counter(
            "ldc_api_requests",
            "LaunchDarkly API requests, by endpoint and status (or timeout, connection_error)",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "ldc_api_request_duration_seconds",
            "LaunchDarkly API request latency",
            ["endpoint"],
            buckets=LATENCIES,
            registry=r,
        )
        self.retries = Counter(
            "ldc_api_retries", "Requests sent again, by reason", ["reason"], registry=r
        )
        self.narrowing = Counter(
            "ldc_api_narrowing_requests",
            "Extra requests made to narrow down a failed all-or-nothing batch",
            registry=r,
        )
        self.abandoned = Counter(
            "ldc_api_requests_abandoned",
            "Requests cancelled while on the wire (a revoke or stop past its bound): LaunchDarkly"
            " may still apply them. Non-zero means the timeouts do not nest as they should",
            registry=r,
        )
        self.rate_limited = Counter("ldc_api_rate_limited", "429 answers received", registry=r)
        self.rate_limit_wait = Counter(
            "ldc_rate_limit_wait_seconds",
            "Time requests were held back by the rate limiter: a 429's reset, a budget at 0, and"
            " the slow start of each window (waiting for the first answer)",
            registry=r,
        )
        self.events_waiting = Gauge(
            "ldc_events_waiting", "Valid events waiting for a request", registry=r
        )
        self.records_pending = Gauge(
            "ldc_records_pending", "Records taken and not finished (outcome not acked)", registry=r
        )
        self.in_flight = Gauge("ldc_api_requests_in_flight", "Batches being sent now", registry=r)
        self.lag = Gauge(
            "ldc_consumer_lag",
            "Records behind the high watermark, by partition",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "ldc_commit_duration_seconds", "Offset commit latency", buckets=LATENCIES, registry=r
        )
        self.commits = Counter("ldc_commits", "Offset commits, by result", ["result"], registry=r)
        self.auth_ok = Gauge(
            "ldc_api_token_accepted",
            "1 while LaunchDarkly accepts the token, 0 during a 401 outage",
            registry=r,
        )
        self.api_available = Gauge(
            "ldc_api_available",
            "1 while the API gate is open; 0 while LaunchDarkly cannot be used (token refused,"
            " outage, not reached yet)",
            registry=r,
        )
        self.paused = Gauge(
            "ldc_partitions_paused",
            "Partitions paused (backpressure, API gate closed, or lease not granted yet)",
            registry=r,
        )
        self.assigned = Gauge("ldc_partitions_assigned", "Partitions assigned", registry=r)
        self.halted = Gauge(
            "ldc_partitions_halted",
            "Partitions this member stopped reading (records it cannot decode, an offset out of"
            " range with no reset, a dead-letter copy the topic cannot take): /readyz says why",
            registry=r,
        )
        self.offset_resets = Counter(
            "ldc_offset_resets",
            "Partitions whose position was out of range and reset by CONSUMER_AUTO_OFFSET_RESET"
            " (retention deleted records not processed yet, a log that lost data)",
            ["policy"],
            registry=r,
        )
        self.auth_ok.set(1)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Every series of a known label value, at zero: a counter otherwise appears only at
        its first increase, and the dashboard's error, dead-letter and retry panels (and
        `rate()` over them) would be empty on a healthy consumer."""
        for status in Status:
            self.outcomes.labels(status=status.value)
        for status in (Status.REJECTED, Status.INVALID, Status.FAILED):
            self.dead_letters.labels(status=status.value)
        for code, status_of_code in STATUS_OF_CODE.items():
            self.outcome_errors.labels(status=status_of_code, code=code.value)
        for reason in retry_reasons():
            self.retries.labels(reason=reason.value)
        for endpoint in Endpoint:
            self.batches.labels(endpoint=endpoint.value)
            self.batch_size.labels(endpoint=endpoint.value)
            self.request_latency.labels(endpoint=endpoint.value)
        for result in ("ok", "failed"):
            self.commits.labels(result=result)
