"""Reads a segment's kind (standard or big) from LaunchDarkly, through the kind cache.

First for the whole environment: one list read (`GET /api/v2/segments/{project}/{env}?filter=
unbounded equals true`, paged) names every big segment of it, and every segment it does not
name is standard, all for the cache's lifetime: a stream over many segments costs one read per
environment, not one per segment (the rate limit of the read route is shared with every other
client of the account). The list is read once at a time per environment; every batch that
needs it waits for that one read. When it cannot be read (any error: an older API, a token
without the right, an outage), each segment is read on its own:

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

from consumer.launchdarkly.big_segments import STANDARD, KindCache, SegmentKind
from consumer.launchdarkly.client import ApiResponse, LdClient
from consumer.launchdarkly.decisions import Again, Retry, Settle, decide
from consumer.launchdarkly.errors import ApiError, Charge, InvalidResponse
from consumer.launchdarkly.gate import ApiGate, Verdict
from consumer.launchdarkly.get import throttled_get
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.routing import (
    SEGMENT_LIST_PAGE,
    SEGMENT_LIST_ROUTE,
    SEGMENT_READ_ROUTE,
    Route,
    big_segments_page_path,
    segment_path,
)
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.metrics import Metrics

log = structlog.get_logger(__name__)

MAX_LIST_PAGES = 200  # 10,000 big segments in one environment


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
        # (project, environment) -> when its big segments were listed (monotonic).
        self._listed: dict[tuple[str, str], float] = {}
        # (project, environment) -> when its list could not be read: not tried again for
        # the cache's lifetime (each segment is read on its own meanwhile).
        self._unlisted: dict[tuple[str, str], float] = {}
        self._listing: dict[tuple[str, str], asyncio.Task[bool]] = {}

    def cached(self, segment: Route) -> SegmentKind | None:
        found = self.cache.get(segment.path, self._clock())
        if found is not None:
            return found
        listed = self._listed.get((segment.project_key, segment.environment_key))
        if listed is not None and self._clock() - listed < self.cache.ttl:
            # Listed, and not among the big ones: standard, until the list is read again.
            self.cache.put(segment.path, STANDARD, listed)
            return STANDARD
        return None

    async def _listed_environment(self, segment: Route) -> bool:
        """Whether the environment's big segments are known (listed now, or lately)."""
        environment = (segment.project_key, segment.environment_key)
        now = self._clock()
        if self.cache.ttl <= 0:
            return False  # nothing is kept: a list would be read for every batch
        listed = self._listed.get(environment)
        if listed is not None and now - listed < self.cache.ttl:
            return True
        failed = self._unlisted.get(environment)
        if failed is not None and now - failed < self.cache.ttl:
            return False
        task = self._listing.get(environment)
        if task is None:
            task = asyncio.create_task(self._list(*environment))
            self._listing[environment] = task
            task.add_done_callback(lambda _: self._listing.pop(environment, None))
        # Shielded: a batch stopped while it waits must not cancel the others' read.
        return await asyncio.shield(task)

    async def _list(self, project: str, environment: str) -> bool:
        started = self._clock()
        try:
            listed = await self._read_list(project, environment, started)
        except Exception as exc:  # noqa: BLE001 (any failure: each segment is read instead)
            log.warning(
                "segment.list_failed", project=project, environment=environment, error=repr(exc)
            )
            listed = False
        if not listed:
            self._unlisted[(project, environment)] = started
        return listed

    async def _read_list(self, project: str, environment: str, started: float) -> bool:
        found: dict[str, SegmentKind] = {}
        offset = pages = 0
        while True:
            if not self._gate.is_open:
                return False  # each segment's own read waits for the gate
            response, error = await self._get(
                big_segments_page_path(project, environment, offset), SEGMENT_LIST_ROUTE
            )
            self._gate.report(error, SEGMENT_LIST_ROUTE)
            body = response.body if response is not None and error is None else None
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                log.info(
                    "segment.list_unavailable",
                    project=project,
                    environment=environment,
                    error=error.code.value if error else "unexpected answer",
                )
                return False
            for item in items:
                kind = SegmentKind.from_segment(item)
                key = item.get("key") if isinstance(item, dict) else None
                if kind is None or not kind.big or not isinstance(key, str) or not key:
                    return False  # not what was asked for: trust nothing of it
                found[segment_path(project, environment, key)] = kind
            offset += len(items)
            total = body.get("totalCount") if isinstance(body, dict) else None
            if isinstance(total, int):  # pages may be shorter than asked: the total decides
                if offset >= total or not items:
                    break
            elif len(items) < SEGMENT_LIST_PAGE:
                break
            pages += 1
            if pages >= MAX_LIST_PAGES:
                return False  # an answer that never ends (an offset ignored): trust none of it
        for path, kind in found.items():
            self.cache.put(path, kind, started)
        self._listed[(project, environment)] = started
        log.info("segment.big_listed", project=project, environment=environment, big=len(found))
        return True

    async def kind(
        self, segment: Route, live: Callable[[], bool], *, fresh: bool = False
    ) -> SegmentKind:
        """The kind of the segment whose PATCH route is `segment`: cached, or read (always
        read when `fresh`)."""
        if not fresh:
            found = self.cached(segment)
            if found is None and not live():
                raise LookupStopped  # no read of any kind for a batch that stopped
            if found is None and await self._listed_environment(segment):
                found = self.cached(segment)
            if found is not None:
                return found
            if not live():
                raise LookupStopped
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
            response, error = await self._get(path, SEGMENT_READ_ROUTE)
            attempts += 1
            self._gate.report(error, path)
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
            if error.charge is not Charge.TIME:
                failures += 1  # a read's 409 too: it has no budget of conflicts
            step = decide(
                error,
                self._policy,
                self._rng,
                failures=failures,
                conflicts=0,
                elapsed=time.monotonic() - started,
                closed_meanwhile=closings != self._gate.closings,
                last_try=last_try,
            )
            if isinstance(step, Again):
                continue  # the gate closed: it waits for the gate, charged to nobody
            if isinstance(step, Settle):
                if await self._gate.settle() is Verdict.REOPENED:
                    continue
                last_try = True
                continue
            if not isinstance(step, Retry):  # given up (a single read is never narrowed)
                raise LookupFailed(error, attempts)
            self._metrics.retries.labels(reason=error.code.value).inc()
            log.info(
                "ld.retry",
                path=path,
                error=error.code.value,
                delay_s=round(step.delay, 3),
                read=True,
            )
            await asyncio.sleep(step.delay)

    async def _get(self, path: str, route: str) -> tuple[ApiResponse | None, ApiError | None]:
        return await throttled_get(
            self._client,
            self._throttle,
            path,
            route,
            rate_limit_default=self._policy.rate_limit_default,
            metrics=self._metrics,
        )
