"""`check` through the console script: passes on a good setup, fails naming the cause."""

from __future__ import annotations

import asyncio
import json
import re

from consumer.kafka import clients as kafka
from consumer.settings import Settings
from consumer.simulator import RunningSimulator
from tests.factories import TOKEN
from tests.integration.commands import Result, command
from tests.integration.harness import (
    create_topics,
    environment,
    events,
    make_settings,
    produce,
    start_process,
)


def rows(result: Result) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail) from the --json output."""
    body = json.loads(result.out)
    return {c["name"]: (c["status"], c["detail"]) for c in body["checks"]}


def settings_for(kafka_bootstrap: str, on_tansu: bool, base_url: str) -> Settings:
    return make_settings(kafka_bootstrap, base_url, on_tansu=on_tansu, log_level="info")


async def test_check_passes_on_a_good_setup_and_shows_the_lag(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator
) -> None:
    settings = settings_for(kafka_bootstrap, on_tansu, simulator.base_url)
    await create_topics(settings, partitions=2)
    await produce(settings, events(5, 2))
    env = environment(settings)

    table = await command("check", env=env)
    assert table.code == 0, table.out + table.err
    assert "all checks passed" in table.out
    assert "simulator token" in table.out and TOKEN not in table.out + table.err
    assert "lag 5" in table.out and "partition 1: committed -" in table.out, table.out

    found = rows(await command("check", "--json", env=env))
    assert {status for status, _ in found.values()} == {"ok"}
    assert found[f"topic {settings.consumer_input_topic}"][1] == "2 partitions"
    assert re.fullmatch(
        r"global: \d+ left; route: \d+ left; window resets at \d\d:\d\d:\d\d UTC \(in \d+ s\)",
        found["rate limits"][1],
    ), found["rate limits"][1]


async def test_check_fails_naming_a_wrong_token(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator
) -> None:
    settings = settings_for(kafka_bootstrap, on_tansu, simulator.base_url)
    await create_topics(settings)
    env = environment(settings, LD_API_TOKEN="api-not-the-right-token-0000")
    result = await command("check", "--json", env=env)
    assert result.code == 1
    status, detail = rows(result)["launchdarkly"]
    assert status == "fail" and "401" in detail and "LD_API_TOKEN" in detail
    assert "api-not-the-right-token-0000" not in result.out + result.err


async def test_check_fails_naming_a_missing_topic(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator
) -> None:
    settings = settings_for(kafka_bootstrap, on_tansu, simulator.base_url)
    await kafka.ensure_topics(
        settings, {settings.consumer_input_topic: 2, settings.consumer_results_topic: 2}
    )
    result = await command("check", env=environment(settings))
    assert result.code == 1
    assert "1 failed: topic " + settings.consumer_dlq_topic in result.out
    line = next(
        x for x in result.out.splitlines() if x.startswith("topic " + settings.consumer_dlq_topic)
    )
    assert "does not exist" in line and "CONSUMER_DLQ_TOPIC" in line


async def test_check_fails_naming_a_down_broker(
    simulator: RunningSimulator, on_tansu: bool
) -> None:
    settings = settings_for("127.0.0.1:1", on_tansu, simulator.base_url)
    result = await command("check", "--json", env=environment(settings))
    assert result.code == 1 and "Traceback" not in result.err
    found = rows(result)
    assert found["broker"][0] == "fail" and "127.0.0.1:1" in found["broker"][1]
    assert found["launchdarkly"][0] == "ok"  # still answered: one run shows every cause


async def test_run_logs_the_preflight_at_start(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator
) -> None:
    settings = settings_for(kafka_bootstrap, on_tansu, simulator.base_url)
    await create_topics(settings)
    process = await start_process(settings)
    assert process.stderr is not None
    try:
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "run ended before its preflight"
            entry = json.loads(line)
            if entry["event"].startswith("preflight."):
                break
    finally:
        process.terminate()
        await process.wait()
    assert entry["event"] == "preflight.passed"
    assert entry["checks"]["broker"].startswith("ok")


async def test_check_without_a_token_still_checks_kafka_and_every_row_is_shown(
    kafka_bootstrap: str, on_tansu: bool
) -> None:
    settings = settings_for(kafka_bootstrap, on_tansu, "http://127.0.0.1:9")
    await kafka.ensure_topics(settings, {settings.consumer_input_topic: 2})
    env = environment(settings)
    env.pop("LD_API_TOKEN")
    result = await command("check", "--json", env=env)
    assert result.code == 1, result.err
    found = rows(result)
    assert found["broker"][0] == "ok" and found["producer"][0] == "ok"
    assert found[f"topic {settings.consumer_input_topic}"][0] == "ok"
    assert found[f"topic {settings.consumer_dlq_topic}"][0] == "fail"
    assert found["record sizes"] == ("skipped", "a topic is missing")
    assert found["group"][0] == "ok"
    assert (
        found["launchdarkly"][0] == "fail" and "LD_API_TOKEN: not set" in found["launchdarkly"][1]
    )
    assert found["rate limits"] == ("skipped", "no token")

    down = rows(
        await command("check", "--json", env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    )
    assert list(down) == list(found)  # the same rows, skipped with the reason
    assert {
        down[name] for name in down if name not in ("broker", "launchdarkly", "rate limits")
    } == {("skipped", "no broker")}
