"""`ld-targeting-consumer fake-api`: serve the simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from consumer.cli_errors import UsageError
from consumer.listening import CannotListen
from consumer.signals import on_stop
from consumer.simulator import RunningSimulator, load_seed, sample_seed
from consumer.simulator.server import Faults, Limits, Simulator
from consumer.simulator.state import SeedIn

log = structlog.get_logger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


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
    seed = _seed(seed_path) if seed_path else sample_seed() if sample else None
    faults = _parsed(Faults, "--faults", faults_json) if faults_json else Faults()
    limits = _parsed(Limits, "--limits", limits_json) if limits_json else Limits()
    simulator = Simulator(tokens, faults=faults, limits=limits, seed=seed, max_log=request_log)
    return asyncio.run(_serve(simulator, host, port))


async def _serve(simulator: Simulator, host: str, port: int) -> int:
    stop = asyncio.Event()
    on_stop(stop)
    try:
        running_simulator = RunningSimulator(simulator, host, port)
        await running_simulator.start()
    except CannotListen as exc:
        exc.setting, exc.host_setting = "--port", "--host"
        raise
    async with running_simulator as running:
        log.info("fake_api.started", url=running.base_url)
        await stop.wait()
    log.info("fake_api.stopped")
    return 0


def _why(exc: ValueError) -> str:
    """One line: where a JSON document or its validation went wrong."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            return f"not JSON: {first['ctx'].get('error', first['msg'])}"
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(exc)


def _seed(path: Path) -> SeedIn:
    try:
        return load_seed(path)
    except OSError as exc:
        raise UsageError(f"fake-api: cannot read --seed {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"fake-api: --seed {path} is not a seed document: {_why(exc)}") from None


def _parsed(model: type[ModelT], option: str, text: str) -> ModelT:
    try:
        return model.model_validate_json(text)
    except ValueError as exc:
        raise UsageError(f"fake-api: {option} {text!r}: {_why(exc)}") from None
