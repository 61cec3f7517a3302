"""`ld-targeting-consumer verify`: does LaunchDarkly hold what the outcomes say it should?

1. Read the results topic (to its end as of the start), keep the `succeeded` outcomes the
   filter takes (filters.py: `--since`/`--until` on `completedAt`, `--until` inclusive, and
   `--resource`), and read each one's event back from the input topic (`source`): an outcome
   says what happened, the event what it was. `--event-id` keeps the targets those events
   touched (step 2).
2. `expectations` (pure): apply the events in the order they were applied (`completedAt`,
   then partition and offset) to a map of targets -> what LaunchDarkly should now hold, each
   with the outcome that set it. A target is one segment membership (standard: per side,
   context kind and key; big: per side and key), one scheduled removal (segment: per target
   type, context kind and key; flag: per context), or a segment's name.
3. `reads` (pure) groups the targets by the read that shows them: one segment read serves
   all its standard members and its name, one expiring-targets read all the segment's (or
   flag's) scheduled removals, and a big segment's membership is read per context.
4. The reads go through the rate limiter and retry 429s and passing failures; `found_in`
   (pure) takes each target's value out of its read's answer.
5. `drift` (pure): every target whose found value is not the expected one, with the outcome
   that set the expectation. Drift made by another client is drift too: the report names the
   event and time of the consumer's last write, so anything later is someone else's.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from aiokafka.structs import TopicPartition

from consumer.cli_errors import CommandFailed
from consumer.commands import check
from consumer.commands.filters import Filter, resource_path
from consumer.commands.text import plural
from consumer.contract.events import (
    Invalid,
    TargetingEvent,
    decode,
)
from consumer.contract.outcomes import Outcome, Status
from consumer.kafka import clients as kafka
from consumer.launchdarkly.client import LdClient, TokenSource
from consumer.launchdarkly.effects import (
    Read,
    Target,
    Unread,
    effects,
    found_in,
    reads,
)
from consumer.launchdarkly.errors import ConnectionFailed, RateLimited, RequestTimeout, Unauthorized
from consumer.launchdarkly.get import throttled_get
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.throttle import RateLimiter
from consumer.settings import Settings

log = structlog.get_logger(__name__)

PROGRESS_EVERY = 2.0  # seconds between progress lines on stderr
READ_ATTEMPTS = 5  # failed attempts (429s not counted) before a read is given up

# ---------------------------------------------------------------------------------------------
# Expectations (pure)


@dataclass(frozen=True, slots=True)
class SetBy:
    """The outcome that set an expectation."""

    event_id: str | None
    partition: int
    offset: int
    completed_at: str

    def describe(self) -> str:
        return f"{self.event_id} ({self.partition}:{self.offset}, {self.completed_at})"


@dataclass(slots=True)
class Expectation:
    target: Target
    value: Any  # bool (member), int | None (segment expiry), dict | None (flag expiry), str (name)
    read: str
    set_by: SetBy
    events: set[str] = field(default_factory=set)  # every event id that touched the target


def _resource(outcome: Outcome) -> str:
    r = outcome.resource
    assert r is not None
    return resource_path(r.projectKey, r.environmentKey, r.kind, r.key)


def _order(pair: tuple[Outcome, TargetingEvent]) -> tuple[Any, ...]:
    outcome = pair[0]
    return (outcome.completedAt, outcome.source.partition, outcome.source.offset)


def expectations(pairs: Iterable[tuple[Outcome, TargetingEvent]]) -> dict[Target, Expectation]:
    """What LaunchDarkly should hold after the succeeded outcomes' events, applied in order."""
    state: dict[Target, Expectation] = {}
    for outcome, event in sorted(pairs, key=_order):
        if outcome.status is not Status.SUCCEEDED or outcome.resource is None:
            continue
        resource = _resource(outcome)
        set_by = SetBy(
            outcome.eventId,
            outcome.source.partition,
            outcome.source.offset,
            outcome.completedAt.isoformat().replace("+00:00", "Z"),
        )

        event_id = outcome.eventId or ""

        def put(
            target: Target, value: Any, read: str, set_by: SetBy = set_by, event_id: str = event_id
        ) -> None:
            previous = state.get(target)
            touched = previous.events if previous is not None else set()
            state[target] = Expectation(target, value, read, set_by, touched | {event_id})

        path = outcome.http.path if outcome.http is not None else ""
        big = path.endswith(("/contexts", "/users"))
        for effect in effects(resource, event.instruction, big=big):
            put(effect.target, effect.value, effect.read)
            for cleared in effect.clears:
                state.pop(cleared, None)  # a removed target's scheduled removal goes with it
    return state


# ---------------------------------------------------------------------------------------------
# Reads (pure)


# ---------------------------------------------------------------------------------------------
# Drift (pure)


@dataclass(slots=True)
class Drift:
    target: Target
    expected: Any
    found: Any
    set_by: SetBy


def drift(
    expected: dict[Target, Expectation], found: dict[Target, Any]
) -> tuple[list[Drift], list[Drift]]:
    """(targets that differ, targets that could not be read), each sorted by resource."""
    differs: list[Drift] = []
    unread: list[Drift] = []
    for target in sorted(expected):
        expectation = expected[target]
        value = found.get(target, Unread("not read"))
        entry = Drift(target, expectation.value, value, expectation.set_by)
        if isinstance(value, Unread):
            unread.append(entry)
        elif value != expectation.value:
            differs.append(entry)
    return differs, unread


# ---------------------------------------------------------------------------------------------
# Selection


def takes(selection: Filter, outcome: Outcome) -> bool:
    """A succeeded outcome completed within `--since`/`--until` (inclusive) on a resource the
    `--resource` glob matches."""
    if outcome.status is not Status.SUCCEEDED or outcome.resource is None:
        return False
    at = outcome.completedAt.timestamp() * 1000
    if selection.outside(at, until_inclusive=True) is not None:
        return False
    return selection.takes_resource(_resource(outcome))


def keeps(selection: Filter, expectation: Expectation) -> bool:
    """A target one of the `--event-id` events touched (every target without it)."""
    return selection.takes_any_event(expectation.events)


@dataclass(slots=True)
class Report:
    outcomes_read: int = 0
    outcomes_used: int = 0
    events_missing: int = 0  # succeeded outcomes whose input record could not be read
    targets: int = 0
    resources: int = 0
    reads: int = 0
    drifted: list[Drift] = field(default_factory=list)
    unread: list[Drift] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.drifted and not self.unread

    def as_json(self) -> dict[str, Any]:
        def rows(entries: list[Drift]) -> dict[str, list[dict[str, Any]]]:
            grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for d in entries:
                grouped[d.target.resource].append(
                    {
                        "target": d.target.label(),
                        "aspect": d.target.aspect,
                        "contextKind": d.target.context_kind or None,
                        "key": d.target.key or None,
                        "expected": d.expected,
                        "found": d.found.why if isinstance(d.found, Unread) else d.found,
                        "setBy": {
                            "eventId": d.set_by.event_id,
                            "partition": d.set_by.partition,
                            "offset": d.set_by.offset,
                            "completedAt": d.set_by.completed_at,
                        },
                    }
                )
            return dict(grouped)

        return {
            "outcomesRead": self.outcomes_read,
            "outcomesUsed": self.outcomes_used,
            "eventsMissing": self.events_missing,
            "targets": self.targets,
            "resources": self.resources,
            "reads": self.reads,
            "drift": rows(self.drifted),
            "unread": rows(self.unread),
        }


def _show(value: Any) -> str:
    if value is True:
        return "member"
    if value is False:
        return "not a member"
    if value is None:
        return "none"
    if isinstance(value, Unread):
        return f"not read ({value.why})"
    if isinstance(value, dict):
        return f"{value.get('value')} on {value.get('variationId')}"
    return str(value)


def print_report(report: Report, out: TextIO) -> None:
    print(
        f"verify: {plural(report.outcomes_used, 'succeeded outcome')} of"
        f" {report.outcomes_read} read; {plural(report.targets, 'target')} on"
        f" {plural(report.resources, 'resource')} checked with {plural(report.reads, 'read')}",
        file=out,
    )
    if report.events_missing:
        print(
            f"  {plural(report.events_missing, 'outcome')} skipped: their input record is no longer"
            " readable (retention)",
            file=out,
        )
    for title, entries in (("Drift", report.drifted), ("Not verified", report.unread)):
        if not entries:
            continue
        print(f"\n{title}:", file=out)
        header = ("resource", "target", "expected", "found", "expected since (event, source, time)")
        rows = [
            (
                d.target.resource,
                d.target.label(),
                _show(d.expected),
                _show(d.found),
                d.set_by.describe(),
            )
            for d in entries
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print(
                "  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)),
                file=out,
            )
    if report.drifted:
        print(
            "\nA found value differs from what this consumer last wrote at the time shown:"
            " a change after that time was made by another client (or by a later event not"
            " selected here).",
            file=out,
        )
    if not report.targets:
        print(
            "nothing to verify: no target of a succeeded outcome matches the selection (see"
            " --since, --until, --resource, --event-id)",
            file=out,
        )
    elif report.clean:
        print("no drift", file=out)


# ---------------------------------------------------------------------------------------------
# The command (I/O)


class Verifier:
    def __init__(
        self,
        settings: Settings,
        selection: Filter,
        *,
        progress: TextIO = sys.stderr,
        client: LdClient | None = None,
    ) -> None:
        self.settings = settings
        self.selection = selection
        self.progress = progress
        self._token = TokenSource(settings.ld_api_token, settings.ld_api_token_file)
        self._client = client or LdClient(
            settings.ld_base_url, self._token, timeout=settings.ld_request_timeout_ms / 1000
        )
        self._throttle = RateLimiter()
        self._policy = RetryPolicy(
            base_delay=settings.ld_retry_base_delay_ms / 1000,
            max_delay=settings.ld_retry_max_delay_ms / 1000,
            rate_limit_default=settings.ld_rate_limit_default_wait_ms / 1000,
        )
        self._rng = random.Random()
        self._last_progress = time.monotonic()

    async def run(self) -> Report:
        report = Report()
        topic = self.settings.consumer_results_topic
        partitions = await kafka.required_partitions(self.settings, topic, "CONSUMER_RESULTS_TOPIC")
        # One probe first, as `check` does: a wrong token or an unreachable API is one line,
        # not a read per target retried and reported as "not read".
        api = (await check.launchdarkly(self.settings, self._token))[0]
        if api.status == "fail":
            raise CommandFailed(api.detail)
        outcomes = await self._outcomes(report, partitions)
        events = await self._events([o.source for o in outcomes])
        pairs = []
        for outcome in outcomes:
            event = events.get(
                (outcome.source.topic, outcome.source.partition, outcome.source.offset)
            )
            if event is None or event.eventId != outcome.eventId:
                report.events_missing += 1
                continue
            pairs.append((outcome, event))
        report.outcomes_used = len(pairs)
        expected = {t: e for t, e in expectations(pairs).items() if keeps(self.selection, e)}
        report.targets = len(expected)
        report.resources = len({t.resource for t in expected})
        planned = reads(expected.values())
        found: dict[Target, Any] = {}
        await self._client.start()
        try:
            for done, read in enumerate(planned, 1):
                found.update(await self._read(read))
                report.reads += 1
                self._tick(f"verify: {done} of {len(planned)} reads")
        finally:
            await self._client.stop()
        report.drifted, report.unread = drift(expected, found)
        return report

    def _tick(self, message: str) -> None:
        if time.monotonic() - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = time.monotonic()
            print(message, file=self.progress, flush=True)

    async def _read(self, read: Read) -> dict[Target, Any]:
        route = f"verify-{read.kind}"
        failures = 0
        while True:
            response, error = await throttled_get(
                self._client,
                self._throttle,
                read.path,
                route,
                rate_limit_default=self._policy.rate_limit_default,
                accept=(404,),
            )
            if error is None:
                assert response is not None
                return found_in(read, response.status, response.body)
            if isinstance(error, RateLimited):
                await asyncio.sleep(error.retry_after)
                continue
            failures += 1
            url = self.settings.ld_base_url
            if isinstance(error, Unauthorized):  # the token was revoked meanwhile
                raise CommandFailed(
                    f"{url} refuses the token (HTTP 401) since verify started: set LD_API_TOKEN"
                    " or LD_API_TOKEN_FILE to a valid access token and run verify again"
                )
            if isinstance(error, ConnectionFailed | RequestTimeout) and failures >= READ_ATTEMPTS:
                raise CommandFailed(
                    f"LaunchDarkly at {url} stopped answering ({error.message}, {failures}"
                    " tries): check LD_BASE_URL and the network, and run verify again"
                )
            if not error.retryable or failures >= READ_ATTEMPTS:
                return {t: Unread(error.message) for t in read.targets}
            await asyncio.sleep(self._policy.backoff(failures, self._rng))

    # -- Kafka --------------------------------------------------------------------------------

    async def _outcomes(self, report: Report, partitions: list[TopicPartition]) -> list[Outcome]:
        found: list[Outcome] = []
        async with kafka.reading(self.settings) as consumer:
            ends = await kafka.end_offsets(consumer, partitions)
            await consumer.seek_to_beginning(*partitions)
            if self.selection.since_ms is not None:
                # Outcomes are published after `completedAt`: none of the window is earlier.
                times = await consumer.offsets_for_times(
                    dict.fromkeys(partitions, self.selection.since_ms)
                )
                for tp, offset in times.items():
                    if offset is not None:
                        consumer.seek(tp, offset.offset)
            async for record in kafka.records_to(consumer, partitions, ends):
                report.outcomes_read += 1
                try:
                    outcome = Outcome.model_validate_json(record.value or b"")
                except ValueError:
                    continue
                if takes(self.selection, outcome):
                    found.append(outcome)
                self._tick(f"verify: {plural(report.outcomes_read, 'outcome')} read")
        return found

    async def _events(self, sources: Sequence[Any]) -> dict[tuple[str, int, int], TargetingEvent]:
        wanted: dict[TopicPartition, set[int]] = defaultdict(set)
        for source in sources:
            wanted[TopicPartition(source.topic, source.partition)].add(source.offset)
        if not wanted:
            return {}
        events: dict[tuple[str, int, int], TargetingEvent] = {}
        async with kafka.reading(self.settings) as consumer:
            partitions = list(wanted)
            ends = await kafka.end_offsets(consumer, partitions)
            for tp in partitions:
                consumer.seek(tp, min(wanted[tp]))
            last = {tp: min(ends[tp], max(offsets) + 1) for tp, offsets in wanted.items()}
            async for record in kafka.records_to(consumer, partitions, last):
                tp = TopicPartition(record.topic, record.partition)
                if record.offset in wanted[tp]:
                    decoded = decode(record.value)
                    if not isinstance(decoded, Invalid):
                        events[(record.topic, record.partition, record.offset)] = decoded
                self._tick(f"verify: {len(events)} of {len(sources)} events read")
        return events
