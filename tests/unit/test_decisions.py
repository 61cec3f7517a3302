"""decisions.py: one decision per error, read from what the error declares."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.contract.codes import ErrorCode
from consumer.launchdarkly.decisions import Again, Decision, GiveUp, Narrow, Retry, Settle, decide
from consumer.launchdarkly.errors import (
    ApiError,
    BadRequest,
    Charge,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InternalError,
    InvalidResponse,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
)
from consumer.launchdarkly.retry import RetryPolicy

POLICY = RetryPolicy(
    max_attempts=3,
    max_elapsed=10.0,
    base_delay=0.5,
    max_delay=4.0,
    conflict_max_retries=2,
    rate_limit_jitter=0.5,
)


@dataclass(frozen=True)
class Spent:
    """What a request spent of its budget, and what `decide` is told besides."""

    failures: int = 0
    conflicts: int = 0
    elapsed: float = 0.0
    size: int = 1
    closed_meanwhile: bool = False
    last_try: bool = False
    failing_for: float | None = None

    def decide(self, error: ApiError, seed: int) -> Decision:
        return decide(
            error,
            POLICY,
            random.Random(seed),
            failures=self.failures,
            conflicts=self.conflicts,
            elapsed=self.elapsed,
            size=self.size,
            closed_meanwhile=self.closed_meanwhile,
            last_try=self.last_try,
            failing_for=self.failing_for,
        )


@dataclass(frozen=True)
class RetryWithin:
    """A `Retry` whose delay lies in [low, high]."""

    low: float
    high: float
    renewed: bool = False

    def matches(self, decision: Decision) -> bool:
        return (
            isinstance(decision, Retry)
            and self.low <= decision.delay <= self.high
            and decision.renewed == self.renewed
        )


def server_error() -> ServerError:
    return ServerError("HTTP 503", status=503)


CASES: list[tuple[str, ApiError, Spent, Decision | RetryWithin]] = [
    # The token refused: the gate closes, the request waits for it, whatever was spent.
    ("401", Unauthorized("no", status=401), Spent(), Again()),
    ("401 spent", Unauthorized("no", status=401), Spent(failures=9, elapsed=99.0), Again()),
    ("401 on a batch", Unauthorized("no", status=401), Spent(size=5), Again()),
    # The gate closed while a retryable request was on the wire: charged to nobody.
    ("5xx, gate closed", server_error(), Spent(failures=3, closed_meanwhile=True), Again()),
    (
        "429, gate closed",
        RateLimited("429", retry_after=1.0),
        Spent(closed_meanwhile=True),
        Again(),
    ),
    (
        "404, gate closed",  # not retryable: the closing changes nothing
        NotFound("404", status=404),
        Spent(closed_meanwhile=True),
        GiveUp("rejected", ErrorCode.NOT_FOUND),
    ),
    # 400/422: a batch of several is narrowed down, a single instruction is rejected.
    ("400 on a batch", BadRequest("400", status=400), Spent(size=2), Narrow()),
    ("422 on a batch", BadRequest("422", status=422), Spent(size=7), Narrow()),
    (
        "400 alone",
        BadRequest("400", status=400),
        Spent(),
        GiveUp("rejected", ErrorCode.INVALID_REQUEST),
    ),
    (
        "409 on a batch",
        Conflict("409", status=409),
        Spent(conflicts=1, size=4),
        RetryWithin(0, 0.5),
    ),
    # Retryable within the budget: full jitter, the ceiling doubling per failure.
    ("5xx first", server_error(), Spent(failures=1), RetryWithin(0.0, 0.5)),
    ("5xx second", server_error(), Spent(failures=2), RetryWithin(0.0, 1.0)),
    ("timeout", RequestTimeout("slow"), Spent(failures=1), RetryWithin(0.0, 0.5)),
    ("refused", ConnectionFailed("refused", sent=False), Spent(failures=1), RetryWithin(0.0, 0.5)),
    # Out of budget on an outage-type error: the gate settles; after it, the last try ends it.
    ("5xx out of attempts", server_error(), Spent(failures=3), Settle()),
    ("timeout out of time", RequestTimeout("slow"), Spent(failures=1, elapsed=10.0), Settle()),
    (
        "5xx on the last try",
        server_error(),
        Spent(failures=3, last_try=True),
        GiveUp("failed", ErrorCode.SERVER_ERROR),
    ),
    (
        "dropped on the last try",
        ConnectionFailed("reset"),
        Spent(failures=4, last_try=True),
        GiveUp("failed", ErrorCode.CONNECTION_ERROR),
    ),
    # A 429 waits as long as it says, charged to the time budget only.
    ("429", RateLimited("429", retry_after=2.0), Spent(failures=50), RetryWithin(2.0, 2.5)),
    (
        "429 past the time",
        RateLimited("429", retry_after=2.0),
        Spent(elapsed=8.0),
        GiveUp("failed", ErrorCode.RATE_LIMITED),  # not an outage: no settling
    ),
    # 409: a bounded number of retries, then it is LaunchDarkly's refusal.
    ("409 within", Conflict("409", status=409), Spent(conflicts=2), RetryWithin(0.0, 0.5)),
    (
        "409 past",
        Conflict("409", status=409),
        Spent(conflicts=3),
        GiveUp("rejected", ErrorCode.CONFLICT),
    ),
    # Permanent errors end at once, with their own status and code.
    (
        "403",
        Forbidden("403", status=403),
        Spent(failures=1),
        GiveUp("rejected", ErrorCode.FORBIDDEN),
    ),
    ("404", NotFound("404", status=404), Spent(size=3), GiveUp("rejected", ErrorCode.NOT_FOUND)),
    (
        "418",
        UnexpectedStatus("418", status=418),
        Spent(failures=1),
        GiveUp("rejected", ErrorCode.UNEXPECTED_STATUS),
    ),
    (
        "unreadable 200",
        InvalidResponse("200", status=200),
        Spent(failures=1),
        GiveUp("failed", ErrorCode.INVALID_RESPONSE),
    ),
    ("internal", InternalError("bug"), Spent(), GiveUp("failed", ErrorCode.INTERNAL_ERROR)),
    # A resource failing fast: no backoff retries for what charges an attempt...
    ("failing fast", server_error(), Spent(failures=1, failing_for=5.0), Settle()),
    (
        "failing fast, last try",
        server_error(),
        Spent(failures=1, failing_for=5.0, last_try=True),
        GiveUp("failed", ErrorCode.SERVER_ERROR),
    ),
    # ... until it has failed for longer than the time budget: a whole budget again.
    (
        "failing for long",
        server_error(),
        Spent(failures=1, failing_for=10.5),
        RetryWithin(0.0, 0.5, renewed=True),
    ),
    # Being told to wait, or a conflict, is not the resource failing.
    (
        "429 failing fast",
        RateLimited("429", retry_after=1.0),
        Spent(failing_for=5.0),
        RetryWithin(1.0, 1.5),
    ),
    ("409 failing fast", Conflict("409"), Spent(conflicts=1, failing_for=5.0), RetryWithin(0, 0.5)),
]


@pytest.mark.parametrize(
    ("error", "spent", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_error_gets_one_decision(
    error: ApiError, spent: Spent, expected: Decision | RetryWithin
) -> None:
    for seed in range(20):  # whatever the jitter draws
        decision = spent.decide(error, seed)
        if isinstance(expected, RetryWithin):
            assert expected.matches(decision), decision
        else:
            assert decision == expected


ERRORS: list[Callable[[], ApiError]] = [
    lambda: Unauthorized("401", status=401),
    lambda: RateLimited("429", retry_after=3.0),
    lambda: RateLimited("429", retry_after=0.0),
    lambda: ServerError("500", status=500),
    lambda: ServerError("504", status=504),
    lambda: RequestTimeout("slow"),
    lambda: ConnectionFailed("refused", sent=False),
    lambda: ConnectionFailed("reset"),
    lambda: Conflict("409", status=409),
    lambda: BadRequest("400", status=400),
    lambda: Forbidden("403", status=403),
    lambda: NotFound("404", status=404),
    lambda: UnexpectedStatus("418", status=418),
    lambda: InvalidResponse("200", status=200),
    lambda: InternalError("bug"),
]


def test_what_the_rules_rely_on_holds_for_every_error() -> None:
    """A 429 is the one error that names a wait, and it charges time only; an outage-type
    error is retryable (a read stops at a non-retryable error before it would settle, a write
    after: the same, as long as this holds); what narrows or refuses the token is never
    retried."""
    for make in ERRORS:
        error = make()
        assert (error.retry_after is not None) == (error.charge is Charge.TIME), error
        assert not error.outage or error.retryable, error
        assert not (error.narrows or error.refuses_token) or not error.retryable, error


spent_budgets = st.builds(
    Spent,
    failures=st.integers(0, 12),
    conflicts=st.integers(0, 6),
    elapsed=st.floats(0.0, 20.0),
    size=st.integers(1, 8),
    closed_meanwhile=st.booleans(),
    last_try=st.booleans(),
    failing_for=st.none() | st.floats(0.0, 30.0),
)
seeds = st.integers(0, 2**32)


@given(st.sampled_from(ERRORS), spent_budgets, seeds)
def test_the_rules_hold_for_any_budget(
    make: Callable[[], ApiError], spent: Spent, seed: int
) -> None:
    error = make()
    decision = spent.decide(error, seed)
    assert decision == spent.decide(error, seed)  # pure: the same draw, the same decision
    if error.refuses_token or (error.retryable and spent.closed_meanwhile):
        assert decision == Again()
        return
    assert not isinstance(decision, Again)
    assert isinstance(decision, Narrow) == (error.narrows and spent.size > 1)
    if isinstance(decision, Retry):
        assert error.retryable
        assert decision.delay >= 0.0 and spent.elapsed + decision.delay <= POLICY.max_elapsed
        if error.retry_after is not None:
            assert decision.delay >= error.retry_after
        if error.charge is Charge.ATTEMPT and spent.failing_for is not None:
            # A resource failing fast is retried only once it has failed for long.
            assert decision.renewed and spent.failing_for > POLICY.max_elapsed
        else:
            assert not decision.renewed
    if isinstance(decision, Settle):
        assert error.outage and not spent.last_try
    if isinstance(decision, GiveUp):
        assert (decision.status, decision.code) == (error.final_status, error.code)
        assert not error.outage or spent.last_try


@given(
    st.sampled_from(ERRORS),
    spent_budgets,
    seeds,
    st.sampled_from(["failures", "conflicts", "elapsed"]),
)
def test_spending_more_never_buys_a_retry(
    make: Callable[[], ApiError], spent: Spent, seed: int, more_of: str
) -> None:
    error = make()
    more = replace(spent, **{more_of: getattr(spent, more_of) + 1})
    if not isinstance(spent.decide(error, seed), Retry):
        assert not isinstance(more.decide(error, seed), Retry)
