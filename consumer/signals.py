"""SIGTERM and SIGINT set a stop event; a second signal stops waiting for the drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop(stop: asyncio.Event, *, on_second: Callable[[], None] | None = None) -> None:
    """Install handlers on the running loop: the first signal sets `stop`."""
    loop = asyncio.get_running_loop()

    def handle(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("signal.again", signal=signum.name)
            if on_second is not None:
                on_second()
            return
        log.info("signal.received", signal=signum.name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handle, signum)
