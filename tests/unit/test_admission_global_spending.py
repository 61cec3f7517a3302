"""Invariant 4: the spending at a window's end keeps at most a quarter of what is left on the
wire per member.

RouteView.units_left is min(global left, route left) (RateLimiter.window), but
RouteView.in_flight counts only this rate-limit route's requests. When the account-wide
(global) budget is the scarce one, each route's lanes are spent up to a quarter of the
*global* units left independently of the other routes' requests on the wire, and the
`max(1, ...)` floor gives every route at least one: with R routes ending together, our member
has about R quarters (or R requests) of the global budget on the wire at once."""

from __future__ import annotations

import pytest

from consumer.launchdarkly.routing import Route
from consumer.launchdarkly.throttle import Permit, RateLimiter, Window
from consumer.service.batcher import Batcher
from consumer.service.pipeline import _Admission
from consumer.service.scarcity import Scarcity
from tests.factories import event_dict, pending

NOW_MS = 1_000_000.0
KINDS = [
    ("segment", "addIncludedTargets"),  # segment-targets
    ("flag", "addExpiringTarget"),  # flag-expiring-targets
    ("segment", "addExpiringTarget"),  # segment-expiring-targets
    ("segment", "addExpireUserTargetDate"),  # segment-expiring-user-targets
]


class LimiterSender:
    """The real RateLimiter on a fixed clock, one rate-limit route per endpoint."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def admitted_on(self, route: Route) -> str:
        return route.endpoint.value

    def delay(self, route: Route) -> float | None:
        return self.limiter.delay(self.admitted_on(route), NOW_MS) / 1000

    def window(self, route: Route) -> Window:
        return self.limiter.window(self.admitted_on(route), NOW_MS)

    def grant(self, route: Route, waited: float) -> Permit:
        return Permit(self.limiter.take(self.admitted_on(route)), waited)


def run(routes: int, global_left: int) -> tuple[int, int]:
    limiter = RateLimiter(clock_ms=lambda: NOW_MS)
    reset = str(NOW_MS + 1_000)  # the window ends in 1 s: rule 4's spending
    batcher = Batcher(max_size=50, linger=0.2)
    for r, (kind, instruction) in enumerate(KINDS[:routes]):
        probe = pending(event_dict(kind, instruction, key=f"probe{r}")).route
        seq = limiter.take(probe.endpoint.value)
        limiter.observe(
            probe.endpoint.value,
            {
                "X-Ratelimit-Global-Remaining": str(global_left),
                "X-Ratelimit-Route-Remaining": "500",
                "X-Ratelimit-Reset": reset,
            },
            None,
            seq,
        )
        for n in range(40):  # more lanes than units: scarce
            batcher.add(pending(event_dict(kind, instruction, key=f"{kind}{r}-{n}")), 0.0)
    now = 5.0
    batcher.add(pending(event_dict(*KINDS[0], key="late")), now)  # routes not quiet
    for r, (kind, instruction) in enumerate(KINDS[:routes]):
        batcher.add(pending(event_dict(kind, instruction, key=f"late{r}")), now - 0.1)
    left = limiter.window("segment-targets", NOW_MS).left
    sender = LimiterSender(limiter)
    admission = _Admission(sender, {}, now, batcher.heads(now), Scarcity(max_wait=60.0))  # type: ignore[arg-type]
    cut = batcher.ready(now, 64, admission.admit)
    return len(cut), left


def test_one_route_keeps_a_quarter() -> None:
    sent, left = run(1, 16)
    assert sent <= max(1, left // 4), (sent, left)


@pytest.mark.parametrize(("routes", "global_left"), [(2, 16), (4, 16), (4, 8)])
def test_several_routes_together_keep_a_quarter_of_the_global_budget(
    routes: int, global_left: int
) -> None:
    sent, left = run(routes, global_left)
    assert sent <= max(1, left // 4), (
        f"{routes} routes, {left} global units left: {sent} on the wire"
    )
