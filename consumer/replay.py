"""`replay`: copy selected dead-letter records back to the input topic.

1. The end of every dead-letter partition is fixed when the command starts; records arriving
   later are left for the next run.
2. Each record is selected by time (`--since`/`--until`, its dead-letter timestamp), status,
   error code, event id and resource (a `project/env/kind/key` glob), up to `--limit`.
3. A selected record is refused when it was replayed already (unless `--again`) or when its
   `ldc.replay.count` reached the cap.
4. It goes back with its original key, value and headers, minus every `ldc.*` header, plus
   `ldc.replay.count` (one more than before).
5. Then a marker keyed `partition:offset` goes to the ledger topic (`<dlq>.replayed`), which the
   next run reads first: running the same selection twice replays nothing new, and `--limit`
   (which counts records replayed, not records looked at) pages forward run after run.
6. A copy written without its value (`ldc.value-omitted`: the original was too large for the
   dead-letter topic) is refused: replaying it would publish an empty record. The original is
   still on the input topic at `ldc.original.partition`/`ldc.original.offset`.

`--dry-run` reads and selects, prints what would go, and writes nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
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

from consumer import kafka
from consumer.cli_errors import CommandFailed
from consumer.dlq import ERROR_CODE, ERROR_MESSAGE, PREFIX, REPLAY_COUNT, STATUS, VALUE_OMITTED
from consumer.settings import Settings

SKIP_VALUE_OMITTED = f"value omitted from the copy ({VALUE_OMITTED}): take it from the input topic"
PROGRESS_EVERY = 5.0  # seconds between progress lines


@dataclass(frozen=True)
class Selection:
    statuses: frozenset[str] = frozenset()
    error_codes: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    resource: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def reason_to_skip(self, record: ConsumerRecord, headers: dict[str, bytes]) -> str | None:
        """Why a record is not selected, or None when it is."""
        if self.since_ms is not None and record.timestamp < self.since_ms:
            return "before --since"
        if self.until_ms is not None and record.timestamp >= self.until_ms:
            return "after --until"
        if self.statuses and _text(headers.get(STATUS)) not in self.statuses:
            return "other status"
        if self.error_codes and _text(headers.get(ERROR_CODE)) not in self.error_codes:
            return "other error code"
        if self.event_ids or self.resource:
            event = _json_object(record.value)
            if self.event_ids and event.get("eventId") not in self.event_ids:
                return "other event id"
            if self.resource and not fnmatch.fnmatchcase(_resource(event), self.resource):
                return "other resource"
        return None


@dataclass
class Report:
    read: int = 0
    selected: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rows: list[Row] = field(default_factory=list)
    # (topic, partition, offset) of each copy written -> "dlq partition:offset", for --wait
    placed: dict[tuple[str, int, int], str] = field(default_factory=dict)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass(frozen=True)
class Row:
    partition: int
    offset: int
    status: str
    error_code: str
    error_message: str
    event_id: str
    count: int


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def _json_object(value: bytes | None) -> dict[str, Any]:
    try:
        parsed = json.loads(value) if value is not None else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _resource(event: dict[str, Any]) -> str:
    resource = event.get("resource") if isinstance(event.get("resource"), dict) else {}
    assert isinstance(resource, dict)
    parts = (
        event.get("projectKey"),
        event.get("environmentKey"),
        resource.get("kind"),
        resource.get("key"),
    )
    return "/".join(str(p) if isinstance(p, str) else "" for p in parts)


def replay_headers(headers: Sequence[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int]:
    """The original headers without `ldc.*`, plus the next `ldc.replay.count`; and that count."""
    previous = 0
    kept = []
    for name, value in headers:
        if name == REPLAY_COUNT:
            with contextlib.suppress(ValueError):
                previous = max(previous, int(value))
        if not name.startswith(PREFIX):
            kept.append((name, value))
    return [*kept, (REPLAY_COUNT, str(previous + 1).encode())], previous


def ledger_topic(settings: Settings) -> str:
    return f"{settings.consumer_dlq_topic}.replayed"


class Replayer:
    def __init__(
        self,
        settings: Settings,
        selection: Selection,
        *,
        target_topic: str | None = None,
        max_replays: int = 3,
        again: bool = False,
        dry_run: bool = False,
        out: TextIO = sys.stdout,
        progress: TextIO = sys.stderr,
    ) -> None:
        self.settings = settings
        self.selection = selection
        self.target = target_topic or settings.consumer_input_topic
        self.max_replays = max_replays
        self.again = again
        self.dry_run = dry_run
        self.out = out
        self.progress = progress

    async def run(self) -> Report:
        report = Report()
        done = set() if self.again else await self._already_replayed()
        dlq = self.settings.consumer_dlq_topic
        partitions = await kafka.topic_partitions(self.settings, dlq)
        if not partitions:
            raise CommandFailed(
                f"the dead-letter topic {dlq} does not exist (CONSUMER_DLQ_TOPIC): nothing to"
                " replay"
            )
        if not self.dry_run:
            await kafka.ensure_topics(self.settings, {ledger_topic(self.settings): 1})
        producer = None if self.dry_run else kafka.make_producer(self.settings)
        if producer is not None:
            await kafka.start(producer, self.settings)
        try:
            async with kafka.reading(self.settings) as consumer:
                ends = await kafka.end_offsets(consumer, partitions)
                await self._seek_start(consumer, partitions)
                last_progress = time.monotonic()
                async for record in kafka.records_to(consumer, partitions, ends):
                    await self._one(record, done, report, producer)
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
        return self.selection.limit is not None and report.replayed >= self.selection.limit

    async def _one(
        self, record: ConsumerRecord, done: set[str], report: Report, producer: Any
    ) -> None:
        report.read += 1
        if self._limit_reached(report):
            report.skipped["past --limit"] += 1
            return
        headers = dict(record.headers or ())
        reason = self.selection.reason_to_skip(record, headers)
        if reason is not None:
            report.skipped[reason] += 1
            return
        marker = f"{record.partition}:{record.offset}"
        report.selected += 1
        if marker in done:
            report.skipped["replayed before (use --again)"] += 1
            return
        new_headers, previous = replay_headers(list(record.headers or ()))
        if previous >= self.max_replays:
            report.skipped[f"replay count at the cap ({self.max_replays})"] += 1
            return
        if VALUE_OMITTED in headers:
            report.skipped[SKIP_VALUE_OMITTED] += 1
            return
        event = _json_object(record.value)
        report.rows.append(
            Row(
                record.partition,
                record.offset,
                _text(headers.get(STATUS)),
                _text(headers.get(ERROR_CODE)),
                _text(headers.get(ERROR_MESSAGE)),
                str(event.get("eventId", "-")),
                previous + 1,
            )
        )
        if producer is not None:
            sent = await producer.send_and_wait(
                self.target,
                kafka.value_for_send(record.key, record.value),
                key=record.key,
                headers=new_headers,
            )
            marker_value = json.dumps(
                {
                    "replayedAt": datetime.now(UTC).isoformat(),
                    "to": self.target,
                    "count": previous + 1,
                }
            ).encode()
            await producer.send_and_wait(
                ledger_topic(self.settings), marker_value, key=marker.encode()
            )
            done.add(marker)
            report.placed[(sent.topic, sent.partition, sent.offset)] = f"dlq {marker}"
        report.replayed += 1

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

    async def _already_replayed(self) -> set[str]:
        topic = ledger_topic(self.settings)
        partitions = await kafka.topic_partitions(self.settings, topic)
        if not partitions:
            return set()
        markers: set[str] = set()
        async with kafka.reading(self.settings) as consumer:
            ends = await kafka.end_offsets(consumer, partitions)
            await consumer.seek_to_beginning(*partitions)
            open_ = {tp for tp in partitions if ends[tp] > 0}
            while open_:
                for records in (await consumer.getmany(*open_, timeout_ms=500)).values():
                    markers.update(r.key.decode() for r in records if r.key is not None)
                for tp in list(open_):
                    if await consumer.position(tp) >= ends[tp]:
                        open_.discard(tp)
        return markers


def print_report(report: Report, out: TextIO, *, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    if report.rows:
        print(
            f"{'partition':>9} {'offset':>8}  {'status':<9} {'count':>5}  {'event':<24} error",
            file=out,
        )
        for row in report.rows[:50]:
            error = f"{row.error_code}: {row.error_message}" if row.error_code else ""
            print(
                f"{row.partition:>9} {row.offset:>8}  {row.status:<9} {row.count:>5}"
                f"  {row.event_id:<24} {error[:100]}",
                file=out,
            )
        if len(report.rows) > 50:
            print(f"{'':>9} … and {len(report.rows) - 50} more", file=out)
        print(file=out)
    rows = [("read", report.read), ("selected", report.selected), (verb, report.replayed)]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(report.skipped.items())]
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}}  {count:>8}", file=out)


_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_when(text: str, *, now: datetime | None = None) -> int:
    """Epoch milliseconds of an RFC 3339 time or of a duration ago (`90s`, `30m`, `2h`, `7d`)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        return int((now.timestamp() - int(value[:-1]) * _UNITS[value[-1]]) * 1000)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (RFC 3339, or a duration such as 30m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
