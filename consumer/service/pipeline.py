"""The pipeline: accept -> batch -> send -> publish -> mark done. No Kafka consumer in here.

The commit order, for every record taken (what lets the lifecycle commit its offset):

1. its lease takes it (leases.py, rule 2): the offset is tracked, not done;
2. it is decoded and routed; an invalid one goes to step 4 with an `invalid` outcome; one the
   crash-recovery scan found finished is marked done at once (recovery.py: never a reorder);
3. it waits in the batcher for its URL, goes out in one request (sender.py), and gets one
   result from the answer;
4. its dead-letter copy (where due), then its outcome, are published and acknowledged with
   acks=all (publisher.py);
5. only then is it marked done on its lease; committing.py commits each lease's done prefix.

Dispatch (late binding, batcher.py): a due lane is cut into a batch only when its request can
go now: its URL has nothing in flight, a request slot is free, the API gate is open and the
rate limiter has a unit for its route, which is taken for it there and then (sender.py,
`grant`). While any of these waits, the lane keeps filling; among lanes that may go, the one
waiting longest goes first.

Flights: each batch handed out runs as one task. Its bookkeeping (the URL's lane, the request
or publishing slot, the flight table) is released by the task's done callback, so a task
cancelled at any point, even before it first ran, frees everything it held.

Revoking leases (`revoke`, leases.py rule 4), the caller having marked them REVOKING:

1. no batch holding their records passes `Batch.live()` any more, so none starts a request;
2. their waiting events leave the batcher (the next owner sends them);
3. their flights not on the wire are cancelled: waiting at the gate, the rate limiter or a
   backoff, or not started;
4. flights on the wire are waited for until the deadline; the answered ones publish their
   outcomes, which marks their records done for the caller's commit; whatever is still on
   the wire at the deadline is cancelled (see the README: it cannot happen while
   CONSUMER_REVOKE_TIMEOUT_MS > LD_REQUEST_TIMEOUT_MS);
5. leases of other partitions with records in the same flights stop with them, at once
   (before step 1 can await: a later batch of theirs for the same URL would overtake the
   stopped one), and are returned for the caller to rewind (leases.py, rule 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import random
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from consumer.contract.codes import ErrorCode
from consumer.contract.dead_letters import DEAD_LETTER_STATUSES
from consumer.contract.events import Invalid, decode, target_operations
from consumer.contract.outcomes import (
    InstructionResult,
    OutcomeMessage,
    Status,
    completed_now,
    invalid_outcome,
    outcome_for,
    results_from_error,
)
from consumer.launchdarkly.errors import InternalError
from consumer.launchdarkly.routing import Route, UnroutableEvent, route
from consumer.launchdarkly.throttle import JITTER_MS, Permit, Window
from consumer.service.batcher import Batch, Batcher, Head
from consumer.service.deadline import Deadline
from consumer.service.leases import Lease
from consumer.service.metrics import Metrics
from consumer.service.publisher import Refused
from consumer.service.records import ConsumedRecord, PendingEvent
from consumer.service.recovery import Recovered
from consumer.service.scarcity import RouteView, Scarcity
from consumer.service.slots import Hold, Slots
from consumer.service.tracing import Tracing

log = structlog.get_logger(__name__)

Pairs = Sequence[tuple[ConsumedRecord, OutcomeMessage]]


class Sender(Protocol):
    def admitted_on(self, route: Route) -> str: ...

    def delay(self, route: Route) -> float | None: ...

    def window(self, route: Route) -> Window: ...

    def grant(self, route: Route, waited: float) -> Permit: ...

    def release(self, permit: Permit | None) -> None: ...

    async def send(
        self, batch: Batch, permit: Permit | None = None, hold: Hold | None = None
    ) -> list[InstructionResult | None]: ...

    def requesting(self, batch_id: str) -> bool: ...


class OutcomePublisher(Protocol):
    async def publish(self, pairs: Pairs) -> list[Refused]: ...


class Phase(enum.Enum):
    SENDING = "sending"  # waiting to send, or a request on the wire
    PUBLISHING = "publishing"  # answered; outcomes on their way to the broker


@dataclass(slots=True, eq=False)
class Flight:
    batch: Batch
    hold: Hold
    permit: Permit | None = None
    phase: Phase = Phase.SENDING
    task: asyncio.Task[None] | None = None
    lane_released: bool = False  # its resource's next batch may go (answered in full)


class Pipeline:
    def __init__(
        self,
        batcher: Batcher,
        sender: Sender,
        publisher: OutcomePublisher,
        metrics: Metrics,
        *,
        max_in_flight: int,
        on_published: Callable[[], None] = lambda: None,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        on_refused: Callable[[list[Refused]], None] = lambda refused: None,
        tracing: Tracing | None = None,
        scarcity: Scarcity | None = None,
    ) -> None:
        self.batcher = batcher
        self._scarcity = scarcity
        self._tracing = tracing or Tracing(None)
        self._sender = sender
        self._publisher = publisher
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        # What the pipeline reports to its owner (the service sets the last two once it exists).
        self.on_published = on_published
        self.on_failure = on_failure
        self.on_refused = on_refused
        self.recovered = Recovered()
        self.skipped_already_done = 0
        self.abandoned = 0  # requests cancelled on the wire (or while they could still land)
        self._flights: dict[str, Flight] = {}
        self._sending = 0  # flights in Phase.SENDING
        self._publishing = 0
        # Invalid records' outcomes on their way, with the lease of each.
        self._loose: dict[asyncio.Task[None], Lease] = {}
        self._wake = asyncio.Event()  # something to hand out, or a slot came free
        # Request slots (slots.py): a batch waiting between requests holds none.
        self._slots = Slots(max_in_flight, on_free=self._wake.set)
        # Resource -> when its due lane was first held back by the rate limiter (the wait
        # metric).
        self._held: dict[str, float] = {}
        self._rng = random.Random()
        self._progress = asyncio.Event()  # a flight or a loose task finished

    # -- accepting ------------------------------------------------------------------------------

    def accept(
        self,
        lease: Lease,
        records: Sequence[Any],
        take_from: int,
        now: float,
        wall_ms: float | None,
    ) -> int:
        """Take the records at or past `take_from` (one fetched run, leases.admit); returns
        how many were taken. `wall_ms`: see Batcher.add."""
        taken = 0
        for raw in records:
            if raw.offset < take_from or not lease.offsets.take(raw.offset):
                continue
            taken += 1
            record = ConsumedRecord.from_kafka(raw, lease)
            decoded = decode(record.value)
            item: PendingEvent | None = None
            if not isinstance(decoded, Invalid):
                try:
                    where = route(decoded)
                except UnroutableEvent as exc:
                    decoded = Invalid(ErrorCode.INVALID_EVENT, str(exc), decoded.eventId)
                else:
                    item = PendingEvent(record, decoded, where, target_operations(decoded))
            if self.recovered and self.recovered.skip(
                lease.tp, record.offset, item.route.resource if item is not None else None
            ):
                record.done()
                self.skipped_already_done += 1
                self._metrics.records_skipped.inc()
                log.info("record.already_done", partition=record.partition, offset=record.offset)
                continue
            if self._tracing.enabled:
                event_id = decoded.event_id if isinstance(decoded, Invalid) else decoded.eventId
                record.span = self._tracing.start_event(record, event_id)
            if item is not None:
                self.batcher.add(item, now, wall_ms)
            else:
                assert isinstance(decoded, Invalid)
                task = self._spawn(self._publish_invalid(record, decoded))
                self._loose[task] = lease
        if taken:
            self._wake.set()
        return taken

    async def _publish_invalid(self, record: ConsumedRecord, invalid: Invalid) -> None:
        if await self._publish([(record, invalid_outcome(record, invalid))]):
            return  # refused: not done, its partition halts
        record.done()
        log.info(
            "record.invalid",
            partition=record.partition,
            offset=record.offset,
            event_id=invalid.event_id,
            error=invalid.code.value,
            message=invalid.message,
        )

    # -- sending --------------------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Hand out batches whose requests may go now; runs until cancelled."""
        limit = self._max_in_flight
        while True:
            self._wake.clear()
            # Up to `limit` requests (slots.py: batches waiting between requests hold no slot),
            # and up to `limit` more batches publishing their outcomes (so publishing never
            # stalls requests): what a crash can leave applied but without an outcome is
            # bounded by twice the limit (README, crash recovery).
            slots = self._slots
            free = min(slots.free(), 2 * limit - slots.used - self._publishing)
            now = time.monotonic()
            admission = _Admission(
                self._sender, self._held, now, self.batcher.heads(now), self._scarcity
            )
            for batch in self.batcher.ready(now, free, admission.admit):
                self._launch(batch, admission.granted.pop(batch.route.resource))
            waits = [admission.wait] if admission.wait is not None else []
            if admission.jitter:  # members of a group should not wake in step at a reset
                waits[0] += self._rng.uniform(0, JITTER_MS) / 1000
            if free > 0 and (due := self.batcher.next_due(now)) is not None:
                waits.append(due)
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes as
            # the wait ends, and the stop then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits, default=None)):
                    await self._wake.wait()

    def wake(self) -> None:
        """Something the dispatch waits for changed (the API gate opened)."""
        self._wake.set()

    def _launch(self, batch: Batch, permit: Permit | None) -> None:
        flight = Flight(batch, self._slots.take(), permit)
        self._flights[batch.id] = flight
        self._sending += 1
        flight.task = self._spawn(self._fly(flight), functools.partial(self._landed, flight))

    def _landed(self, flight: Flight, task: asyncio.Task[None]) -> None:
        flight.hold.release()
        if flight.phase is Phase.SENDING:
            self._sending -= 1
        else:
            self._publishing -= 1
        self._flights.pop(flight.batch.id, None)
        self._sender.release(flight.permit)  # cancelled before its request: give it back
        if not flight.lane_released:
            self.batcher.finished(flight.batch.route.resource)

    async def _fly(self, flight: Flight) -> None:
        batch = flight.batch
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(
            batch_id=batch.id, path=batch.path, offsets=batch.offset_ranges()
        )
        try:
            results = await self._sender.send(batch, flight.permit, flight.hold)
        except Exception as exc:  # a bug must not block the partition: fail and dead-letter
            log.exception("batch.internal_error")
            results = list(_internal_failure(batch, exc))
        # Answered: the request slot is free while the outcomes are published. Answered in
        # full, LaunchDarkly has applied (or refused) every instruction, so the resource's next
        # batch may go now, while these outcomes are published: it cannot overtake anything.
        # A batch stopped part-way keeps its lane until it ends (leases.py, rule 5).
        flight.phase = Phase.PUBLISHING
        flight.hold.release()
        if all(result is not None for result in results):
            flight.lane_released = True
            self.batcher.finished(batch.route.resource)
        self._sending -= 1
        self._publishing += 1
        self._wake.set()
        completed_at = completed_now()
        pairs = [
            (item.record, outcome_for(item, result, completed_at))
            for item, result in zip(batch.items, results, strict=True)
            if result is not None
        ]
        refused = await self._publish(pairs) if pairs else set()
        for record, _ in pairs:
            if id(record) not in refused:
                record.done()
        endpoint = batch.route.endpoint.value
        self._metrics.batches.labels(endpoint=endpoint).inc()
        self._metrics.batch_size.labels(endpoint=endpoint).observe(len(batch))
        self._log_batch(batch, pairs, time.monotonic() - started)

    async def _publish(self, pairs: Pairs) -> set[int]:
        """Publish; returns the `id`s of the records refused (not done: see publisher.py),
        whose partitions the owner halts."""
        refused = await self._publisher.publish(pairs)
        self.on_published()
        if refused:
            self.on_refused(refused)
            gone = {id(r.record) for r in refused}
            pairs = [(record, outcome) for record, outcome in pairs if id(record) not in gone]
        for status, count in _statuses(pairs).items():
            self._metrics.outcomes.labels(status=status.value).inc(count)
            if status in DEAD_LETTER_STATUSES:
                self._metrics.dead_letters.labels(status=status.value).inc(count)
        for (status, code), count in _errors(pairs).items():
            self._metrics.outcome_errors.labels(status=status.value, code=code.value).inc(count)
        return {id(r.record) for r in refused}

    def _log_batch(self, batch: Batch, pairs: Pairs, elapsed: float) -> None:
        last = pairs[-1][1] if pairs else None
        statuses = _statuses(pairs)
        # A batch that applied nothing is worth an operator's look: warning, not info.
        emit = log.warning if pairs and Status.SUCCEEDED not in statuses else log.info
        emit(
            "batch.sent" if len(pairs) == len(batch) else "batch.stopped",
            size=len(batch),
            without_outcome=len(batch) - len(pairs),
            endpoint=batch.route.endpoint.value,
            http_status=last.http_status if last else None,
            attempts=last.attempts if last else None,
            outcomes={status.value: n for status, n in statuses.items()},
            duration_ms=round(elapsed * 1000, 1),
        )

    # -- tasks ----------------------------------------------------------------------------------

    def _spawn(
        self,
        coroutine: Coroutine[Any, Any, None],
        first: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        if first is not None:
            task.add_done_callback(first)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._loose.pop(task, None)
        self._progress.set()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            # Its records keep their offsets uncommitted; stop rather than block in silence.
            exc = task.exception()
            assert exc is not None
            log.error("service.task_failed", error=repr(exc))
            self.on_failure(exc)

    async def _wait_progress(self, deadline: Deadline) -> bool:
        """Wait for some task to finish, or the deadline; False once it has passed."""
        remaining = deadline.remaining()
        if remaining <= 0:
            return False
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):  # not wait_for: see dispatch
                await self._progress.wait()
        return True

    # -- revoking, draining, stopping -----------------------------------------------------------

    async def revoke(self, leases: Collection[Lease], deadline: Deadline) -> set[Lease]:
        """Stop all work of REVOKING leases (steps 1-5 above); returns the leases to rewind."""
        gone = set(leases)
        # Leases of other partitions in the same flights stop now too, before any await
        # (leases.py, rule 5): their records in a stopped batch are sent again after a
        # rewind, so nothing later of theirs may go first. Stopping them touches more
        # flights: to a fixed point.
        stopped = set(gone)
        while True:
            touched = [
                f for f in self._flights.values() if not stopped.isdisjoint(f.batch.leases())
            ]
            more = {lease for f in touched for lease in f.batch.leases() if lease.active}
            if not more:
                break
            for lease in more:
                lease.stop()
            stopped |= more
        for item in self.batcher.drop_leases(stopped):
            self._held.pop(item.route.resource, None)
        self.recovered.forget(lease.tp for lease in gone)
        for flight in touched:
            if flight.phase is Phase.SENDING and not self._sender.requesting(flight.batch.id):
                _cancel(flight)

        def busy() -> bool:
            return any(f.task is not None and not f.task.done() for f in touched) or any(
                lease in stopped for lease in self._loose.values()
            )

        while busy() and await self._wait_progress(deadline):
            pass
        late = [f for f in touched if f.phase is Phase.SENDING and not _finished(f)]
        self._abandon(late, "a request outlived CONSUMER_REVOKE_TIMEOUT_MS")
        await asyncio.gather(*(f.task for f in late if f.task is not None), return_exceptions=True)
        return stopped - gone

    def _abandon(self, flights: list[Flight], why: str) -> None:
        """Cancel these flights, counting and logging those with a request on the wire."""
        for flight in flights:
            if self._sender.requesting(flight.batch.id):
                self.abandoned += 1
                self._metrics.abandoned.inc()
                log.warning(
                    "request.abandoned",
                    batch_id=flight.batch.id,
                    path=flight.batch.path,
                    message=f"{why}; LaunchDarkly may still apply it",
                )
            _cancel(flight)

    def flush(self) -> None:
        """Every waiting batch is due at once (stop)."""
        self.batcher.flush()
        self._wake.set()

    async def drain(self, deadline: Deadline) -> bool:
        """Wait until nothing waits or flies, or the deadline; True when drained."""
        self.flush()
        while not self.idle():
            if not await self._wait_progress(deadline):
                return False
        return True

    def idle(self) -> bool:
        return self.batcher.idle() and not self._flights and not self._loose

    async def cancel_all(self) -> None:
        flights = list(self._flights.values())
        self._abandon(flights, "the stop ran out of time")
        for task in self._loose:
            task.cancel()
        tasks = [f.task for f in flights if f.task is not None] + list(self._loose)
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- state ----------------------------------------------------------------------------------

    @property
    def sending(self) -> int:
        return self._sending


class _Admission:
    """One dispatch pass's answers to `Batcher.ready`'s `admit`: a rate-limit route the limiter
    or the gate holds back is asked once per pass (many lanes share one); a small lane on a
    route whose budget cannot carry all its lanes waits to fill (scarcity.py); `wait` is how
    long until one may go, and `jitter` whether it is the limiter's (members of a group should
    not all wake at its reset) rather than a hold's own deadline.

    Each lane's rate-limit route is read once, when the pass starts: a segment's kind (and so
    its route) can expire from the cache in the middle of a pass."""

    __slots__ = (
        "_by_route",
        "_held",
        "_held_back",
        "_now",
        "_route_of",
        "_scarcity",
        "_sender",
        "_views",
        "granted",
        "jitter",
        "wait",
    )

    def __init__(
        self,
        sender: Sender,
        held: dict[str, float],
        now: float,
        heads: Sequence[Head],
        scarcity: Scarcity | None,
    ) -> None:
        self._sender = sender
        self._held = held
        self._now = now
        self._scarcity = scarcity
        # Resource -> its lane's rate-limit route, and route -> its lanes, for this pass.
        self._route_of = {h.head.route.resource: sender.admitted_on(h.head.route) for h in heads}
        self._by_route: dict[str, list[Head]] = {}
        for head in heads:
            self._by_route.setdefault(self._route_of[head.head.route.resource], []).append(head)
        # Rate-limit route -> its delay this pass (None: the gate is closed).
        self._held_back: dict[str, float | None] = {}
        self._views: dict[str, RouteView] = {}  # built on first use, once per pass
        self.granted: dict[str, Permit] = {}
        self.wait: float | None = None  # None: nothing held back, or only by the gate
        self.jitter = False

    def admit(self, due: Head) -> bool:
        route = due.head.route
        key = self._route_of.get(route.resource) or self._sender.admitted_on(route)
        delay = self._held_back[key] if key in self._held_back else self._sender.delay(route)
        limiter = delay != 0
        if limiter:
            self._held_back[key] = delay
        else:
            delay = self._to_fill(key, due)  # this lane's own: others on the route may go
        if delay != 0:
            if delay is not None:  # held for the budget (not by the gate): the wait metric
                self._held.setdefault(route.resource, self._now)
                if self.wait is None or delay < self.wait:
                    self.wait, self.jitter = delay, limiter
            return False
        since = self._held.pop(route.resource, self._now)
        self.granted[route.resource] = self._sender.grant(route, self._now - since)
        view = self._views.get(key)
        if view is not None:
            self._views[key] = view.granted(len(due.head))
        return True

    def _to_fill(self, key: str, due: Head) -> float:
        """Seconds to hold this lane so it fills (0: it may go)."""
        if self._scarcity is None:
            return 0.0
        view = self._views.get(key)
        if view is None:
            on_route = self._by_route.get(key) or [due]
            window = self._sender.window(due.head.route)
            view = self._views[key] = RouteView(
                waiting_lanes=len(on_route),
                units_left=window.left,
                window_ends_in=window.ends_in,
                since_added=self._now - max(h.last_added for h in on_route),
                due_sizes=tuple(sorted((len(h.head) for h in on_route if h.due), reverse=True)),
                in_flight=window.in_flight,
            )
        hold = self._scarcity.hold(
            view,
            closed=due.closed,
            waited=self._now - due.head.created_at,
            size=len(due.head),
        )
        return hold or 0.0


def _cancel(flight: Flight) -> None:
    if flight.task is not None:
        flight.task.cancel()


def _finished(flight: Flight) -> bool:
    return flight.task is None or flight.task.done()


def _statuses(pairs: Pairs) -> dict[Status, int]:
    counts: dict[Status, int] = {}
    for _, outcome in pairs:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _errors(pairs: Pairs) -> dict[tuple[Status, ErrorCode], int]:
    counts: dict[tuple[Status, ErrorCode], int] = {}
    for _, outcome in pairs:
        if outcome.error is not None:
            key = (outcome.status, outcome.error.code)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _internal_failure(batch: Batch, exc: Exception) -> list[InstructionResult]:
    error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
    return results_from_error(
        batch.id, batch.items, error, status=Status(error.final_status), attempts=[0] * len(batch)
    )
