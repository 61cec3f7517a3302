"""`check`: the preflight an operator runs before and after a deploy, and `run` at start.

One row per question, each answered without changing anything:

1. broker: a broker of KAFKA_BOOTSTRAP_SERVERS answers;
2. producer: a producer starts as configured (with KAFKA_PRODUCER_IDEMPOTENCE=true the broker
   must grant a producer id: Tansu does not);
3. the three topics exist (partition counts; the results topic should have at least as many
   partitions as the input topic, or reading outcomes scales less than consuming events);
4. record sizes: a dead-letter copy (its input, byte for byte, plus headers) fits the
   dead-letter topic and the producer, for the largest record the input topic takes;
5. the group: committed offset, end and lag per input partition (information, never a failure);
6. LaunchDarkly: `GET /api/v2/caller-identity` answers 2xx with the token (its name and kind
   are shown, never the token), and the rate-limit headers that answer carried (what is left
   of each budget, its limit when named, its reset as a time).

Every row is always shown: one that cannot be answered because an earlier one failed (no
broker, a missing topic, no token) says `skipped` and why. Without a usable token the Kafka
rows still run. Exit 0 only when no row failed (a warning does not fail).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import TopicPartition

from consumer.cli_errors import explain
from consumer.commands.text import plural
from consumer.kafka import clients as kafka
from consumer.launchdarkly.client import LdClient, TokenSource
from consumer.launchdarkly.errors import ApiError
from consumer.launchdarkly.routing import CALLER_IDENTITY_PATH
from consumer.settings import Settings

Status = Literal["ok", "warn", "fail", "skipped"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


async def preflight(
    settings: Settings, token: TokenSource | None, *, no_token: str | None = None
) -> Report:
    """Every row, each answered or `skipped` with the reason (a row is never dropped).
    `token` None: the Kafka rows still run, and the LaunchDarkly row fails with `no_token`
    (why the configured token cannot be used)."""
    checks = await _kafka_checks(settings)
    checks.extend(await launchdarkly(settings, token, no_token=no_token))
    return Report(checks)


def _failure_line(exc: BaseException) -> str:
    known = explain(exc)
    return str(known) if known is not None else f"{type(exc).__name__}: {exc}"


async def _kafka_checks(settings: Settings) -> list[Check]:
    address = settings.kafka_bootstrap_servers
    topics = [
        settings.consumer_input_topic,
        settings.consumer_results_topic,
        settings.consumer_dlq_topic,
    ]

    def skipped(why: str) -> list[Check]:
        names = ["producer", *(f"topic {t}" for t in topics), "record sizes", "group"]
        return [Check(name, "skipped", why) for name in names]

    try:
        async with kafka.admin_client(settings) as admin:
            cluster = await admin.describe_cluster()
    except Exception as exc:  # noqa: BLE001 - any failure here is this row's answer
        return [Check("broker", "fail", _failure_line(exc)), *skipped("no broker")]
    brokers = len(cluster.get("brokers", []))
    checks = [
        Check(
            "broker",
            "ok",
            f"{address} answered ({brokers} broker{'s' * (brokers != 1)},"
            f" cluster {cluster.get('cluster_id')})",
            {"brokers": brokers, "cluster_id": cluster.get("cluster_id")},
        ),
        await _producer(settings),
    ]
    counts = await kafka.existing_topics(settings, topics)
    for topic, variable in zip(
        topics,
        ("CONSUMER_INPUT_TOPIC", "CONSUMER_RESULTS_TOPIC", "CONSUMER_DLQ_TOPIC"),
        strict=True,
    ):
        if topic not in counts:
            checks.append(
                Check(
                    f"topic {topic}",
                    "fail",
                    f"does not exist: create it (docs/operations.md), or set {variable} to the"
                    " topic's name",
                )
            )
            continue
        n = counts[topic]
        checks.append(
            Check(f"topic {topic}", "ok", f"{n} partition{'s' * (n != 1)}", {"partitions": n})
        )
    inputs = counts.get(settings.consumer_input_topic)
    results = counts.get(settings.consumer_results_topic)
    if inputs is not None and results is not None and results < inputs:
        row = checks[-2]
        row.status = "warn"
        row.detail += (
            f", fewer than the input topic's {inputs}: readers of outcomes scale less than"
            " the consumer"
        )
    if len(counts) == len(topics):
        checks.append(await _sizes(settings))
    else:
        checks.append(Check("record sizes", "skipped", "a topic is missing"))
    if inputs is not None:
        try:
            checks.append(await _group(settings, inputs))
        except Exception as exc:  # noqa: BLE001 - information, never a failure
            # A new cluster has no coordinator until its offsets topic exists (the first
            # group to join creates it): the lag is then unknown, and nothing is wrong.
            why = _failure_line(exc)
            checks.append(Check("group", "warn", f"the group's offsets cannot be read now: {why}"))
    else:
        checks.append(Check("group", "skipped", "no input topic"))
    return checks


async def _sizes(settings: Settings) -> Check:
    """Whether every record the input topic takes can be dead-lettered byte for byte: the
    dead-letter topic and the producer must take it with its headers, or such a record halts
    its partition (halts.py) when it fails."""
    input_topic, dlq = settings.consumer_input_topic, settings.consumer_dlq_topic
    try:
        configs = await kafka.topic_configs(settings, [input_topic, dlq])
    except Exception as exc:  # noqa: BLE001 - a hint, never a failure
        return Check("record sizes", "skipped", f"topic configs not readable: {exc!r}")
    if input_topic not in configs or dlq not in configs:
        return Check("record sizes", "skipped", "topic configs not readable")

    def limit(topic: str) -> int:
        value = configs[topic].get("max.message.bytes")
        return int(value) if value and value.isdigit() else kafka.DEFAULT_MAX_MESSAGE_BYTES

    largest, dlq_limit = limit(input_topic), limit(dlq)
    producer = settings.kafka_producer_max_request_size
    data = {
        "input_max_message_bytes": largest,
        "dlq_max_message_bytes": dlq_limit,
        "producer_max_request_size": producer,
    }
    needed = largest + kafka.DEAD_LETTER_ROOM
    short = [
        f"{what} ({value} bytes)"
        for what, value in (
            ("the dead-letter topic's max.message.bytes", dlq_limit),
            ("KAFKA_PRODUCER_MAX_REQUEST_SIZE", producer),
        )
        if value < needed
    ]
    if short:
        return Check(
            "record sizes",
            "warn",
            f"the input topic takes records of up to {largest} bytes, but "
            + " and ".join(short)
            + f" cannot hold such a record's dead-letter copy ({needed} bytes with headers):"
            " when one fails, its partition halts until the limit is raised",
            data,
        )
    return Check(
        "record sizes",
        "ok",
        f"dead-letter copies fit: input records up to {largest} bytes, the dead-letter topic"
        f" takes {dlq_limit}",
        data,
    )


async def _producer(settings: Settings) -> Check:
    """Starting a producer is where an idempotent one asks for its producer id."""
    producer = kafka.make_producer(settings)
    try:
        await kafka.start(producer, settings)
    except Exception as exc:  # noqa: BLE001 - any failure here is this row's answer
        return Check("producer", "fail", _failure_line(exc))
    await producer.stop()
    idempotence = "on" if settings.kafka_producer_idempotence else "off"
    return Check("producer", "ok", f"starts (idempotence {idempotence})")


async def _group(settings: Settings, partitions: int) -> Check:
    group = settings.consumer_group_id
    tps = [TopicPartition(settings.consumer_input_topic, p) for p in range(partitions)]
    note = ""
    try:
        async with kafka.admin_client(settings) as admin:
            # Explicit partitions: Tansu answers only those (TANSU.md).
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    except GroupCoordinatorNotAvailableError:
        # A new cluster has no coordinator until its offsets topic exists, which the first
        # group to join creates: nothing is committed yet.
        offsets, note = {}, " (no group coordinator yet: no group has joined this cluster)"
    async with kafka.reading(settings) as consumer:
        ends = await kafka.end_offsets(consumer, tps)
        starts = await consumer.beginning_offsets(tps)
    rows = []
    for tp in tps:
        meta = offsets.get(tp)
        committed = meta.offset if meta is not None and meta.offset >= 0 else None
        lag = ends[tp] - (committed if committed is not None else starts.get(tp, 0))
        rows.append(
            {"partition": tp.partition, "committed": committed, "end": ends[tp], "lag": lag}
        )
    total = sum(r["lag"] for r in rows)
    none = sum(r["committed"] is None for r in rows)
    detail = f"{group}: lag {total}"
    if none:
        detail += f" ({none} of {plural(len(rows), 'partition')} without a committed offset)"
    detail += note
    return Check("group", "ok", detail, {"group": group, "partitions": rows})


async def launchdarkly(
    settings: Settings, token: TokenSource | None, *, no_token: str | None = None
) -> list[Check]:
    """Row 6: whether LaunchDarkly answers and accepts the token, and the rate limits its
    answer carried (`verify` asks it too)."""
    url = settings.ld_base_url
    if token is None:
        why = no_token or "LD_API_TOKEN: not set (set LD_API_TOKEN or LD_API_TOKEN_FILE)"
        return [
            Check("launchdarkly", "fail", f"no usable token: {why}"),
            Check("rate limits", "skipped", "no token"),
        ]
    client = LdClient(url, token, timeout=settings.ld_request_timeout_ms / 1000)
    try:
        async with client:
            response = await client.get(CALLER_IDENTITY_PATH)
    except ApiError as exc:
        return [
            Check(
                "launchdarkly",
                "fail",
                f"cannot reach LaunchDarkly at {url} ({exc.message}): check LD_BASE_URL and"
                " the network",
            ),
            Check("rate limits", "skipped", "no answer from LaunchDarkly"),
        ]
    limits = {name: value for name, value in response.headers.items() if name != "Retry-After"}
    rate = Check("rate limits", "ok", describe_rate_limits(limits, time.time() * 1000), limits)
    status = response.status
    if response.ok:
        body = response.body if isinstance(response.body, dict) else {}
        who = {k: body.get(k) for k in ("tokenName", "tokenKind", "authKind", "accountId")}
        detail = (
            f"{url} accepts the token: {who['tokenName'] or 'unnamed'}"
            f" (kind {who['tokenKind'] or who['authKind'] or 'unknown'})"
        )
        return [Check("launchdarkly", "ok", detail, who), rate]
    if status == 401:
        detail = (
            f"{url} refuses the token (HTTP 401): set LD_API_TOKEN or LD_API_TOKEN_FILE to a"
            " valid access token"
        )
    elif status == 429:
        return [Check("launchdarkly", "warn", f"{url} answered 429: rate limited now"), rate]
    elif status == 404:
        detail = f"{url} has no {CALLER_IDENTITY_PATH} (HTTP 404): check LD_BASE_URL"
    else:
        detail = f"{url} answered HTTP {status} to {CALLER_IDENTITY_PATH}"
    return [Check("launchdarkly", "fail", detail), rate]


# The budgets LaunchDarkly reports, by the middle of their header names.
_BUDGETS = {"Global": "global", "Route": "route", "Auth-Token": "token"}


def describe_rate_limits(headers: dict[str, str], now_ms: float) -> str:
    """The rate-limit headers of an answer, for a person: what is left of each budget, its
    limit when the answer names it, and its reset as a time (UTC) and in seconds from now."""
    found = {name.lower(): value for name, value in headers.items()}
    parts = []
    for middle, label in _BUDGETS.items():
        prefix = f"x-ratelimit-{middle.lower()}-"
        left, limit = found.get(prefix + "remaining"), found.get(prefix + "limit")
        if left is None and limit is None:
            continue
        text = f"{label}: {left if left is not None else '?'} left"
        if limit is not None:
            text += f" of {limit}"
        reset = found.get(prefix + "reset")
        if reset is not None:
            text += f", {_reset(reset, now_ms)}"
        parts.append(text)
    reset = found.get("x-ratelimit-reset")
    if reset is not None:
        parts.append(f"window {_reset(reset, now_ms)}")
    return "; ".join(parts) or "no rate-limit headers in the answer"


def _reset(value: str, now_ms: float) -> str:
    try:
        at_ms = int(value)
    except ValueError:
        return f"resets at {value!r}"
    at = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%H:%M:%S")
    return f"resets at {at} UTC (in {max(0.0, (at_ms - now_ms) / 1000):.0f} s)"


def print_table(report: Report, out: TextIO) -> None:
    width = max(len(c.name) for c in report.checks)
    print(f"{'check':<{width}}  {'status':<7} detail", file=out)
    for c in report.checks:
        print(f"{c.name:<{width}}  {c.status:<7} {c.detail}", file=out)
        for row in c.data.get("partitions", []) if c.name == "group" else []:
            committed = "-" if row["committed"] is None else row["committed"]
            print(
                f"{'':<{width}}  {'':<7}   partition {row['partition']}: committed"
                f" {committed}, end {row['end']}, lag {row['lag']}",
                file=out,
            )
    failed = report.failed()
    print(
        "all checks passed"
        if not failed
        else f"{len(failed)} failed: {', '.join(c.name for c in failed)}",
        file=out,
    )


def print_json(report: Report, out: TextIO) -> None:
    body = {"ok": report.ok, "checks": [asdict(c) for c in report.checks]}
    print(json.dumps(body), file=out)
