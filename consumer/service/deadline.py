"""A moment by which something must end: the budgets of a revoke (CONSUMER_REVOKE_TIMEOUT_MS),
a stop (CONSUMER_SHUTDOWN_TIMEOUT_MS) and a recovery scan. Pure: the clock is passed in
(monotonic seconds, `time.monotonic` unless a test passes its own)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, order=True)
class Deadline:
    at: float  # on the clock's scale
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        """`seconds` from now."""
        return cls(clock() + seconds, clock)

    @classmethod
    def never(cls, clock: Clock = time.monotonic) -> Deadline:
        return cls(math.inf, clock)

    def remaining(self) -> float:
        """Seconds left; 0 once it has passed."""
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at

    def shifted(self, seconds: float) -> Deadline:
        """The same deadline `seconds` later (earlier when negative)."""
        return Deadline(self.at + seconds, self.clock)
