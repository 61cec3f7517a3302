"""How long to wait before trying a request again, and when to give up. Pure, no I/O.

- 429: `Retry-After` seconds if present, else `X-Ratelimit-Reset` (epoch ms) minus now, else
  `X-Ratelimit-Auth-Token-Reset` (a per-token limit's own reset, epoch ms) minus now, never
  negative, else a default (10 s); plus up to `rate_limit_jitter` so that many clients do not
  come back at the same instant. 429s count against the elapsed budget only: being told to wait
  is not a failure of the event.
- 5xx, timeouts, dropped connections: capped exponential backoff with full jitter
  (a uniform draw in [0, min(max_delay, base * 2**n)]).
- 409: the same backoff, at most `conflict_max_retries` times; then the conflict is permanent.
- Budget per event: `max_attempts` failed attempts (429s excluded) and `max_elapsed` seconds
  from the first attempt; past either, the event's outcome is `failed`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from consumer.launchdarkly.errors import ApiError, Charge

# Resets in epoch milliseconds, in the order they are read: the account's and route's window,
# then a per-token limit's, which LaunchDarkly names only in its own header.
RESET_HEADERS = ("X-Ratelimit-Reset", "X-Ratelimit-Auth-Token-Reset")


def rate_limit_wait(headers: Mapping[str, str], now_ms: float, default: float) -> float:
    """Seconds a 429 asks us to wait (contract section 1), the one place this is decided:
    `Retry-After`, else the latest of the `RESET_HEADERS` present (the account's window and a
    per-token limit: a 429 carrying both is not over before both are), else `default`; never
    negative. A header that cannot be read counts as absent."""
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        seconds = _retry_after_seconds(retry_after.strip(), now_ms)
        if seconds is not None:
            return seconds
    resets = [found for name in RESET_HEADERS if (found := _number(headers.get(name))) is not None]
    if resets:
        return max(0.0, (max(resets) - now_ms) / 1000.0)
    return default


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _retry_after_seconds(value: str, now_ms: float) -> float | None:
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:  # the HTTP-date form
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    max_elapsed: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    conflict_max_retries: int = 3
    rate_limit_default: float = 10.0
    rate_limit_jitter: float = 1.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full jitter after the `failures`-th failure (1 for the first)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        return rng.uniform(0.0, ceiling)

    def delay(
        self,
        error: ApiError,
        *,
        failures: int,
        conflicts: int,
        elapsed: float,
        rng: random.Random,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        `failures` counts the failures that charge an attempt so far (`Charge.ATTEMPT`, this one
        included), `conflicts` the 409s so far (this one included).
        """
        if not error.retryable:
            return None
        if error.charge is not Charge.TIME and failures >= self.max_attempts:
            return None
        if error.charge is Charge.CONFLICT and conflicts > self.conflict_max_retries:
            return None
        if error.retry_after is not None:  # a 429: as long as it says
            wait = error.retry_after + rng.uniform(0.0, self.rate_limit_jitter)
        else:
            wait = self.backoff(failures, rng)
        if elapsed + wait > self.max_elapsed:
            return None
        return wait
