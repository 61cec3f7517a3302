"""Reads a segment's kind (standard or big) from LaunchDarkly, through the kind cache.

`GET /api/v2/segments/{project}/{env}/{segment}` (`unbounded`, `unboundedContextKind`) goes
the way every request goes: through the API gate (waits while it is closed; a 401 closes it,
outage-type failures count towards closing it), the rate limiter (a route of its own) and the
retry policy (429, 5xx, timeouts and dropped connections retried within the budget; a budget
spent on an outage-type error asks the gate to settle, as a write does). It ends in a kind,
in `LookupFailed` (the error to pin on the events: 404 `not_found`, 403 `forbidden`, a
failure past the budget), or in `LookupStopped` when the batch it serves lost its lease.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import structlog

from consumer.big_segments import KindCache, SegmentKind
from consumer.errors import (
    ApiError,
    ConnectionFailed,
    InvalidResponse,
    RateLimited,
    RequestTimeout,
    Unauthorized,
)
from consumer.gate import ApiGate, Verdict
from consumer.ld_client import ApiResponse, LdClient, error_for
from consumer.metrics import Metrics
from consumer.retry import RetryPolicy
from consumer.routing import SEGMENT_READ_ROUTE, Route
from consumer.throttle import RateLimiter

log = structlog.get_logger(__name__)


class LookupFailed(Exception):
    def __init__(self, error: ApiError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts  # requests sent for the read


class LookupStopped(Exception):
    """The batch the lookup serves is no longer live: nothing more may be sent for it."""


class KindResolver:
    def __init__(
        self,
        client: LdClient,
        policy: RetryPolicy,
        gate: ApiGate,
        throttle: RateLimiter,
        metrics: Metrics,
        cache: KindCache,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._policy = policy
        self._gate = gate
        self._throttle = throttle
        self._metrics = metrics
        self.cache = cache
        self._rng = rng or random.Random()
        self._clock = clock

    def cached(self, segment: Route) -> SegmentKind | None:
        return self.cache.get(segment.path, self._clock())

    async def kind(
        self, segment: Route, live: Callable[[], bool], *, fresh: bool = False
    ) -> SegmentKind:
        """The kind of the segment whose PATCH route is `segment`: cached, or read (always
        read when `fresh`)."""
        if not fresh:
            found = self.cached(segment)
            if found is not None:
                return found
        kind = await self._read(segment, live)
        previous = self.cache.get(segment.path, self._clock())
        self.cache.put(segment.path, kind, self._clock())
        if (previous is not None and previous != kind) or fresh:
            log.info("segment.kind", path=segment.path, kind=kind.describe(), fresh=fresh)
        return kind

    async def _read(self, segment: Route, live: Callable[[], bool]) -> SegmentKind:
        path = segment.path
        started, closings = time.monotonic(), self._gate.closings
        failures = 0
        attempts = 0
        last_try = False
        while True:
            if not self._gate.is_open:
                await self._gate.wait_open()
            if closings != self._gate.closings:  # a closed gate charges nothing
                started, closings, failures = time.monotonic(), self._gate.closings, 0
            if not live():
                raise LookupStopped
            response, error = await self._get(path)
            attempts += 1
            if isinstance(error, Unauthorized):
                self._gate.unauthorized(error)
                continue
            if error is not None and error.outage:
                self._gate.failed(error, path)
            elif response is not None:
                self._gate.answered()
            if error is None:
                assert response is not None
                kind = SegmentKind.from_segment(response.body)
                if kind is not None:
                    return kind
                error = InvalidResponse(
                    f"HTTP {response.status}: the segment read does not say whether the"
                    " segment is big",
                    status=response.status,
                )
            if not error.retryable:
                raise LookupFailed(error, attempts)
            if closings != self._gate.closings:
                continue
            if not isinstance(error, RateLimited):
                failures += 1
            delay = self._policy.delay(
                error,
                failures=failures,
                conflicts=0,
                elapsed=time.monotonic() - started,
                rng=self._rng,
            )
            if delay is None:
                if error.outage and not last_try:
                    if await self._gate.settle() is Verdict.REOPENED:
                        continue
                    last_try = True
                    continue
                raise LookupFailed(error, attempts)
            self._metrics.retries.labels(reason=error.code.value).inc()
            log.info(
                "ld.retry", path=path, error=error.code.value, delay_s=round(delay, 3), read=True
            )
            await asyncio.sleep(delay)

    async def _get(self, path: str) -> tuple[ApiResponse | None, ApiError | None]:
        permit = await self._throttle.acquire(SEGMENT_READ_ROUTE)
        response: ApiResponse | None = None
        error: ApiError | None = None
        try:
            response = await self._client.get(path)
        except (RequestTimeout, ConnectionFailed) as exc:
            error = exc
        else:
            error = error_for(
                response,
                now_ms=time.time() * 1000,
                rate_limit_default=self._policy.rate_limit_default,
                needs_body=True,
            )
        finally:
            self._throttle.observe(
                SEGMENT_READ_ROUTE, response.headers if response else None, error, permit.seq
            )
        status = (
            str(response.status) if response is not None else (error.code.value if error else "")
        )
        self._metrics.requests.labels(endpoint=SEGMENT_READ_ROUTE, status=status).inc()
        if isinstance(error, RateLimited):
            self._metrics.rate_limited.inc()
            log.warning("ld.rate_limited", path=path, retry_after_s=round(error.retry_after, 3))
        return response, error
