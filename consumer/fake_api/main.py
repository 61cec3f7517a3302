"""`ld-targeting-consumer fake-api`: serve the simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from consumer.cli_errors import UsageError
from consumer.fake_api import RunningSimulator, load_seed, sample_seed
from consumer.fake_api.server import Faults, Limits, Simulator
from consumer.listening import CannotListen
from consumer.signals import on_stop

log = structlog.get_logger(__name__)


def serve(
    *,
    host: str,
    port: int,
    tokens: set[str],
    seed_path: Path | None,
    sample: bool,
    faults_json: str | None,
    limits_json: str | None,
    request_log: int = 100_000,
) -> int:
    try:
        seed = load_seed(seed_path) if seed_path else sample_seed() if sample else None
        faults = Faults.model_validate_json(faults_json) if faults_json else Faults()
        limits = Limits.model_validate_json(limits_json) if limits_json else Limits()
    except (OSError, ValueError) as exc:
        raise UsageError(f"fake-api: {exc}") from None
    simulator = Simulator(tokens, faults=faults, limits=limits, seed=seed, max_log=request_log)
    return asyncio.run(_serve(simulator, host, port))


async def _serve(simulator: Simulator, host: str, port: int) -> int:
    stop = asyncio.Event()
    on_stop(stop)
    try:
        running_simulator = RunningSimulator(simulator, host, port)
        await running_simulator.start()
    except CannotListen as exc:
        exc.setting = "--port"
        raise
    async with running_simulator as running:
        log.info("fake_api.started", url=running.base_url)
        await stop.wait()
    log.info("fake_api.stopped")
    return 0
