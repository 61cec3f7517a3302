import io
import json
import logging
import ssl
from pathlib import Path

import pytest
import structlog

from consumer import logs
from consumer.kafka import clients as kafka
from consumer.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)


def test_plaintext_by_default() -> None:
    config = kafka.common_config(Settings())
    assert config["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in config and "sasl_mechanism" not in config


def test_sasl_ssl_reaches_every_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(_self_signed_ca())
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="hunter2",
        kafka_ssl_cafile=ca,
    )
    for config in (
        kafka.producer_config(settings),
        kafka.consumer_config(settings),
        kafka.common_config(settings),
    ):
        assert config["security_protocol"] == "SASL_SSL"
        assert config["sasl_mechanism"] == "SCRAM-SHA-512"
        assert config["sasl_plain_username"] == "svc"
        assert config["sasl_plain_password"] == "hunter2"
        assert isinstance(config["ssl_context"], ssl.SSLContext)
    assert "hunter2" in settings.secrets()
    assert "hunter2" not in repr(settings)


def test_sasl_needs_credentials_and_files_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME"):
        load_settings()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(SettingsError, match="KAFKA_SSL_CAFILE"):
        load_settings()


def _self_signed_ca() -> str:
    # A fixed, throw-away certificate: enough for SSLContext.load_verify_locations.
    return (Path(__file__).parent / "data" / "ca.pem").read_text()


def test_the_redactor_scrubs_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    logs.REDACTOR.add("api-0123-secret")
    log = structlog.get_logger("test")
    log.info("ld.request", header="api-0123-secret", nested={"auth": ["Bearer api-0123-secret"]})
    try:
        raise RuntimeError("token api-0123-secret refused")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("aiokafka").warning("library says api-0123-secret")
    output = stream.getvalue()
    assert "api-0123-secret" not in output
    assert output.count(logs.REDACTED) >= 4
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["event"] == "ld.request" and lines[0]["level"] == "info"
    assert "timestamp" in lines[0]


def test_console_format_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    logs.configure("info", "auto", stream=stream)
    structlog.get_logger("test").info("batch.sent", size=3)
    line = stream.getvalue()
    assert "batch.sent" in line and not line.startswith("{")


def test_redaction_matches_whole_tokens_only() -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    redactor = logs.Redactor()
    secrets = {"api-0123456789abcdef", "x"}
    assert redactor.scrub("Unexpected exit", secrets) == "Unexpected exit"
    assert redactor.scrub("Authorization: api-0123456789abcdef.", secrets) == (
        f"Authorization: {logs.REDACTED}."
    )
    assert redactor.scrub('{"token":"api-0123456789abcdef"}', secrets) == (
        f'{{"token":"{logs.REDACTED}"}}'
    )


def test_metrics_have_no_created_series() -> None:
    from prometheus_client import generate_latest

    from consumer.service.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    assert "ldc_outcomes_total" in text or "ldc_records_consumed_total" in text
    assert "_created" not in text
