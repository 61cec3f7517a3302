"""`replay` through the console script: --limit pages forward, copies without their value are
refused, bad arguments are one line, the dry run shows why each record was dead-lettered."""

from __future__ import annotations

import json

import pytest

from consumer import kafka
from consumer.events import record_key
from consumer.settings import Settings
from tests.factories import encode, event_dict
from tests.integration.commands import Result, command
from tests.integration.harness import ENV, PROJECT, create_topics, environment, make_settings

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
