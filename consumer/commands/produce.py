"""`produce`: publish events from a JSON or JSONL file (or stdin), as upstream services should.

1. The input is read whole and must be UTF-8 text holding a JSON array of events, one JSON
   object, or JSON Lines. A document that does not parse is one error with its line and
   column; items are named as they appear ("element 3" of an array, "line 7" of JSON Lines).
2. Every event is validated with the same models the consumer uses.
3. All or nothing: one invalid event and nothing is sent (exit 1), so re-running after the fix
   cannot send anything twice. `--skip-invalid` sends the valid ones (exit 1 all the same:
   not everything went), `--allow-invalid` sends everything as it is, `--dry-run` sends
   nothing.
4. Records are keyed `{projectKey}/{environmentKey}/{resource.kind}/{resource.key}`, which keeps
   one resource's changes in one partition, in order.
5. `--wait`: follow the results topic until every record sent has an outcome; exit 1 unless
   all of them `succeeded`. While nothing arrives it says whether the group has a member.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from consumer.cli_errors import EXIT_FAILURE, EXIT_OK, CommandFailed
from consumer.commands.text import clip, plural
from consumer.contract.events import Invalid, TargetingEvent, decode, record_key
from consumer.contract.outcomes import source_of
from consumer.kafka import clients as kafka
from consumer.settings import Settings

Mode = Literal["all", "skip-invalid", "allow-invalid"]
PROGRESS_EVERY = 5.0  # seconds between progress lines while waiting
NO_CONSUMER_AFTER = 5.0  # seconds without an outcome before the group is looked at


@dataclass(frozen=True)
class Item:
    label: str  # "line 7", "element 3", "the object": where the operator finds it
    value: bytes


@dataclass
class ProduceReport:
    sent: int = 0
    sent_invalid: int = 0
    # (topic, partition, offset) -> label of every record sent
    placed: dict[tuple[str, int, int], str] = field(default_factory=dict)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def read_items(data: bytes, name: str) -> list[Item]:
    """The events of a JSON array, one JSON object, or JSON Lines; `CommandFailed` when the
    input is not text, holds nothing, or is one JSON document that does not parse."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandFailed(
            f"{name} is not UTF-8 text (byte {exc.start}): produce reads JSON or JSON Lines"
        ) from None
    stripped = text.strip()
    if not stripped:
        raise CommandFailed(f"{name} holds no events: nothing to send")
    lines = text.splitlines()
    if stripped.startswith("[") or not any(_is_object(line) for line in lines):
        # One document (an array, or an object over several lines): its own syntax error is
        # the one to report, not every line of it. JSON Lines has at least one line that is
        # an object on its own; no line of a pretty-printed document is.
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandFailed(
                f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if isinstance(document, list):
            return [Item(f"element {i}", _compact(v)) for i, v in enumerate(document, start=1)]
        return [
            Item("the object" if isinstance(document, dict) else "the value", _compact(document))
        ]
    return [
        Item(f"line {number}", raw.strip().encode())
        for number, raw in enumerate(lines, start=1)
        if raw.strip()
    ]


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def validate(items: list[Item]) -> list[tuple[Item, TargetingEvent | Invalid]]:
    return [(item, decode(item.value)) for item in items]


async def send(
    settings: Settings, checked: list[tuple[Item, TargetingEvent | Invalid]], topic: str
) -> ProduceReport:
    report = ProduceReport()
    producer = kafka.make_producer(settings)
    await kafka.start(producer, settings)
    try:
        futures = []
        for item, decoded in checked:
            key = None if isinstance(decoded, Invalid) else record_key(decoded)
            futures.append(await producer.send(topic, item.value, key=key))
        for (item, decoded), future in zip(checked, futures, strict=True):
            metadata = await future
            report.placed[(metadata.topic, metadata.partition, metadata.offset)] = item.label
            report.sent += 1
            report.sent_invalid += isinstance(decoded, Invalid)
    finally:
        await producer.stop()
    return report


@dataclass(frozen=True)
class Plan:
    """What a run sends and how it ends, decided before anything is sent (rule 3), so that
    `--dry-run` says exactly what the real run would do, exit code included."""

    to_send: list[tuple[Item, TargetingEvent | Invalid]]
    total: int
    invalid: int
    mode: Mode

    @property
    def refused(self) -> bool:
        """All or nothing: an invalid event and nothing goes."""
        return bool(self.invalid) and self.mode == "all"

    @property
    def exit_code(self) -> int:
        """1 when not every event went (refused, or invalid ones skipped); before --wait."""
        return EXIT_FAILURE if self.invalid and self.mode != "allow-invalid" else EXIT_OK

    def summary(self, topic: str, *, dry_run: bool) -> str:
        events = plural(self.total, "event")
        if self.refused:
            return (
                f"{'dry run: nothing would be sent' if dry_run else 'nothing sent'}:"
                f" {self.invalid} of {events} invalid (fix them and run again, or"
                " --skip-invalid to send the valid ones)"
            )
        verb = "dry run: would send" if dry_run else "sent"
        line = f"{verb} {len(self.to_send)} of {events} to {topic}"
        if self.invalid:
            line += (
                f" ({self.invalid} invalid {'would be ' if dry_run else ''}sent as asked)"
                if self.mode == "allow-invalid"
                else f" ({self.invalid} invalid skipped)"
            )
        return line


def plan(checked: list[tuple[Item, TargetingEvent | Invalid]], mode: Mode) -> Plan:
    invalid = sum(isinstance(d, Invalid) for _, d in checked)
    to_send = [
        (item, d) for item, d in checked if mode == "allow-invalid" or not isinstance(d, Invalid)
    ]
    found = Plan(to_send, len(checked), invalid, mode)
    return Plan([], found.total, invalid, mode) if found.refused else found


async def run(
    settings: Settings,
    data: bytes,
    *,
    name: str,
    topic: str,
    topic_variable: str,
    mode: Mode,
    dry_run: bool,
    wait: float | None,
    out: TextIO,
    err: TextIO,
) -> int:
    checked = validate(read_items(data, name))
    for item, decoded in checked:
        if isinstance(decoded, Invalid):
            print(f"{item.label}: invalid: {decoded.code.value}: {decoded.message}", file=out)
    decided = plan(checked, mode)
    if decided.to_send:
        # Sending to a topic that does not exist would create it on brokers that auto-create
        # topics; the dry run looks too, so that it fails where the real run would.
        await kafka.required_partitions(settings, topic, topic_variable)
        if wait is not None:
            await kafka.required_partitions(
                settings, settings.consumer_results_topic, "CONSUMER_RESULTS_TOPIC"
            )
    if dry_run or not decided.to_send:
        print(decided.summary(topic, dry_run=dry_run), file=out)
        return decided.exit_code
    started_ms = int(time.time() * 1000) - 60_000
    report = await send(settings, decided.to_send, topic)
    print(decided.summary(topic, dry_run=False), file=out)
    code = decided.exit_code
    if wait is not None and report.sent:
        found, missing = await wait_for_outcomes(
            settings, report.placed, since_ms=started_ms, timeout=wait, out=out, progress=err
        )
        if missing or any(o["status"] != "succeeded" for o in found.values()):
            code = EXIT_FAILURE
    return code


async def wait_for_outcomes(
    settings: Settings,
    placed: dict[tuple[str, int, int], str],
    *,
    since_ms: int,
    timeout: float,
    out: TextIO,
    progress: TextIO,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Follow the results topic until every record `placed` (where it went -> its label) has an
    outcome; print them. Used by `produce --wait` and `replay --wait`.

    Returns the outcomes by label and how many records got none within `timeout`.
    """
    wanted = dict(placed)
    found: dict[str, dict[str, Any]] = {}
    order = list(wanted.values())
    partitions = await kafka.required_partitions(
        settings, settings.consumer_results_topic, "CONSUMER_RESULTS_TOPIC"
    )
    async with kafka.reading(settings) as consumer:
        print(
            f"waiting up to {timeout:g} s for {plural(len(wanted), 'outcome')}…",
            file=progress,
            flush=True,
        )
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        for tp, start in starts.items():
            if start is not None:
                consumer.seek(tp, start.offset)
        began = last_progress = time.monotonic()
        looked_at_group = False
        while wanted and time.monotonic() < began + timeout:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    source = source_of(record)
                    if source is not None and source in wanted:
                        found[wanted.pop(source)] = json.loads(record.value)
            now = time.monotonic()
            if not found and not looked_at_group and now - began > NO_CONSUMER_AFTER:
                looked_at_group = True
                members = await kafka.group_members(settings, settings.consumer_group_id)
                if members == 0:
                    print(
                        f"no consumer seems to be running: group {settings.consumer_group_id}"
                        " has no members (start `ld-targeting-consumer run`)",
                        file=progress,
                        flush=True,
                    )
            if now - last_progress > PROGRESS_EVERY:
                last_progress = now
                print(f"{len(found)} of {len(order)} outcomes so far", file=progress, flush=True)
    print_outcomes(found, order, out)
    if wanted:
        print(f"{plural(len(wanted), 'record')} had no outcome within {timeout:g} s", file=out)
    return found, len(wanted)


def print_outcomes(found: dict[str, dict[str, Any]], order: list[str], out: TextIO) -> None:
    print(f"{'item':<12} {'status':<10} {'event':<24} error", file=out)
    for label in order:
        if label not in found:
            continue
        outcome = found[label]
        error = outcome.get("error") or {}
        detail = f"{error.get('code')}: {error.get('message')}" if error else ""
        print(
            f"{label:<12} {outcome['status']:<10} {outcome.get('eventId')!s:<24}"
            f" {clip(detail, 80)}",
            file=out,
        )
    counts = Counter(outcome["status"] for outcome in found.values())
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    print(f"outcomes: {summary or 'none'}", file=out)
