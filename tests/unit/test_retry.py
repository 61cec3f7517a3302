import random

import pytest

from consumer.launchdarkly.client import RATE_LIMIT_HEADERS, ApiResponse, error_for
from consumer.launchdarkly.errors import (
    BadRequest,
    Conflict,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from consumer.launchdarkly.retry import RetryPolicy, rate_limit_wait

NOW_MS = 1_800_000_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "3", "X-Ratelimit-Reset": str(NOW_MS + 9000)}, 3.0),
        ({"X-Ratelimit-Reset": str(NOW_MS + 2500)}, 2.5),
        ({"X-Ratelimit-Reset": str(NOW_MS - 5000)}, 0.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "soon", "X-Ratelimit-Reset": str(NOW_MS + 1000)}, 1.0),
        ({"X-Ratelimit-Reset": "garbage"}, 10.0),
        ({}, 10.0),
        # A per-token limit names its reset only in its own header.
        ({"X-Ratelimit-Auth-Token-Reset": str(NOW_MS + 4000)}, 4.0),
        ({"X-Ratelimit-Auth-Token-Reset": str(NOW_MS - 4000)}, 0.0),
        ({"Retry-After": "1", "X-Ratelimit-Auth-Token-Reset": str(NOW_MS + 4000)}, 1.0),
        (
            {
                "X-Ratelimit-Reset": str(NOW_MS + 2000),
                "X-Ratelimit-Auth-Token-Reset": str(NOW_MS + 4000),
            },
            4.0,  # both limits: the later reset
        ),
        (
            {"X-Ratelimit-Reset": "garbage", "X-Ratelimit-Auth-Token-Reset": str(NOW_MS + 3000)},
            3.0,
        ),
        ({"X-Ratelimit-Auth-Token-Reset": "inf"}, 10.0),
        ({"Retry-After": "nan", "X-Ratelimit-Auth-Token-Reset": str(NOW_MS + 500)}, 0.5),
    ],
)
def test_rate_limit_wait(headers: dict[str, str], expected: float) -> None:
    assert rate_limit_wait(headers, NOW_MS, 10.0) == pytest.approx(expected)


def test_a_per_token_429_becomes_a_wait_for_its_reset() -> None:
    """The header survives the client (it keeps only the headers it names) and the 429 waits
    for the reset it names, not the default."""
    reset = NOW_MS + 2500
    assert "X-Ratelimit-Auth-Token-Reset" in RATE_LIMIT_HEADERS
    response = ApiResponse(429, {"X-Ratelimit-Auth-Token-Reset": str(reset)}, b"{}")
    error = error_for(response, now_ms=NOW_MS, rate_limit_default=10.0)
    assert isinstance(error, RateLimited) and error.retry_after == pytest.approx(2.5)


def test_retry_after_http_date() -> None:
    headers = {"Retry-After": "Fri, 15 Jan 2027 08:00:05 GMT"}
    now_ms = 1_800_000_000_000.0  # 2027-01-15T08:00:00Z
    assert rate_limit_wait(headers, now_ms, 10.0) == pytest.approx(5.0)


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)]:
        draws = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8  # spread over the whole range


def test_budget_of_attempts_and_time() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=10.0, base_delay=0.1, max_delay=0.1)
    rng = random.Random(0)
    error = ServerError("503", status=503)
    assert policy.delay(error, failures=2, conflicts=0, elapsed=0.0, rng=rng) is not None
    assert policy.delay(error, failures=3, conflicts=0, elapsed=0.0, rng=rng) is None
    assert policy.delay(RequestTimeout("t"), failures=1, conflicts=0, elapsed=9.95, rng=rng) is None


def test_rate_limits_wait_as_told_and_count_only_against_time() -> None:
    policy = RetryPolicy(max_attempts=1, max_elapsed=60.0, rate_limit_jitter=0.5)
    rng = random.Random(0)
    error = RateLimited("429", retry_after=2.0)
    delay = policy.delay(error, failures=5, conflicts=0, elapsed=0.0, rng=rng)
    assert delay is not None and 2.0 <= delay <= 2.5
    assert policy.delay(error, failures=0, conflicts=0, elapsed=59.0, rng=rng) is None


def test_conflicts_are_bounded() -> None:
    policy = RetryPolicy(conflict_max_retries=2)
    rng = random.Random(0)
    error = Conflict("409", status=409)
    assert policy.delay(error, failures=0, conflicts=2, elapsed=0.0, rng=rng) is not None
    assert policy.delay(error, failures=0, conflicts=3, elapsed=0.0, rng=rng) is None


def test_permanent_errors_are_not_retried() -> None:
    policy = RetryPolicy()
    assert (
        policy.delay(
            BadRequest("400", status=400), failures=1, conflicts=0, elapsed=0.0, rng=random.Random()
        )
        is None
    )
