"""Every expected mistake ends each command with one line naming what to change, the right
exit code and no traceback (the console script as a subprocess, a real broker)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.settings import Settings
from tests.factories import TOKEN, event_dict
from tests.integration.commands import command
from tests.integration.harness import ENV, PROJECT, create_topics, environment, make_settings

DOWN = "127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # as the health server binds
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def settings(kafka_bootstrap: str, on_tansu: bool) -> Settings:
    return make_settings(kafka_bootstrap, "http://127.0.0.1:9", on_tansu=on_tansu, log_level="info")


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event_dict(key="s", project=PROJECT, env=ENV)) + "\n")
    return path


@pytest.mark.parametrize("argv", [["run"], ["produce", "EVENTS"], ["replay"]])
async def test_a_broker_that_is_down_is_named(
    settings: Settings, events_file: Path, argv: list[str]
) -> None:
    """(`check` shows it in its table: test_check.py.)"""
    argv = [str(events_file) if a == "EVENTS" else a for a in argv]
    env = environment(settings, KAFKA_BOOTSTRAP_SERVERS=DOWN)
    result = await command(*argv, env=env)
    result.failed_with(1, "cannot reach the Kafka broker at 127.0.0.1:1", "KAFKA_BOOTSTRAP_SERVERS")


@pytest.mark.parametrize("argv", [["run"], ["produce", "EVENTS"], ["replay"]])
async def test_a_bad_bootstrap_address_is_a_setting_error(
    settings: Settings, events_file: Path, argv: list[str]
) -> None:
    argv = [str(events_file) if a == "EVENTS" else a for a in argv]
    env = environment(settings, KAFKA_BOOTSTRAP_SERVERS="localhost:notaport")
    result = await command(*argv, env=env)
    result.failed_with(2, "KAFKA_BOOTSTRAP_SERVERS", "localhost:notaport")


@pytest.mark.parametrize("argv", [["run"], ["produce", "EVENTS"]])
async def test_a_broker_without_the_idempotent_producer_gets_the_hint(
    settings: Settings, on_tansu: bool, events_file: Path, argv: list[str]
) -> None:
    if not on_tansu:
        pytest.skip("Apache Kafka has the idempotent producer")
    await create_topics(settings)
    argv = [str(events_file) if a == "EVENTS" else a for a in argv]
    env = environment(settings, KAFKA_PRODUCER_IDEMPOTENCE="true")
    result = await command(*argv, env=env)
    result.failed_with(1, "idempotent producer", "KAFKA_PRODUCER_IDEMPOTENCE=false")


@pytest.mark.parametrize(
    ("variables", "needles"),
    [
        ({"LD_API_TOKEN_FILE": "/nonexistent/token"}, ["LD_API_TOKEN_FILE", "/nonexistent/token"]),
        ({"LD_API_TOKEN": ""}, ["LD_API_TOKEN", "empty"]),
        ({"LD_API_TOKEN": "x"}, ["LD_API_TOKEN", "too short"]),
        (
            {"CONSUMER_BATCH_MAX_SIZE": "0", "CONSUMER_BATCH_LINGER_MS": "abc"},
            ["CONSUMER_BATCH_MAX_SIZE", "CONSUMER_BATCH_LINGER_MS", "2 invalid settings"],
        ),
        (
            {"LD_REQUEST_TIMEOUT_MS": "5000", "CONSUMER_REVOKE_TIMEOUT_MS": "4000"},
            [
                "LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS must be lower than"
                " CONSUMER_REVOKE_TIMEOUT_MS"
            ],
        ),
        (
            {
                "CONSUMER_BATCH_MAX_SIZE": "0",
                "CONSUMER_REVOKE_TIMEOUT_MS": "9000",
                "KAFKA_REBALANCE_TIMEOUT_MS": "9500",
            },
            ["CONSUMER_BATCH_MAX_SIZE", "must be lower than KAFKA_REBALANCE_TIMEOUT_MS"],
        ),
    ],
)
async def test_run_reports_every_bad_setting_at_once(
    settings: Settings, variables: dict[str, str], needles: list[str]
) -> None:
    env = environment(settings, **variables)
    if "LD_API_TOKEN_FILE" in variables:
        env.pop("LD_API_TOKEN")
    result = await command("run", env=env)
    result.failed_with(2, *needles)


async def test_an_empty_token_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    env = environment(settings, LD_API_TOKEN_FILE=str(path))
    env.pop("LD_API_TOKEN")
    (await command("run", env=env)).failed_with(2, "LD_API_TOKEN_FILE", str(path), "empty")


async def test_a_token_never_mangles_other_text(settings: Settings) -> None:
    """A one-letter token is refused (it cannot be a LaunchDarkly token), so it never reaches
    the redactor, and the line stays readable."""
    env = environment(settings, LD_API_TOKEN="e", CONSUMER_BATCH_MAX_SIZE="x")
    line = (await command("run", env=env)).failed_with(2, "LD_API_TOKEN", "CONSUMER_BATCH")
    assert "[REDACTED]" not in line


async def test_a_health_port_in_use_stops_run(settings: Settings, busy_port: int) -> None:
    await create_topics(settings)
    env = environment(settings, CONSUMER_HTTP_PORT=str(busy_port))
    result = await command("run", env=env)
    result.failed_with(1, f"port {busy_port}", "CONSUMER_HTTP_PORT")


async def test_fake_api_on_a_busy_port(busy_port: int) -> None:
    env = {"PATH": "/usr/bin:/bin", "LD_API_TOKEN": TOKEN}
    result = await command("fake-api", "--port", str(busy_port), env=env)
    result.failed_with(1, f"port {busy_port}", "--port")


async def test_produce_an_unreadable_file(settings: Settings, tmp_path: Path) -> None:
    env = environment(settings)
    result = await command("produce", str(tmp_path / "missing.jsonl"), env=env)
    result.failed_with(2, "missing.jsonl", "No such file")
    directory = await command("produce", str(tmp_path), env=env)
    directory.failed_with(2, str(tmp_path))


async def test_fake_api_bad_seed_or_faults_are_one_line_naming_them(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LD_API_TOKEN": TOKEN}
    seed = tmp_path / "seed.json"
    seed.write_text('{"projects": [}')
    (await command("fake-api", "--seed", str(seed), env=env)).failed_with(
        2, f"--seed {seed}", "not JSON", "line 1 column 15"
    )
    seed.write_text('{"projects": 3}')
    (await command("fake-api", "--seed", str(seed), env=env)).failed_with(
        2, f"--seed {seed}", "projects: Input should be a valid list"
    )
    missing = tmp_path / "missing.json"
    (await command("fake-api", "--seed", str(missing), env=env)).failed_with(
        2, f"cannot read --seed {missing}", "No such file"
    )
    (await command("fake-api", "--faults", '{"error_rate": "x"}', env=env)).failed_with(
        2, "--faults", "error_rate: Input should be a valid number"
    )
