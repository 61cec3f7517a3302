"""Health and metrics over HTTP (CONSUMER_HTTP_PORT): /healthz, /readyz, /metrics.

`Vitals` is everything the two probes report, in one object the service keeps up to date:

- live (/healthz): the fetch loop came round in the last LOOP_STALL_AFTER seconds;
- ready (/readyz): partitions assigned, the broker answered lately, the API gate open (the
  token accepted and LaunchDarkly reachable), not stopping; when not, `reasons` says why in
  words an operator can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.listening import CannotListen, start_site

BROKER_PROBE_AFTER = 5.0  # seconds without broker contact before the commit loop checks it
BROKER_STALE_AFTER = 30.0  # ... and before /readyz says the broker is unreachable
LOOP_STALL_AFTER = 300.0  # seconds without a fetch-loop turn before /healthz fails


class Vitals:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.loop_beat = self.broker_contact = clock()
        self.partitions = 0
        self.stopping = False
        # Why the API gate is closed (gate.ApiGate.describe), None while it is open.
        self.api_closed: str | None = None
        self.api_token_refused = False
        # Halted partitions (halts.py), one line each; empty while all flow.
        self.halted: list[str] = []
        # Why this member no longer counts itself in the group (membership.py), None while it
        # does.
        self.group_lapsed: str | None = None

    def beat(self) -> None:
        self.loop_beat = self._clock()

    def broker_seen(self) -> None:
        self.broker_contact = self._clock()

    def broker_quiet_for(self) -> float:
        return self._clock() - self.broker_contact

    def liveness(self) -> dict[str, bool]:
        return {"loop": self._clock() - self.loop_beat < LOOP_STALL_AFTER}

    def readiness(self) -> dict[str, bool]:
        return {
            "partitions_assigned": self.partitions > 0,
            "broker_reachable": self.broker_quiet_for() < BROKER_STALE_AFTER,
            "api_token_accepted": not self.api_token_refused,
            "api_available": self.api_closed is None,
            "partitions_flowing": not self.halted,
            "group_member": self.group_lapsed is None,
            "running": not self.stopping,
        }

    def reasons(self) -> list[str]:
        checks = self.readiness()
        found = []
        if not checks["partitions_assigned"]:
            found.append(
                "no partitions assigned (joining the group, or more members than partitions)"
            )
        if not checks["broker_reachable"]:
            found.append(f"no answer from the Kafka broker for {self.broker_quiet_for():.0f} s")
        if self.api_closed is not None:
            found.append(self.api_closed)
        found.extend(self.halted)
        if self.group_lapsed is not None:
            found.append(self.group_lapsed)
        if self.stopping:
            found.append("stopping")
        return found


class HealthServer:
    def __init__(
        self,
        vitals: Vitals,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - a service port
        port: int = 8080,
    ) -> None:
        self._vitals = vitals
        self._registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        try:
            self._runner, self.port = await start_site(self.app(), self.host, self.port)
        except CannotListen as exc:
            exc.setting = "CONSUMER_HTTP_PORT"
            raise

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _answer(checks: dict[str, bool], reasons: list[str] | None = None) -> web.Response:
        ok = all(checks.values())
        body: dict[str, object] = {"status": "ok" if ok else "unavailable", "checks": checks}
        if reasons is not None:
            body["reasons"] = reasons
        return web.json_response(body, status=200 if ok else 503)

    async def _healthz(self, request: web.Request) -> web.Response:
        return self._answer(self._vitals.liveness())

    async def _readyz(self, request: web.Request) -> web.Response:
        return self._answer(self._vitals.readiness(), self._vitals.reasons())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response
