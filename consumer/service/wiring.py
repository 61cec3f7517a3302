"""The service's parts, made from the settings (`build`): the one place they are put together,
and the one place a duration in milliseconds becomes seconds. `Service` (lifecycle.py) is
given them; a test gives it fakes through `build`'s keyword arguments."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer

from consumer.kafka import clients as kafka
from consumer.launchdarkly.big_segments import KindCache
from consumer.launchdarkly.client import LdClient, TokenSource
from consumer.launchdarkly.errors import ApiError
from consumer.launchdarkly.gate import ApiGate, Closed
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.segment_kinds import KindResolver
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.backpressure import Backpressure
from consumer.service.batcher import Batcher
from consumer.service.deadline import Clock
from consumer.service.health import HealthServer, Vitals
from consumer.service.leases import Leases
from consumer.service.membership import Membership, bound
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline
from consumer.service.publisher import Publisher
from consumer.service.recovery import Recovery
from consumer.service.scarcity import Scarcity
from consumer.service.sender import BatchSender
from consumer.service.tracing import Tracing
from consumer.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


@dataclass(frozen=True, slots=True)
class Timings:
    """What the service itself waits for, in seconds."""

    commit_interval: float  # CONSUMER_COMMIT_INTERVAL_MS
    commit_timeout: float  # KAFKA_COMMIT_TIMEOUT_MS: a commit, a close step, a broker probe
    revoke_timeout: float  # CONSUMER_REVOKE_TIMEOUT_MS
    shutdown_timeout: float  # CONSUMER_SHUTDOWN_TIMEOUT_MS
    # LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS: the longest a request may still land
    # after it started. An unclean handover waits this long (handover.py, rule 2), and the stop
    # starts no request later than this before its end.
    landing: float


@dataclass(slots=True)
class Parts:
    settings: Settings
    timings: Timings
    token: TokenSource
    metrics: Metrics
    vitals: Vitals
    membership: Membership
    leases: Leases
    pressure: Backpressure
    recovery: Recovery | None  # None: no scan (CONSUMER_RECOVERY_LOOKBACK_MS < 0)
    tracing: Tracing
    consumer: AIOKafkaConsumer  # made, not started
    publisher: Publisher  # its producer made, not started
    client: LdClient
    gate: ApiGate
    sender: BatchSender
    pipeline: Pipeline
    health: HealthServer | None  # None: CONSUMER_HTTP_PORT=0


def seconds(ms: float) -> float:
    return ms / 1000


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.ld_retry_max_attempts,
        max_elapsed=seconds(settings.ld_retry_max_elapsed_ms),
        base_delay=seconds(settings.ld_retry_base_delay_ms),
        max_delay=seconds(settings.ld_retry_max_delay_ms),
        conflict_max_retries=settings.ld_conflict_max_retries,
        rate_limit_default=seconds(settings.ld_rate_limit_default_wait_ms),
        rate_limit_jitter=seconds(settings.ld_rate_limit_jitter_ms),
    )


def build(
    settings: Settings,
    token: TokenSource | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    consumer: AIOKafkaConsumer | None = None,
    publisher: Publisher | None = None,
    sender: BatchSender | None = None,
    clock: Clock = time.monotonic,
) -> Parts:
    """`tracer_provider`: OpenTelemetry tracing (tracing.py), off when None. `consumer`,
    `publisher`, `sender`: made here unless given (fakes); `clock`: the membership's."""
    token = token or TokenSource(settings.ld_api_token, settings.ld_api_token_file)
    timings = Timings(
        commit_interval=seconds(settings.consumer_commit_interval_ms),
        commit_timeout=seconds(settings.kafka_commit_timeout_ms),
        revoke_timeout=seconds(settings.consumer_revoke_timeout_ms),
        shutdown_timeout=seconds(settings.consumer_shutdown_timeout_ms),
        landing=seconds(settings.ld_request_timeout_ms + settings.ld_unknown_outcome_settle_ms),
    )
    metrics = Metrics()
    vitals = Vitals()
    membership = Membership(
        bound(settings.kafka_session_timeout_ms, settings.kafka_heartbeat_interval_ms), clock
    )
    rng = random.Random()
    tracing = Tracing(
        tracer_provider, group_id=settings.consumer_group_id, base_url=settings.ld_base_url
    )
    client = LdClient(settings.ld_base_url, token, timeout=seconds(settings.ld_request_timeout_ms))

    async def probe() -> ApiError | None:  # the sender is made after the gate, with it
        return await sending.probe()

    def show_gate(reason: Closed | None) -> None:
        """The gate's state on /readyz and in the metrics; batches it held back may go."""
        vitals.api_closed = gate.describe()
        vitals.api_token_refused = reason is Closed.UNAUTHORIZED
        metrics.auth_ok.set(0 if reason is Closed.UNAUTHORIZED else 1)
        metrics.api_available.set(0 if reason is not None else 1)
        pipeline.wake()

    gate = ApiGate(
        token,
        probe,
        outage_window=seconds(settings.ld_outage_window_ms),
        base_delay=seconds(settings.ld_retry_base_delay_ms),
        max_delay=seconds(settings.ld_probe_max_delay_ms),
        on_change=show_gate,
        rng=rng,
    )
    if sender is None:
        sender = make_sender(settings, client, gate, metrics, tracing, rng)
    sending = sender  # not None, for `probe`
    if publisher is None:
        publisher = make_publisher(settings, timings)
    pipeline = Pipeline(
        Batcher(
            max_size=settings.consumer_batch_max_size,
            linger=seconds(settings.consumer_batch_linger_ms),
            comment_max_chars=settings.consumer_batch_comment_max_chars,
        ),
        sender,
        publisher,
        metrics,
        max_in_flight=settings.consumer_max_in_flight_requests,
        on_published=vitals.broker_seen,
        tracing=tracing,
        scarcity=Scarcity(
            seconds(max(settings.consumer_batch_max_wait_ms, settings.consumer_batch_linger_ms))
        ),
    )
    show_gate(gate.reason)
    return Parts(
        settings=settings,
        timings=timings,
        token=token,
        metrics=metrics,
        vitals=vitals,
        membership=membership,
        leases=Leases(membership),
        pressure=Backpressure(settings.consumer_max_pending_events),
        recovery=(
            Recovery(settings, timeout=seconds(settings.consumer_recovery_timeout_ms))
            if settings.consumer_recovery_lookback_ms >= 0
            else None
        ),
        tracing=tracing,
        consumer=consumer if consumer is not None else kafka.make_consumer(settings),
        publisher=publisher,
        client=client,
        gate=gate,
        sender=sender,
        pipeline=pipeline,
        health=(
            HealthServer(vitals, metrics.registry, port=settings.consumer_http_port)
            if settings.consumer_http_port
            else None
        ),
    )


def make_sender(
    settings: Settings,
    client: LdClient,
    gate: ApiGate,
    metrics: Metrics,
    tracing: Tracing,
    rng: random.Random,
) -> BatchSender:
    policy = retry_policy(settings)
    throttle = RateLimiter()
    return BatchSender(
        client,
        policy,
        gate,
        throttle=throttle,
        metrics=metrics,
        rng=rng,
        tracing=tracing,
        settle=seconds(settings.ld_unknown_outcome_settle_ms),
        kinds=KindResolver(
            client,
            policy,
            gate,
            throttle,
            metrics,
            KindCache(seconds(settings.ld_segment_kind_ttl_ms)),
            rng=rng,
        ),
    )


def make_publisher(settings: Settings, timings: Timings) -> Publisher:
    """A publisher whose producer (made, not started) is made again when the broker refuses
    its idempotence state (publisher.py)."""

    async def renew() -> Any:
        old = publisher.producer
        batch = kafka.producer_batch_size(publisher.limits.values())
        fresh = kafka.make_producer(settings, batch)
        await kafka.start(fresh, settings)
        publisher.producer = fresh  # the one the service stops from now on
        await kafka.stop_within(old.stop(), timings.commit_timeout, "producer.stop")
        return fresh

    publisher = Publisher(
        kafka.make_producer(settings),
        results_topic=settings.consumer_results_topic,
        dlq_topic=settings.consumer_dlq_topic,
        renew=renew,
        max_request_size=settings.kafka_producer_max_request_size,
    )
    return publisher
