"""Holding requests back before LaunchDarkly's rate limits answer 429.

Two budgets are read from every response: the account's (`X-Ratelimit-Global-Remaining`) and
the route's (`X-Ratelimit-Route-Remaining`, one per endpoint), each until `X-Ratelimit-Reset`
(epoch milliseconds). They are shared with every other client of the account, so the server's
numbers win over any local count:

- a request takes one unit of each known budget before it goes (`acquire`); when a budget is
  spent, `acquire` waits until its reset (plus a small guard and jitter), so the requests of all
  in-flight batches together never run past it;
- a response sets the budget to what the server says, less the requests sent after it and
  still in flight (the server had not seen those yet);
- a 429 blocks every request until its reset: the answer does not say which budget ran out.

`delay` and `observe` are pure (time is passed in); `acquire` adds the sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from consumer.errors import ApiError, RateLimited

GUARD_MS = 100.0  # lands just after the reset even with a little clock skew
JITTER_MS = 100.0
ANSWER_WAIT_MS = 50.0


@dataclass(slots=True)
class Budget:
    remaining: int | None = None
    reset_at_ms: float | None = None
    blocked_until_ms: float = 0.0
    # Sequence numbers of the requests on the wire that took a unit of this budget.
    in_flight: set[int] = field(default_factory=set)
    # A full window's budget, as far as the answers showed; a new window starts from it, so
    # the first requests after a reset do not rush past a limit lower than the concurrency.
    capacity: int | None = None
    # `remaining` came from an answer in the current window (not from `capacity`).
    measured: bool = False
    # Any answer came back (with or without rate-limit headers).
    answered: bool = False

    def delay_ms(self, now_ms: float) -> float:
        if self.blocked_until_ms > now_ms:
            return self.blocked_until_ms - now_ms
        if not self.answered and self.in_flight:
            return ANSWER_WAIT_MS  # the very first request finds out what the budget is

        if self.remaining is not None and self.remaining <= 0:
            if self.reset_at_ms is not None and self.reset_at_ms + GUARD_MS > now_ms:
                return self.reset_at_ms + GUARD_MS - now_ms
            if not self.measured and self.in_flight:
                return ANSWER_WAIT_MS  # a guessed budget is spent: the answers will tell
            # A new window: presumably as large as the last one, until an answer says.
            self.remaining = self.capacity
            self.reset_at_ms = None
            self.measured = False
            if self.remaining is not None:
                self.remaining -= len(self.in_flight)
                if self.remaining <= 0:
                    self.remaining = 1  # let one go and ask: the capacity is only a guess
        return 0.0

    def take(self, seq: int) -> None:
        self.in_flight.add(seq)
        if self.remaining is not None:
            self.remaining -= 1

    def give_back(self, seq: int) -> None:
        """Request `seq` took its unit and was never sent: the server did not count it."""
        if seq in self.in_flight:
            self.in_flight.discard(seq)
            if self.remaining is not None:
                self.remaining += 1

    def update(self, seq: int | None, remaining: str | None, reset: str | None) -> None:
        """The answer to request `seq` (None: the oldest in flight) said what is left.

        The server counted every request that reached it before this one, so only those
        sent after it and still unanswered are taken off its number. Within one window the
        lower of two answers wins: they can come back out of order.
        """
        if seq is None:
            seq = min(self.in_flight, default=0)
        self.in_flight.discard(seq)
        self.answered = True
        if remaining is None:
            return
        try:
            told = int(remaining)
            reset_at = float(reset) if reset is not None else None
        except ValueError:
            return
        left = told - sum(1 for other in self.in_flight if other > seq)
        same_window = reset_at is not None and reset_at == self.reset_at_ms
        if same_window and self.measured and self.remaining is not None:
            left = min(left, self.remaining)
        self.remaining = left
        self.reset_at_ms = reset_at
        self.measured = True
        self.capacity = max(self.capacity or 0, told + 1)


class Permit(NamedTuple):
    seq: int
    waited: float  # seconds


class RateLimiter:
    def __init__(
        self,
        *,
        clock_ms: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time() * 1000)
        self._rng = rng or random.Random()
        self._global = Budget()
        self._routes: dict[str, Budget] = {}
        self.waits = 0
        self._seq = itertools.count(1)

    def _route(self, route: str) -> Budget:
        return self._routes.setdefault(route, Budget())

    def delay(self, route: str, now_ms: float) -> float:
        """Milliseconds to wait before a request on `route` may go (0: now)."""
        return max(self._global.delay_ms(now_ms), self._route(route).delay_ms(now_ms))

    def take(self, route: str) -> int:
        """Take a unit of each budget for a request about to go; returns its sequence number."""
        seq = next(self._seq)
        self._global.take(seq)
        self._route(route).take(seq)
        return seq

    def release(self, route: str, seq: int) -> None:
        """Give back the unit of a request that was never sent (its batch stopped first)."""
        self._global.give_back(seq)
        self._route(route).give_back(seq)

    async def acquire(self, route: str) -> Permit:
        """Wait until a request on `route` may go and take its unit."""
        waited = 0.0
        while True:
            wait_ms = self.delay(route, self._clock_ms())
            if wait_ms <= 0:
                return Permit(self.take(route), waited)
            wait = (wait_ms + self._rng.uniform(0, JITTER_MS)) / 1000
            self.waits += 1
            waited += wait
            await asyncio.sleep(wait)

    def observe(
        self,
        route: str,
        headers: Mapping[str, str] | None,
        error: ApiError | None,
        seq: int | None = None,
    ) -> None:
        """Account for the answer to request `seq` (from `acquire`; headers None: no answer)."""
        headers = headers or {}
        reset = headers.get("X-Ratelimit-Reset")
        self._global.update(seq, headers.get("X-Ratelimit-Global-Remaining"), reset)
        self._route(route).update(seq, headers.get("X-Ratelimit-Route-Remaining"), reset)
        if isinstance(error, RateLimited):
            until = self._clock_ms() + error.retry_after * 1000 + GUARD_MS
            self._global.blocked_until_ms = max(self._global.blocked_until_ms, until)
