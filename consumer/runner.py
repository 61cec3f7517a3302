"""`run`: the service in its process, with signals, the token redactor and exit codes."""

from __future__ import annotations

import asyncio

import structlog

from consumer.app import Service
from consumer.ld_client import TokenSource
from consumer.logs import REDACTOR
from consumer.settings import Settings
from consumer.signals import on_stop

log = structlog.get_logger(__name__)


async def run_service(settings: Settings) -> int:
    token = TokenSource(settings.ld_api_token, settings.ld_api_token_file)
    REDACTOR.watch(token.value)  # a token file may change while running
    stop = asyncio.Event()
    on_stop(stop)
    service = Service(settings, token)
    try:
        await service.run(stop)
    except Exception:
        log.exception("service.failed")
        return 1
    return 0
