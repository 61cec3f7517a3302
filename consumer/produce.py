"""`produce`: publish events from a JSON or JSONL file (or stdin), as upstream services should.

Each event is validated first with the same models the consumer uses; an invalid one is
reported with its line (or array item) number and not sent, unless `--allow-invalid`. Records
are keyed `{projectKey}/{environmentKey}/{resource.kind}/{resource.key}`, which keeps one
resource's changes in one partition, in order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from consumer import kafka
from consumer.events import Invalid, TargetingEvent, decode
from consumer.recovery import source_of
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
    # (topic, partition, offset) -> line number of every record sent
    placed: dict[tuple[str, int, int], int] = field(default_factory=dict)


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
    await kafka.start(producer, settings)
    try:
        futures = []
        for line, decoded in to_send:
            key = None if isinstance(decoded, Invalid) else recommended_key(decoded)
            futures.append(
                await producer.send(topic or settings.consumer_input_topic, line.value, key=key)
            )
        for (line, decoded), future in zip(to_send, futures, strict=True):
            metadata = await future
            report.placed[(metadata.topic, metadata.partition, metadata.offset)] = line.number
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


async def wait_for_outcomes(
    settings: Settings, report: ProduceReport, *, since_ms: int, timeout: float, out: TextIO
) -> int:
    """Follow the results topic until every sent record has an outcome; print them by line.

    Returns how many records got none within `timeout`.
    """
    wanted = dict(report.placed)
    found: dict[int, dict[str, Any]] = {}
    partitions = await kafka.topic_partitions(settings, settings.consumer_results_topic)
    consumer = AIOKafkaConsumer(
        **kafka.common_config(settings),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        isolation_level=settings.kafka_isolation_level,
    )
    await kafka.start(consumer, settings)
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        for tp, start in starts.items():
            if start is not None:
                consumer.seek(tp, start.offset)
        deadline = time.monotonic() + timeout
        while wanted and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    source = source_of(record)
                    if source is not None and source in wanted:
                        found[wanted.pop(source)] = json.loads(record.value)
    finally:
        await consumer.stop()
    print(f"{'line':>6}  {'status':<10} {'event':<24} error", file=out)
    for number in sorted(found):
        outcome = found[number]
        error = outcome.get("error") or {}
        detail = f"{error.get('code')}: {error.get('message')}" if error else ""
        print(
            f"{number:>6}  {outcome['status']:<10} {outcome.get('eventId')!s:<24} {detail[:80]}",
            file=out,
        )
    counts = Counter(outcome["status"] for outcome in found.values())
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    print(f"outcomes: {summary or 'none'}", file=out)
    if wanted:
        print(f"{len(wanted)} records had no outcome within {timeout:g} s", file=out)
    return len(wanted)
