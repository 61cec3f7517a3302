"""`replay`: copy selected dead-letter records back to the input topic, once per original.

The rule: **one replay per original record**, however many dead-letter copies it has; an
original is replayed again only when asked (`--again`), and then once more, not once per copy.

1. An *original* is the input record first dead-lettered, named by its topic, partition and
   offset: a dead letter's `ldc.original.topic|partition|offset` headers. A replayed copy on
   the input topic carries `ldc.replay.of` (that original), and when the copy fails again the
   consumer's dead letter names the same original (dead_letters.py), so every copy of one original
   has one identity. A dead letter without those headers is its own original.
2. The ledger topic `<dlq>.replayed` (compacted, one partition) holds one marker per original
   replayed: its identity as the key, the replay count and where the copy went as the value.
   It is read first; an original it names is "replayed before" and is not replayed again
   unless `--again`. The ledger is created by the first replay that sends something, never
   by a dry run or a run that sends nothing.
3. The end of every dead-letter partition is fixed when the command starts; records arriving
   later are left for the next run. No topic is created by reading: a dead-letter topic (or a
   target topic) that does not exist is one line naming it and its variable.
4. Each dead letter is selected by the filter (filters.py): its dead-letter timestamp, its
   `ldc.status` and `ldc.error.code` headers, and its event's id and resource. Of the selected
   dead letters of one original, the first read is replayed and the others are skipped
   ("another dead letter of an original replayed in this run"); `--limit` counts originals
   replayed, so runs page forward.
5. An original is refused when its replay count (the larger of its dead letter's
   `ldc.replay.count` and the ledger's) reached `--max-replays`, and a copy written without
   its value (`ldc.value-omitted`, by earlier versions) is refused: take the original from
   the input topic at `ldc.original.partition`/`ldc.original.offset`.
6. The copy goes to the input topic (or `--to`) with the original key, value and headers,
   minus every `ldc.*` header, plus `ldc.replay.count` (one more) and `ldc.replay.of`; then
   the marker goes to the ledger. A crash between the two leaves a copy without its marker:
   the next run may replay that original once more (at least once, never lost). Run one
   replay at a time.

`--dry-run` reads, selects and applies the same rules, prints what would go, and writes
nothing.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from consumer.commands.filters import Filter, resource_path
from consumer.commands.text import clip
from consumer.contract.dead_letters import (
    ERROR_CODE,
    ERROR_MESSAGE,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    PREFIX,
    REPLAY_COUNT,
    REPLAY_OF,
    STATUS,
    VALUE_OMITTED,
    Original,
    format_original,
)
from consumer.kafka import clients as kafka
from consumer.settings import Settings

SKIP_VALUE_OMITTED = f"value omitted from the copy ({VALUE_OMITTED}): take it from the input topic"
PROGRESS_EVERY = 5.0  # seconds between progress lines


def reason_to_skip(
    selection: Filter, record: ConsumerRecord, headers: dict[str, bytes]
) -> str | None:
    """Why a dead letter is not selected (rule 4), or None when it is."""
    # Its value is parsed only when the filter needs the event's id or resource.
    event = _json_object(record.value) if selection.reads_events else {}
    resource = event.get("resource") if isinstance(event.get("resource"), dict) else {}
    assert isinstance(resource, dict)
    return selection.reason_to_skip(
        record.timestamp,
        status=_text(headers.get(STATUS)),
        error_code=_text(headers.get(ERROR_CODE)),
        event_id=event.get("eventId"),
        resource=resource_path(
            event.get("projectKey"),
            event.get("environmentKey"),
            resource.get("kind"),
            resource.get("key"),
        ),
    )


@dataclass
class Report:
    read: int = 0
    selected: int = 0
    replayed: int = 0  # originals replayed (or, in a dry run, that would be)
    skipped: Counter[str] = field(default_factory=Counter)
    rows: list[Row] = field(default_factory=list)
    # (topic, partition, offset) of each copy written -> "dlq partition:offset", for --wait
    placed: dict[tuple[str, int, int], str] = field(default_factory=dict)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass(frozen=True)
class Row:
    partition: int
    offset: int
    original: str
    status: str
    error_code: str
    error_message: str
    event_id: str
    count: int


SKIP_REPLAYED_BEFORE = "original replayed before (use --again)"
SKIP_OTHER_COPY = "another dead letter of an original replayed in this run"


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def _json_object(value: bytes | None) -> dict[str, Any]:
    try:
        parsed = json.loads(value) if value is not None else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def original_of(record: ConsumerRecord, headers: dict[str, bytes]) -> Original:
    """The original a dead letter stands for (rule 1): its `ldc.original.*` headers, or the
    dead letter itself when they are missing or do not parse."""
    topic = _text(headers.get(ORIGINAL_TOPIC))
    partition = _text(headers.get(ORIGINAL_PARTITION))
    offset = _text(headers.get(ORIGINAL_OFFSET))
    if topic and partition.isdigit() and offset.isdigit():
        return topic, int(partition), int(offset)
    return record.topic, record.partition, record.offset


def replay_count(headers: Sequence[tuple[str, bytes]]) -> int:
    """The highest `ldc.replay.count` among the headers (0 when none)."""
    previous = 0
    for name, value in headers:
        if name == REPLAY_COUNT:
            with contextlib.suppress(ValueError):
                previous = max(previous, int(value))
    return previous


def replay_headers(
    headers: Sequence[tuple[str, bytes]], original: Original, count: int
) -> list[tuple[str, bytes]]:
    """The original headers without `ldc.*`, plus `ldc.replay.count` = `count` and
    `ldc.replay.of` = `original` (rule 6)."""
    kept = [(name, value) for name, value in headers if not name.startswith(PREFIX)]
    return [
        *kept,
        (REPLAY_COUNT, str(count).encode()),
        (REPLAY_OF, format_original(original).encode()),
    ]


def ledger_topic(settings: Settings) -> str:
    return f"{settings.consumer_dlq_topic}.replayed"


# The ledger keeps the last marker of each original for good (rule 2).
LEDGER_CONFIG = {"cleanup.policy": "compact"}


class Replayer:
    def __init__(
        self,
        settings: Settings,
        selection: Filter,
        *,
        limit: int | None = None,
        target_topic: str | None = None,
        max_replays: int = 3,
        again: bool = False,
        dry_run: bool = False,
        out: TextIO = sys.stdout,
        progress: TextIO = sys.stderr,
    ) -> None:
        self.settings = settings
        self.selection = selection
        self.limit = limit  # originals replayed (rule 4)
        self.target = target_topic or settings.consumer_input_topic
        self.target_variable = "--to" if target_topic else "CONSUMER_INPUT_TOPIC"
        self.max_replays = max_replays
        self.again = again
        self.dry_run = dry_run
        self.out = out
        self.progress = progress
        # original ("topic/partition/offset") -> its last replay count, from the ledger; a
        # ledger of earlier versions holds dead-letter positions ("partition:offset").
        self._ledger: dict[str, int] = {}
        self._ledger_exists = False
        self._this_run: set[Original] = set()

    async def run(self) -> Report:
        report = Report()
        dlq = self.settings.consumer_dlq_topic
        ledger = ledger_topic(self.settings)
        # Listed, never described blindly: reading must not create a topic (rule 3).
        found = await kafka.existing_topics(self.settings, [dlq, self.target, ledger])
        if dlq not in found:
            raise kafka.TopicMissing(dlq, "CONSUMER_DLQ_TOPIC")
        if self.target not in found:
            raise kafka.TopicMissing(self.target, self.target_variable)
        partitions = [TopicPartition(dlq, p) for p in range(found[dlq])]
        if ledger in found:
            self._ledger_exists = True
            self._ledger = await self._read_ledger(ledger, found[ledger])
        producer = None if self.dry_run else kafka.make_producer(self.settings)
        if producer is not None:
            await kafka.start(producer, self.settings)
        try:
            async with kafka.reading(self.settings) as consumer:
                ends = await kafka.end_offsets(consumer, partitions)
                await self._seek_start(consumer, partitions)
                last_progress = time.monotonic()
                async for record in kafka.records_to(consumer, partitions, ends):
                    await self._one(record, report, producer)
                    if self._limit_reached(report):
                        break
                    if time.monotonic() - last_progress > PROGRESS_EVERY:
                        last_progress = time.monotonic()
                        print(
                            f"replay: read {report.read}, selected {report.selected},"
                            f" replayed {report.replayed}",
                            file=self.progress,
                            flush=True,
                        )
                if producer is not None:
                    await producer.flush()
        finally:
            if producer is not None:
                await producer.stop()
        return report

    def _limit_reached(self, report: Report) -> bool:
        return self.limit is not None and report.replayed >= self.limit

    def _replayed_count(self, record: ConsumerRecord, original: Original) -> int | None:
        """The original's count in the ledger; None when it was never replayed."""
        for key in (format_original(original), f"{record.partition}:{record.offset}"):
            if key in self._ledger:
                return self._ledger[key]
        return None

    async def _one(self, record: ConsumerRecord, report: Report, producer: Any) -> None:
        report.read += 1
        if self._limit_reached(report):
            report.skipped["past --limit"] += 1
            return
        headers = dict(record.headers or ())
        reason = reason_to_skip(self.selection, record, headers)
        if reason is not None:
            report.skipped[reason] += 1
            return
        report.selected += 1
        original = original_of(record, headers)
        if original in self._this_run:
            report.skipped[SKIP_OTHER_COPY] += 1
            return
        ledger_count = self._replayed_count(record, original)
        if ledger_count is not None and not self.again:
            report.skipped[SKIP_REPLAYED_BEFORE] += 1
            return
        previous = max(replay_count(list(record.headers or ())), ledger_count or 0)
        if previous >= self.max_replays:
            report.skipped[f"replay count at the cap ({self.max_replays})"] += 1
            return
        if VALUE_OMITTED in headers:
            report.skipped[SKIP_VALUE_OMITTED] += 1
            return
        self._this_run.add(original)
        count = previous + 1
        event = _json_object(record.value)
        report.rows.append(
            Row(
                record.partition,
                record.offset,
                format_original(original),
                _text(headers.get(STATUS)),
                _text(headers.get(ERROR_CODE)),
                _text(headers.get(ERROR_MESSAGE)),
                str(event.get("eventId", "-")),
                count,
            )
        )
        report.replayed += 1
        if producer is None:
            return
        if not self._ledger_exists:
            await kafka.ensure_topics(
                self.settings,
                {ledger_topic(self.settings): 1},
                configs={ledger_topic(self.settings): LEDGER_CONFIG},
            )
            self._ledger_exists = True
        sent = await producer.send_and_wait(
            self.target,
            kafka.value_for_send(record.key, record.value),
            key=record.key,
            headers=replay_headers(list(record.headers or ()), original, count),
        )
        marker = json.dumps(
            {
                "replayedAt": datetime.now(UTC).isoformat(),
                "to": f"{sent.topic}/{sent.partition}/{sent.offset}",
                "count": count,
                "deadLetter": f"{record.topic}/{record.partition}/{record.offset}",
            }
        ).encode()
        key = format_original(original)
        await producer.send_and_wait(ledger_topic(self.settings), marker, key=key.encode())
        self._ledger[key] = count
        report.placed[(sent.topic, sent.partition, sent.offset)] = (
            f"dlq {record.partition}:{record.offset}"
        )

    async def _seek_start(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        await consumer.seek_to_beginning(*partitions)
        if self.selection.since_ms is None:
            return
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, self.selection.since_ms))
        for tp, offset in found.items():
            if offset is not None:
                consumer.seek(tp, offset.offset)

    async def _read_ledger(self, topic: str, count: int) -> dict[str, int]:
        """Each original in the ledger -> its last replay count (rule 2)."""
        partitions = [TopicPartition(topic, p) for p in range(count)]
        markers: dict[str, int] = {}
        async with kafka.reading(self.settings) as consumer:
            ends = await kafka.end_offsets(consumer, partitions)
            await consumer.seek_to_beginning(*partitions)
            async for record in kafka.records_to(consumer, partitions, ends):
                if record.key is None:
                    continue
                value = _json_object(record.value)
                count_value = value.get("count")
                found = count_value if isinstance(count_value, int) else 1
                key = record.key.decode("utf-8", "replace")
                markers[key] = max(markers.get(key, 0), found)
        return markers


def print_report(report: Report, out: TextIO, *, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    if report.rows:
        width = max(len("original"), *(len(row.original) for row in report.rows[:50]))
        print(
            f"{'dead letter':>11}  {'original':<{width}}  {'status':<9} {'count':>5}"
            f"  {'event':<24} error",
            file=out,
        )
        for row in report.rows[:50]:
            error = f"{row.error_code}: {row.error_message}" if row.error_code else ""
            print(
                f"{f'{row.partition}:{row.offset}':>11}  {row.original:<{width}}"
                f"  {row.status:<9} {row.count:>5}  {row.event_id:<24} {clip(error, 100)}",
                file=out,
            )
        if len(report.rows) > 50:
            print(f"{'':>11}  … and {len(report.rows) - 50} more", file=out)
        print(file=out)
    rows = [("read", report.read), ("selected", report.selected), (verb, report.replayed)]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(report.skipped.items())]
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}}  {count:>8}", file=out)
