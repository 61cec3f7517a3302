"""structlog set-up: JSON lines when not on a terminal, readable on one; secrets redacted.

Library logs (aiokafka, aiohttp) go through the same processors, so every line is one format
and the redactor sees all of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"


class Redactor:
    """A structlog processor that replaces every known secret in every string of an event."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._sources: list[Callable[[], str]] = []

    def add(self, secret: str) -> None:
        if secret:
            self._secrets.add(secret)

    def watch(self, source: Callable[[], str]) -> None:
        """Also redact whatever `source()` returns at each line (a rotating token)."""
        self._sources.append(source)

    def secrets(self) -> set[str]:
        current = {value for value in (source() for source in self._sources) if value}
        self._secrets |= current
        return self._secrets

    def scrub(self, value: Any, secrets: set[str]) -> Any:
        if isinstance(value, str):
            return _pattern(frozenset(secrets)).sub(REDACTED, value) if secrets else value
        if isinstance(value, dict):
            return {k: self.scrub(v, secrets) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v, secrets) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(repr(value), secrets)
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        secrets = self.secrets()
        if not secrets:
            return event
        return {key: self.scrub(value, secrets) for key, value in event.items()}


@functools.lru_cache(maxsize=8)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    """Whole tokens only: a secret is replaced where it is not part of a longer run of letters
    and digits, so it can never mangle other text (a token `x` leaves `Unexpected` alone).
    Tokens shorter than settings.MIN_TOKEN_LENGTH are refused at start anyway."""
    alternatives = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


REDACTOR = Redactor()


@dataclass(slots=True)
class _Seen:
    since: float  # when the line last passed (the record's `created`)
    held: int = 0  # lines like it held back since


class LibraryFlood(logging.Filter):
    """Rate-limits a library's repeated warnings and errors (aiokafka, while the broker is
    away, logs each connection error many times a second: thousands of lines that bury the
    service's own `broker.unreachable`).

    A line is "like" another when it comes from the same logger with the same message template
    (the format string before its arguments). The first one passes; the ones like it are held
    back for `window` seconds; the first one after that passes carrying their count: "...
    (46 more like this in the last 10 s)". Lines below WARNING pass (LOG_LEVEL=debug shows
    them all), and so do other loggers'. Installed on the handler, so it sees every logger of
    the library and composes with the filters of the library's own loggers (the offset resets
    of kafka/clients.py), which run first.
    """

    MAX_KEYS = 1_000  # templates remembered (a library formatting its own messages)

    def __init__(self, prefix: str = "aiokafka", window: float = 10.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.window = window
        self._seen: dict[tuple[str, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not (
            record.name == self.prefix or record.name.startswith(self.prefix + ".")
        ):
            return True
        key = (record.name, str(record.msg))
        seen = self._seen.get(key)
        if seen is not None and record.created - seen.since < self.window:
            seen.held += 1
            return False
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()
        self._seen[key] = _Seen(record.created)
        if seen is not None and seen.held:
            elapsed = record.created - seen.since
            record.msg = (
                f"{record.getMessage()} ({seen.held} more like this in the last {elapsed:.0f} s)"
            )
            record.args = None
        return True


class _Quiet:
    """While any client starts, the aiokafka logger keeps only critical lines: a failed start
    is reported once, as the CLI's line (cli_errors), not also as the library's error lines.
    Counted, so overlapping starts restore the level once the last one ends."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._depth = 0
        self._saved = logging.NOTSET

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if logging.getLogger().level <= logging.DEBUG:
            yield  # LOG_LEVEL=debug shows everything
            return
        if self._depth == 0:
            self._saved = self._logger.level
            self._logger.setLevel(logging.CRITICAL)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._logger.setLevel(self._saved)


quiet_kafka_client = _Quiet("aiokafka")


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            REDACTOR,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(LibraryFlood())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every coordinator step; keep its warnings and errors.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
