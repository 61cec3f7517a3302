"""Serving an aiohttp application on a port (0: any free one), for health and the simulator."""

from __future__ import annotations

from aiohttp import web


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start `app`; returns its runner (for `cleanup()`) and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if port == 0:
        server = site._server  # the bound port of an ephemeral listener
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port
