"""The service's lifecycle: Kafka in, batched requests out, outcomes published, offsets committed.

Data flow: records come off `getmany`, are decoded (invalid ones go straight to an outcome and
the dead-letter topic), land in the batcher keyed by request path, leave as one request per
batch, come back as one outcome per instruction, are published, and only then are their
offsets marked done; the tracker commits each partition's longest done prefix.

Stopping (a stop event, then a bounded drain):
1. stop fetching: no new record is taken;
2. flush: every open batch becomes due at once;
3. wait, up to CONSUMER_SHUTDOWN_TIMEOUT_MS, for every batch to be sent and every outcome and
   dead-letter copy to be acknowledged (what is still running then is cancelled: its records
   have no outcome and are not committed, so the next owner processes them);
4. commit the done positions (shielded from cancellation);
5. leave the group, flush and stop the producer, close the HTTP session.

Partitions revoked in a rebalance get the same treatment, limited to them and bounded by
CONSUMER_REVOKE_TIMEOUT_MS: flush their batches, wait for their outcomes, commit, and give up
(without committing) whatever is not finished, for the next owner to redo.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from consumer import kafka
from consumer.auth import AuthGate
from consumer.batcher import Batch, Batcher
from consumer.dlq import DEAD_LETTER_STATUSES
from consumer.errors import ErrorCode, InternalError
from consumer.events import Invalid, Status, decode, target_operations
from consumer.health import HealthServer
from consumer.ld_client import LdClient, TokenSource
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.outcomes import (
    InstructionResult,
    OutcomeMessage,
    invalid_outcome,
    now,
    outcome_for,
    results_from_error,
)
from consumer.publisher import Publisher
from consumer.records import ConsumedRecord, PendingEvent
from consumer.recovery import Recovery
from consumer.retry import RetryPolicy
from consumer.routing import UnroutableEvent, route
from consumer.sender import BatchSender
from consumer.settings import Settings
from consumer.throttle import RateLimiter

log = structlog.get_logger(__name__)

BROKER_PROBE_AFTER = 5.0  # seconds without broker contact before the commit loop checks it
BROKER_STALE_AFTER = 30.0  # ... and before /readyz says the broker is unreachable
LOOP_STALL_AFTER = 300.0  # seconds without a fetch-loop turn before /healthz fails


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
    def __init__(self, settings: Settings, token: TokenSource | None = None) -> None:
        self.settings = settings
        self.token = token or TokenSource(settings.ld_api_token, settings.ld_api_token_file)
        self.tracker = OffsetTracker()
        self.batcher = Batcher(
            max_size=settings.consumer_batch_max_size,
            linger=settings.consumer_batch_linger_ms / 1000,
            comment_max_chars=settings.consumer_batch_comment_max_chars,
        )
        self.assigned: set[TopicPartition] = set()
        self.stopping = False
        self._stopping = asyncio.Event()
        self.recovery = Recovery(settings)
        self.metrics = Metrics()
        self.registry = self.metrics.registry
        self.throttle = RateLimiter()
        self.health: HealthServer | None = None
        self._last_broker_contact = time.monotonic()
        self._loop_beat = time.monotonic()
        # Offsets past the committed position that already have an outcome (crash recovery).
        self._already_done: dict[TopicPartition, set[int]] = {}
        # Bumped by every rebalance: records fetched under an older assignment are dropped,
        # since the consumer fetches them again from the committed position.
        self._generation = 0
        self._settled = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._publisher: Publisher | None = None
        self._sender: BatchSender | None = None
        self._gate: AuthGate | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._batches_in_flight = 0  # a request to LaunchDarkly under way
        self._batches_publishing = 0  # answered; outcomes on their way to the broker
        self._flights: dict[str, tuple[asyncio.Task[None], Batch]] = {}
        self._wake = asyncio.Event()
        # Per partition, the offset after the last record fetched.
        self._fetched: dict[TopicPartition, int] = {}
        self._records_at = 0.0  # when a fetch last returned records (monotonic)
        self._progress = asyncio.Event()
        self._fatal = asyncio.Event()
        self._failure: BaseException | None = None
        self.skipped_already_done = 0
        self._commit_lock = asyncio.Lock()
        self._rng = random.Random()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain. Raises when a background loop failed."""
        settings = self.settings
        self._producer = kafka.make_producer(settings)
        self._consumer = kafka.make_consumer(settings)
        client = LdClient(
            settings.ld_base_url,
            self.token,
            timeout=settings.ld_request_timeout_ms / 1000,
            max_connections=settings.consumer_max_in_flight_requests * 2,
        )
        self._gate = AuthGate(
            self.token,
            max_delay=settings.ld_auth_probe_max_delay_ms / 1000,
            on_change=self._on_auth,
        )
        self._sender = BatchSender(
            client,
            retry_policy(settings),
            self._gate,
            throttle=self.throttle,
            metrics=self.metrics,
            rng=self._rng,
        )
        self._publisher = Publisher(
            self._producer,
            results_topic=settings.consumer_results_topic,
            dlq_topic=settings.consumer_dlq_topic,
        )
        if settings.consumer_http_port:
            self.health = HealthServer(self, port=settings.consumer_http_port)
            try:
                await self.health.start()
                log.info("health.listening", port=self.health.port)
            except OSError as exc:  # a member without probes beats a member that does not run
                log.error("health.bind_failed", port=settings.consumer_http_port, error=str(exc))
                self.health = None
        await self._producer.start()
        try:
            await client.start()
            self._consumer.subscribe([settings.consumer_input_topic], listener=_Rebalance(self))
            await self._consumer.start()
            log.info(
                "service.started",
                topic=settings.consumer_input_topic,
                group=settings.consumer_group_id,
                base_url=settings.ld_base_url,
            )
            await self._run_loops(stop)
        finally:
            await self._close(client)

    async def _run_loops(self, stop: asyncio.Event) -> None:
        loops = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._dispatch_loop(), name="dispatch"),
            asyncio.create_task(self._commit_loop(), name="commit"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        fatal = asyncio.create_task(self._fatal.wait(), name="fatal")
        try:
            await asyncio.wait([stopper, fatal, *loops], return_when=asyncio.FIRST_COMPLETED)
            for loop in loops:
                if loop.done() and not loop.cancelled() and loop.exception() is not None:
                    self._failure = loop.exception()
                    log.error(
                        "service.loop_failed", loop=loop.get_name(), error=repr(self._failure)
                    )
            self.stopping = True
            self._stopping.set()
            log.info(
                "service.stopping", waiting=self.batcher.waiting, pending=self.tracker.pending()
            )
            loops[0].cancel()  # 1. stop fetching
            await asyncio.gather(loops[0], return_exceptions=True)
            await self._drain(self.settings.consumer_shutdown_timeout_ms / 1000)  # 2., 3.
        finally:
            for task in (stopper, fatal, *loops):
                task.cancel()
            await asyncio.gather(stopper, fatal, *loops, return_exceptions=True)
            await self._cancel_tasks()
            await asyncio.shield(self._commit())  # 4.
        if self._failure is not None:
            raise self._failure

    async def _drain(self, timeout: float) -> None:
        self.batcher.flush()
        self._wake.set()
        deadline = time.monotonic() + timeout
        while not self.batcher.idle() or self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "service.drain_timeout",
                    waiting=self.batcher.waiting,
                    in_flight=self._batches_in_flight,
                    pending=self.tracker.pending(),
                )
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        log.info("service.drained")

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close(self, client: LdClient) -> None:  # 5.
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
        await client.stop()
        if self.health is not None:
            await self.health.stop()
        log.info("service.stopped")

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        timeout_ms = max(50, min(500, self.settings.kafka_fetch_max_wait_ms))
        while True:
            await self._settled.wait()
            generation = self._generation
            self._apply_backpressure(consumer)
            batches = await consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.kafka_max_poll_records
            )
            self._loop_beat = time.monotonic()
            if batches:
                self._last_broker_contact = self._loop_beat
            await self._settled.wait()
            if generation != self._generation:
                # A rebalance happened meanwhile: these records belong to the old assignment.
                log.info("fetch.dropped_after_rebalance", records=sum(map(len, batches.values())))
                continue
            mine = {tp: records for tp, records in batches.items() if tp in self.assigned}
            for tp in batches.keys() - mine.keys():
                log.warning(
                    "fetch.unassigned_records", partition=tp.partition, count=len(batches[tp])
                )
            for tp, records in mine.items():
                self._fetched[tp] = records[-1].offset + 1
            if mine:
                self._records_at = self._loop_beat
            behind = reading_backlog(
                self._fetched,
                {tp: kafka.readable_end(consumer, tp) for tp in self._fetched},
                since_records=self._loop_beat - self._records_at,
                threshold=self.settings.kafka_max_poll_records,
            )
            # The linger counts from the record timestamp for a stream that is kept up with,
            # from when the record was taken while a backlog is read (see Batcher.add).
            now = time.monotonic()
            wall_ms = None if behind else time.time() * 1000
            consumed = 0
            for tp, records in mine.items():
                consumed += len(records)
                for record in records:
                    self._accept(tp, record, now, wall_ms)
            self.metrics.records_consumed.inc(consumed)
            if mine:
                self._wake.set()

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause every partition while too much waits for the API or the token is refused."""
        pending = self.tracker.pending()
        limit = self.settings.consumer_max_pending_events
        assigned = consumer.assignment()
        paused = consumer.paused()
        auth_ok = self._gate is None or self._gate.is_open
        if pending >= limit or not auth_ok:
            if assigned - paused:
                consumer.pause(*assigned)
                log.debug("fetch.paused", pending=pending, auth_ok=auth_ok)
        elif paused and pending < max(1, limit // 2):
            consumer.resume(*paused)
            log.debug("fetch.resumed", pending=pending)

    def _accept(self, tp: TopicPartition, raw: Any, now: float, wall_ms: float | None) -> None:
        ticket = self.tracker.track(tp, raw.offset)
        if ticket is None:
            log.warning("record.duplicate", partition=tp.partition, offset=raw.offset)
            return
        done = self._already_done.get(tp)
        if done is not None and raw.offset in done:
            done.discard(raw.offset)
            if not done:
                del self._already_done[tp]
            self.tracker.done(ticket)
            self.skipped_already_done += 1
            self.metrics.records_skipped.inc()
            log.info("record.already_done", partition=tp.partition, offset=raw.offset)
            return
        record = ConsumedRecord.from_kafka(raw, ticket)
        decoded = decode(record.value)
        if isinstance(decoded, Invalid):
            self._spawn(self._publish_invalid(record, decoded))
            return
        try:
            where = route(decoded)
        except UnroutableEvent as exc:
            invalid = Invalid(ErrorCode.INVALID_EVENT, str(exc), decoded.eventId)
            self._spawn(self._publish_invalid(record, invalid))
            return
        item = PendingEvent(record, decoded, where, target_operations(decoded))
        self.batcher.add(item, now, wall_ms)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._progress.set()
        if not task.cancelled() and task.exception() is not None:
            # Its records keep their offsets uncommitted; stop rather than block in silence.
            self._failure = task.exception()
            log.error("service.task_failed", error=repr(self._failure))
            self._fatal.set()

    async def _publish_invalid(self, record: ConsumedRecord, invalid: Invalid) -> None:
        outcome = invalid_outcome(record, invalid)
        await self._publish([(record, outcome)])
        self.tracker.done(record.ticket)
        log.info(
            "record.invalid",
            partition=record.partition,
            offset=record.offset,
            event_id=invalid.event_id,
            error=invalid.code.value,
            message=invalid.message,
        )

    # -- sending --------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        limit = self.settings.consumer_max_in_flight_requests
        while True:
            self._wake.clear()
            now = time.monotonic()
            # Up to `limit` requests, and up to `limit` more batches publishing their outcomes
            # (so publishing never stalls requests): what a crash can leave applied but
            # without an outcome is bounded by twice the limit (README, crash recovery).
            free = min(
                limit - self._batches_in_flight,
                2 * limit - self._batches_in_flight - self._batches_publishing,
            )
            for batch in self.batcher.ready(now, free):
                self._batches_in_flight += 1
                self._flights[batch.id] = (self._spawn(self._process(batch)), batch)
            due = self.batcher.next_due(time.monotonic()) if free > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due)

    async def _process(self, batch: Batch) -> None:
        assert self._sender is not None
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(
            batch_id=batch.id, path=batch.path, offsets=batch.offset_ranges()
        )
        publishing = False
        try:
            try:
                results = await self._sender.send(batch)
            except Exception as exc:  # a bug must not block the partition: fail and dead-letter
                log.exception("batch.internal_error")
                results = _internal_failure(batch, exc)
            self._flights.pop(batch.id, None)  # answered: never cancelled from here on
            # The request slot is free while the outcomes are published; the path stays busy
            # until they are, so the next batch for it still cannot overtake this one.
            self._batches_in_flight -= 1
            self._batches_publishing += 1
            publishing = True
            self._wake.set()
            completed_at = now()
            pairs: list[tuple[ConsumedRecord, OutcomeMessage]] = [
                (item.record, outcome_for(item, result, completed_at))
                for item, result in zip(batch.items, results, strict=True)
            ]
            await self._publish(pairs)
            for item in batch.items:
                self.tracker.done(item.record.ticket)
            endpoint = batch.route.endpoint.value
            self.metrics.batches.labels(endpoint=endpoint).inc()
            self.metrics.batch_size.labels(endpoint=endpoint).observe(len(batch))
            self._log_batch(batch, pairs, time.monotonic() - started)
        finally:
            if publishing:
                self._batches_publishing -= 1
            else:
                self._batches_in_flight -= 1
            self._flights.pop(batch.id, None)
            self.batcher.done(batch.path)
            self._wake.set()

    async def _publish(self, pairs: list[tuple[ConsumedRecord, OutcomeMessage]]) -> None:
        assert self._publisher is not None
        await self._publisher.publish(pairs)
        self._last_broker_contact = time.monotonic()
        for status, count in _statuses(pairs).items():
            self.metrics.outcomes.labels(status=status.value).inc(count)
            if status in DEAD_LETTER_STATUSES:
                self.metrics.dead_letters.labels(status=status.value).inc(count)

    def _log_batch(
        self, batch: Batch, pairs: list[tuple[ConsumedRecord, OutcomeMessage]], elapsed: float
    ) -> None:
        last = pairs[-1][1] if pairs else None
        log.info(
            "batch.sent",
            size=len(batch),
            endpoint=batch.route.endpoint.value,
            http_status=last.http_status if last else None,
            attempts=last.attempts if last else None,
            outcomes={status.value: n for status, n in _statuses(pairs).items()},
            duration_ms=round(elapsed * 1000, 1),
        )

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
        assert consumer is not None
        m = self.metrics
        m.events_waiting.set(self.batcher.waiting)
        m.records_pending.set(self.tracker.pending())
        m.in_flight.set(self._batches_in_flight)
        m.paused.set(len(consumer.paused()))
        m.assigned.set(len(self.assigned))
        for tp in self.assigned:
            highwater = consumer.highwater(tp)
            position = self.tracker.position(tp)
            if position is None:
                with contextlib.suppress(KafkaError, AssertionError):
                    position = await consumer.position(tp)
            if highwater is not None and position is not None:
                m.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(highwater - position)
        if self.assigned and time.monotonic() - self._last_broker_contact > BROKER_PROBE_AFTER:
            try:
                await consumer.committed(next(iter(self.assigned)))
                self._last_broker_contact = time.monotonic()
            except KafkaError as exc:
                log.warning("broker.unreachable", error=repr(exc))

    async def _commit(self, tps: Iterable[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            positions = {
                tp: offset
                for tp, offset in self.tracker.positions(tps).items()
                if tp in self.assigned
            }
            if not positions:
                return
            started = time.monotonic()
            try:
                await consumer.commit(positions)
            except KafkaError as exc:
                self.metrics.commits.labels(result="failed").inc()
                log.warning("commit.failed", error=repr(exc), partitions=len(positions))
                return
            self._last_broker_contact = time.monotonic()
            self.metrics.commit_latency.observe(self._last_broker_contact - started)
            self.metrics.commits.labels(result="ok").inc()
            self.tracker.committed(positions)
            log.debug(
                "commit.done",
                positions={f"{tp.topic}[{tp.partition}]": o for tp, o in positions.items()},
            )

    # -- rebalancing ----------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Find what already has an outcome, then let fetching go on (never raises)."""
        self._generation += 1
        try:
            if assigned and self.settings.consumer_recovery_lookback_ms >= 0:
                assert self._consumer is not None
                positions = {tp: await self._consumer.position(tp) for tp in assigned}
                self._already_done = await self._unless_stopping(
                    self.recovery.already_done(positions), {}
                )
        except Exception:  # recovery is an optimisation of at-least-once, never a blocker
            log.exception("recovery.failed")
            self._already_done = {}
        finally:
            self.assigned = set(assigned)
            self._settled.set()
        log.info("partitions.assigned", partitions=sorted(tp.partition for tp in assigned))

    async def _unless_stopping(
        self,
        work: Coroutine[Any, Any, dict[TopicPartition, set[int]]],
        fallback: dict[TopicPartition, set[int]],
    ) -> dict[TopicPartition, set[int]]:
        """Run `work`, but give up at once when the service starts stopping.

        Rebalance callbacks hold up `consumer.stop()`, and a stop must end within its bound.
        """
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.info("recovery.abandoned", reason="stopping")
        return fallback

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._settled.clear()
        self._generation += 1
        if not revoked:
            return
        started = time.monotonic()
        self.batcher.flush_partitions(revoked)
        self._wake.set()
        deadline = started + self.settings.consumer_revoke_timeout_ms / 1000
        while self.tracker.pending(revoked) and time.monotonic() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), deadline - time.monotonic())
        await self._commit(revoked)
        unfinished = self.tracker.pending(revoked)
        cancelled = self._cancel_waiting(revoked)
        dropped = self.batcher.drop_partitions(revoked)
        self.tracker.revoke(revoked)
        self.assigned -= revoked
        for tp in revoked:
            self._fetched.pop(tp, None)
        for tp in revoked:
            self._already_done.pop(tp, None)
        log.info(
            "partitions.revoked",
            partitions=sorted(tp.partition for tp in revoked),
            unfinished=unfinished,
            given_up=len(dropped),
            cancelled_batches=cancelled,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _cancel_waiting(self, revoked: set[TopicPartition]) -> int:
        """Stop the batches of given-up partitions that wait (backoff, rate limit, 401 gate).

        The new owner sends those events again; a batch left waiting here would send them a
        second time when its wait ends. One with a request on the wire is left to finish.
        """
        assert self._sender is not None
        cancelled = 0
        for batch_id, (task, batch) in list(self._flights.items()):
            if batch.partitions() <= revoked and not self._sender.requesting(batch_id):
                task.cancel()
                cancelled += 1
        return cancelled

    # -- health ---------------------------------------------------------------------------------

    def _on_auth(self, ok: bool) -> None:
        self.metrics.auth_ok.set(1 if ok else 0)

    def liveness(self) -> dict[str, bool]:
        """The process loop runs: the fetch loop came round lately (or has not started)."""
        return {"loop": time.monotonic() - self._loop_beat < LOOP_STALL_AFTER}

    def readiness(self) -> dict[str, bool]:
        return {
            "partitions_assigned": bool(self.assigned),
            "broker_reachable": time.monotonic() - self._last_broker_contact < BROKER_STALE_AFTER,
            "api_token_accepted": self.auth_ok,
            "running": not self.stopping,
        }

    @property
    def auth_ok(self) -> bool:
        return self._gate is None or self._gate.is_open

    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused()) if self._consumer is not None else set()


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


def _statuses(pairs: list[tuple[ConsumedRecord, OutcomeMessage]]) -> dict[Status, int]:
    counts: dict[Status, int] = {}
    for _, outcome in pairs:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _internal_failure(batch: Batch, exc: Exception) -> list[InstructionResult]:
    error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
    return results_from_error(
        batch.id, batch.items, error, status=Status.FAILED, attempts=[0] * len(batch)
    )
