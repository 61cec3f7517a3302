"""Sends one batch until every instruction in it has a result, or its lease is revoked.

- **Ownership** (leases.py, rule 4): right before every request (the first, a retry, each
  narrowing step) the batch must be `live()`; there is no await between that check and the
  request leaving. It is asked again as soon as an answer comes: a batch that is not live
  keeps the results of a successful answer and sends nothing more; the instructions without
  a result get `None` (no outcome; the partition's next owner sends them again).
- What follows an error is decided by `decisions.py`, from what the error declares (errors.py),
  never from its class. Retryable errors wait as `retry.py` says and send the same request
  again: a retried batch is never reordered, and since the batcher hands out one batch per
  path at a time, no later batch for the path can overtake it.
- Every request goes through the rate limiter (`throttle.py`), shared by all batches. A
  batch's first request is bound late: the pipeline cuts a batch only when `delay` says a
  request on its route may go now, and takes the unit for it at once (`grant`); the batch
  carries that permit into `send`. A permit not spent on a request is given back
  (`release`, idempotent), so a batch stopped or cancelled before it was sent costs nothing.
  Retries and narrowing steps wait at the limiter (`acquire`).
- The API gate (`gate.py`): a request waits while it is closed; a 401 closes it, and so does a
  run of outage-type failures (no answer, 5xx) with no other answer. A batch that waited at a
  closed gate starts a fresh budget. A batch out of budget on an outage-type error asks the
  gate to settle whether the API answers others or was down (then it waits and tries again);
  when others are answered it tries once more, and only if that fails too are its events
  `failed`.
- **Unknown outcomes** (errors.py `unknown_outcome`: a timeout, a connection dropped after the
  request was sent, a 504): LaunchDarkly may have applied the request, or may still apply it.
  Nothing more is sent for the resource until LD_UNKNOWN_OUTCOME_SETTLE_MS has passed since
  (the batch keeps its resource's lane: batcher.py): not the retry, not the next batch, not
  after a revoke (`requesting` says the batch is still on the wire meanwhile, so a revoke
  waits for it, and the partition's next owner cannot overtake it). The batch's events do not
  end before that either, whatever their outcome. A retry after an unknown outcome may find
  its own earlier effect applied already: an instruction it gets refused is read back
  (effects.py) and counts as `succeeded` when LaunchDarkly holds what it sets (the
  assumption: LaunchDarkly applies a request within the settle time, or never).
- **Slots** (slots.py): a batch gives its request slot back while it waits between requests
  (backoff, settle, a closed gate) and takes one again before the next.
- **A resource that keeps failing** fails fast: once one of its batches ended `failed` (out of
  budget while the API answered others), its next batches get no backoff retries (the gate
  still settles whether the API is down, and one more try decides), until it is answered
  again or LD_RETRY_MAX_ELAPSED_MS has passed. Its records then end `failed` at the pace they
  come instead of piling up behind a new budget per batch.
- 400/422 on a request of several instructions is narrowed down: the batch is split in halves
  sent in order, recursively, so only instructions that fail alone are rejected and all the
  others are applied, in their original order.
- Any other error is pinned on every instruction of the request.
- Segment events (big_segments.py): a batch for a segment's PATCH lane that changes targets
  first learns the segment's kind (segment_kinds.py: cached, or read through the same gate,
  limiter and retry policy); a big segment's events then go as `plan` says, request after
  request in order, each one sent, retried and narrowed like any other. A 400 that may mean
  the segment is not what the cache thought (the PATCH on a big segment, `/contexts` on a
  standard one) re-reads the kind once; when it changed, the events without a result are
  planned again for the new kind (nothing of the refused request was applied).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from consumer.contract.codes import ErrorCode
from consumer.contract.events import instruction_body
from consumer.contract.outcomes import (
    BatchPosition,
    Failure,
    InstructionResult,
    Status,
    results_from_body,
    results_from_error,
)
from consumer.launchdarkly.big_segments import (
    Mismatch,
    SegmentKind,
    needs_kind,
    net_change_item,
    plan,
    superseded,
)
from consumer.launchdarkly.client import ApiResponse, LdClient, error_for
from consumer.launchdarkly.decisions import Again, GiveUp, Narrow, Settle, decide
from consumer.launchdarkly.errors import ApiError, Charge, ConnectionFailed, RequestTimeout
from consumer.launchdarkly.gate import ApiGate, Verdict
from consumer.launchdarkly.get import throttled_get
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.routing import (
    BIG_SEGMENT_ENDPOINTS,
    CALLER_IDENTITY_PATH,
    CALLER_IDENTITY_ROUTE,
    METHOD,
    Endpoint,
    Route,
    request_body,
)
from consumer.launchdarkly.segment_kinds import KindResolver, LookupFailed, LookupStopped
from consumer.launchdarkly.throttle import Permit, RateLimiter, Window
from consumer.service.batcher import Batch
from consumer.service.metrics import Metrics
from consumer.service.readback import applied_already
from consumer.service.slots import Hold
from consumer.service.tracing import Tracing

log = structlog.get_logger(__name__)

# Refusals that may mean "applied already" and are read back after an unknown outcome: an
# instruction refused in a 200's `errors`, or a 400 narrowed down to it. Not a 404 or a 403:
# the resource is not there, or not ours to write, whatever a read would show.
READ_BACK_CODES = frozenset({ErrorCode.INSTRUCTION_ERROR, ErrorCode.INVALID_REQUEST})

# One result per instruction; None: no result, the batch stopped (its lease was revoked).
Results = list[InstructionResult | None]


class _Stopped(Exception):
    """The batch is no longer live: nothing more may be sent for it."""


class _KindChanged(Exception):
    """A 400 made the sender re-read the segment's kind, and it is not what was planned for."""


@dataclass(slots=True)
class _Recheck:
    """Re-reads a segment's kind after a 400, at most once per batch."""

    kinds: KindResolver
    segment: Route
    planned: SegmentKind
    live: Callable[[], bool]
    done: bool = False

    async def changed(self) -> bool:
        if self.done:
            return False
        self.done = True
        try:
            fresh = await self.kinds.kind(self.segment, self.live, fresh=True)
        except (LookupFailed, LookupStopped):
            return False
        return fresh != self.planned


@dataclass(slots=True)
class _Batch:
    """What every request of one batch shares (its narrowing steps and big-segment steps)."""

    top: str  # the batch's id: what `requesting` answers for
    hold: Hold
    # Until when (monotonic) a request of the batch whose outcome is unknown may still land.
    landing_until: float = 0.0
    # A request of the batch had an unknown outcome: what a retry gets refused is read back.
    after_unknown: bool = False


@dataclass(slots=True)
class _Budget:
    """A request's retry budget (retry.py), restarted after a closed gate."""

    started: float
    closings: int
    batch: _Batch
    failures: int = 0
    conflicts: int = 0
    # Out of budget and the gate said other writes are answered: one more try decides.
    last_try: bool = False

    def fresh(self, started: float | None = None) -> _Budget:
        return _Budget(self.started if started is None else started, self.closings, self.batch)

    def charge(self, error: ApiError) -> None:
        """Count a failed request against the budget `error` charges (retry.py)."""
        if error.charge is Charge.CONFLICT:
            self.conflicts += 1
        elif error.charge is Charge.ATTEMPT:
            self.failures += 1


class BatchSender:
    def __init__(
        self,
        client: LdClient,
        policy: RetryPolicy,
        gate: ApiGate,
        *,
        throttle: RateLimiter | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
        kinds: KindResolver | None = None,
        settle: float = 0.0,
    ) -> None:
        self._client = client
        self._settle = settle  # LD_UNKNOWN_OUTCOME_SETTLE_MS, in seconds
        self._tracing = tracing or Tracing(None)
        self._policy = policy
        self._gate = gate
        self._throttle = throttle or RateLimiter()
        self._metrics = metrics or Metrics()
        self._rng = rng or random.Random()
        # Batches (by the id given to `send`) with a request on the wire right now: cancelling
        # one of those would leave unknown what LaunchDarkly applied.
        self._requesting: set[str] = set()
        # Batches whose last request's outcome is unknown -> until when it may still land.
        self._landing: dict[str, float] = {}
        # Resources failing fast (see above) -> since when (monotonic).
        self._failing: dict[str, float] = {}
        # Units granted to batches not sent yet: permit seq -> rate-limit route.
        self._granted: dict[int, str] = {}
        # Where segments' kinds come from; None: every segment is taken as standard.
        self._kinds = kinds

    def requesting(self, batch_id: str) -> bool:
        """A request of the batch is on the wire, or may still be applied (unknown outcome)."""
        if batch_id in self._requesting:
            return True
        until = self._landing.get(batch_id)
        return until is not None and until > time.monotonic()

    # -- late binding (the pipeline asks before it cuts a batch) --------------------------------

    def delay(self, route: Route) -> float | None:
        """Seconds until a request on `route` may go (0: now); None while the API gate is
        closed (it says when it opens)."""
        if not self._gate.is_open:
            return None
        return self._throttle.delay(self.admitted_on(route), time.time() * 1000) / 1000

    def window(self, route: Route) -> Window:
        """What the budget of `route`'s rate-limit route has left in this window, and when the
        window ends."""
        return self._throttle.window(self.admitted_on(route), time.time() * 1000)

    def grant(self, route: Route, waited: float = 0.0) -> Permit:
        """Take the unit for a request on `route` that `delay` let go; `waited`: seconds its
        batch was held back for it."""
        endpoint = self.admitted_on(route)
        permit = Permit(self._throttle.take(endpoint), waited)
        self._granted[permit.seq] = endpoint
        return permit

    def admitted_on(self, route: Route) -> str:
        """The rate-limit route a lane's first request will most likely take: a segment
        known to be big writes through `POST .../contexts` (its `*Users` events through
        `.../users`, which then waits for a unit of its own), every other lane its own."""
        if self._kinds is not None and route.endpoint is Endpoint.SEGMENT_TARGETS:
            kind = self._kinds.cached(route)
            if kind is not None and kind.big:
                return Endpoint.BIG_SEGMENT_CONTEXTS.value
        return route.endpoint.value

    def release(self, permit: Permit | None) -> None:
        """Give back a granted unit that no request used (nothing when one did)."""
        if permit is None:
            return
        endpoint = self._granted.pop(permit.seq, None)
        if endpoint is not None:
            self._throttle.release(endpoint, permit.seq)

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self, batch: Batch, permit: Permit | None = None, hold: Hold | None = None
    ) -> Results:
        """One result per instruction, in the batch's order (None: stopped before one came).
        `permit`: the unit granted for its first request (see `grant`); `hold`: its request
        slot (slots.py), given back while it waits between requests."""
        shared = _Batch(batch.id, hold or Hold.none())
        budget = _Budget(time.monotonic(), self._gate.closings, shared)
        try:
            with self._tracing.batch(batch):
                if (
                    self._kinds is not None
                    and batch.route.endpoint is Endpoint.SEGMENT_TARGETS
                    and needs_kind(batch.items)
                ):
                    return await self._send_segment(batch, self._kinds, budget, permit)
                return await self._send(
                    batch, [0] * len(batch), budget, narrowing=False, permit=permit
                )
        finally:
            self.release(permit)
            self._landing.pop(batch.id, None)

    async def _send_segment(
        self, batch: Batch, kinds: KindResolver, budget: _Budget, permit: Permit | None
    ) -> Results:
        """A segment lane's batch: its kind, then its requests in order (big_segments.py)."""
        results: Results = [None] * len(batch)
        position = {id(item): i for i, item in enumerate(batch.items)}
        rechecked = False  # at most one re-read per batch
        while True:
            waiting = [item for item in batch.items if results[position[id(item)]] is None]
            if not waiting:
                return results
            if kinds.cached(batch.route) is None:
                self.release(permit)  # the read comes first; the write takes a unit after it
                permit = None
            try:
                kind = await kinds.kind(batch.route, batch.live)
            except LookupStopped:
                return results
            except LookupFailed as exc:
                error = exc.error
                failed = results_from_error(
                    batch.id,
                    waiting,
                    error,
                    status=Status(error.final_status),
                    attempts=[exc.attempts] * len(waiting),
                )
                for item, result in zip(waiting, failed, strict=True):
                    result.error = Failure(error.code, f"reading the segment: {error.message}")
                    result.method, result.path = "GET", batch.route.path
                    results[position[id(item)]] = result
                return results
            recheck = _Recheck(kinds, batch.route, kind, batch.live, done=rechecked)
            mismatched: list[int] = []  # rejections by this plan's kind, undone if it changes
            try:
                for step in plan(batch.route, waiting, kind):
                    if isinstance(step, Mismatch):
                        mismatched.append(position[id(step.item)])
                        results[position[id(step.item)]] = InstructionResult(
                            Status.REJECTED,
                            BatchPosition(batch.id, len(batch), position[id(step.item)]),
                            None,
                            0,
                            Failure(ErrorCode.CONTEXT_KIND_MISMATCH, step.message),
                        )
                        continue
                    if permit is not None and (
                        self._granted.get(permit.seq) != step.route.endpoint.value
                    ):
                        self.release(permit)  # granted on another route than this request's
                        permit = None
                    request = Batch(step.route, batch.created_at)
                    for item in step.items:
                        request.append(item)
                    step_results = await self._send(
                        request,
                        [0] * len(request),
                        budget,
                        narrowing=False,
                        permit=permit,
                        recheck=recheck,
                    )
                    permit = None
                    undone = superseded(step.items) if step.route is not batch.route else {}
                    for index, (item, answer) in enumerate(
                        zip(step.items, step_results, strict=True)
                    ):
                        if answer is not None and step.route is not batch.route:
                            answer.method = step.route.spec.method
                            answer.path = step.route.path
                            if index in undone and answer.status is Status.SUCCEEDED:
                                answer.item = net_change_item(undone[index])
                        results[position[id(item)]] = answer
                    if any(result is None for result in step_results):
                        return results  # stopped: the rest is the next owner's
            except _KindChanged:
                rechecked = True  # the refused request applied nothing: plan the rest again
                for index in mismatched:  # judged by the old kind: planned again too
                    results[index] = None
                self.release(permit)
                permit = None
                continue
            return results

    async def _send(
        self,
        batch: Batch,
        attempts: list[int],
        budget: _Budget,
        *,
        narrowing: bool,
        permit: Permit | None = None,
        recheck: _Recheck | None = None,
    ) -> Results:
        """`budget`: the time budget started with the batch (narrowing shares it); failures
        and conflicts are counted per request. `recheck`: for a segment's request, asked on
        a 400 whether the segment's kind changed (then `_KindChanged` is raised)."""
        body = request_body(
            batch.route, [instruction_body(p.event) for p in batch.items], batch.comment
        )
        budget = budget.fresh()
        shared = budget.batch
        top = shared.top
        while True:
            if not self._gate.is_open:
                self.release(permit)  # not held while waiting: it counts against the budget
                async with shared.hold.waiting():
                    await self._gate.wait_open()
            if budget.closings != self._gate.closings:  # a closed gate charges nothing
                budget = budget.fresh(time.monotonic())
                budget.closings = self._gate.closings
            granted, permit = permit, None
            # Whatever path led here (a backoff, a last try, a reopened gate), nothing is sent
            # while an earlier request of the batch may still land.
            await self._landed(shared)
            try:
                response, error = await self._attempt(
                    batch, body, narrowing=narrowing, top=top, permit=granted
                )
            except _Stopped:
                await self._landed(shared)
                return [None] * len(batch)
            attempts[:] = [n + 1 for n in attempts]
            if error is not None and error.unknown_outcome:
                shared.landing_until = time.monotonic() + self._settle
                shared.after_unknown = True
                self._landing[top] = shared.landing_until
            self._gate.report(error, batch.path)
            resource = batch.route.resource
            if response is not None and (error is None or not error.outage):
                self._failing.pop(resource, None)  # answered: a full budget again
            if error is not None and not batch.live():
                await self._landed(shared)  # the next owner must not overtake it
                return [None] * len(batch)  # revoked meanwhile: no retry, no narrowing step
            if error is None:
                assert response is not None
                answered: Results = list(
                    results_from_body(
                        batch.id,
                        batch.items,
                        response.body if isinstance(response.body, dict) else {},
                        http_status=response.status,
                        attempts=attempts,
                        per_instruction_errors=batch.route.spec.per_instruction_errors,
                    )
                )
                return await self._confirmed(batch, answered, shared)
            budget.charge(error)
            failing_since = self._failing.get(resource)
            step = decide(
                error,
                self._policy,
                self._rng,
                failures=budget.failures,
                conflicts=budget.conflicts,
                elapsed=time.monotonic() - budget.started,
                size=len(batch),
                closed_meanwhile=budget.closings != self._gate.closings,
                last_try=budget.last_try,
                failing_for=None if failing_since is None else time.monotonic() - failing_since,
            )
            if isinstance(step, Again):
                continue  # the gate closed: it waits for the gate, charged to nobody
            # A segment's request refused: maybe for a kind the segment no longer has.
            if error.narrows and recheck is not None and not narrowing and await recheck.changed():
                raise _KindChanged
            if isinstance(step, Narrow):
                return await self._narrow(batch, attempts, budget, error)
            if isinstance(step, Settle):
                async with shared.hold.waiting():
                    verdict = await self._gate.settle()
                if verdict is Verdict.REOPENED:
                    continue  # the API was down, not this request: start over
                # Others are answered now; this failure may be the end of an outage:
                # one more try, which fails only if the request fails on its own.
                budget.last_try = True
                continue
            if isinstance(step, GiveUp):
                await self._landed(shared)
                if not batch.live():
                    return [None] * len(batch)
                if step.status == "failed":
                    self._failing.setdefault(resource, time.monotonic())
                given_up: Results = list(
                    results_from_error(
                        batch.id,
                        batch.items,
                        error,
                        status=Status(step.status),
                        attempts=attempts,
                    )
                )
                return await self._confirmed(batch, given_up, shared)
            # A retry, after `step.delay`.
            if step.renewed:
                del self._failing[resource]  # a whole budget again, now and then
            self._metrics.retries.labels(reason=error.code.value).inc()
            self._tracing.retry(error, step.delay, budget.failures)
            log.info(
                "ld.retry",
                batch_id=batch.id,
                path=batch.path,
                error=error.code.value,
                http_status=error.status,
                delay_s=round(step.delay, 3),
                failures=budget.failures,
            )
            delay = max(step.delay, shared.landing_until - time.monotonic())
            async with shared.hold.waiting():
                await asyncio.sleep(delay)

    async def _landed(self, shared: _Batch) -> None:
        """Wait (without a slot) until no request of the batch may still be applied."""
        remaining = shared.landing_until - time.monotonic()
        if remaining > 0:
            log.info("batch.settling", batch_id=shared.top, wait_s=round(remaining, 3))
            async with shared.hold.waiting():
                await asyncio.sleep(remaining)

    async def _confirmed(self, batch: Batch, results: Results, shared: _Batch) -> Results:
        """After an unknown outcome, the instructions refused now are read back: those whose
        effect LaunchDarkly holds were applied by the earlier request (`succeeded`)."""
        if not shared.after_unknown:
            return results
        refused = [
            i
            for i, result in enumerate(results)
            if result is not None
            and result.status is Status.REJECTED
            and result.error is not None
            and result.error.code in READ_BACK_CODES
        ]
        if not refused:
            return results
        big = batch.route.endpoint in BIG_SEGMENT_ENDPOINTS
        applied = [
            i
            for i, result in enumerate(results)
            if result is not None and result.status is Status.SUCCEEDED
        ]
        held = await applied_already(
            self._read_back,
            [item.event for item in batch.items],
            refused,
            big=big,
            applied=applied,
        )
        for index in held:
            result = results[index]
            assert result is not None
            result.status, result.error = Status.SUCCEEDED, None
        if held:
            log.info(
                "batch.applied_before",
                batch_id=batch.id,
                path=batch.path,
                instructions=len(held),
                message="refused on a retry, but applied by the earlier request whose outcome"
                " was unknown",
            )
        return results

    async def _read_back(self, path: str, route: str) -> tuple[int, object] | None:
        """One read for `applied_already`: (status, body), or None when it failed."""
        response, error = await throttled_get(
            self._client,
            self._throttle,
            path,
            route,
            rate_limit_default=self._policy.rate_limit_default,
            accept=(404,),
            metrics=self._metrics,
        )
        if error is not None or response is None:
            return None
        return response.status, response.body

    async def _attempt(
        self,
        batch: Batch,
        body: dict[str, object],
        *,
        narrowing: bool,
        top: str,
        permit: Permit | None,
    ) -> tuple[ApiResponse | None, ApiError | None]:
        """One request, within the rate limits: on `permit` when one was granted and is still
        unspent, else on a unit acquired here. Every unit not used is given back.

        Raises `_Stopped`, sending nothing, when the batch is not live right before the
        request would leave.
        """
        endpoint = batch.route.endpoint.value
        if not batch.live():
            self.release(permit)
            raise _Stopped
        if permit is None or self._granted.pop(permit.seq, None) is None:
            permit = await self._throttle.acquire(endpoint)
        if permit.waited:
            self._metrics.rate_limit_wait.inc(permit.waited)
            self._tracing.rate_limit_wait(permit.waited)
        if not batch.live():  # no await from here until the request is on the wire
            self._throttle.release(endpoint, permit.seq)
            raise _Stopped
        if narrowing:
            self._metrics.narrowing.inc()
        response: ApiResponse | None = None
        error: ApiError | None = None
        started = time.monotonic()
        self._requesting.add(top)
        try:
            with self._tracing.request(batch, METHOD, narrowing=narrowing) as span:
                response, error = await self._request(batch, body)
                span.answered(response.status if response is not None else None, error)
        finally:
            self._requesting.discard(top)
            self._throttle.observe(
                endpoint, response.headers if response else None, error, permit.seq
            )
        self._metrics.request_latency.labels(endpoint=endpoint).observe(time.monotonic() - started)
        status = (
            str(response.status) if response is not None else (error.code.value if error else "")
        )
        self._metrics.requests.labels(endpoint=endpoint, status=status).inc()
        if error is not None and error.retry_after is not None:
            self._metrics.rate_limited.inc()
            log.warning(
                "ld.rate_limited", path=batch.path, retry_after_s=round(error.retry_after, 3)
            )
        return response, error

    async def _request(
        self, batch: Batch, body: dict[str, object]
    ) -> tuple[ApiResponse | None, ApiError | None]:
        try:
            if batch.route.spec.method == "POST":
                response = await self._client.post(batch.path, body)
            else:
                response = await self._client.patch(batch.path, body)
        except (RequestTimeout, ConnectionFailed) as exc:
            return None, exc
        error = error_for(
            response,
            now_ms=time.time() * 1000,
            rate_limit_default=self._policy.rate_limit_default,
            needs_body=batch.route.spec.per_instruction_errors,
        )
        return response, error

    async def _narrow(
        self, batch: Batch, attempts: list[int], budget: _Budget, error: ApiError
    ) -> Results:
        middle = len(batch) // 2
        self._tracing.narrowing(len(batch), error)
        halves = (batch.sub(batch.items[:middle]), batch.sub(batch.items[middle:]))
        log.info(
            "batch.narrowing",
            batch_id=batch.id,
            path=batch.path,
            size=len(batch),
            # This (sub-)batch's own offsets, not its parent's bound to the context.
            offsets=batch.offset_ranges(),
            halves=[half.offset_ranges() for half in halves],
            http_status=error.status,
            message=error.message,
        )
        results: Results = []
        for half, counts in zip(halves, (attempts[:middle], attempts[middle:]), strict=True):
            results.extend(await self._send(half, counts, budget, narrowing=True))
        return results

    async def probe(self) -> ApiError | None:
        """The API gate's probe: `GET /api/v2/caller-identity` within the rate limits."""
        _, error = await throttled_get(
            self._client,
            self._throttle,
            CALLER_IDENTITY_PATH,
            CALLER_IDENTITY_ROUTE,
            rate_limit_default=self._policy.rate_limit_default,
            needs_body=False,
            metrics=self._metrics,
        )
        return error
