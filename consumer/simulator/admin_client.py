"""A small client of the simulator's admin API (tests, demo scripts, benchmarks)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp


class SimulatorAdmin:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SimulatorAdmin:
        self._session = aiohttp.ClientSession(raise_for_status=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None, "use `async with SimulatorAdmin(...)`"
        async with self._session.request(method, self.base_url + path, json=body) as response:
            return await response.json()

    async def seed(self, seed: dict[str, Any]) -> None:
        await self._call("POST", "/admin/seed", seed)

    async def reset(self) -> None:
        await self._call("POST", "/admin/reset")

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/admin/state")
        return result

    async def segment_targets(
        self,
        project: str,
        environment: str,
        segment: str,
        *,
        target_type: str,
        values: list[str],
        context_kind: str = "user",
        remove: bool = False,
    ) -> None:
        """Add (or `remove`) a segment's targets directly, as another client would."""
        await self._call(
            "POST",
            f"/admin/segments/{project}/{environment}/{segment}/targets",
            {
                "targetType": target_type,
                "contextKind": context_kind,
                "values": values,
                "remove": remove,
            },
        )

    async def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/admin/requests")
        return result

    async def clear_requests(self) -> None:
        await self._call("DELETE", "/admin/requests")

    async def stats(self) -> dict[str, int]:
        result: dict[str, int] = await self._call("GET", "/admin/stats")
        return result

    async def set_faults(self, **faults: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PUT", "/admin/faults", faults)
        return result

    async def set_limits(self, **limits: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PUT", "/admin/limits", limits)
        return result

    async def set_tokens(self, *tokens: str) -> None:
        await self._call("PUT", "/admin/tokens", {"tokens": list(tokens)})
