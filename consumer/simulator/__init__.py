"""The LaunchDarkly API simulator (`ld-targeting-consumer fake-api`): demo, tests, compose."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from aiohttp import web

from consumer.listening import start_site
from consumer.simulator.server import Faults, Limits, Simulator
from consumer.simulator.state import SeedIn

__all__ = ["Faults", "Limits", "RunningSimulator", "Simulator", "load_seed", "sample_seed"]


def load_seed(path: Path) -> SeedIn:
    return SeedIn.model_validate(json.loads(path.read_text()))


def sample_seed() -> SeedIn:
    text = resources.files("consumer.simulator").joinpath("sample_seed.json").read_text()
    return SeedIn.model_validate(json.loads(text))


class RunningSimulator:
    """A simulator served on loopback inside the current event loop."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> RunningSimulator:
        if self._runner is not None:
            return self
        self._runner, self.port = await start_site(self.simulator.app(), self.host, self.port)
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
