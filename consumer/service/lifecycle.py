"""The service's lifecycle: start, the fetch loop, the commit loop, the drain and the close.

Who owns what is written in leases.py (rules 1-5) and the commit order in pipeline.py; the
parts are made in wiring.py, rebalances are handled in rebalancing.py and commits in
committing.py; this module runs them:

- **Fetching** (`_fetch_loop`): each turn numbers the fetch, calls `getmany`, and handles what
  it returned with no await in between, against the leases as they are at that moment:
  `Leases.admit` decides per run (take, skip, or seek back), the pipeline takes the records.
  Partitions are paused while their lease does not exist yet, while the API gate is closed,
  and while too many records are pending.
- **Stop** (one stop flag, `_stopping`), bounded from end to end:
  1. stop fetching (and granting);
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
  seconds, broker or no broker. A second signal ends the process at once (commands/run.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka.errors import CorruptRecordException, KafkaError
from aiokafka.structs import TopicPartition

from consumer.kafka import clients as kafka
from consumer.service.batcher import reading_backlog
from consumer.service.committing import Committer
from consumer.service.deadline import Deadline
from consumer.service.halts import (
    CORRUPT_FETCH_TRIES,
    Halt,
    Halts,
    fetch_error_reason,
    out_of_range_offset,
)
from consumer.service.health import BROKER_PROBE_AFTER
from consumer.service.leases import Follow, Lease, LeaseState
from consumer.service.publisher import Refused
from consumer.service.rebalancing import Rebalancing, cancelled
from consumer.service.wiring import Parts

log = structlog.get_logger(__name__)

STOP_GRACE = 5.0  # seconds past CONSUMER_SHUTDOWN_TIMEOUT_MS for the last commit and closing
CLOSE_MIN = 0.5  # seconds each close step gets, however late
SHORT_LOG_CONFIRM = 5.0  # seconds a high watermark below a lease lasts before the log is short


class Service:
    def __init__(self, parts: Parts) -> None:
        """`parts`: what wiring.build made from the settings (or fakes)."""
        self.settings = parts.settings
        self._timings = parts.timings
        self.token = parts.token
        self.metrics = parts.metrics
        self.registry = parts.metrics.registry
        self.vitals = parts.vitals
        self.membership = parts.membership
        self.leases = parts.leases
        self.recovery = parts.recovery
        self.tracing = parts.tracing
        self.gate = parts.gate
        self.pipeline = parts.pipeline
        self.health = parts.health
        self._consumer = parts.consumer
        self._publisher = parts.publisher
        self._client = parts.client
        self._pressure = parts.pressure
        self._stopping = asyncio.Event()  # the one stop flag: a stop asked for, or a failure
        self._failure: BaseException | None = None
        self._stop_deadline = Deadline.never()  # set when the stop begins
        self.halts = Halts()
        # Fetch errors in a row per partition (a corrupt batch is fetched again a few times).
        self._fetch_failures: dict[TopicPartition, int] = {}
        self._restarting: set[Lease] = set()  # leases being started again (rule 2b)
        self._offset_resets: dict[TopicPartition, int] = {}  # the last one reported, per partition
        # Partitions whose high watermark is below their lease -> since when (rule 2b).
        self._short_since: dict[TopicPartition, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.committer = Committer(
            self._consumer,
            self.leases,
            self.membership,
            self.metrics,
            self.vitals,
            timeout=parts.timings.commit_timeout,
        )
        self.rebalancing = Rebalancing(
            self._consumer,
            self.leases,
            self.membership,
            self.pipeline,
            self.recovery,
            self.vitals,
            commit=self.committer.commit,
            released=self._released,
            stopping=self._stopping.is_set,
            revoke_timeout=parts.timings.revoke_timeout,
            commit_timeout=parts.timings.commit_timeout,
            handover_wait=parts.timings.landing,
        )
        # The pipeline reports here (it is made before the service).
        self.pipeline.on_failure = self._fail
        self.pipeline.on_refused = self._on_refused

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
            await kafka.start(self._publisher.producer, settings)
        except BaseException:
            await self.discard()  # the consumer made by wiring too (aiokafka warns otherwise)
            raise
        try:
            await self._client.start()
            self._consumer.subscribe([settings.consumer_input_topic], listener=self.rebalancing)
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
            await self._publisher.producer.stop()  # never started: made again, smaller batches
            self._publisher.producer = kafka.make_producer(self.settings, batch)

    async def start_health(self) -> None:
        """Serve /healthz, /readyz and /metrics (idempotent). A port in use raises
        `web.CannotListen`: a member whose probes and metrics cannot be reached is not one an
        orchestrator can run."""
        if self.health is not None and not self.health.started:
            await self.health.start()
            log.info("health.listening", port=self.health.port)

    async def discard(self) -> None:
        """Close what wiring made, for a service that never ran (a failed preflight):
        aiokafka warns of unclosed clients otherwise."""
        await self._consumer.stop()
        await self._publisher.producer.stop()
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
            deadline = Deadline.after(self._timings.shutdown_timeout)
            self._stop_deadline = deadline.shifted(STOP_GRACE)
            log.info(
                "service.stopping",
                waiting=self.pipeline.batcher.waiting,
                pending=self.leases.pending(),
            )
            fetch.cancel()  # 1. stop fetching (and granting)
            await cancelled(fetch, self.rebalancing.granting)
            await self._drain(deadline)  # 2., 3.
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await cancelled(self.rebalancing.granting, *self._background)
            await self.pipeline.cancel_all()
            # 4. A stop that abandoned nothing on the wire hands over cleanly (handover.py).
            clean = self.pipeline.abandoned == abandoned and self.pipeline.idle()
            await asyncio.shield(
                self.committer.commit(
                    self.leases.unended() if clean else None,
                    timeout=self._time_left(),
                    clean=clean,
                )
            )

    async def _drain(self, deadline: Deadline) -> None:
        # A request started later could not end, and stop landing, before the deadline.
        if await self.pipeline.drain(deadline.shifted(-self._timings.landing)):
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
        return max(CLOSE_MIN, self._stop_deadline.remaining())

    async def _close(self) -> None:  # 5.
        self._stop_deadline = min(self._stop_deadline, Deadline.after(STOP_GRACE))
        await kafka.stop_within(
            kafka.stop_consumer(self._consumer), self._time_left(), "consumer.stop"
        )
        await kafka.stop_within(self._publisher.producer.stop(), self._time_left(), "producer.stop")
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
        rebalances = self.rebalancing.rebalances
        try:
            deadline = Deadline.after(self._timings.revoke_timeout)
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
            if self.rebalancing.rebalances == rebalances and self.leases.get(tp) is None:
                self.leases.grant(tp, position)
                self._consumer.seek(tp, position)
            while more:
                more = await self.rebalancing.rewind(more, deadline)
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
        at = lease.next if lease is not None else out_of_range_offset(exc)
        reason = fetch_error_reason(exc, self.settings.consumer_auto_offset_reset)
        self._halt(Halt(tp, at, reason))

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

    def _released(self, tps: set[TopicPartition]) -> None:
        """Partitions given up (rebalancing.py): their halts and fetch errors end with them."""
        self.halts.clear(tps)
        self.vitals.halted = self.halts.describe()
        self.metrics.halted.set(len(self.halts))
        for tp in tps:
            self._fetch_failures.pop(tp, None)

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
        interval = self._timings.commit_interval
        while True:
            await asyncio.sleep(interval)
            await self.committer.commit()
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
                async with asyncio.timeout(self._timings.commit_timeout):
                    await consumer.committed(leases[0].tp)
                self.vitals.broker_seen()
            except (KafkaError, TimeoutError) as exc:
                log.warning("broker.unreachable", error=repr(exc))

    # -- health (kept for callers that ask the service) -----------------------------------------

    @property
    def auth_ok(self) -> bool:
        return not self.vitals.api_token_refused

    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused())
