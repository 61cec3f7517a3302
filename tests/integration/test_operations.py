"""The operator's replay through its real interface (`main(argv)`); produce: test_produce.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from consumer.cli import main
from consumer.commands.replay import ledger_topic
from consumer.contract.dead_letters import REPLAY_COUNT, REPLAY_OF
from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.kafka import clients as kafka
from consumer.settings import Settings, settings_environment
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    dead_letters,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
)


def use_environment(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """What an operator's shell would export for these settings."""
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)


async def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


async def count(settings: Settings, topic: str, at_least: int, timeout: float = 3) -> int:
    records = await kafka.read_topic(
        settings, topic, until=lambda r: len(r) >= at_least, timeout=timeout
    )
    return len(records)


async def test_replay_after_fixing_the_cause_gives_new_outcomes_once(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await admin.seed(seed(segments={"live": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    use_environment(monkeypatch, settings)
    await create_topics(settings)
    missing = [
        event_dict(key="later", project=PROJECT, env=ENV, values=[f"k{i}"]) for i in range(2)
    ]
    good = event_dict(key="live", project=PROJECT, env=ENV)
    messages = [(record_key(e), encode(e), [("trace", b"abc")]) for e in [*missing, good]]
    messages.append((b"bad", b"{not json", []))
    await produce(settings, messages)
    async with running(settings):
        first = await outcomes(settings, 4)
        await dead_letters(settings, 3)
        assert sorted(o.status.value for o in first) == [
            "invalid",
            "rejected",
            "rejected",
            "succeeded",
        ]
        await admin.seed(seed(segments={"later": {}}))  # the operator fixes the cause

        code, text = await cli("replay", "--status", "rejected", "--dry-run", capsys=capsys)
        assert code == 0 and "would replay" in text and "skipped: other status" in text
        assert await count(settings, settings.consumer_input_topic, 5, timeout=1.5) == 4
        assert await count(settings, ledger_topic(settings), 1, timeout=1) == 0

        code, text = await cli("replay", "--status", "rejected", capsys=capsys)
        assert code == 0
        assert [line.split()[-1] for line in text.splitlines() if line.startswith("replayed")] == [
            "2"
        ]
        after = await outcomes(settings, 6)
        code, text = await cli("replay", "--status", "rejected", capsys=capsys)
        assert "replayed before (use --again)" in text
        assert [line.split()[-1] for line in text.splitlines() if line.startswith("replayed ")] == [
            "0"
        ]
        await asyncio.sleep(1)
        assert len(await outcomes(settings, 7, timeout=1.5)) == 6
    originals = {(o.source.partition, o.source.offset) for o in first}
    fixed = [o for o in after if (o.source.partition, o.source.offset) not in originals]
    assert sorted(o.eventId for o in fixed) == sorted(e["eventId"] for e in missing)
    assert {o.status for o in fixed} == {Status.SUCCEEDED}
    records = await kafka.read_topic(
        settings, settings.consumer_input_topic, until=lambda r: len(r) >= 6, timeout=5
    )
    copies = [r for r in records if dict(r.headers).get(REPLAY_COUNT)]
    assert len(copies) == 2
    rejected = {
        f"{o.source.topic}/{o.source.partition}/{o.source.offset}".encode()
        for o in first
        if o.status is Status.REJECTED
    }
    for copy in copies:
        headers = list(copy.headers)
        assert headers[0] == ("trace", b"abc")  # original headers kept, in order
        assert dict(headers)[REPLAY_COUNT] == b"1"
        assert [name for name, _ in headers if name.startswith("ldc.")] == [REPLAY_COUNT, REPLAY_OF]
        assert copy.value in {encode(e) for e in missing}
    assert {dict(copy.headers)[REPLAY_OF] for copy in copies} == rejected


def _letter(
    event_id: str, status: str, *, count: int | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    event = event_dict(key="s", project=PROJECT, env=ENV, event_id=event_id)
    headers = [("app", b"x"), ("ldc.status", status.encode()), ("ldc.error.code", b"not_found")]
    if count is not None:
        headers.append((REPLAY_COUNT, str(count).encode()))
    return record_key(event), encode(event), headers


async def _write_letters(
    settings: Settings,
    letters: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    timestamps: list[int],
) -> None:
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for (key, value, headers), stamp in zip(letters, timestamps, strict=True):
            await producer.send_and_wait(
                settings.consumer_dlq_topic, value, key=key, headers=headers, timestamp_ms=stamp
            )
    finally:
        await producer.stop()


async def test_replay_selects_by_event_id_status_and_time_and_caps_replays(
    kafka_bootstrap: str,
    on_tansu: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(kafka_bootstrap, "http://127.0.0.1:9", on_tansu=on_tansu)
    use_environment(monkeypatch, settings)
    await create_topics(settings)
    hour = 3_600_000
    now = int(time.time() * 1000)
    letters = [
        _letter("old", "rejected"),
        _letter("a", "rejected"),
        _letter("b", "failed"),
        _letter("capped", "rejected", count=3),
        _letter("c", "invalid"),
    ]
    await _write_letters(
        settings, letters, [now - 5 * hour, now - hour, now - hour, now - hour, now]
    )

    code, text = await cli(
        "replay", "--event-id", "a", "--event-id", "c", "--dry-run", capsys=capsys
    )
    assert code == 0 and _count(text, "would replay") == 2

    code, text = await cli("replay", "--since", "3h", "--until", "30m", "--dry-run", capsys=capsys)
    assert (
        _count(text, "would replay") == 2
    )  # a and b; capped is refused, c too recent, old too old
    # Apache Kafka finds the first record after --since by its timestamp (the old one is never
    # read); Tansu cannot (its time look-up answers 0), so the old one is read and skipped.
    assert _count(text, "skipped: before --since") == (1 if on_tansu else 0)
    assert _count(text, "skipped: after --until") == 1
    assert _count(text, "skipped: replay count at the cap (3)") == 1

    code, text = await cli("replay", "--status", "rejected", "--max-replays", "5", capsys=capsys)
    assert code == 0 and _count(text, "replayed") == 3
    records = await kafka.read_topic(
        settings, settings.consumer_input_topic, until=lambda r: len(r) >= 3, timeout=5
    )
    counts = {json.loads(r.value)["eventId"]: dict(r.headers)[REPLAY_COUNT] for r in records}
    assert counts == {"old": b"1", "a": b"1", "capped": b"4"}

    code, text = await cli(
        "replay", "--status", "rejected", "--again", "--limit", "1", capsys=capsys
    )
    assert _count(text, "replayed") == 1


def _count(text: str, label: str) -> int:
    for line in text.splitlines():
        if line.startswith(label):
            return int(line.split()[-1])
    return 0
