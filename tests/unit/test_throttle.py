import asyncio

import pytest

from consumer.launchdarkly.errors import RateLimited, ServerError
from consumer.launchdarkly.throttle import GUARD_MS, RateLimiter

ROUTE, OTHER = "segment-targets", "flag-expiring-targets"
NOW = 1_000_000.0


def headers(global_left: int | None, route_left: int | None, reset: float) -> dict[str, str]:
    found = {"X-Ratelimit-Reset": str(reset)}
    if global_left is not None:
        found["X-Ratelimit-Global-Remaining"] = str(global_left)
    if route_left is not None:
        found["X-Ratelimit-Route-Remaining"] = str(route_left)
    return found


def test_unknown_budgets_do_not_hold_back() -> None:
    limiter = RateLimiter()
    assert limiter.delay(ROUTE, NOW) == 0


def test_a_spent_route_budget_waits_for_its_reset_only_on_that_route() -> None:
    limiter = RateLimiter()
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(100, 1, NOW + 5_000), None)
    assert limiter.delay(ROUTE, NOW) == 0  # one left
    limiter.take(ROUTE)
    assert limiter.delay(ROUTE, NOW) == pytest.approx(5_000 + GUARD_MS)
    assert limiter.delay(OTHER, NOW) == 0
    assert limiter.delay(ROUTE, NOW + 5_000 + GUARD_MS) == 0  # a new window


def test_the_global_budget_holds_back_every_route() -> None:
    limiter = RateLimiter()
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(0, 50, NOW + 2_000), None)
    assert limiter.delay(OTHER, NOW) == pytest.approx(2_000 + GUARD_MS)


def test_requests_in_flight_count_against_what_the_server_says() -> None:
    limiter = RateLimiter()
    for _ in range(3):
        limiter.take(ROUTE)
    # The server counted the first one; the other two may not be in its number yet.
    limiter.observe(ROUTE, headers(None, 2, NOW + 1_000), None)
    assert limiter.delay(ROUTE, NOW) > 0


def test_a_429_blocks_everything_until_its_reset() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(5, 5, NOW + 9_000), RateLimited("429", retry_after=3.0))
    assert limiter.delay(OTHER, NOW) == pytest.approx(3_000 + GUARD_MS)
    assert limiter.delay(ROUTE, NOW + 3_000 + GUARD_MS) == 0


def test_no_answer_gives_the_unit_back() -> None:
    limiter = RateLimiter()
    limiter.take(ROUTE)
    limiter.observe(ROUTE, None, ServerError("dropped"))
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(None, 1, NOW + 1_000), None)
    assert limiter.delay(ROUTE, NOW) == 0  # 1 left and nothing else in flight


async def test_acquire_sleeps_until_the_reset() -> None:
    start = asyncio.get_running_loop().time()
    clock = [NOW]
    limiter = RateLimiter(
        clock_ms=lambda: clock[0] + (asyncio.get_running_loop().time() - start) * 1000
    )
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(None, 0, NOW + 150), None)
    await limiter.acquire(ROUTE)
    waited = asyncio.get_running_loop().time() - start
    assert waited >= 0.15 + GUARD_MS / 1000 - 0.01
    assert limiter.waits == 1


def test_only_requests_sent_after_the_answered_one_are_taken_off() -> None:
    limiter = RateLimiter()
    first, second, third = (limiter.take(ROUTE) for _ in range(3))
    # The server saw `first` and `second` before answering `second`: 2 of 4 left; only
    # `third` may be missing from its count.
    limiter.observe(ROUTE, headers(None, 2, NOW + 1_000), None, second)
    assert limiter.delay(ROUTE, NOW) == 0
    limiter.take(ROUTE)  # 1 - 1 = 0 left
    assert limiter.delay(ROUTE, NOW) > 0
    # A late answer to `first` cannot raise the estimate within the same window...
    limiter.observe(ROUTE, headers(None, 3, NOW + 1_000), None, first)
    assert limiter.delay(ROUTE, NOW) > 0
    # ...but a new window starts over from what the server says.
    limiter.observe(ROUTE, headers(None, 10, NOW + 11_000), None, third)
    assert limiter.delay(ROUTE, NOW) == 0


def test_a_new_window_starts_from_the_last_windows_size() -> None:
    limiter = RateLimiter()
    seqs = [limiter.take(ROUTE) for _ in range(3)]
    for seq, told in zip(seqs, (2, 1, 0), strict=True):  # a window of 3 requests, all used
        limiter.observe(ROUTE, headers(None, told, NOW + 1_000), None, seq)
    assert limiter.delay(ROUTE, NOW) > 0
    after = NOW + 1_000 + GUARD_MS
    # The window reset: three may go before any answer, not an unbounded burst.
    for _ in range(3):
        assert limiter.delay(ROUTE, after) == 0
        limiter.take(ROUTE)
    assert limiter.delay(ROUTE, after) > 0


def test_the_first_request_learns_the_budget_before_others_go() -> None:
    limiter = RateLimiter()
    first = limiter.take(ROUTE)
    assert limiter.delay(ROUTE, NOW) > 0  # no answer yet: no burst into an unknown limit
    limiter.observe(ROUTE, None, None, first)  # an answer without rate-limit headers
    assert limiter.delay(ROUTE, NOW) == 0
    limiter.take(ROUTE)
    assert limiter.delay(ROUTE, NOW) == 0  # from then on, nothing to wait for


# -- budgets shared with other clients -------------------------------------------------------


def _alone_for_a_window(limiter: RateLimiter, clock: list[float], limit: int) -> None:
    """One request answered first in its window: the limit is learnt, nobody else seen."""
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(None, limit - 1, clock[0] + 10_000), None)


def test_a_budget_only_we_spend_is_not_paced() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    _alone_for_a_window(limiter, clock, 20)
    for n in range(18):  # the rest of the window at once, answers saying what we spent
        assert limiter.delay(ROUTE, clock[0]) == 0
        limiter.take(ROUTE)
        limiter.observe(ROUTE, headers(None, 18 - n, NOW + 10_000), None)
    assert limiter.delay(ROUTE, clock[0]) == 0  # the last unit too
    limiter.take(ROUTE)
    assert limiter.delay(ROUTE, clock[0]) > 9_000  # spent: until the reset


def test_a_budget_others_spend_too_is_spread_over_its_window() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    _alone_for_a_window(limiter, clock, 20)
    limiter.take(ROUTE)
    # 20 - 1 - 1 of ours = 18 expected; 14 means somebody else sent 4.
    limiter.observe(ROUTE, headers(None, 14, NOW + 10_000), None)
    sent = 0
    while limiter.delay(ROUTE, clock[0]) == 0:
        limiter.take(ROUTE)
        sent += 1
    # With 14 left and 10 s to go the spread allows 14 - 1 - (20 - 2) < 0: none until it falls.
    assert sent == 0
    wait = limiter.delay(ROUTE, clock[0])
    assert 0 < wait < 10_000
    clock[0] += wait
    assert limiter.delay(ROUTE, clock[0]) == 0


def test_a_shared_budget_keeps_its_last_unit_and_starts_each_window_with_a_burst() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    _alone_for_a_window(limiter, clock, 20)
    clock[0] = NOW + 9_900  # the end of the window
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(None, 2, NOW + 10_000), None)  # others spent 16
    assert limiter.delay(ROUTE, clock[0]) == 0
    limiter.take(ROUTE)  # 1 left: kept back
    assert limiter.delay(ROUTE, clock[0]) == pytest.approx(100 + GUARD_MS)
    clock[0] = NOW + 10_000 + GUARD_MS  # a new window
    sent = 0
    while limiter.delay(ROUTE, clock[0]) == 0:
        limiter.take(ROUTE)
        sent += 1
    assert sent == 2  # the burst (a tenth of 20), then the answers tell what is left


class _Server:
    """One fixed-window budget counting each request in the window it arrives in."""

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity, self.window, self.reset, self.used = capacity, window, window, 0

    def arrive(self, at: float) -> dict[str, str]:
        while at >= self.reset:
            self.reset += self.window
            self.used = 0
        self.used += 1
        return headers(None, self.capacity - self.used, self.reset)


def test_our_own_requests_straddling_a_reset_do_not_look_like_another_client() -> None:
    clock = [0.0]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    server = _Server(200, 10_000.0)
    seq = limiter.take(ROUTE)
    limiter.observe(ROUTE, server.arrive(60), None, seq)
    # Two leave 30 ms before the reset and arrive 30 ms after it: counted in the new window.
    clock[0] = 9_970
    pair = [(limiter.take(ROUTE), server.arrive(10_030)) for _ in range(2)]
    clock[0] = 10_090
    for seq, answer in pair:
        limiter.observe(ROUTE, answer, None, seq)
    sent = 0
    while limiter.delay(ROUTE, clock[0]) == 0 and sent < 300:
        seq = limiter.take(ROUTE)
        limiter.observe(ROUTE, server.arrive(clock[0]), None, seq)
        sent += 1
    assert sent == 198  # the whole window, unpaced, and not one request past it


def test_a_late_answer_from_the_last_window_changes_nothing() -> None:
    clock = [0.0]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    slow = limiter.take(ROUTE)  # answered after the next window's answers
    for left in (8, 7):
        seq = limiter.take(ROUTE)
        limiter.observe(ROUTE, headers(None, left, 10_000), None, seq)
    clock[0] = 10_200
    for left in range(9, -1, -1):  # the new window, spent
        assert limiter.delay(ROUTE, clock[0]) == 0
        seq = limiter.take(ROUTE)
        limiter.observe(ROUTE, headers(None, left, 20_000), None, seq)
    limiter.observe(ROUTE, headers(None, 4, 10_000), None, slow)  # "4 left" of a window over
    assert limiter.delay(ROUTE, clock[0]) > 9_000


def test_a_429_of_our_own_does_not_mark_the_budget_shared() -> None:
    clock = [0.0]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    for left in range(29, 9, -1):
        seq = limiter.take(ROUTE)
        limiter.observe(ROUTE, headers(500, left, 10_000), None, seq)
    clock[0] = 9_500
    seq = limiter.take(ROUTE)  # an injected 429 whose reset is not the window's
    limiter.observe(ROUTE, headers(0, 0, 10_500), RateLimited("429", retry_after=1.0), seq)
    assert not limiter._route(ROUTE).shared(clock[0])
    assert not limiter._global.shared(clock[0])


def test_the_window_says_what_is_left_and_when_it_ends() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    assert limiter.window(ROUTE, NOW) == (None, None, 0)  # nothing answered yet
    seq = limiter.take(ROUTE)
    limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(100, 12, NOW + 8_000), None, seq)
    left, ends_in, in_flight = limiter.window(ROUTE, NOW)
    assert left == 11  # the server's 12, less the request still on the wire
    assert ends_in == pytest.approx(8.0)
    assert in_flight == 1
    assert limiter.window(ROUTE, NOW + 5_000) == (11, pytest.approx(3.0), 1)
    # The global budget binds when it is lower.
    limiter.observe(ROUTE, headers(3, 12, NOW + 8_000), None)
    assert limiter.window(ROUTE, NOW).left == 3


def test_past_its_reset_a_window_is_taken_to_start_again_at_its_full_size() -> None:
    clock = [NOW]
    limiter = RateLimiter(clock_ms=lambda: clock[0])
    seq = limiter.take(ROUTE)
    limiter.observe(ROUTE, headers(None, 19, NOW + 10_000), None, seq)  # a 10 s window of 20
    left, ends_in, _ = limiter.window(ROUTE, NOW + 10_000 + GUARD_MS + 1)
    assert left == 20
    assert ends_in == pytest.approx(10.0 - (GUARD_MS + 1) / 1000)
    assert limiter.window(ROUTE, NOW + 35_000).ends_in == pytest.approx(5.0)
