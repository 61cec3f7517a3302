"""One GET to LaunchDarkly within the rate limits, counted like every request.

The API gate's probe, the segment kind reads and `verify`'s reads all go through here: the
rate limiter's unit is taken before and accounted for after (answered or not), the answer is
classified (`client.error_for`), and the request is counted in `ldc_api_requests_total`.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import structlog

from consumer.launchdarkly.client import ApiResponse, LdClient, error_for
from consumer.launchdarkly.errors import ApiError, ConnectionFailed, RequestTimeout
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.metrics import Metrics

log = structlog.get_logger(__name__)


async def throttled_get(
    client: LdClient,
    throttle: RateLimiter,
    path: str,
    route: str,
    *,
    rate_limit_default: float,
    needs_body: bool = True,
    accept: Collection[int] = (),
    metrics: Metrics | None = None,
) -> tuple[ApiResponse | None, ApiError | None]:
    """`route`: the rate-limit route; `accept`: statuses that are answers, not errors (a
    404 that says "not there")."""
    permit = await throttle.acquire(route)
    response: ApiResponse | None = None
    error: ApiError | None = None
    try:
        response = await client.get(path)
    except (RequestTimeout, ConnectionFailed) as exc:
        error = exc
    else:
        if response.status not in accept:
            error = error_for(
                response,
                now_ms=time.time() * 1000,
                rate_limit_default=rate_limit_default,
                needs_body=needs_body,
            )
    finally:
        throttle.observe(route, response.headers if response else None, error, permit.seq)
    if metrics is not None:
        status = (
            str(response.status) if response is not None else (error.code.value if error else "")
        )
        metrics.requests.labels(endpoint=route, status=status).inc()
        if error is not None and error.retry_after is not None:
            metrics.rate_limited.inc()
    if error is not None and error.retry_after is not None:
        log.warning("ld.rate_limited", path=path, retry_after_s=round(error.retry_after, 3))
    return response, error
