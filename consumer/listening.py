"""Serving an aiohttp application on a port (0: any free one), for health and the simulator."""

from __future__ import annotations

from aiohttp import web


class CannotListen(Exception):
    """The port is in use (or not ours to take): the caller names the setting that chose it."""

    def __init__(self, host: str, port: int, reason: str, errno: int | None = None) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason
        self.errno = errno  # EADDRINUSE: the port is taken; others: rather the host
        self.setting: str | None = None  # the variable or option that chose the port
        self.host_setting: str | None = None  # ... and the host, where one can be chosen


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start `app`; returns its runner (for `cleanup()`) and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotListen(host, port, exc.strerror or str(exc), exc.errno) from exc
    if port == 0:
        server = site._server  # the bound port of an ephemeral listener
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port
