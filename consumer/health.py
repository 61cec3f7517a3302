"""Health and metrics over HTTP (CONSUMER_HTTP_PORT): /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.web import start_site


class Observable(Protocol):
    registry: CollectorRegistry

    def liveness(self) -> dict[str, bool]: ...

    def readiness(self) -> dict[str, bool]: ...


class HealthServer:
    def __init__(self, target: Observable, *, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104 - a service port
        self._target = target
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner, self.port = await start_site(self.app(), self.host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _answer(checks: dict[str, bool]) -> web.Response:
        ok = all(checks.values())
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return self._answer(self._target.liveness())

    async def _readyz(self, request: web.Request) -> web.Response:
        return self._answer(self._target.readiness())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._target.registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response
