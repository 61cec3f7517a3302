"""The one place that turns an expected failure into one line for the operator and an exit code.

Every command runs under `handled()`: a failure an operator can fix (the broker unreachable or
without the idempotent producer, a bad setting, a port in use, an unreadable file) is printed as
one line naming the address, variable, file or port and what to change, with exit code 1 (2 for
usage and configuration errors). Anything else is a bug: one `internal_error` line, with the
traceback only when LOG_LEVEL=debug. No line may hold a secret: each goes through the redactor.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from consumer import logs
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import BrokerNotStarted
from consumer.listening import CannotListen
from consumer.settings import SettingsError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
PROG = "ld-targeting-consumer"


class CommandFailed(Exception):
    """An expected failure: its message is the line shown, `exit_code` the process's code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandFailed):
    """A bad argument or input the operator gave (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def explain(exc: BaseException) -> CommandFailed | None:
    """The line and exit code for an expected failure; None for a bug."""
    if isinstance(exc, CommandFailed):
        return exc
    if isinstance(exc, SettingsError):
        return CommandFailed(str(exc), EXIT_USAGE)
    if isinstance(exc, kafka.TopicMissing):
        return CommandFailed(
            f"the topic {exc.topic} does not exist: create it (see docs/operations.md), or set"
            f" {exc.variable} to the name of the topic to use"
        )
    if isinstance(exc, kafka.IdempotenceRefused):
        return CommandFailed(
            f"the Kafka broker at {exc.address} refused the idempotent producer (InitProducerId"
            " failed): set KAFKA_PRODUCER_IDEMPOTENCE=false for brokers without it (Tansu)"
        )
    if isinstance(exc, kafka.BrokerUnreachable | KafkaConnectionError):
        address = exc.address if isinstance(exc, kafka.BrokerUnreachable) else "its address"
        return CommandFailed(
            f"cannot reach the Kafka broker at {address}: start it, or set"
            " KAFKA_BOOTSTRAP_SERVERS to its host:port"
        )
    if isinstance(exc, KafkaTimeoutError):
        return CommandFailed(
            "the Kafka broker did not answer in time: check that it runs and that"
            " KAFKA_BOOTSTRAP_SERVERS names it"
        )
    if isinstance(exc, CannotListen):
        setting = f" ({exc.setting})" if exc.setting else ""
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return CommandFailed(
                f"cannot listen on port {exc.port}{setting}: {exc.reason}; stop what uses it or"
                " choose another port"
            )
        host = f" ({exc.host_setting})" if exc.host_setting else ""
        return CommandFailed(
            f"cannot listen on {exc.host}{host} port {exc.port}: {exc.reason}; give an address"
            " of this machine (127.0.0.1, or 0.0.0.0 for all of them)"
        )
    if isinstance(exc, BrokerNotStarted):
        return CommandFailed(str(exc))
    if isinstance(exc, KafkaError):
        return CommandFailed(f"the Kafka broker refused: {type(exc).__name__}: {exc}")
    return None


def handled(command: Callable[[], int], *, debug: bool, err: TextIO | None = None) -> int:
    """Run `command`; an exception becomes one line on `err` (stderr) and an exit code."""
    err = err or sys.stderr
    try:
        return command()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        failure = explain(exc)
        if failure is None:
            if debug:
                traceback.print_exc(file=err)
            line = (
                f"internal_error: {type(exc).__name__}: {exc} (a bug; LOG_LEVEL=debug shows"
                " the traceback)"
            )
            code = EXIT_FAILURE
        else:
            if debug and failure is not exc:
                traceback.print_exc(file=err)
            line, code = str(failure), failure.exit_code
        print(f"{PROG}: {_scrub(line)}", file=err, flush=True)
        return code


def _scrub(line: str) -> str:
    scrubbed: str = logs.REDACTOR.scrub(line, logs.REDACTOR.secrets())
    return " ".join(scrubbed.split())  # one line, whatever the exception's text held
