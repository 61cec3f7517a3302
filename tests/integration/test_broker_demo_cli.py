"""`broker` and `demo` through the console script: started, signalled, gone without a trace."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker, free_port
from consumer.settings import Settings
from tests.integration.commands import SCRIPT, children, command, gone


def clean_env() -> dict[str, str]:
    """The environment without any of the service's settings: only what a test sets counts."""
    return {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}


async def read_exports(process: asyncio.subprocess.Process) -> dict[str, str]:
    """The `export NAME=VALUE` lines `broker` prints once its topics exist."""
    assert process.stdout is not None
    exports: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line, "broker ended before printing its environment"
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
        elif exports:
            return exports


async def test_broker_creates_the_topics_prints_the_environment_and_stops_on_sigterm() -> None:
    port = free_port()
    env = {**clean_env(), "CONSUMER_DLQ_TOPIC": "by-hand.dlq"}
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        "broker",
        "--port",
        str(port),
        "--input-partitions",
        "3",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        exports = await read_exports(process)
        [tansu] = children(process.pid)
        assert exports["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{port}"
        assert exports["KAFKA_PRODUCER_IDEMPOTENCE"] == "false"
        for name, value in TANSU_SETTINGS.items():
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            assert exports[name.upper()] == shown, name
        assert exports["CONSUMER_DLQ_TOPIC"] == "by-hand.dlq"  # not a default: printed
        assert "CONSUMER_INPUT_TOPIC" not in exports

        settings = Settings(**{name.lower(): value for name, value in exports.items()})
        counts = await kafka.existing_topics(
            settings, ["ld.targeting-changes", "ld.targeting-results", "by-hand.dlq"]
        )
        assert counts == {"ld.targeting-changes": 3, "ld.targeting-results": 3, "by-hand.dlq": 1}

        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    assert "Traceback" not in out.decode() + err.decode()
    assert await gone(tansu)


async def test_broker_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = await command("broker", "--port", str(port), env=clean_env())
    result.failed_with(1, f"port {port}", "--port", "in use")


async def test_broker_refuses_bad_partitions_and_an_address_not_of_this_machine() -> None:
    result = await command(
        "broker", "--input-partitions", "4", "--results-partitions", "2", env=clean_env()
    )
    result.failed_with(2, "--results-partitions (2) must be at least --input-partitions (4)")
    result = await command("broker", "--host", "10.255.255.254", "--port", "1", env=clean_env())
    line = result.failed_with(
        1, "cannot listen on 10.255.255.254 (--host)", "address of this machine"
    )
    assert "in use" not in line


async def test_demo_stops_on_ctrl_c_with_its_broker() -> None:
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        "demo",
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        seen = b""
        while b"Produced" not in seen:  # the consumer runs and has events to work on
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, seen
            seen += line
        [tansu] = children(process.pid)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = seen.decode() + out.decode() + err.decode()
    assert process.returncode == 130, text
    assert "Traceback" not in text
    assert [line for line in err.decode().splitlines() if line.strip()] == [
        "Demo interrupted: stopped the consumer, the simulator and the broker."
    ]
    assert await gone(tansu)


async def test_demo_on_an_external_broker_that_refuses_it_is_one_line_and_closes_its_clients() -> (
    None
):
    """Tansu has no idempotent producer: the demo says what to set, and leaves no unclosed
    Kafka client behind (aiokafka's "Unclosed AIOKafkaConsumer" error line)."""
    with TansuBroker() as broker:
        env = {**clean_env(), "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        result = await command("demo", env=env)
    result.failed_with(1, "refused the idempotent producer", "KAFKA_PRODUCER_IDEMPOTENCE=false")
