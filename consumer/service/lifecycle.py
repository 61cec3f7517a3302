"""The service's lifecycle: start, the loops, rebalances, the drain and the close.

Who owns what is written in leases.py (rules 1-5) and the commit order in pipeline.py; this
module wires them to the Kafka consumer:

- **Fetching** (`_fetch_loop`): each turn numbers the fetch, calls `getmany`, and handles what
  it returned with no await in between, against the leases as they are at that moment:
  `Leases.admit` decides per run (take, skip, or seek back), the pipeline takes the records.
  Partitions are paused while their lease does not exist yet, while the API gate is closed,
  and while too many records are pending.
- **Assignment** (`on_assigned`): the new partitions are paused before anything is awaited,
  and the callback returns at once: aiokafka does not heartbeat while it runs, and a member
  that outlives its session there is expelled while it goes on. A task (`_grant`) reads their
  positions, scans the results topic for what is already done (crash recovery), and only then
  grants the leases (fetching is resumed by the fetch loop). A revoke cancels a grant still
  under way: nothing is granted for an assignment that has ended.
- **Revoke** (`on_revoked`): the leases stop at once (no request starts for their records),
  waiting work is handed over, requests on the wire are waited for (bounded by
  CONSUMER_REVOKE_TIMEOUT_MS), the done prefix is committed (bounded by
  KAFKA_COMMIT_TIMEOUT_MS), and the leases end.
- **Stop** (one stop flag, `_stopping`), bounded from end to end:
  1. stop fetching;
  2. flush: every open batch is due at once;
  3. send and publish until LD_REQUEST_TIMEOUT_MS before CONSUMER_SHUTDOWN_TIMEOUT_MS ends;
     then, if work remains, revoke every lease: no request starts any more, requests on the
     wire are waited for (they end within the request timeout, so before the deadline) and
     their outcomes published; what still runs at the deadline is cancelled (its records
     have no outcome and are not committed: the next owner processes them);
  4. commit the done positions (bounded by KAFKA_COMMIT_TIMEOUT_MS);
  5. leave the group, flush and stop the producer, close the HTTP session.
  Steps 4-5 share what is left of CONSUMER_SHUTDOWN_TIMEOUT_MS plus STOP_GRACE seconds (each
  close step gets at least CLOSE_MIN), so the whole stop ends within the timeout plus a few
  seconds, broker or no broker. A second signal ends the process at once (runner.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedCodecError,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumer.kafka import clients as kafka
from consumer.launchdarkly.big_segments import KindCache
from consumer.launchdarkly.client import LdClient, TokenSource
from consumer.launchdarkly.errors import ApiError
from consumer.launchdarkly.gate import ApiGate, Closed
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.segment_kinds import KindResolver
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service import handover
from consumer.service.backpressure import Backpressure
from consumer.service.batcher import Batcher
from consumer.service.halts import Halt, Halts
from consumer.service.health import BROKER_PROBE_AFTER, HealthServer, Vitals
from consumer.service.leases import Follow, Lease, Leases, LeaseState
from consumer.service.membership import Membership
from consumer.service.membership import bound as membership_bound
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline
from consumer.service.publisher import Publisher, Refused
from consumer.service.recovery import Recovered, Recovery
from consumer.service.scarcity import Scarcity
from consumer.service.sender import BatchSender
from consumer.service.tracing import Tracing
from consumer.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = structlog.get_logger(__name__)

POSITION_WAIT = 10.0  # seconds the newly assigned partitions' positions are awaited together
STOP_GRACE = 5.0  # seconds past CONSUMER_SHUTDOWN_TIMEOUT_MS for the last commit and closing
CLOSE_MIN = 0.5  # seconds each close step gets, however late
CORRUPT_FETCH_TRIES = 3  # fetches of a batch that fails its CRC check before its partition halts
SHORT_LOG_CONFIRM = 5.0  # seconds a high watermark below a lease lasts before the log is short


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.ld_retry_max_attempts,
        max_elapsed=settings.ld_retry_max_elapsed_ms / 1000,
        base_delay=settings.ld_retry_base_delay_ms / 1000,
        max_delay=settings.ld_retry_max_delay_ms / 1000,
        conflict_max_retries=settings.ld_conflict_max_retries,
        rate_limit_default=settings.ld_rate_limit_default_wait_ms / 1000,
        rate_limit_jitter=settings.ld_rate_limit_jitter_ms / 1000,
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._service.on_assigned(assigned)


class Service:
    def __init__(
        self,
        settings: Settings,
        token: TokenSource | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`tracer_provider`: OpenTelemetry tracing (tracing.py), off when None."""
        self.settings = settings
        self.token = token or TokenSource(settings.ld_api_token, settings.ld_api_token_file)
        self.metrics = Metrics()
        self.registry = self.metrics.registry
        self.vitals = Vitals()
        self.membership = Membership(
            membership_bound(
                settings.kafka_session_timeout_ms, settings.kafka_heartbeat_interval_ms
            ),
            time.monotonic,
        )
        self.leases = Leases(self.membership)
        self.throttle = RateLimiter()
        self._rng = random.Random()
        self._stopping = asyncio.Event()  # the one stop flag: a stop asked for, or a failure
        self._failure: BaseException | None = None
        self._commit_lock = asyncio.Lock()
        self._pressure = Backpressure(settings.consumer_max_pending_events)
        self._stop_deadline = float("inf")  # set when the stop begins
        self._granting: asyncio.Task[None] | None = None
        self.halts = Halts()
        # Fetch errors in a row per partition (a corrupt batch is fetched again a few times).
        self._fetch_failures: dict[TopicPartition, int] = {}
        self._restarting: set[Lease] = set()  # leases being started again (rule 2b)
        self._offset_resets: dict[TopicPartition, int] = {}  # the last one reported, per partition
        # Partitions whose high watermark is below their lease -> since when (rule 2b).
        self._short_since: dict[TopicPartition, float] = {}
        # Counts rebalance callbacks: a lease restart grants nothing if one came meanwhile.
        self._rebalances = 0
        self._background: set[asyncio.Task[None]] = set()
        self.recovery = Recovery(settings)
        self.tracing = Tracing(
            tracer_provider, group_id=settings.consumer_group_id, base_url=settings.ld_base_url
        )
        self._consumer = kafka.make_consumer(settings)
        self._producer = kafka.make_producer(settings)
        self._publisher = Publisher(
            self._producer,
            results_topic=settings.consumer_results_topic,
            dlq_topic=settings.consumer_dlq_topic,
            renew=self._renew_producer,
            max_request_size=settings.kafka_producer_max_request_size,
        )
        self._client = LdClient(
            settings.ld_base_url,
            self.token,
            timeout=settings.ld_request_timeout_ms / 1000,
        )
        self.gate = ApiGate(
            self.token,
            self._probe,
            outage_window=settings.ld_outage_window_ms / 1000,
            base_delay=settings.ld_retry_base_delay_ms / 1000,
            max_delay=settings.ld_probe_max_delay_ms / 1000,
            on_change=self._on_gate,
            rng=self._rng,
        )
        policy = retry_policy(settings)
        self._sender = BatchSender(
            self._client,
            policy,
            self.gate,
            throttle=self.throttle,
            metrics=self.metrics,
            rng=self._rng,
            tracing=self.tracing,
            settle=settings.ld_unknown_outcome_settle_ms / 1000,
            kinds=KindResolver(
                self._client,
                policy,
                self.gate,
                self.throttle,
                self.metrics,
                KindCache(settings.ld_segment_kind_ttl_ms / 1000),
                rng=self._rng,
            ),
        )
        self.pipeline = Pipeline(
            Batcher(
                max_size=settings.consumer_batch_max_size,
                linger=settings.consumer_batch_linger_ms / 1000,
                comment_max_chars=settings.consumer_batch_comment_max_chars,
            ),
            self._sender,
            self._publisher,
            self.metrics,
            max_in_flight=settings.consumer_max_in_flight_requests,
            on_published=self.vitals.broker_seen,
            on_failure=self._fail,
            on_refused=self._on_refused,
            tracing=self.tracing,
            scarcity=Scarcity(
                max(settings.consumer_batch_max_wait_ms, settings.consumer_batch_linger_ms) / 1000
            ),
        )
        self.health = (
            HealthServer(self.vitals, self.registry, port=settings.consumer_http_port)
            if settings.consumer_http_port
            else None
        )
        self._on_gate(self.gate.reason)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def assigned(self) -> set[TopicPartition]:
        """Partitions this member holds an active lease on."""
        return self.leases.partitions()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain. Raises when a background loop failed."""
        settings = self.settings
        await self.start_health()
        try:
            await self._fit_producer()
            await kafka.start(self._producer, settings)
        except BaseException:
            await self.discard()  # the consumer made in __init__ too (aiokafka warns otherwise)
            raise
        try:
            await self._client.start()
            self._consumer.subscribe([settings.consumer_input_topic], listener=_Rebalance(self))
            await kafka.start(self._consumer, settings)
            kafka.watch_membership(self._consumer, self.membership.heard, self._membership_lost)
            log.info(
                "service.started",
                topic=settings.consumer_input_topic,
                group=settings.consumer_group_id,
                base_url=settings.ld_base_url,
            )
            with kafka.watching_offset_resets(self._on_offset_reset):
                await self._run_loops(stop)
        finally:
            await self._close()
        if self._failure is not None:
            raise self._failure

    async def _fit_producer(self) -> None:
        """Learn what the results and dead-letter topics take (max.message.bytes): records
        larger are refused before they are sent, and the producer's batches stay below
        (publisher.py). Not known (a broker that does not say): the producer's own limits."""
        topics = [self.settings.consumer_results_topic, self.settings.consumer_dlq_topic]
        try:
            configs = await kafka.topic_configs(self.settings, topics)
        except Exception as exc:  # noqa: BLE001 - a refinement, never a blocker
            log.warning("topics.limits_unknown", error=repr(exc))
            return
        limits = {
            topic: int(value)
            for topic, config in configs.items()
            if (value := config.get("max.message.bytes", "")).isdigit()
        }
        self._publisher.limits = limits
        batch = kafka.producer_batch_size(limits.values())
        if batch != kafka.MAX_BATCH_SIZE:
            await self._producer.stop()  # never started: made again with smaller batches
            self._producer = self._publisher.producer = kafka.make_producer(self.settings, batch)

    async def _renew_producer(self) -> Any:
        """A new producer for the publisher (its idempotence state refused by the broker)."""
        old = self._producer
        batch = kafka.producer_batch_size(self._publisher.limits.values())
        fresh = kafka.make_producer(self.settings, batch)
        await kafka.start(fresh, self.settings)
        self._producer = fresh
        await _bounded(old.stop(), self.settings.kafka_commit_timeout_ms / 1000, "producer.stop")
        return fresh

    async def start_health(self) -> None:
        """Serve /healthz, /readyz and /metrics (idempotent). A port in use raises
        `web.CannotListen`: a member whose probes and metrics cannot be reached is not one an
        orchestrator can run."""
        if self.health is not None and not self.health.started:
            await self.health.start()
            log.info("health.listening", port=self.health.port)

    async def discard(self) -> None:
        """Close what `__init__` made, for a service that never ran (a failed preflight):
        aiokafka warns of unclosed clients otherwise."""
        await self._consumer.stop()
        await self._producer.stop()
        if self.health is not None:
            await self.health.stop()

    async def _run_loops(self, stop: asyncio.Event) -> None:
        fetch = asyncio.create_task(self._fetch_loop(), name="fetch")
        others = [
            asyncio.create_task(self.pipeline.dispatch(), name="dispatch"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self.gate.run(), name="gate"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        failed = asyncio.create_task(self._stopping.wait(), name="failed")
        waits = [stopper, failed, fetch, *others]
        abandoned = self.pipeline.abandoned
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for loop in (fetch, *others):
                if loop.done() and not loop.cancelled() and loop.exception() is not None:
                    self._fail(loop.exception())  # type: ignore[arg-type]
            self._stopping.set()
            self.vitals.stopping = True
            deadline = time.monotonic() + self.settings.consumer_shutdown_timeout_ms / 1000
            self._stop_deadline = deadline + STOP_GRACE
            log.info(
                "service.stopping",
                waiting=self.pipeline.batcher.waiting,
                pending=self.leases.pending(),
            )
            fetch.cancel()  # 1. stop fetching
            await _cancelled(fetch, self._granting)
            await self._drain(deadline)  # 2., 3.
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await _cancelled(self._granting, *self._background)
            await self.pipeline.cancel_all()
            # 4. A stop that abandoned nothing on the wire hands over cleanly (handover.py).
            clean = self.pipeline.abandoned == abandoned and self.pipeline.idle()
            await asyncio.shield(
                self._commit(
                    self.leases.unended() if clean else None,
                    timeout=self._time_left(),
                    clean=clean,
                )
            )

    async def _drain(self, deadline: float) -> None:
        # A request started later could not end, and stop landing, before the deadline.
        landed = self.settings.ld_request_timeout_ms + self.settings.ld_unknown_outcome_settle_ms
        sending_until = max(time.monotonic(), deadline - landed / 1000)
        if await self.pipeline.drain(sending_until):
            log.info("service.drained")
            return
        # Every lease not ended, those a revoke under way is waiting for included.
        leases = self.leases.revoke(lease.tp for lease in self.leases.unended())
        await self.pipeline.revoke(leases, deadline)
        log.warning(
            "service.drain_timeout",
            given_up=self.leases.pending(leases),
            message="work left when no new request could end in time; the next owner does it",
        )

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.error("service.failed", error=repr(exc))
        self._stopping.set()

    def _time_left(self) -> float:
        return max(CLOSE_MIN, self._stop_deadline - time.monotonic())

    async def _close(self) -> None:  # 5.
        self._stop_deadline = min(self._stop_deadline, time.monotonic() + STOP_GRACE)
        await _bounded(kafka.stop_consumer(self._consumer), self._time_left(), "consumer.stop")
        await _bounded(self._producer.stop(), self._time_left(), "producer.stop")
        await self._client.stop()
        if self.health is not None:
            await self.health.stop()
        log.info("service.stopped")

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        settings = self.settings
        timeout_ms = max(50, min(500, settings.kafka_fetch_max_wait_ms))
        while True:
            self._apply_pauses()
            fetch = self.leases.begin_fetch()
            try:
                batches = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=settings.kafka_max_poll_records
                )
            except kafka.PARTITION_FETCH_ERRORS as exc:
                self._fetch_failed(exc)
                continue
            # No await from here to the end of the turn: the runs are judged against the
            # leases as they are now (leases.py, rules 2 and 2b).
            self.vitals.beat()
            self._check_membership()
            now = time.monotonic()
            if batches:
                self.vitals.broker_seen()
                self._take(batches, fetch, now, since_records=0.0)
            self._follow(fetch)

    def _check_membership(self) -> None:
        """Membership.py, rule 4: a member that lost contact with the group for a session
        (or was told it is unknown) has stopped starting requests (its leases are not active);
        here it says so once and asks aiokafka to rejoin, so the revoke and the assignment
        that follow hand the work to whoever owns it now."""
        membership = self.membership
        if membership.current():
            self.vitals.group_lapsed = None
            return
        if membership.rejoin_asked or not self.leases.all():
            return
        membership.rejoin_asked = True
        silent = round(membership.silent_for(), 1)
        self.vitals.group_lapsed = (
            f"no word from the group coordinator for {silent} s: not sending until it rejoins"
        )
        log.warning(
            "group.membership_lapsed",
            silent_s=silent,
            partitions=len(self.leases.all()),
            message="the group may have given this member's partitions to others: no request"
            " starts until it has rejoined",
        )
        kafka.request_rejoin(self._consumer)

    def _membership_lost(self) -> None:
        self.membership.lost()

    def _take(
        self,
        batches: dict[TopicPartition, list[Any]],
        fetch: int,
        now: float,
        since_records: float,
    ) -> None:
        consumer = self._consumer
        settings = self.settings
        # The linger counts from the record timestamp for a stream that is kept up with,
        # from when the record was taken while a backlog is read (see Batcher.add).
        leases = self.leases.active()
        behind = reading_backlog(
            {lease.tp: lease.next for lease in leases},
            {lease.tp: kafka.readable_end(consumer, lease.tp) for lease in leases},
            since_records=since_records,
            threshold=settings.kafka_max_poll_records,
        )
        wall_ms = None if behind else time.time() * 1000
        taken = 0
        for tp, records in batches.items():
            admission = self.leases.admit(tp, records[0].offset, records[-1].offset, fetch)
            if admission.seek_to is not None:
                consumer.seek(tp, admission.seek_to)
                log.warning(
                    "fetch.resync",
                    partition=tp.partition,
                    first=records[0].offset,
                    seek_to=admission.seek_to,
                )
            elif admission.take_from is not None:
                lease = self.leases.get(tp)
                assert lease is not None
                taken += self.pipeline.accept(lease, records, admission.take_from, now, wall_ms)
                self._fetch_failures.pop(tp, None)
            elif self.leases.get(tp) is None:
                log.warning("fetch.not_owned", partition=tp.partition, records=len(records))
        self.metrics.records_consumed.inc(taken)

    def _follow(self, fetch: int) -> None:
        """Rule 2b: offsets the consumer passed over without a record (transaction markers,
        aborted or compacted records) move the leases past them; a log that no longer holds
        what a lease took starts the lease again where the reset policy says.

        The log is short when the consumer's position went below the lease (aiokafka reset an
        offset out of range, on a broker that says so), or when the broker's high watermark
        stays below the lease for SHORT_LOG_CONFIRM seconds (a broker that answers an offset
        past its end with nothing, as Tansu does after losing its data; a new leader's high
        watermark can lag for a moment, hence the wait)."""
        consumer = self._consumer
        now = time.monotonic()
        for lease in self.leases.active():
            if lease in self._restarting:
                continue
            tp = lease.tp
            position = kafka.consumed_position(consumer, tp)
            if self.leases.follow(tp, position, fetch) is Follow.BEHIND:
                assert position is not None
                self._log_short(lease, position, "the consumer's position")
                self._restart(lease, position)
                continue
            end = consumer.highwater(tp)
            if end is None or end >= lease.next:
                self._short_since.pop(tp, None)
            elif now - self._short_since.setdefault(tp, now) >= SHORT_LOG_CONFIRM:
                del self._short_since[tp]
                self._log_short(lease, end, "the log end")
                self.metrics.offset_resets.labels(
                    policy=self.settings.consumer_auto_offset_reset
                ).inc()
                self._restart(lease, None)

    def _log_short(self, lease: Lease, found: int, what: str) -> None:
        log.warning(
            "partition.log_behind",
            topic=lease.tp.topic,
            partition=lease.tp.partition,
            lease_next=lease.next,
            found=found,
            policy=self.settings.consumer_auto_offset_reset,
            message=f"{what} ({found}) is before what this member took (up to {lease.next}):"
            " the log lost records (a broker restarted without its data, a topic re-created);"
            " starting the partition again as CONSUMER_AUTO_OFFSET_RESET says",
        )

    def _restart(self, lease: Lease, position: int | None) -> None:
        self._restarting.add(lease)
        task = asyncio.create_task(self._restart_lease(lease, position))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart_lease(self, lease: Lease, position: int | None) -> None:
        """Stop the lease's work as a revoke does, then grant it again at `position` (None:
        where CONSUMER_AUTO_OFFSET_RESET says; `none` halts the partition instead). Nothing
        it took past the log's end is committed: those offsets are gone."""
        tp = lease.tp
        rebalances = self._rebalances
        try:
            deadline = time.monotonic() + self.settings.consumer_revoke_timeout_ms / 1000
            if lease.state is LeaseState.ENDED or self.stopping:
                return
            self.leases.revoke([tp])
            more = await self.pipeline.revoke([lease], deadline)
            self.leases.end([lease])
            if self.stopping or tp not in self._consumer.assignment():
                return
            if position is None:
                position = await self._reset_position(tp)
            if position is None:
                return  # halted
            # Not if a rebalance came meanwhile: the assignment grants the partition (at its
            # committed offset), or it is not this member's any more.
            if self._rebalances == rebalances and self.leases.get(tp) is None:
                self.leases.grant(tp, position)
                self._consumer.seek(tp, position)
            while more:
                more = await self._rewind(more, deadline)
        finally:
            self._restarting.discard(lease)

    async def _reset_position(self, tp: TopicPartition) -> int | None:
        """Where CONSUMER_AUTO_OFFSET_RESET puts a partition whose log is shorter than its
        lease; None (and the partition halted) for `none`."""
        policy = self.settings.consumer_auto_offset_reset
        if policy == "latest":
            end: int | None = self._consumer.highwater(tp)
            if end is not None:
                return end
            return int((await self._consumer.end_offsets([tp]))[tp])
        if policy == "earliest":
            return int((await self._consumer.beginning_offsets([tp]))[tp])
        self._halt(
            Halt(
                tp,
                None,
                "the log ends before what this member took (a broker that lost its data, a"
                " topic re-created) and CONSUMER_AUTO_OFFSET_RESET=none: set it to earliest or"
                " latest to go on",
            )
        )
        return None

    def _fetch_failed(self, exc: Exception) -> None:
        """`getmany` raised for one partition (PARTITION_FETCH_ERRORS): halt it, never skip.

        aiokafka may have advanced other partitions' positions past records it unpacked but
        did not return (they are dropped with the error), so every lease is fetched again from
        its `next` (rule 2: never pass a record over in silence)."""
        for synced, start in self.leases.resync().items():
            self._consumer.seek(synced, start)
        tp = kafka.failed_partition(exc)
        if tp is None:
            log.error("fetch.failed", error=repr(exc), message="partition unknown; fetching again")
            return
        failures = self._fetch_failures[tp] = self._fetch_failures.get(tp, 0) + 1
        # A CRC error may be a bad read: fetched again a few times before it halts.
        if isinstance(exc, CorruptRecordException) and failures < CORRUPT_FETCH_TRIES:
            log.warning("fetch.corrupt", partition=tp.partition, error=repr(exc), tries=failures)
            return
        lease = self.leases.get(tp)
        at = lease.next if lease is not None else _out_of_range_offset(exc)
        self._halt(Halt(tp, at, fetch_error_reason(exc, self.settings)))

    def _on_offset_reset(self, tp: TopicPartition, offset: int) -> None:
        """aiokafka found `offset` out of range for `tp` (retention deleted records before they
        were processed, or the log lost them) and resets it by CONSUMER_AUTO_OFFSET_RESET;
        with `none` the fetch raises instead and the partition halts (`_fetch_failed`)."""
        if tp not in self._consumer.assignment():
            return  # another consumer of this process
        policy = self.settings.consumer_auto_offset_reset
        if policy == "none" or self._offset_resets.get(tp) == offset:
            return  # none: the fetch raises (halts); the same reset is logged by each fetch
        self._offset_resets[tp] = offset
        self.metrics.offset_resets.labels(policy=policy).inc()
        log.warning(
            "partition.offset_reset",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            policy=policy,
            message=f"offset {offset} is out of range (records deleted by retention before they"
            f" were processed, or a log that lost them): going on from the {policy} offset",
        )

    def _on_refused(self, refused: list[Refused]) -> None:
        for found in refused:
            record = found.record
            self._halt(Halt(record.tp, record.offset, found.reason))

    def _halt(self, halt: Halt) -> None:
        """Halt a partition (halts.py): paused by the next turn, reported on /readyz."""
        if not self.halts.add(halt):
            return
        if halt.tp in self._consumer.assignment():
            self._consumer.pause(halt.tp)
        self.vitals.halted = self.halts.describe()
        self.metrics.halted.set(len(self.halts))
        log.error(
            "partition.halted",
            topic=halt.tp.topic,
            partition=halt.tp.partition,
            offset=halt.offset,
            reason=halt.reason,
            message="this partition is not read until the member restarts or loses it;"
            " the others go on",
        )

    def _apply_pauses(self) -> None:
        """Fetch only partitions with an active lease, not halted, while the gate is open,
        and not held back by pressure (backpressure.py: past CONSUMER_MAX_PENDING_EVENTS, the
        partitions holding more than their share)."""
        consumer = self._consumer
        pending = {lease.tp: lease.offsets.pending() for lease in self.leases.active()}
        pressed = self._pressure.update(pending)
        assigned = consumer.assignment()
        if not self.gate.is_open:
            wanted: set[TopicPartition] = set()
        else:
            wanted = self.leases.partitions() - self.halts.partitions() - pressed
        paused = consumer.paused()
        pause = (assigned - wanted) - paused
        resume = (paused & wanted) & assigned
        if pause:
            consumer.pause(*pause)
            log.debug(
                "fetch.paused",
                partitions=len(pause),
                pressed=len(pressed),
                pending=sum(pending.values()),
                gate=self.gate.reason,
            )
        if resume:
            consumer.resume(*resume)
            log.debug("fetch.resumed", partitions=len(resume), pending=sum(pending.values()))

    # -- committing -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self.settings.consumer_commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            try:
                await self._observe()
            except Exception:  # gauges must never take the commit loop down
                log.exception("metrics.observe_failed")

    async def _observe(self) -> None:
        """Refresh the gauges; check the broker when nothing else did lately."""
        consumer = self._consumer
        m = self.metrics
        leases = self.leases.active()
        m.events_waiting.set(self.pipeline.batcher.waiting)
        m.records_pending.set(self.leases.pending())
        m.in_flight.set(self.pipeline.sending)
        m.paused.set(len(consumer.paused()))
        m.assigned.set(len(leases))
        # Only the partitions held now: a revoked partition's last value would otherwise stay
        # served for ever, and a dashboard summing lag over members would count it twice.
        # No await until the new values are set, so no scrape sees the gauge empty.
        m.lag.clear()
        for lease in leases:
            highwater = consumer.highwater(lease.tp)
            if highwater is not None:
                m.lag.labels(topic=lease.tp.topic, partition=str(lease.tp.partition)).set(
                    highwater - lease.offsets.position()
                )
        if leases and self.vitals.broker_quiet_for() > BROKER_PROBE_AFTER:
            try:
                async with asyncio.timeout(self.settings.kafka_commit_timeout_ms / 1000):
                    await consumer.committed(leases[0].tp)
                self.vitals.broker_seen()
            except (KafkaError, TimeoutError) as exc:
                log.warning("broker.unreachable", error=repr(exc))

    async def _commit(
        self,
        leases: Iterable[Lease] | None = None,
        timeout: float | None = None,
        *,
        clean: bool = False,
    ) -> None:
        """Commit the done prefix of live leases (all, or those given), within the commit
        timeout (or `timeout`, if lower); a failure is logged: the next commit covers it.

        Every commit carries a handover mark in its metadata (handover.py): `live` while this
        member may have requests for the partition that can still land; `clean` (`clean=True`,
        the given leases' positions committed even when they did not move) once it has none,
        at the end of a revoke or a stop that abandoned nothing."""
        if not self.membership.current():
            # Lapsed (membership.py): the group may have given these partitions to others,
            # who commit further; a commit of ours would take their offsets back (a broker
            # may take it: Kafka does from a member whose generation was reset).
            log.info("commit.skipped", reason="not a current member of the group")
            return
        limit = self.settings.kafka_commit_timeout_ms / 1000
        if timeout is not None:
            limit = min(limit, timeout)
        started = time.monotonic()
        try:
            # The bound covers waiting for a commit under way (the loop's, or a revoke's).
            async with asyncio.timeout(limit), self._commit_lock:
                chosen = self.leases.to_commit(leases)
                if clean and leases is not None:
                    chosen = {lease: lease.offsets.position() for lease in leases} | chosen
                found = {
                    lease: position
                    for lease, position in chosen.items()
                    if self._within_log(lease, position)
                }
                if not found:
                    return
                positions = {lease.tp: position for lease, position in found.items()}
                mark = handover.CLEAN if clean else handover.LIVE
                await self._consumer.commit(
                    {tp: OffsetAndMetadata(position, mark) for tp, position in positions.items()}
                )
                for lease, position in found.items():
                    lease.offsets.mark_committed(position)
        except (KafkaError, TimeoutError) as exc:
            self.metrics.commits.labels(result="failed").inc()
            log.warning("commit.failed", error=repr(exc))
            return
        self.vitals.broker_seen()
        self.metrics.commit_latency.observe(time.monotonic() - started)
        self.metrics.commits.labels(result="ok").inc()
        log.debug(
            "commit.done",
            positions={f"{tp.topic}[{tp.partition}]": o for tp, o in positions.items()},
        )

    async def _unclean(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """The partitions whose last commit says their owner may still have requests landing
        (handover.py); none when the marks cannot be read (a broker that keeps no metadata)."""
        if not tps:
            return set()
        try:
            async with asyncio.timeout(self.settings.kafka_commit_timeout_ms / 1000):
                marks = await kafka.committed_metadata(self._consumer, tps)
        except (KafkaError, TimeoutError) as exc:
            log.warning("partition.handover_unknown", error=repr(exc))
            return set()
        return {tp for tp, mark in marks.items() if handover.unclean(mark)}

    def _within_log(self, lease: Lease, position: int) -> bool:
        """A position beyond the partition's log end (as the last fetch saw it) is never
        committed: the log lost records (rule 2b), and the group must not start past them."""
        end = self._consumer.highwater(lease.tp)
        return end is None or position <= end

    # -- rebalancing ----------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Rule 1: pause at once, grant in a task (never raises, returns at once). Nothing is
        granted once the service stops (aiokafka's close waits for a join under way)."""
        self._rebalances += 1
        self.membership.assigned()  # the coordinator's word (membership.py)
        self.vitals.group_lapsed = None
        if assigned:
            self._consumer.pause(*assigned)  # before any await: nothing fetched for nobody
            if not self.stopping:
                self._granting = asyncio.create_task(self._grant(set(assigned)), name="grant")

    async def _grant(self, assigned: set[TopicPartition]) -> None:
        """Positions, then the recovery scan, then the leases (cancelled by a revoke).

        Positions are read together; partitions whose position is not known within
        POSITION_WAIT (a partition without a leader, say) do not hold the others up: they are
        granted when it is, without a scan (recovery only saves repeats)."""
        started = time.monotonic()
        reads = {tp: asyncio.ensure_future(self._position(tp)) for tp in sorted(assigned)}
        try:
            await asyncio.wait(reads.values(), timeout=POSITION_WAIT)
            positions = {tp: read.result() for tp, read in reads.items() if read.done()}
            recovered: dict[TopicPartition, set[int]] = {}
            if positions and self.settings.consumer_recovery_lookback_ms >= 0:
                try:
                    recovered = await self.recovery.already_done(positions)
                except Exception:  # recovery is an optimisation of at-least-once, never a blocker
                    log.exception("recovery.failed")
            self.pipeline.recovered = Recovered(recovered)
            await self._claim(positions, started)
            for tp, read in reads.items():
                if tp not in positions:
                    await self._claim({tp: await read}, started)
        finally:
            for read in reads.values():
                read.cancel()

    async def _claim(self, positions: dict[TopicPartition, int], started: float) -> None:
        """Grant these partitions as handover.py says: at once when their last owner left them
        cleanly, after its requests can no longer land otherwise; and only once this member's
        own `live` mark is committed (a member that dies before then has sent nothing)."""
        unclean = await self._unclean(set(positions))
        ready = {tp: start for tp, start in positions.items() if tp not in unclean}
        if ready:
            await self._mark_live(ready)
            self._grant_now(ready, started)
        if unclean:
            wait = handover.wait(self.settings)
            log.warning(
                "partition.unclean_handover",
                partitions=sorted(tp.partition for tp in unclean),
                wait_s=wait,
                message="the last owner may still have requests landing (it crashed, froze"
                " or lost the group): these partitions start once they cannot",
            )
            await asyncio.sleep(wait)
            late = {tp: positions[tp] for tp in unclean}
            await self._mark_live(late)
            self._grant_now(late, started)

    async def _mark_live(self, positions: dict[TopicPartition, int]) -> None:
        """Commit the `live` mark at these positions (handover.py, rule 1), tried again until
        it is (the partitions stay paused meanwhile; a revoke or stop cancels it)."""
        delay = 0.2
        marks = {tp: OffsetAndMetadata(start, handover.LIVE) for tp, start in positions.items()}
        while True:
            try:
                async with asyncio.timeout(self.settings.kafka_commit_timeout_ms / 1000):
                    await self._consumer.commit(marks)
                return
            except (KafkaError, TimeoutError) as exc:
                log.warning("partition.mark_failed", error=repr(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def _grant_now(self, positions: dict[TopicPartition, int], started: float) -> None:
        for tp, start in positions.items():
            self.leases.grant(tp, start)
            # The consumer fetches from where the lease starts, whatever it fetched meanwhile
            # (the partition was paused; this makes rule 1 hold by construction).
            self._consumer.seek(tp, start)
        self.vitals.partitions = len(self.leases.active())
        log.info(
            "partitions.assigned",
            partitions=sorted(tp.partition for tp in positions),
            positions={tp.partition: start for tp, start in positions.items()},
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _position(self, tp: TopicPartition) -> int:
        """The consumer's position for a newly assigned partition, tried again on errors."""
        delay = 0.2
        while True:
            try:
                position: int = await self._consumer.position(tp)
                return position
            except KafkaError as exc:
                log.warning("partition.position_failed", partition=tp.partition, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rule 4 (and 5): stop, wait for the wire, commit, end (never raises)."""
        self._rebalances += 1
        started = time.monotonic()
        await _cancelled(self._granting)  # an assignment that ended grants nothing
        deadline = started + self.settings.consumer_revoke_timeout_ms / 1000
        leases = self.leases.revoke(revoked)  # from here no request starts for them
        pending = self.leases.pending(leases)
        rewind: set[Lease] = set()
        try:
            if leases:
                abandoned = self.pipeline.abandoned
                rewind = await self.pipeline.revoke(leases, deadline)
                # Nothing of ours for these partitions can land any more: say so to the next
                # owner (handover.py), unless a request was abandoned on the wire.
                await self._commit(leases, clean=self.pipeline.abandoned == abandoned)
        finally:
            unfinished = self.leases.pending(leases)
            self.leases.end(leases)
            self.vitals.partitions = len(self.leases.active())
            self.halts.clear(revoked)
            self.vitals.halted = self.halts.describe()
            self.metrics.halted.set(len(self.halts))
            for tp in revoked:
                self._fetch_failures.pop(tp, None)
        while rewind:
            rewind = await self._rewind(rewind, deadline)
        log.info(
            "partitions.revoked",
            partitions=sorted(tp.partition for tp in revoked),
            pending=pending,
            given_up=unfinished,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _rewind(self, leases: set[Lease], deadline: float) -> set[Lease]:
        """Rule 5: these kept partitions had records in a stopped batch: start them again
        from their commit position. Returns further leases to rewind."""
        self.leases.revoke(lease.tp for lease in leases)
        more = await self.pipeline.revoke(leases, deadline)
        self.leases.end(leases)
        for lease in leases:
            position = lease.offsets.position()
            self.leases.grant(lease.tp, position)
            self._consumer.seek(lease.tp, position)
            log.warning("partition.rewound", partition=lease.tp.partition, position=position)
        return more - leases

    # -- the API gate ---------------------------------------------------------------------------

    async def _probe(self) -> ApiError | None:
        return await self._sender.probe()

    def _on_gate(self, reason: Closed | None) -> None:
        self.vitals.api_closed = self.gate.describe()
        self.vitals.api_token_refused = reason is Closed.UNAUTHORIZED
        self.metrics.auth_ok.set(0 if reason is Closed.UNAUTHORIZED else 1)
        self.metrics.api_available.set(0 if reason is not None else 1)
        self.pipeline.wake()  # batches held back by the closed gate may go

    # -- health (kept for callers that ask the service) -----------------------------------------

    @property
    def auth_ok(self) -> bool:
        return not self.vitals.api_token_refused

    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused())


async def _cancelled(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel these tasks (None: none) and wait until they have ended."""
    found = [task for task in tasks if task is not None]
    for task in found:
        task.cancel()
    await asyncio.gather(*found, return_exceptions=True)


async def _bounded(work: Awaitable[None], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (3.11)
            await work
    except TimeoutError:
        log.warning("service.close_timeout", step=what, timeout_s=timeout)
    except KafkaError as exc:
        log.warning("service.close_failed", step=what, error=repr(exc))


# Fetches that come back empty for this long end a backlog whatever the end offsets say.
BACKLOG_STALL = 1.0


def reading_backlog(
    fetched: dict[TopicPartition, int],
    ends: dict[TopicPartition, int | None],
    *,
    since_records: float,
    threshold: int,
) -> bool:
    """Whether a backlog is being read: at least `threshold` records (a full fetch) wait on
    the broker or in the fetch buffer beyond the offsets handed to us, and fetches still
    return records (`since_records`: seconds since one last did). A steady stream leaves a
    few records behind each fetch, not a full one; one empty fetch while the next response
    is on its way does not end a backlog, but offsets that never come back as records (an
    aborted transaction at the end of a partition) must not keep batches open for long."""
    if since_records > BACKLOG_STALL:
        return False
    lag = 0
    for tp, position in fetched.items():
        end = ends.get(tp)
        if end is not None and end > position:
            lag += end - position
    return lag >= threshold


def _out_of_range_offset(exc: Exception) -> int | None:
    if isinstance(exc, OffsetOutOfRangeError) and exc.args and isinstance(exc.args[0], dict):
        for offset in exc.args[0].values():
            return int(offset)
    return None


def fetch_error_reason(exc: Exception, settings: Settings) -> str:
    """One line for a halted partition (halts.py): what the client library could not do, and
    what would fix it. The broker is not to blame for any of these."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, UnsupportedCodecError):
        return (
            f"aiokafka (the Kafka client library) cannot decompress its records ({detail});"
            " the codecs come with this package (cramjam): reinstall it"
        )
    if isinstance(exc, CorruptRecordException):
        return (
            f"aiokafka (the Kafka client library) found a corrupt record batch ({detail}),"
            f" {CORRUPT_FETCH_TRIES} times in a row"
        )
    if isinstance(exc, RecordTooLargeError):
        return f"aiokafka (the Kafka client library) cannot fetch a record this large ({detail})"
    if isinstance(exc, OffsetOutOfRangeError):
        return (
            "the committed offset is out of range (records deleted by retention before they"
            " were processed?) and CONSUMER_AUTO_OFFSET_RESET="
            f"{settings.consumer_auto_offset_reset}: set it to earliest or latest to go on"
        )
    if isinstance(exc, NoOffsetForPartitionError):
        return (
            "the group has no committed offset for it and CONSUMER_AUTO_OFFSET_RESET=none:"
            " set it to earliest or latest, or commit an offset for the group"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        return f"not authorized to read the topic ({detail})"
    return f"aiokafka (the Kafka client library) could not fetch it: {detail}"
