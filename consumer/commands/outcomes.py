"""`outcomes`: "what happened to event X?" answered from the results topic.

1. The results topic is read from `--since` (its record timestamps; the beginning without it)
   up to its end as of the start, or on and on with `--follow`.
2. An outcome is shown when it matches the filter (filters.py): its event id, status, error
   code and resource, and its record's timestamp.
3. `--limit N` shows the newest N matching outcomes published before the read began, in time
   order (their record timestamps, oldest first); without it, every match is shown as read
   (in order within each partition). With `--event-id` and no `--limit` the read stops as
   soon as every id asked for has an outcome. `--follow` then shows new outcomes as they come.

Output: a table, or `--json`: each outcome's value as published, one per line.
"""

from __future__ import annotations

import heapq
import json
from typing import Any, TextIO

from aiokafka import ConsumerRecord

from consumer.commands.filters import Filter, resource_path
from consumer.kafka import clients as kafka
from consumer.settings import Settings


def matches(selection: Filter, record: ConsumerRecord, outcome: dict[str, Any]) -> bool:
    error = outcome.get("error") or {}
    r = outcome.get("resource") or {}
    reason = selection.reason_to_skip(
        record.timestamp,
        status=outcome.get("status"),
        error_code=error.get("code"),
        event_id=outcome.get("eventId"),
        resource=resource_path(
            r.get("projectKey"), r.get("environmentKey"), r.get("kind"), r.get("key")
        ),
    )
    return reason is None


class Printer:
    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.header_shown = False

    def show(self, raw: bytes, outcome: dict[str, Any]) -> None:
        if self.as_json:
            print(raw.decode(), file=self.out, flush=True)
            return
        if not self.header_shown:
            self.header_shown = True
            print(
                f"{'event':<24} {'status':<9} {'instruction':<27} {'http':<4}"
                f" {'completed':<24} error",
                file=self.out,
            )
        error = outcome.get("error") or {}
        http = outcome.get("http") or {}
        print(
            f"{outcome.get('eventId') or '-'!s:<24} {outcome.get('status')!s:<9}"
            f" {outcome.get('instructionKind') or '-'!s:<27} {http.get('status') or '-'!s:<4}"
            f" {outcome.get('completedAt') or '-'!s:<24}"
            f" {(error.get('code', '') + ': ' + error.get('message', '')) if error else ''}",
            file=self.out,
            flush=True,
        )


async def read(
    settings: Settings,
    selection: Filter,
    printer: Printer,
    *,
    limit: int | None = None,
    follow: bool = False,
) -> tuple[int, set[str]]:
    """Print the matching outcomes (at most the newest `limit`, then new ones with `follow`);
    returns how many were shown and the event ids asked for that have none."""
    topic = settings.consumer_results_topic
    partitions = await kafka.required_partitions(settings, topic, "CONSUMER_RESULTS_TOPIC")
    shown = 0
    missing = set(selection.event_ids)
    # --limit: the newest N of what was published when the read began (rule 3), kept in a
    # heap by (timestamp, partition, offset) and shown oldest first once every partition has
    # been read to its end; outcomes that arrive meanwhile (--follow) are shown after them.
    newest: list[tuple[int, int, int, bytes, dict[str, Any]]] = []
    later: list[tuple[bytes, dict[str, Any]]] = []
    held = limit is not None

    def show(raw: bytes, outcome: dict[str, Any]) -> None:
        nonlocal shown
        printer.show(raw, outcome)
        shown += 1
        missing.discard(outcome.get("eventId"))

    async with kafka.reading(settings) as consumer:
        ends = await kafka.end_offsets(consumer, partitions)
        await consumer.seek_to_beginning(*partitions)
        if selection.since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(partitions, selection.since_ms))
            for tp, at in found.items():
                if at is not None:
                    consumer.seek(tp, at.offset)
        open_ = {tp for tp in partitions if ends[tp] > 0}
        while follow or open_ or held:
            if open_ or follow:
                fetched = await consumer.getmany(timeout_ms=500, max_records=2_000)
            else:
                fetched = {}
            for tp, records in fetched.items():
                for record in records:
                    outcome = _parsed(record.value)
                    if outcome is None or not matches(selection, record, outcome):
                        continue
                    if not held:
                        show(record.value, outcome)
                    elif record.offset >= ends[tp]:
                        later.append((record.value, outcome))
                    else:
                        entry = (record.timestamp, record.partition, record.offset)
                        heapq.heappush(newest, (*entry, record.value, outcome))
                        if len(newest) > (limit or 0):
                            heapq.heappop(newest)
            if selection.event_ids and not missing and not held:
                return shown, missing
            for tp in list(open_):
                if await consumer.position(tp) >= ends[tp]:
                    open_.discard(tp)
            if held and not open_:
                held = False
                for *_, raw, outcome in sorted(newest, key=lambda e: e[:3]):
                    show(raw, outcome)
                for raw, outcome in later:
                    show(raw, outcome)
                if not follow or (selection.event_ids and not missing):
                    return shown, missing
    return shown, missing


def _parsed(value: bytes | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(value) if value is not None else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
