"""`run`: the service in its process, with signals, the token redactor and exit codes."""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import structlog

from consumer.cli_errors import EXIT_INTERRUPTED, CommandFailed, explain
from consumer.commands import check
from consumer.launchdarkly.client import TokenSource
from consumer.logs import REDACTOR
from consumer.service.lifecycle import Service
from consumer.service.tracing import provider_from_environment
from consumer.service.wiring import build
from consumer.settings import Settings
from consumer.signals import on_stop

log = structlog.get_logger(__name__)


# Young-generation collections every 20,000 allocations instead of 700. Each event allocates
# a few dozen objects that live until its outcome is published: with the default threshold
# they are scanned, promoted and scanned again by full collections, which cost more than
# validating the events (measured: ~15 % of the CPU under a backlog). Almost nothing here
# forms reference cycles, so a larger young generation holds little garbage.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Collect once, move everything loaded so far out of the collector's view, and make
    young collections rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def exit_now() -> None:
    """A second SIGTERM/SIGINT: end at once. Nothing unfinished is committed, so the next
    owner processes it (at least once)."""
    log.warning("service.exit_now", message="second signal: exiting without draining")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


async def _preflight(settings: Settings, token: TokenSource) -> None:
    """`check` at start, logged. A broker that cannot be used stops `run` (a supervisor
    restarts it); anything else is logged and left to the service (the API gate waits for a
    token that is fixed later)."""
    report = await check.preflight(settings, token)
    for name in ("broker", "producer"):
        row = report.get(name)
        if row.status == "fail":  # the one line says it all (cli_errors)
            raise CommandFailed(row.detail)
    rows = {c.name: f"{c.status}: {c.detail}" for c in report.checks}
    if report.ok:
        log.info("preflight.passed", checks=rows)
    else:
        log.warning("preflight.failed", checks=rows)


async def run_service(settings: Settings) -> int:
    token = TokenSource(settings.ld_api_token, settings.ld_api_token_file)
    REDACTOR.watch(token.value)  # a token file may change while running
    stop = asyncio.Event()
    on_stop(stop, on_second=exit_now)
    # OpenTelemetry's own variables (OTEL_*), read as the SDK defines them, not settings.
    tracer_provider = provider_from_environment(os.environ)
    service = Service(build(settings, token, tracer_provider=tracer_provider))
    try:
        await service.start_health()  # a port in use stops `run` before anything else
        await _preflight(settings, token)
    except BaseException:
        await service.discard()
        raise
    tune_gc()
    try:
        await service.run(stop)
    except Exception as exc:
        if explain(exc) is not None:
            raise  # expected (a broker gone, a port in use): the CLI says it in one line
        log.exception("service.failed")
        return 1
    finally:
        if tracer_provider is not None:
            # Exports what is left; bounded by OTEL_BSP_EXPORT_TIMEOUT (a thread, not the loop).
            await asyncio.to_thread(tracer_provider.shutdown)  # type: ignore[attr-defined]
    return 0
