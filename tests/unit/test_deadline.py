"""The Deadline (deadline.py), on a clock the test moves."""

from __future__ import annotations

import time

from consumer.service.deadline import Deadline


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_remaining_counts_down_to_zero_and_then_it_has_expired() -> None:
    clock = Clock()
    deadline = Deadline.after(2.0, clock)
    assert deadline.at == 102.0
    assert deadline.remaining() == 2.0 and not deadline.expired()
    clock.now = 101.5
    assert deadline.remaining() == 0.5 and not deadline.expired()
    clock.now = 102.0
    assert deadline.remaining() == 0.0 and deadline.expired()
    clock.now = 110.0
    assert deadline.remaining() == 0.0 and deadline.expired()  # never negative


def test_shifted_moves_it_on_the_same_clock() -> None:
    clock = Clock()
    deadline = Deadline.after(10.0, clock)
    earlier, later = deadline.shifted(-4.0), deadline.shifted(5.0)
    assert (earlier.remaining(), later.remaining()) == (6.0, 15.0)
    clock.now = 106.0
    assert earlier.expired() and not deadline.expired() and not later.expired()


def test_the_earlier_of_two_is_their_minimum() -> None:
    clock = Clock()
    one, other = Deadline.after(3.0, clock), Deadline.after(1.0, clock)
    assert min(one, other) is other and min(one, Deadline.never(clock)) is one


def test_never_does_not_expire() -> None:
    never = Deadline.never(Clock(1e12))
    assert not never.expired() and never.remaining() == float("inf")


def test_the_default_clock_is_monotonic() -> None:
    before = time.monotonic()
    deadline = Deadline.after(60.0)
    assert before + 60.0 <= deadline.at <= time.monotonic() + 60.0
    assert 59.0 < deadline.remaining() <= 60.0 and not deadline.expired()
