"""What to do about one failed LaunchDarkly request: the one place it is decided. Pure, no I/O.

A write (sender.py) and a segment kind read (segment_kinds.py) ask `decide` after every error;
it reads only what the error declares (errors.py), never its class. In this order:

1. `Again`: send the same request again, charging nothing, once the API gate is open: the
   token was refused (`refuses_token`: the gate closed), or the gate closed while a retryable
   request was on the wire (a closed gate charges nobody, gate.py).
2. `Narrow`: a request of several instructions refused for what it holds (`narrows`, a 400 or
   422) is split in halves to find the instructions that fail alone.
3. `Retry(delay)`: retryable, and the budget (retry.py: attempts, conflicts, time) allows one
   more try after `delay` seconds. Not for a resource failing fast (sender.py): a failure that
   charges an attempt is not retried while its resource has been failing for no longer than
   the time budget; past that, the retry goes ahead and the resource is `renewed` (a whole
   budget again).
4. `Settle`: out of budget on an outage-type error (`outage`), and not on the last try yet:
   the gate settles whether the API is down (the request starts over once it is back) or
   answers others (one last try).
5. `GiveUp(status, code)`: the error is pinned on the request's instructions, with its
   `final_status` and `code`.

Two things are read off the error before any decision, whatever it is: what the answer tells
the gate (`ApiGate.report`), and `unknown_outcome` (the resource is held until what was sent
may have landed, sender.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from consumer.contract.codes import ErrorCode, FinalStatus
from consumer.launchdarkly.errors import ApiError, Charge
from consumer.launchdarkly.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class Again:
    pass


@dataclass(frozen=True, slots=True)
class Narrow:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    # The resource was failing fast for longer than the time budget: it no longer is.
    renewed: bool = False


@dataclass(frozen=True, slots=True)
class Settle:
    pass


@dataclass(frozen=True, slots=True)
class GiveUp:
    status: FinalStatus
    code: ErrorCode


Decision = Again | Narrow | Retry | Settle | GiveUp


def decide(
    error: ApiError,
    policy: RetryPolicy,
    rng: random.Random,
    *,
    failures: int,
    conflicts: int,
    elapsed: float,
    size: int = 1,
    closed_meanwhile: bool = False,
    last_try: bool = False,
    failing_for: float | None = None,
) -> Decision:
    """`failures`, `conflicts`, `elapsed`: what the request spent of its budget, this error
    included (`RetryPolicy.delay`); `size`: its instructions; `closed_meanwhile`: the gate
    closed since its budget started; `last_try`: the gate said others are answered after
    the budget ran out; `failing_for`: seconds since its resource started failing fast, None
    when it does not."""
    if error.refuses_token or (error.retryable and closed_meanwhile):
        return Again()
    if error.narrows and size > 1:
        return Narrow()
    delay = policy.delay(error, failures=failures, conflicts=conflicts, elapsed=elapsed, rng=rng)
    if delay is not None and failing_for is not None and error.charge is Charge.ATTEMPT:
        if failing_for > policy.max_elapsed:
            return Retry(delay, renewed=True)
        delay = None  # failing fast: no backoff retries
    if delay is not None:
        return Retry(delay)
    if error.outage and not last_try:
        return Settle()
    return GiveUp(error.final_status, error.code)
