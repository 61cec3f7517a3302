"""`produce` through the console script: all or nothing, --skip-invalid, --allow-invalid,
--dry-run, what a bad file says, and --wait's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.contract.events import record_key
from consumer.kafka import clients as kafka
from consumer.settings import Settings
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import event_dict
from tests.integration.commands import command
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    environment,
    make_settings,
    running,
    seed,
)


@pytest.fixture
async def settings(kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator) -> Settings:
    found = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, log_level="info")
    await create_topics(found)
    return found


async def on_topic(settings: Settings, at_least: int, timeout: float = 2) -> list[bytes | None]:
    """Keys of the records on the input topic (reads until `at_least` or the timeout)."""
    records = await kafka.read_topic(
        settings, settings.consumer_input_topic, until=lambda r: len(r) >= at_least, timeout=timeout
    )
    return [r.key for r in records]


def good(n: int) -> list[dict[str, object]]:
    return [event_dict(key=f"s{i}", project=PROJECT, env=ENV, event_id=f"e{i}") for i in range(n)]


async def test_one_invalid_line_and_nothing_is_sent(settings: Settings, tmp_path: Path) -> None:
    events = good(2)
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(events[0]), "{oops", "", json.dumps({**events[1], "extra": 1})]
    path.write_text("\n".join(lines) + "\n")
    env = environment(settings)

    # The dry run predicts the real run: what goes, and the exit code.
    dry = await command("produce", str(path), "--dry-run", env=env)
    assert dry.code == 1 and "dry run: nothing would be sent: 2 of 3 events invalid" in dry.out
    refused = await command("produce", str(path), env=env)
    assert refused.code == 1
    assert "line 2: invalid: not_json" in refused.out
    assert "line 4: invalid: unknown_field" in refused.out
    assert "nothing sent: 2 of 3 events invalid" in refused.out
    assert await on_topic(settings, 1) == []

    dry = await command("produce", str(path), "--dry-run", "--skip-invalid", env=env)
    assert dry.code == 1 and "dry run: would send 1 of 3 events" in dry.out
    assert "(2 invalid skipped)" in dry.out
    assert await on_topic(settings, 1) == []

    skipped = await command("produce", str(path), "--skip-invalid", env=env)
    assert skipped.code == 1 and "sent 1 of 3 events" in skipped.out
    assert await on_topic(settings, 2) == [record_key(events[0])]

    dry = await command("produce", str(path), "--dry-run", "--allow-invalid", env=env)
    assert dry.code == 0 and "dry run: would send 3 of 3 events" in dry.out


async def test_allow_invalid_sends_every_element_and_names_elements(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps([good(1)[0], {"eventId": "broken"}], indent=2))
    result = await command("produce", str(path), "--allow-invalid", env=environment(settings))
    assert result.code == 0, result.out + result.err
    assert "element 2: invalid" in result.out and "sent 2 of 2 events" in result.out
    assert len(await on_topic(settings, 2)) == 2


async def test_dry_run_of_a_valid_file_sends_nothing(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in good(3)))
    result = await command("produce", str(path), "--dry-run", env=environment(settings))
    assert result.code == 0 and "dry run: would send 3 of 3 events" in result.out
    assert await on_topic(settings, 1) == []
    # A topic that does not exist fails the dry run as it would the real one, creating nothing.
    for argv in (["--dry-run"], []):
        result = await command(
            "produce", str(path), *argv, "--topic", "nowhere", env=environment(settings)
        )
        result.failed_with(1, "the topic nowhere does not exist", "--topic")
    assert await kafka.existing_topics(settings, ["nowhere"]) == {}


async def test_a_document_that_does_not_parse_is_one_error_with_line_and_column(
    settings: Settings, tmp_path: Path
) -> None:
    text = json.dumps(good(3), indent=2).replace('"e1"', '"e1', 1)  # one missing quote
    path = tmp_path / "events.json"
    path.write_text(text)
    expected_line = 1 + text[: text.index('"e1')].count("\n")
    result = await command("produce", str(path), env=environment(settings))
    result.failed_with(1, "events.json is not valid JSON", f"line {expected_line} column")
    assert result.out == ""
    obj = tmp_path / "event.json"
    obj.write_text(json.dumps(good(1)[0], indent=2)[:-3] + "\n}")  # a pretty object, cut short
    (await command("produce", str(obj), env=environment(settings))).failed_with(
        1, "is not valid JSON", "line"
    )
    assert await on_topic(settings, 1) == []


async def test_binary_and_empty_input_are_one_line(settings: Settings, tmp_path: Path) -> None:
    binary = tmp_path / "events.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    env = environment(settings)
    (await command("produce", str(binary), env=env)).failed_with(1, "not UTF-8 text")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    (await command("produce", str(empty), env=env)).failed_with(1, "holds no events")
    (await command("produce", "-", env=env, stdin=b"")).failed_with(1, "stdin holds no events")


async def test_wait_exits_1_unless_every_outcome_succeeded(
    settings: Settings, admin: SimulatorAdmin, tmp_path: Path
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    ok = event_dict(key="s0", project=PROJECT, env=ENV, event_id="fine")
    missing = event_dict(key="gone", project=PROJECT, env=ENV, event_id="nowhere")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(ok) + "\n" + json.dumps(missing) + "\n")
    fine = tmp_path / "fine.jsonl"
    fine.write_text(json.dumps({**ok, "eventId": "fine-2"}) + "\n")
    env = environment(settings)
    async with running(settings):
        result = await command("produce", str(mixed), "--wait", "30", env=env)
        assert result.code == 1, result.out + result.err
        rows = {line.split()[0] + line.split()[1]: line for line in result.out.splitlines()}
        assert "succeeded" in rows["line1"] and "fine" in rows["line1"]
        assert "rejected" in rows["line2"] and "not_found" in rows["line2"]
        assert "outcomes: rejected 1, succeeded 1" in result.out
        assert "waiting up to 30 s for 2 outcomes" in result.err

        result = await command("produce", str(fine), "--wait", "30", env=env)
        assert result.code == 0, result.out + result.err
        assert "outcomes: succeeded 1" in result.out


async def test_wait_says_when_no_consumer_runs(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(good(1)[0]) + "\n")
    result = await command("produce", str(path), "--wait", "7", env=environment(settings))
    assert result.code == 1
    assert "no consumer seems to be running" in result.err
    assert "1 record had no outcome within 7 s" in result.out
