import pytest

from consumer.cli import main
from consumer.settings import Settings, SettingsError, load_settings, require_token

CONTRACT_DEFAULTS = {
    "kafka_bootstrap_servers": "localhost:9092",
    "ld_base_url": "https://app.launchdarkly.com",
    "consumer_group_id": "ld-targeting-consumer",
    "consumer_input_topic": "ld.targeting-changes",
    "consumer_results_topic": "ld.targeting-results",
    "consumer_dlq_topic": "ld.targeting-changes.dlq",
    "consumer_batch_max_size": 50,
    "consumer_batch_linger_ms": 200,
    "consumer_http_port": 8080,
    "consumer_auto_offset_reset": "earliest",
    "kafka_session_timeout_ms": 10_000,
    "kafka_heartbeat_interval_ms": 3_000,
    "kafka_producer_idempotence": True,
    "ld_api_token": None,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_are_the_contract() -> None:
    settings = Settings()
    for name, value in CONTRACT_DEFAULTS.items():
        assert getattr(settings, name) == value, name


def test_environment_variables_by_their_contract_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("CONSUMER_BATCH_MAX_SIZE", "7")
    monkeypatch.setenv("KAFKA_PRODUCER_IDEMPOTENCE", "false")
    monkeypatch.setenv("LD_API_TOKEN", "api-secret")
    monkeypatch.setenv("LD_BASE_URL", "http://127.0.0.1:1234/")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.consumer_batch_max_size == 7
    assert settings.kafka_producer_idempotence is False
    assert (
        settings.ld_api_token is not None
        and settings.ld_api_token.get_secret_value() == "api-secret"
    )
    assert settings.ld_base_url == "http://127.0.0.1:1234"
    assert "api-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONSUMER_BATCH_MAX_SIZE", "0"),
        ("CONSUMER_BATCH_MAX_SIZE", "many"),
        ("CONSUMER_BATCH_LINGER_MS", "-1"),
        ("CONSUMER_HTTP_PORT", "70000"),
        ("CONSUMER_AUTO_OFFSET_RESET", "sometimes"),
        ("KAFKA_PRODUCER_IDEMPOTENCE", "perhaps"),
        ("LD_BASE_URL", "ftp://x"),
        ("KAFKA_SESSION_TIMEOUT_MS", "10"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and "\n" not in message


def test_heartbeat_must_be_below_session_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_HEARTBEAT_INTERVAL_MS", "20000")
    with pytest.raises(SettingsError, match="KAFKA_HEARTBEAT_INTERVAL_MS"):
        load_settings()


def test_run_refuses_to_start_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError, match="LD_API_TOKEN"):
        require_token(load_settings())
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "LD_API_TOKEN" in err and len(err.strip().splitlines()) == 1


def test_run_with_a_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LD_API_TOKEN", "api-very-secret")
    monkeypatch.setenv("CONSUMER_BATCH_LINGER_MS", "soon")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CONSUMER_BATCH_LINGER_MS" in err
    assert "api-very-secret" not in err


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LD_REQUEST_TIMEOUT_MS": "15000"}, "LD_REQUEST_TIMEOUT_MS"),
        ({"CONSUMER_REVOKE_TIMEOUT_MS": "5000"}, "CONSUMER_REVOKE_TIMEOUT_MS"),
        ({"KAFKA_REBALANCE_TIMEOUT_MS": "20000"}, "KAFKA_REBALANCE_TIMEOUT_MS"),
        ({"LD_OUTAGE_WINDOW_MS": "300000"}, "LD_OUTAGE_WINDOW_MS"),
        ({"CONSUMER_SHUTDOWN_TIMEOUT_MS": "10000"}, "CONSUMER_SHUTDOWN_TIMEOUT_MS"),
    ],
)
def test_timeouts_must_nest(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    """A request on the wire at a revoke ends within it; the revoke and its commit end
    within the rebalance; an outage is noticed before any event's budget is spent."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_the_default_timeouts_nest() -> None:
    settings = Settings()
    assert settings.ld_request_timeout_ms < settings.consumer_revoke_timeout_ms
    assert (
        settings.consumer_revoke_timeout_ms + settings.kafka_commit_timeout_ms
        < settings.kafka_rebalance_timeout_ms
    )
    assert settings.ld_outage_window_ms < settings.ld_retry_max_elapsed_ms
    assert settings.ld_request_timeout_ms < settings.consumer_shutdown_timeout_ms
