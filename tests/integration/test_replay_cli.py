"""`replay` through the console script: once per original (twice and `--again` on events that
fail again), --limit pages forward, copies without their value are refused, missing topics and
bad arguments are one line, the dry run shows why each record was dead-lettered."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest

from consumer.commands.replay import ledger_topic
from consumer.contract.dead_letters import REPLAY_COUNT, REPLAY_OF
from consumer.contract.events import record_key
from consumer.kafka import clients as kafka
from consumer.settings import Settings
from consumer.simulator import RunningSimulator
from tests.factories import encode, event_dict
from tests.integration.commands import Result, command
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    dead_letters,
    environment,
    make_settings,
    outcomes,
    produce,
    running,
)

Letter = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@pytest.fixture
async def settings(kafka_bootstrap: str, on_tansu: bool) -> Settings:
    found = make_settings(
        kafka_bootstrap, "http://127.0.0.1:9", on_tansu=on_tansu, log_level="info"
    )
    await create_topics(found)
    return found


def letter(event_id: str, *, omitted: bool = False) -> Letter:
    event = event_dict(key="s", project=PROJECT, env=ENV, event_id=event_id)
    headers = [
        ("ldc.status", b"rejected"),
        ("ldc.error.code", b"not_found"),
        ("ldc.error.message", b"HTTP 404 unknown segment s"),
    ]
    if omitted:
        headers.append(("ldc.value-omitted", b"2000000 bytes"))
    return record_key(event), None if omitted else encode(event), headers


async def write(settings: Settings, letters: list[Letter]) -> None:
    producer = kafka.make_producer(settings)
    await kafka.start(producer, settings)
    try:
        for key, value, headers in letters:
            await producer.send_and_wait(
                settings.consumer_dlq_topic,
                kafka.value_for_send(key, value),
                key=key,
                headers=headers,
            )
    finally:
        await producer.stop()


def summary(result: Result, label: str) -> int:
    for line in result.out.splitlines():
        if line.startswith(label):
            return int(line.split()[-1])
    return 0


async def replayed_ids(settings: Settings, at_least: int) -> list[str]:
    records = await kafka.read_topic(
        settings, settings.consumer_input_topic, until=lambda r: len(r) >= at_least, timeout=2
    )
    return [json.loads(r.value)["eventId"] for r in records]


async def test_limit_counts_records_replayed_so_runs_page_forward(settings: Settings) -> None:
    await write(settings, [letter(f"e{i}") for i in range(5)])
    env = environment(settings)
    pages = []
    for _ in range(4):
        result = await command("replay", "--status", "rejected", "--limit", "2", env=env)
        assert result.code == 0, result.out + result.err
        pages.append(summary(result, "replayed"))
    assert pages == [2, 2, 1, 0]
    assert sorted(await replayed_ids(settings, 6)) == [f"e{i}" for i in range(5)]


async def test_a_copy_without_its_value_is_refused(settings: Settings) -> None:
    await write(settings, [letter("big", omitted=True), letter("small")])
    result = await command("replay", env=environment(settings))
    assert result.code == 0, result.out + result.err
    assert summary(result, "replayed") == 1
    assert summary(result, "skipped: value omitted from the copy (ldc.value-omitted)") == 1
    assert await replayed_ids(settings, 2) == ["small"]


async def test_the_dry_run_shows_error_code_and_message(settings: Settings) -> None:
    await write(settings, [letter("e0")])
    result = await command("replay", "--dry-run", env=environment(settings))
    assert result.code == 0
    row = next(line for line in result.out.splitlines() if "e0" in line)
    assert "rejected" in row and "not_found: HTTP 404 unknown segment s" in row
    assert summary(result, "would replay") == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--limit", "-1"], "--limit: must be 1 or more"),
        (["--limit", "0"], "--limit: must be 1 or more"),
        (["--limit", "two"], "--limit: not a whole number"),
        (["--error-code", "not_a_code"], "--error-code: invalid choice: 'not_a_code'"),
        (["--since", "yesterday"], "not a time: 'yesterday'"),
    ],
)
async def test_bad_arguments_are_one_line(settings: Settings, argv: list[str], needle: str) -> None:
    result = await command("replay", *argv, env=environment(settings))
    result.failed_with(2, needle)


async def test_replay_is_once_per_original_and_again_once_more_for_events_that_fail_again(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator
) -> None:
    """Three events rejected (their segments do not exist) and rejected again after every
    replay: each replay run sends one copy per original, never one per dead letter."""
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, log_level="info"
    )
    await create_topics(settings)
    env = environment(settings)
    failing = [
        event_dict(key=f"gone{i}", project=PROJECT, env=ENV, event_id=f"f{i}") for i in range(3)
    ]
    await produce(settings, [(record_key(e), encode(e), []) for e in failing])
    runs = []
    async with running(settings):
        first = await outcomes(settings, 3)
        await dead_letters(settings, 3)
        originals = {f"{o.source.topic}/{o.source.partition}/{o.source.offset}" for o in first}
        total = 3
        for argv, replayed in [
            ([], 3),  # one copy of each original
            ([], 0),  # replayed before: nothing, though each original has two dead letters now
            (["--again"], 3),  # once more: one copy each, not one per dead letter (6)
            (["--again"], 3),
            (["--again"], 0),  # the count reached --max-replays (3)
        ]:
            result = await command("replay", *argv, env=env)
            assert result.code == 0, result.out + result.err
            runs.append(summary(result, "replayed"))
            assert runs[-1] == replayed, result.out
            total += replayed
            await outcomes(settings, total)
            await dead_letters(settings, total)
        await asyncio.sleep(1)
        assert len(await outcomes(settings, total + 1, timeout=1)) == total == 12
    letters = await dead_letters(settings, total + 1, timeout=1)
    assert len(letters) == 12
    # Every dead letter, of the originals and of their copies, names one of the 3 originals.
    named = Counter(
        "/".join(
            dict(letter.headers)[f"ldc.original.{part}"].decode()
            for part in ("topic", "partition", "offset")
        )
        for letter in letters
    )
    assert set(named) == originals and set(named.values()) == {4}
    copies = await kafka.read_topic(
        settings, settings.consumer_input_topic, until=lambda r: len(r) >= 13, timeout=1
    )
    assert len(copies) == 12  # 3 originals and 9 replayed copies
    counts = Counter(
        (dict(r.headers)[REPLAY_OF].decode(), dict(r.headers)[REPLAY_COUNT].decode())
        for r in copies
        if r.headers
    )
    assert counts == Counter({(o, str(n)): 1 for o in originals for n in (1, 2, 3)})
    last = await command("replay", "--again", "--max-replays", "4", "--dry-run", env=env)
    assert summary(last, "would replay") == 3
    assert summary(last, "skipped: another dead letter of an original replayed in this run") == 9


async def test_missing_topics_are_one_line_and_never_created(settings: Settings) -> None:
    env = environment(settings)
    for variable, argv in [
        ("CONSUMER_DLQ_TOPIC", ["replay"]),
        ("CONSUMER_DLQ_TOPIC", ["replay", "--dry-run"]),
        ("CONSUMER_RESULTS_TOPIC", ["outcomes"]),
        ("CONSUMER_RESULTS_TOPIC", ["verify"]),
    ]:
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        result = await command(*argv, env={**env, variable: missing})
        result.failed_with(1, f"the topic {missing} does not exist", variable)
        assert await kafka.existing_topics(settings, [missing]) == {}, argv
    await write(settings, [letter("e0")])
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    result = await command("replay", "--to", missing, env=env)
    result.failed_with(1, f"the topic {missing} does not exist", "--to")
    assert await kafka.existing_topics(settings, [missing]) == {}
    # Nothing replayed: the ledger is not created either.
    ledger = ledger_topic(settings)
    assert await kafka.existing_topics(settings, [ledger]) == {}
    dry = await command("replay", "--dry-run", env=env)
    assert summary(dry, "would replay") == 1
    assert await kafka.existing_topics(settings, [ledger]) == {}
