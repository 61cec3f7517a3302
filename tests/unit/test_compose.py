"""The docker-compose stack, checked by reading it (no Docker engine runs here)."""

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumer.contract.events import Invalid, decode
from consumer.settings import Settings
from tests.observability import DASHBOARD, RULES, rules

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


# The Compose Specification's JSON Schema, vendored from github.com/compose-spec/compose-spec
# (schema/compose-spec.json at 170098ba07d9f53c383a41bfd4c5166b0a4529a6).
COMPOSE_SPEC = Path(__file__).parent / "data" / "compose-spec.json"


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SPEC.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_the_compose_specification_check_can_fail(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SPEC.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["consumer"]["depends_on"]["kafka-init"]["condition"] = "when_ready"
    broken["services"]["grafana"]["portz"] = ["3000:3000"]
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(broken))) == 2


def test_services(compose: dict[str, Any]) -> None:
    assert {
        "kafka",
        "kafka-init",
        "fake-api",
        "consumer",
        "kafka-ui",
        "prometheus",
        "grafana",
        "jaeger",
    } <= set(compose["services"])


def test_host_ports_are_distinct(compose: dict[str, Any]) -> None:
    published = [
        str(port).split(":")[0]
        for service in compose["services"].values()
        for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published))


def test_the_app_image_is_built_once_and_shared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["consumer"]
    assert services["fake-api"]["image"] == services["consumer"]["image"]
    assert services["fake-api"]["command"][0] == "fake-api"


def test_kafka_ui_is_the_maintained_image_at_a_fixed_version(compose: dict[str, Any]) -> None:
    image = compose["services"]["kafka-ui"]["image"]
    assert image.startswith("kafbat/kafka-ui:v")
    assert (
        _environment(compose["services"]["kafka-ui"])["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]
        == (_environment(compose["services"]["consumer"])["KAFKA_BOOTSTRAP_SERVERS"])
    )


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the host path (relative to the compose file) of each bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source.startswith("./"), volume
        assert (ROOT / source).exists(), volume
        found[target] = ROOT / source
    return found


def test_prometheus_scrapes_the_consumer_and_loads_the_rules(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    assert service["image"].startswith("prom/prometheus:v")
    mounts = _mounts(service)
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert [mounts[path] for path in config["rule_files"]] == [RULES]
    (job,) = config["scrape_configs"]
    # The rules select on the job name.
    assert all(
        'job="' + job["job_name"] + '"' in rule["expr"] for rule in rules() if "up" in rule["expr"]
    )
    port = _environment(compose["services"]["consumer"])["CONSUMER_HTTP_PORT"]
    assert job["static_configs"] == [{"targets": [f"consumer:{port}"]}]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "9090:9090" in service["ports"]


def test_grafana_has_prometheus_and_the_dashboard_provisioned(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    assert service["image"].startswith("grafana/grafana:")
    mounts = _mounts(service)
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    assert mounts[folder] == DASHBOARD.parent
    home = _environment(service)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"
    assert "3000:3000" in service["ports"]


def test_the_consumer_sends_traces_to_jaeger(compose: dict[str, Any]) -> None:
    service = compose["services"]["jaeger"]
    assert service["image"].startswith("jaegertracing/all-in-one:")
    assert _environment(service)["COLLECTOR_OTLP_ENABLED"] == "true"
    assert {"16686:16686", "4318:4318"} <= set(service["ports"])
    env = _environment(compose["services"]["consumer"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"  # OTLP over HTTP
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
    # The image has the extra that tracing needs.
    assert "'.[otel]'" in (ROOT / "Dockerfile").read_text()


def test_the_readme_says_how_to_produce_from_the_host_and_open_each_tool(
    compose: dict[str, Any],
) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## docker-compose\n") :]
    section = section[: section.index("\n## ", 1)]
    assert "ld-targeting-consumer produce" in section and "localhost:9092" in section
    for name in ("kafka-ui", "prometheus", "grafana", "jaeger"):
        ui_port = str(compose["services"][name]["ports"][0]).split(":")[0]
        assert f"http://localhost:{ui_port}" in section, name


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
        assert f"{topic}:" in script or f"--topic {topic} " in script
    assert "--if-not-exists" in script


def test_consumer_service_is_configured_by_the_contract_variables(compose: dict[str, Any]) -> None:
    consumer = compose["services"]["consumer"]
    env = _environment(consumer)
    assert set(env) >= CONTRACT_VARIABLES
    known = {name.upper() for name in Settings.model_fields}
    # OTEL_* are OpenTelemetry's own (consumer/service/tracing.py), not settings.
    assert {name for name in env if not name.startswith("OTEL_")} - {"LOG_FORMAT"} <= known
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


def test_kafka_is_the_version_and_settings_the_tests_run(compose: dict[str, Any]) -> None:
    from consumer.kafka import clients as kafka_module
    from consumer.kafka.apache import KafkaNode, kafka_version, node_properties

    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version()}"
    env = _environment(kafka)
    node = KafkaNode(1, 9092, 9093, Path("/nowhere"))
    tested = node_properties(node, [node])
    for name in (
        "group.initial.rebalance.delay.ms",
        "group.min.session.timeout.ms",
        "auto.create.topics.enable",
        "offsets.topic.num.partitions",
        "transaction.state.log.num.partitions",
        "offsets.topic.replication.factor",
        "transaction.state.log.min.isr",
    ):
        variable = "KAFKA_" + name.upper().replace(".", "_")
        assert str(env[variable]).lower() == tested[name], name
    init = " ".join(compose["services"]["kafka-init"]["command"])
    room = kafka_module.DEFAULT_MAX_MESSAGE_BYTES + kafka_module.DEAD_LETTER_ROOM
    assert f"max.message.bytes={room}" in init


def test_a_cluster_id_never_reads_as_an_option() -> None:
    from consumer.kafka.apache import new_cluster_id

    assert not any(new_cluster_id().startswith("-") for _ in range(2_000))
