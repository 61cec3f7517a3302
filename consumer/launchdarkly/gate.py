"""The gate that closes while LaunchDarkly cannot be used: a refused token, or an outage.

Nothing waiting at a closed gate is rejected, failed or dead-lettered, and no retry budget is
charged: the token or the API is wrong for every event alike. The rules:

1. **Closing.** A 401 closes it at once (`unauthorized`). An outage closes it when every
   write over `outage_window` seconds failed with a connection error, a timeout or a 5xx,
   with no answer in between, to more than one URL, one of which worked lately, or with no
   write answered lately at all (`OutageDetector`, pure): a write path that is down while the
   probe's read works is an outage too; resources that fail on every write while others work
   are not (their events end `failed`, and the gate stays open for the rest). The service
   starts closed ("not reached yet") and opens after its first probe, so nothing is taken
   before the API was reached.
2. **While closed.** Fetching is paused (the lifecycle asks `is_open`), `/readyz` says why
   (`reason`), batches wait in `wait_open`, and every batch that waited starts a fresh retry
   budget afterwards (`closings` counts closings for that).
3. **Probing.** While closed, a task of its own (`run`) probes with a cheap authenticated
   read (`GET /api/v2/caller-identity`), with capped exponential backoff and jitter,
   re-reading the token file before each probe; it does not depend on any batch, partition
   or rebalance. The first probe answered 2xx (or 429: the token was accepted) opens the
   gate. One line is logged on closing, one on opening.
4. **A batch out of budget on an outage-type error** (`settle`) does not fail until the
   question "is the API down?" is answered: if another write is answered after that moment,
   the request failed alone and its events are `failed`. If none is by the end of the outage
   window (counted from the first failure with no answer since): when writes to other URLs
   failed too, the API counts as down; when this URL is the only one that was tried, a probe
   decides (answered: the request failed alone; not answered: down). Down means the gate
   closes, and the batch waits for it to open and starts over with a fresh budget.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from consumer.launchdarkly.client import TokenSource
from consumer.launchdarkly.errors import ApiError

log = structlog.get_logger(__name__)


class Closed(enum.Enum):
    """Why the gate is closed (the value is what /readyz and the logs say)."""

    STARTING = "LaunchDarkly not reached yet"
    UNAUTHORIZED = "LaunchDarkly refuses the API token"
    UNAVAILABLE = "LaunchDarkly unavailable: every request failed"


class Verdict(enum.Enum):
    ANSWERING = "answering"  # the API answers others: the failure is this request's own
    REOPENED = "reopened"  # the API was down; it is back: try again with a fresh budget


# How many windows back an answer counts as "this URL works" (rule 1), and how many URLs
# are remembered.
ANSWER_MEMORY_WINDOWS = 10
ANSWER_MEMORY_PATHS = 10_000


@dataclass(slots=True)
class OutageDetector:
    """Rule 1 for outages. Pure: times (monotonic seconds) are passed in.

    A resource that fails on every write (its own fault) must not close the gate for all
    (issue 24); an API that stops answering must. What tells them apart: an outage makes URLs
    fail that were answered a moment ago, while a failing resource's URL never is. So the API
    counts as down when, over the window, every write failed with no answer in between, to
    more than one URL, and either one of the failing URLs was answered within the last
    ANSWER_MEMORY_WINDOWS windows, or no write at all was (the service just started, or the
    outage is long).
    """

    window: float
    first_failure_at: float | None = None  # the first failure since the last answer
    # URLs whose writes failed since the last answer (two are enough to tell).
    paths: set[str] = field(default_factory=set)
    # A failing URL (since the last answer) was answered lately: not a resource of its own.
    known_failing: bool = False
    # URL -> when a write to it was last answered; and when any write was.
    _answered: dict[str, float] = field(default_factory=dict)
    _last_answer: float | None = None

    def answered(self, now: float | None = None, path: str | None = None) -> None:
        self.first_failure_at = None
        self.paths.clear()
        self.known_failing = False
        if now is not None:
            self._last_answer = now
            if path is not None:
                self._answered.pop(path, None)
                self._answered[path] = now
                if len(self._answered) > ANSWER_MEMORY_PATHS:
                    del self._answered[next(iter(self._answered))]

    def failed(self, now: float, path: str) -> bool:
        """Record an outage-type failure of a write to `path`; True when the API counts as
        down (see above)."""
        if self.first_failure_at is None:
            self.first_failure_at = now
        if len(self.paths) < 2:
            self.paths.add(path)
        answered_at = self._answered.get(path)
        if answered_at is not None and now - answered_at < self._memory():
            self.known_failing = True
        return self.window_passed(now) and len(self.paths) > 1 and self.suspect(now)

    def suspect(self, now: float) -> bool:
        """Whether the failures since the last answer point at the API rather than at the
        resources written (the last clause of the rule)."""
        quiet = self._last_answer is None or now - self._last_answer >= self._memory()
        return self.known_failing or quiet

    def window_passed(self, now: float) -> bool:
        return self.first_failure_at is not None and now - self.first_failure_at >= self.window

    def _memory(self) -> float:
        return ANSWER_MEMORY_WINDOWS * self.window


Probe = Callable[[], Awaitable[ApiError | None]]
Sleep = Callable[[float], Awaitable[None]]


class ApiGate:
    def __init__(
        self,
        token: TokenSource,
        probe: Probe,
        *,
        outage_window: float,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        on_change: Callable[[Closed | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`clock` (monotonic seconds) and `sleep` (on that clock) are all the time the gate
        reads or waits for: a test moves them by hand."""
        self._token = token
        self._probe = probe
        self._detector = OutageDetector(outage_window)
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.reason: Closed | None = Closed.STARTING
        self.detail = ""  # the last error seen while closed (status or error code)
        self.closings = 0
        self._closed_at = clock()
        self._opened_at = float("-inf")
        self._open = asyncio.Event()
        self._closed = asyncio.Event()  # the prober's cue
        self._closed.set()
        # Resolved (and replaced) on every answer and state change; a waiter takes the current
        # one with no await after its checks, so it can miss no change.
        self._change: asyncio.Future[None] | None = None
        self._last_answer_at = float("-inf")
        self._last_error: ApiError | None = None

    # -- state --------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.reason is None

    def describe(self) -> str | None:
        """The reason, for /readyz; None while open."""
        if self.reason is None:
            return None
        return f"{self.reason.value} ({self.detail})" if self.detail else self.reason.value

    async def wait_open(self) -> None:
        await self._open.wait()

    def _changed(self) -> asyncio.Future[None]:
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def _pulse(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)

    def _close(self, reason: Closed, error: ApiError | None) -> None:
        self.detail = _detail(error)
        if self.reason is None:
            self.reason = reason
            self.closings += 1
            self._closed_at = self._clock()
            self._open.clear()
            self._closed.set()
            if reason is Closed.UNAUTHORIZED:
                log.error(
                    "ld.unauthorized",
                    message="LaunchDarkly refused the API token; pausing until it is accepted",
                )
            else:
                log.error(
                    "ld.unavailable",
                    message="LaunchDarkly cannot be reached; pausing until it answers",
                    window_s=self._detector.window,
                    error=self.detail,
                )
            self._notify()
        elif self.reason is not reason:
            self.reason = reason
            self._notify()
        self._pulse()

    def _reopen(self) -> None:
        if self.reason is None:
            return
        was, self.reason, self.detail = self.reason, None, ""
        self._detector.answered()  # a new window after the gate was closed
        self._opened_at = self._clock()
        self._closed.clear()
        self._open.set()
        closed_s = round(self._clock() - self._closed_at, 3)
        if was is Closed.UNAUTHORIZED:
            log.info("ld.authorized", closed_s=closed_s)
        elif was is Closed.UNAVAILABLE:
            log.info("ld.available", closed_s=closed_s)
        else:
            log.info("ld.reachable")
        self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change(self.reason)

    # -- what requests report -----------------------------------------------------------------

    def answered(self, path: str | None = None) -> None:
        """The API answered one of the service's writes (to `path`) with something other
        than 401 or 5xx (a 4xx, a 409, a 429 included)."""
        now = self._clock()
        self._last_answer_at = now
        self._detector.answered(now, path)
        self._pulse()

    def report(self, error: ApiError | None, path: str) -> None:
        """What one request to `path` says about the API: a refused token closes the gate,
        an outage-type failure counts towards closing it (rule 1), anything else is an
        answer (`error` None: a 2xx)."""
        if error is not None and error.refuses_token:
            self.unauthorized(error)
        elif error is not None and error.outage:
            self.failed(error, path)
        else:
            self.answered(path)

    def unauthorized(self, error: ApiError | None = None) -> None:
        self._close(Closed.UNAUTHORIZED, error)

    def failed(self, error: ApiError, path: str) -> None:
        """An outage-type failure (no answer, or a 5xx) of a write to `path`."""
        self._last_error = error
        if self._detector.failed(self._clock(), path) and self.reason is None:
            self._close(Closed.UNAVAILABLE, error)

    def answered_since(self, moment: float) -> bool:
        return self._last_answer_at >= moment

    async def settle(self) -> Verdict:
        """Rule 4: wait until it is known whether the API answers other writes, or is down."""
        since = self._clock()
        closings = self.closings
        while True:
            if self.answered_since(since):
                return Verdict.ANSWERING
            if self.closings != closings or not self.is_open:
                await self.wait_open()
                return Verdict.REOPENED
            first = self._detector.first_failure_at
            remaining = (since if first is None else first) + self._detector.window - self._clock()
            if remaining <= 0:
                detector = self._detector
                if len(detector.paths) > 1 and detector.suspect(self._clock()):
                    # Other URLs fail too, some that worked lately, and nothing answers.
                    self._close(Closed.UNAVAILABLE, self._last_error)
                else:  # only this URL was tried: does the API answer at all?
                    error = await self._probe_once()
                    if self.closings == closings and (error is None or not error.outage):
                        return Verdict.ANSWERING  # it does: this request failed alone
                continue
            await self._until_change(remaining)

    async def _until_change(self, seconds: float) -> None:
        """Until the next change (an answer, a closing, an opening), or `seconds` passed."""
        change = self._changed()  # shared by every waiter: never cancelled by one of them
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((change, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    # -- the prober -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe while closed; never returns (cancel it)."""
        failures = 0  # probes in a row not answered, and closings soon after an opening
        seen = self.closings
        while True:
            await self._closed.wait()
            if self.closings != seen:  # a new closing
                seen = self.closings
                if self._clock() - self._opened_at < self._max_delay:
                    # Closed again soon after it opened (writes refused while the probe's
                    # read is answered, say): keep backing off rather than flap.
                    failures += 1
                    await self._sleep(self._backoff(failures))
                else:
                    failures = 0
            if self._token.refresh():
                log.info("ld.token_reloaded")
            error = await self._probe_once()
            if self.is_open:
                continue
            if error is not None and error.retry_after is not None:  # a 429: as it says
                delay = error.retry_after + self._rng.uniform(0, self._base_delay)
            else:
                failures += 1
                delay = self._backoff(failures)
            log.info(
                "ld.probe",
                failures=failures,
                closed=self.reason.name.lower() if self.reason else None,
                error=_detail(error),
                next_in_s=round(delay, 2),
            )
            await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def probe_now(self) -> ApiError | None:
        """One probe at once, its answer applied to the gate (the prober's step)."""
        return await self._probe_once()

    async def _probe_once(self) -> ApiError | None:
        error = await self._probe()
        if error is None or error.retry_after is not None:
            # A 429 comes after the token check: the API is up and takes the token.
            self._reopen()
        elif error.refuses_token:
            self.unauthorized(error)
        else:
            # No answer, a 5xx; or answered, but not 2xx (a proxy's 404 for a wrong
            # LD_BASE_URL path, a 403): the API is not usable as configured; stay closed and
            # say what it answered.
            self._close(Closed.UNAVAILABLE, error)
        self._pulse()
        return error


def _detail(error: ApiError | None) -> str:
    if error is None:
        return ""
    return f"HTTP {error.status}" if error.status is not None else error.code.value
