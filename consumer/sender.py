"""Sends one batch until every instruction in it has a result.

- retryable errors wait as `retry.py` says and send the same request again: a retried batch is
  never reordered, and since the batcher hands out one batch per path at a time, no later
  batch for the path can overtake it;
- every request goes through the rate limiter (`throttle.py`), shared by all batches;
- 401 waits at the auth gate and probes; it never becomes an outcome;
- 400/422 on a request of several instructions is narrowed down: the batch is split in halves
  sent in order, recursively, so only instructions that fail alone are rejected and all the
  others are applied, in their original order;
- any other error is pinned on every instruction of the request.
"""

from __future__ import annotations

import asyncio
import random
import time

import structlog

from consumer.auth import AuthGate
from consumer.batcher import Batch
from consumer.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    InvalidResponse,
    RateLimited,
    RequestTimeout,
    Unauthorized,
)
from consumer.events import Status, instruction_body
from consumer.ld_client import ApiResponse, LdClient, error_for
from consumer.metrics import Metrics
from consumer.outcomes import InstructionResult, results_from_body, results_from_error
from consumer.retry import RetryPolicy
from consumer.routing import request_body
from consumer.throttle import RateLimiter

log = structlog.get_logger(__name__)


class BatchSender:
    def __init__(
        self,
        client: LdClient,
        policy: RetryPolicy,
        gate: AuthGate,
        *,
        throttle: RateLimiter | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._policy = policy
        self._gate = gate
        self._throttle = throttle or RateLimiter()
        self._metrics = metrics or Metrics()
        self._rng = rng or random.Random()
        # Batches (by the id given to `send`) with a request on the wire right now: cancelling
        # one of those would leave unknown what LaunchDarkly applied.
        self._requesting: set[str] = set()

    def requesting(self, batch_id: str) -> bool:
        return batch_id in self._requesting

    async def send(self, batch: Batch) -> list[InstructionResult]:
        """One result per instruction, in the batch's order."""
        return await self._send(
            batch, [0] * len(batch), time.monotonic(), narrowing=False, top=batch.id
        )

    async def _send(
        self, batch: Batch, attempts: list[int], started: float, *, narrowing: bool, top: str
    ) -> list[InstructionResult]:
        body = request_body(
            batch.route, [instruction_body(p.event) for p in batch.items], batch.comment
        )
        failures = conflicts = 0
        probing = False
        while True:
            if not probing:
                await self._gate.wait_open()
            response, error = await self._attempt(batch, body, narrowing=narrowing, top=top)
            attempts[:] = [n + 1 for n in attempts]
            if isinstance(error, Unauthorized):
                await self._gate.unauthorized()
                probing = True
                continue
            if response is not None:
                self._gate.accepted()
            probing = False
            if error is None:
                assert response is not None
                return results_from_body(
                    batch.id,
                    batch.items,
                    response.body if isinstance(response.body, dict) else {},
                    http_status=response.status,
                    attempts=attempts,
                    per_instruction_errors=batch.route.spec.per_instruction_errors,
                )
            if isinstance(error, BadRequest) and len(batch) > 1:
                return await self._narrow(batch, attempts, started, error, top)
            if isinstance(error, Conflict):
                conflicts += 1
            elif not isinstance(error, RateLimited):
                failures += 1
            delay = self._policy.delay(
                error,
                failures=failures,
                conflicts=conflicts,
                elapsed=time.monotonic() - started,
                rng=self._rng,
            )
            if delay is None:
                return results_from_error(
                    batch.id, batch.items, error, status=_final_status(error), attempts=attempts
                )
            self._metrics.retries.labels(reason=error.code.value).inc()
            log.info(
                "ld.retry",
                batch_id=batch.id,
                path=batch.path,
                error=error.code.value,
                http_status=error.status,
                delay_s=round(delay, 3),
                failures=failures,
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, batch: Batch, body: dict[str, object], *, narrowing: bool, top: str
    ) -> tuple[ApiResponse | None, ApiError | None]:
        """One request, within the rate limits; every acquired unit is given back."""
        endpoint = batch.route.endpoint.value
        permit = await self._throttle.acquire(endpoint)
        if permit.waited:
            self._metrics.rate_limit_wait.inc(permit.waited)
        if narrowing:
            self._metrics.narrowing.inc()
        response: ApiResponse | None = None
        error: ApiError | None = None
        started = time.monotonic()
        self._requesting.add(top)
        try:
            response, error = await self._request(batch, body)
        finally:
            self._requesting.discard(top)
            self._throttle.observe(
                endpoint, response.headers if response else None, error, permit.seq
            )
        self._metrics.request_latency.labels(endpoint=endpoint).observe(time.monotonic() - started)
        status = (
            str(response.status) if response is not None else (error.code.value if error else "")
        )
        self._metrics.requests.labels(endpoint=endpoint, status=status).inc()
        if isinstance(error, RateLimited):
            self._metrics.rate_limited.inc()
            log.warning(
                "ld.rate_limited", path=batch.path, retry_after_s=round(error.retry_after, 3)
            )
        return response, error

    async def _request(
        self, batch: Batch, body: dict[str, object]
    ) -> tuple[ApiResponse | None, ApiError | None]:
        try:
            response = await self._client.patch(batch.path, body)
        except (RequestTimeout, ConnectionFailed) as exc:
            return None, exc
        error = error_for(
            response,
            now_ms=time.time() * 1000,
            rate_limit_default=self._policy.rate_limit_default,
            needs_body=batch.route.spec.per_instruction_errors,
        )
        return response, error

    async def _narrow(
        self, batch: Batch, attempts: list[int], started: float, error: ApiError, top: str
    ) -> list[InstructionResult]:
        middle = len(batch) // 2
        log.info(
            "batch.narrowing",
            batch_id=batch.id,
            path=batch.path,
            size=len(batch),
            http_status=error.status,
            message=error.message,
        )
        results: list[InstructionResult] = []
        for part, counts in (
            (batch.items[:middle], attempts[:middle]),
            (batch.items[middle:], attempts[middle:]),
        ):
            results.extend(
                await self._send(batch.sub(part), counts, started, narrowing=True, top=top)
            )
        return results


def _final_status(error: ApiError) -> Status:
    # A conflict that outlived its retries is LaunchDarkly's refusal; an unreadable answer and
    # retryable errors past the budget are failures to get an answer.
    if isinstance(error, Conflict):
        return Status.REJECTED
    if error.retryable or isinstance(error, InvalidResponse):
        return Status.FAILED
    return Status.REJECTED
