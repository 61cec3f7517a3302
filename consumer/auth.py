"""The gate that closes while LaunchDarkly refuses the token (401).

A 401 is wrong for every event alike, so nothing is rejected or dead-lettered: the gate closes,
senders wait at it, and one request at a time probes the API with capped backoff, re-reading the
token (file) before each probe. The first accepted request opens the gate again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from consumer.ld_client import TokenSource

log = structlog.get_logger(__name__)


class AuthGate:
    def __init__(
        self,
        token: TokenSource,
        *,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._token = token
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._on_change = on_change
        self._open = asyncio.Event()
        self._open.set()
        self._probe_lock = asyncio.Lock()
        self._probes = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    async def unauthorized(self) -> None:
        """Called after a 401; returns when the caller should send its request again (a probe)."""
        if self._open.is_set():
            self._open.clear()
            self._probes = 0
            log.error(
                "ld.unauthorized",
                message="LaunchDarkly refused the API token; pausing until it is accepted",
            )
            if self._on_change is not None:
                self._on_change(False)
        async with self._probe_lock:
            if self._open.is_set():
                return
            self._probes += 1
            delay = min(self._max_delay, self._base_delay * 2 ** (self._probes - 1))
            log.info("ld.auth_probe", probe=self._probes, delay_s=round(delay, 2))
            await asyncio.sleep(random.uniform(delay / 2, delay))
            if self._token.refresh():
                log.info("ld.token_reloaded")

    def accepted(self) -> None:
        """A request got past authentication."""
        if not self._open.is_set():
            self._open.set()
            log.info("ld.authorized", probes=self._probes)
            if self._on_change is not None:
                self._on_change(True)
