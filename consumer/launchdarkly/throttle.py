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
- a 429 blocks every request until its reset: the answer does not say which budget ran out;
- a budget other clients spend too (other members of the group, other tools on the account)
  is paced: when an answer shows more of the window used than our own requests explain, the
  budget is *shared* for the next few windows. A shared budget is spent no faster than an even
  spread over the window allows (plus a small burst), keeps one unit back at its end, and a
  new window starts with that burst rather than the whole last window's size: each client
  only learns what the others spent from its own answers, and without this every client of
  the account spends the whole budget at each reset and most of them get 429s.

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

from consumer.launchdarkly.errors import ApiError

GUARD_MS = 100.0  # lands just after the reset even with a little clock skew
JITTER_MS = 100.0
ANSWER_WAIT_MS = 50.0
SHARED_WINDOWS = 3  # a budget seen shared stays paced this many windows after the last sign


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
    # -- sharing: who else spends this budget ------------------------------------------------------
    window_ms: float = 0.0  # a window's length: the longest `reset - now` an answer showed
    latest_reset_ms: float | None = None  # the newest window any answer showed (kept)
    answers_in_window: int = 0  # our requests answered in that window
    shared_until_ms: float = 0.0  # others were seen spending it: paced until then

    def shared(self, now_ms: float) -> bool:
        return now_ms < self.shared_until_ms

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
            # A new window: presumably as large as the last one, until an answer says; a
            # shared one only by its burst: the others start spending it too.
            shared = self.shared(now_ms) and self.capacity is not None
            self.remaining = self._burst() if shared else self.capacity
            self.reset_at_ms = None
            self.measured = False
            if self.remaining is not None:
                self.remaining -= len(self.in_flight)
                if self.remaining <= 0:
                    self.remaining = 1  # let one go and ask: the capacity is only a guess
        return self._pace_ms(now_ms)

    def left(self, now_ms: float) -> int | None:
        """Units this budget can still give in its current window without waiting (None: not
        known yet). A window past its reset counts as a new one of the last one's size."""
        if self.blocked_until_ms > now_ms:
            return 0
        if self.reset_at_ms is not None and now_ms >= self.reset_at_ms + GUARD_MS:
            if self.capacity is None:
                return None
            return max(0, self.capacity - len(self.in_flight))
        if self.remaining is None:
            return None
        return max(0, self.remaining)

    def ends_in_ms(self, now_ms: float) -> float | None:
        """Milliseconds until the current window resets (None: not known). Past the last
        reset an answer showed, windows are taken to follow on at the longest length seen."""
        reset = self.reset_at_ms if self.reset_at_ms is not None else self.latest_reset_ms
        if reset is None:
            return None
        if reset <= now_ms:
            if self.window_ms <= 0:
                return None
            reset += (1 + (now_ms - reset) // self.window_ms) * self.window_ms
        return reset - now_ms

    def _burst(self) -> int:
        return max(1, (self.capacity or 0) // 10)

    def _pace_ms(self, now_ms: float) -> float:
        """How long a shared budget holds the next request back (0 when it is not shared).

        Spending one unit must leave at least what an even spread over the rest of the
        window needs (less a burst), and never the last unit: another client's request may
        be on its way to it."""
        if (
            not self.shared(now_ms)
            or not self.measured
            or self.remaining is None
            or self.reset_at_ms is None
            or self.capacity is None
            or self.window_ms <= 0
        ):
            return 0.0
        time_left = self.reset_at_ms - now_ms
        if time_left <= 0:
            return 0.0
        after = self.remaining - 1
        if after < 1:
            return time_left + GUARD_MS
        burst = self._burst()
        line = self.capacity * time_left / self.window_ms - burst
        if after >= line:
            return 0.0
        # The line falls to `after` when this much of the window is left:
        return max(0.0, time_left - (after + burst) * self.window_ms / self.capacity)

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

    def update(
        self,
        seq: int | None,
        remaining: str | None,
        reset: str | None,
        now_ms: float,
        *,
        limited: bool = False,
    ) -> None:
        """The answer to request `seq` (None: the oldest in flight) said what is left.

        The server counted every request that reached it before this one, so only those
        sent after it and still unanswered are taken off its number. Within one window the
        lower of two answers wins: they can come back out of order; an answer from a window
        already over changes nothing. A 429's numbers (`limited`) describe the block it
        imposes (`RateLimiter.observe`), not the window, and are not read here.
        """
        if seq is None:
            seq = min(self.in_flight, default=0)
        self.in_flight.discard(seq)
        self.answered = True
        if remaining is None or limited:
            self.answers_in_window += 1  # it may have been counted: ours, not somebody else's
            return
        try:
            told = int(remaining)
            reset_at = float(reset) if reset is not None else None
        except ValueError:
            return
        if (
            reset_at is not None
            and self.latest_reset_ms is not None
            and reset_at < self.latest_reset_ms
        ):
            return  # late, from a window already over
        left = told - sum(1 for other in self.in_flight if other > seq)
        same_window = reset_at is not None and reset_at == self.reset_at_ms
        if same_window and self.measured and self.remaining is not None:
            left = min(left, self.remaining)
        self.remaining = left
        self.reset_at_ms = reset_at
        self.measured = True
        self.capacity = max(self.capacity or 0, told + 1)
        if reset_at is not None:
            self._count_others(told, reset_at, now_ms)

    def _count_others(self, told: int, reset_at: float, now_ms: float) -> None:
        """Mark the budget shared when the server counted more of this window than all of our
        own requests could be: those answered in it and every one still on the wire (a
        lower bound on the others', whatever the order the server saw them in)."""
        self.window_ms = max(self.window_ms, reset_at - now_ms)
        if self.latest_reset_ms is None or reset_at > self.latest_reset_ms:
            self.latest_reset_ms = reset_at
            self.answers_in_window = 0
        self.answers_in_window += 1
        assert self.capacity is not None
        others = (self.capacity - told) - self.answers_in_window - len(self.in_flight)
        # Two, not one: a margin for a request of ours the server counted that we cannot
        # place (an answer lost on the way back).
        if others >= 2:
            self.shared_until_ms = now_ms + SHARED_WINDOWS * self.window_ms


class Window(NamedTuple):
    left: int | None  # requests the budgets can still take in this window (None: not known)
    ends_in: float | None  # seconds until it resets (None: not known)
    in_flight: int = 0  # requests of ours on the route not answered yet


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

    def window(self, route: str, now_ms: float) -> Window:
        """What a request on `route` can still have in this window, when the window ends, and
        our requests on the wire against the budget that binds (the lower of the account's
        and the route's)."""
        budget = self._route(route)
        binding = [
            (left, len(b.in_flight))
            for b in (self._global, budget)
            if (left := b.left(now_ms)) is not None
        ]
        left, in_flight = min(binding, default=(None, len(budget.in_flight)))
        ends_in = budget.ends_in_ms(now_ms)
        return Window(left, None if ends_in is None else ends_in / 1000, in_flight)

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
        now_ms = self._clock_ms()
        limited = error is not None and error.retry_after is not None
        for budget, name in (
            (self._global, "X-Ratelimit-Global-Remaining"),
            (self._route(route), "X-Ratelimit-Route-Remaining"),
        ):
            budget.update(seq, headers.get(name), reset, now_ms, limited=limited)
        if error is not None and error.retry_after is not None:
            until = self._clock_ms() + error.retry_after * 1000 + GUARD_MS
            self._global.blocked_until_ms = max(self._global.blocked_until_ms, until)
