"""`produce`: publish events from a JSON or JSONL file (or stdin), as upstream services should.

Each event is validated first with the same models the consumer uses; an invalid one is
reported with its line (or array item) number and not sent, unless `--allow-invalid`. Records
are keyed `{projectKey}/{environmentKey}/{resource.kind}/{resource.key}`, which keeps one
resource's changes in one partition, in order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from consumer import kafka
from consumer.events import Invalid, TargetingEvent, decode
from consumer.settings import Settings


@dataclass(frozen=True)
class Line:
    number: int
    value: bytes


@dataclass
class ProduceReport:
    sent: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    sent_invalid: int = 0


def recommended_key(event: TargetingEvent) -> bytes:
    return (
        f"{event.projectKey}/{event.environmentKey}/{event.resource.kind}/{event.resource.key}"
    ).encode()


def read_lines(text: str) -> Iterator[Line]:
    """Events from a JSON array, a single JSON object, or JSON Lines (blank lines skipped)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items: Any = json.loads(stripped)
        except ValueError:
            items = None
        if isinstance(items, list):
            for number, item in enumerate(items, start=1):
                yield Line(number, json.dumps(item, separators=(",", ":")).encode())
            return
    if stripped.startswith("{") and "\n" in stripped:
        try:
            single = json.loads(stripped)
        except ValueError:
            single = None
        if isinstance(single, dict):
            yield Line(1, json.dumps(single, separators=(",", ":")).encode())
            return
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            yield Line(number, raw.strip().encode())


async def produce(
    settings: Settings,
    text: str,
    *,
    topic: str | None = None,
    allow_invalid: bool = False,
    out: TextIO = sys.stdout,
) -> ProduceReport:
    report = ProduceReport()
    lines = list(read_lines(text))
    checked: list[tuple[Line, TargetingEvent | Invalid]] = [
        (line, decode(line.value)) for line in lines
    ]
    for line, decoded in checked:
        if isinstance(decoded, Invalid):
            report.invalid.append((line.number, f"{decoded.code.value}: {decoded.message}"))
    to_send = [(line, d) for line, d in checked if allow_invalid or not isinstance(d, Invalid)]
    if not to_send:
        return report
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        futures = []
        for line, decoded in to_send:
            key = None if isinstance(decoded, Invalid) else recommended_key(decoded)
            futures.append(
                await producer.send(topic or settings.consumer_input_topic, line.value, key=key)
            )
        for (_, decoded), future in zip(to_send, futures, strict=True):
            await future
            report.sent += 1
            report.sent_invalid += isinstance(decoded, Invalid)
    finally:
        await producer.stop()
    return report


def print_report(
    report: ProduceReport, out: TextIO, *, total: int, topic: str, allow_invalid: bool
) -> None:
    for number, message in report.invalid:
        print(f"line {number}: invalid: {message}", file=out)
    sent = f"sent {report.sent} of {total} events to {topic}"
    if report.invalid:
        how = f"{report.sent_invalid} of them invalid" if allow_invalid else "invalid ones not sent"
        sent += f" ({len(report.invalid)} invalid: {how})"
    print(sent, file=out)
