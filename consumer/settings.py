"""The one configuration object, built at the edge (the CLI) from the environment.

Field names are the environment variables in lower case, so an error names the variable a user
set. Only `cli.py` builds it; everything else receives the (frozen) object it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A setting is missing or has a bad value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_client_id: str = "ld-targeting-consumer"
    kafka_session_timeout_ms: int = Field(10_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    # How long the group waits for members to rejoin in a rebalance: a member's revoke
    # (CONSUMER_REVOKE_TIMEOUT_MS) and its commit must end within it.
    kafka_rebalance_timeout_ms: int = Field(30_000, ge=1_000)
    # Bound of every offset commit (aiokafka retries a commit without end while the broker
    # is away).
    kafka_commit_timeout_ms: int = Field(5_000, ge=100)
    # How long a fetch waits for data. Brokers that do not answer a waiting fetch when data
    # arrives (Tansu) add up to this much latency; on Kafka it only sets how often an idle
    # consumer asks.
    kafka_fetch_max_wait_ms: int = Field(50, ge=10)
    kafka_max_poll_records: int = Field(500, ge=1)
    # Off on brokers without InitProducerId v3 (Tansu); on for Apache Kafka.
    kafka_producer_idempotence: bool = True
    # A dead-letter copy is its original plus a few hundred bytes of headers: leave room above
    # the input topic's limit; the broker's own limit is the one that counts.
    kafka_producer_max_request_size: int = Field(16 * 1024 * 1024, ge=1_024)
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    kafka_ssl_key_password: SecretStr | None = None

    # LaunchDarkly
    ld_api_token: SecretStr | None = None
    ld_api_token_file: Path | None = None
    ld_base_url: str = "https://app.launchdarkly.com"
    ld_request_timeout_ms: int = Field(10_000, ge=100)
    ld_retry_max_attempts: int = Field(10, ge=1)
    ld_retry_max_elapsed_ms: int = Field(300_000, ge=0)
    ld_retry_base_delay_ms: int = Field(500, ge=1)
    ld_retry_max_delay_ms: int = Field(30_000, ge=1)
    ld_conflict_max_retries: int = Field(3, ge=0)
    ld_rate_limit_default_wait_ms: int = Field(10_000, ge=0)
    ld_rate_limit_jitter_ms: int = Field(1_000, ge=0)
    # The API gate (gate.py): how long every request must fail (no answer, 5xx) with no other
    # answer before the API counts as down, and the longest pause between its probes.
    ld_outage_window_ms: int = Field(10_000, ge=100)
    ld_probe_max_delay_ms: int = Field(30_000, ge=100)
    # How long a segment's kind (standard or big, big_segments.py) is trusted after reading it.
    ld_segment_kind_ttl_ms: int = Field(300_000, ge=0)

    # The consumer
    consumer_group_id: str = "ld-targeting-consumer"
    consumer_input_topic: str = "ld.targeting-changes"
    consumer_results_topic: str = "ld.targeting-results"
    consumer_dlq_topic: str = "ld.targeting-changes.dlq"
    consumer_batch_max_size: int = Field(50, ge=1, le=1_500)
    consumer_batch_linger_ms: int = Field(200, ge=0)
    consumer_batch_comment_max_chars: int = Field(4_000, ge=1_000)
    consumer_max_in_flight_requests: int = Field(16, ge=1)
    consumer_max_pending_events: int = Field(10_000, ge=1)
    consumer_http_port: int = Field(8080, ge=0, le=65_535)
    consumer_auto_offset_reset: Literal["earliest", "latest", "none"] = "earliest"
    consumer_commit_interval_ms: int = Field(1_000, ge=10)
    # Bound of the drain on SIGTERM: batches are sent until LD_REQUEST_TIMEOUT_MS before it
    # ends (a request started later could not end in time), then only the wire is waited for.
    consumer_shutdown_timeout_ms: int = Field(15_000, ge=0)
    # Bound of a revoke: requests on the wire for revoked partitions are waited for this long.
    consumer_revoke_timeout_ms: int = Field(15_000, ge=0)
    # Crash recovery (see recovery.py): how far before the waiting record's timestamp to look
    # for outcomes already published; negative turns recovery off.
    consumer_recovery_lookback_ms: int = Field(120_000)
    consumer_recovery_timeout_ms: int = Field(60_000, ge=100)
    consumer_replay_max_count: int = Field(3, ge=1)

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("ld_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("log_level", "log_format", "consumer_auto_offset_reset", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sasl_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            for name in ("kafka_sasl_username", "kafka_sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(
                        f"{name.upper()} is required with KAFKA_SECURITY_PROTOCOL="
                        f"{self.kafka_security_protocol}"
                    )
        return self

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> Settings:
        if self.kafka_heartbeat_interval_ms >= self.kafka_session_timeout_ms:
            raise ValueError(
                "KAFKA_HEARTBEAT_INTERVAL_MS must be lower than KAFKA_SESSION_TIMEOUT_MS"
            )
        return self

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Settings:
        # A request on the wire when its partition is revoked must end within the revoke,
        # and the revoke with its commit within the group's rebalance (leases.py, rule 4).
        if self.ld_request_timeout_ms >= self.consumer_revoke_timeout_ms:
            raise ValueError(
                "LD_REQUEST_TIMEOUT_MS must be lower than CONSUMER_REVOKE_TIMEOUT_MS"
                f" ({self.ld_request_timeout_ms} >= {self.consumer_revoke_timeout_ms})"
            )
        revoke = self.consumer_revoke_timeout_ms + self.kafka_commit_timeout_ms
        if revoke >= self.kafka_rebalance_timeout_ms:
            raise ValueError(
                "CONSUMER_REVOKE_TIMEOUT_MS + KAFKA_COMMIT_TIMEOUT_MS must be lower than"
                f" KAFKA_REBALANCE_TIMEOUT_MS ({revoke} >= {self.kafka_rebalance_timeout_ms})"
            )
        if self.ld_request_timeout_ms >= self.consumer_shutdown_timeout_ms:
            raise ValueError(
                "LD_REQUEST_TIMEOUT_MS must be lower than CONSUMER_SHUTDOWN_TIMEOUT_MS"
                f" ({self.ld_request_timeout_ms} >= {self.consumer_shutdown_timeout_ms})"
            )
        if self.ld_outage_window_ms >= self.ld_retry_max_elapsed_ms:
            raise ValueError(
                "LD_OUTAGE_WINDOW_MS must be lower than LD_RETRY_MAX_ELAPSED_MS"
                f" ({self.ld_outage_window_ms} >= {self.ld_retry_max_elapsed_ms})"
            )
        return self

    def secrets(self) -> list[str]:
        """Values never to be printed (the redactor's list)."""
        found = [self.kafka_sasl_password, self.kafka_ssl_key_password, self.ld_api_token]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]

    def token_source_configured(self) -> bool:
        return self.ld_api_token is not None or self.ld_api_token_file is not None


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning a validation error into one line naming the variable.

    The offending value is never echoed: it may be the API token.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]).upper()
        message = first["msg"].removeprefix("Value error, ")
        if where:
            raise SettingsError(f"invalid setting {where}: {message}") from None
        raise SettingsError(f"invalid settings: {message}") from None


def require_token(settings: Settings) -> None:
    if not settings.token_source_configured():
        raise SettingsError(
            "invalid setting LD_API_TOKEN: not set (set LD_API_TOKEN or LD_API_TOKEN_FILE)"
        )
