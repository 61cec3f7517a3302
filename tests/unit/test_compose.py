"""The docker-compose stack, checked by reading it (no Docker engine runs here)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.events import Invalid, decode
from consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_VARIABLES = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "LD_API_TOKEN",
    "LD_BASE_URL",
    "CONSUMER_GROUP_ID",
    "CONSUMER_INPUT_TOPIC",
    "CONSUMER_RESULTS_TOPIC",
    "CONSUMER_DLQ_TOPIC",
    "CONSUMER_BATCH_MAX_SIZE",
    "CONSUMER_BATCH_LINGER_MS",
    "CONSUMER_HTTP_PORT",
    "CONSUMER_AUTO_OFFSET_RESET",
    "KAFKA_SESSION_TIMEOUT_MS",
    "KAFKA_HEARTBEAT_INTERVAL_MS",
    "KAFKA_PRODUCER_IDEMPOTENCE",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    resolved = {}
    for name, value in env.items():
        text = str(value)
        if text.startswith("${") and ":-" in text:  # ${VAR:-default}
            text = text.split(":-", 1)[1].rstrip("}")
        resolved[name] = text
    return resolved


def test_services(compose: dict[str, Any]) -> None:
    assert {"kafka", "kafka-init", "fake-api", "consumer", "kafka-ui"} <= set(compose["services"])


def test_kafka_is_the_official_image_in_kraft_mode_with_a_health_check(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env and "ZOOKEEPER" not in " ".join(env)
    assert "9092:9092" in kafka["ports"]
    assert "localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]  # the host's CLI reaches it
    assert kafka["healthcheck"]["test"]


def test_topics_are_created_once_kafka_is_healthy(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = "\n".join(init["command"])
    defaults = Settings()
    for topic in (
        defaults.consumer_input_topic,
        defaults.consumer_results_topic,
        defaults.consumer_dlq_topic,
    ):
        assert f"{topic}:" in script
    assert "--if-not-exists" in script


def test_consumer_service_is_configured_by_the_contract_variables(compose: dict[str, Any]) -> None:
    consumer = compose["services"]["consumer"]
    env = _environment(consumer)
    assert set(env) >= CONTRACT_VARIABLES
    known = {name.upper() for name in Settings.model_fields}
    assert set(env) - {"LOG_FORMAT"} <= known
    settings = Settings(**{k.lower(): v for k, v in env.items()})  # every value is valid
    assert settings.kafka_producer_idempotence is True  # real Kafka
    assert settings.ld_base_url == "http://fake-api:8765"
    assert consumer["build"] == "."
    assert consumer["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert consumer["depends_on"]["fake-api"]["condition"] == "service_healthy"
    assert f"{settings.consumer_http_port}:8080" in consumer["ports"]
    assert "healthz" in " ".join(consumer["healthcheck"]["test"])
    fake = compose["services"]["fake-api"]
    assert _environment(fake)["LD_API_TOKEN"] == env["LD_API_TOKEN"]
    assert "--sample-seed" in fake["command"] and "8765:8765" in fake["ports"]
    assert fake["healthcheck"]["test"]


def test_dockerfile_is_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "-slim" in text
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert 'ENTRYPOINT ["ld-targeting-consumer"]' in text


def test_example_events_are_valid() -> None:
    lines = (ROOT / "examples" / "events.jsonl").read_text().splitlines()
    assert len(lines) >= 50
    assert not [n for n, line in enumerate(lines, 1) if isinstance(decode(line.encode()), Invalid)]
