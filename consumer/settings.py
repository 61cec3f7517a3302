"""The one configuration object, built at the edge (the CLI) from the environment.

Field names are the environment variables in lower case, so an error names the variable a user
set. Only `cli.py` builds it; everything else receives the (frozen) object it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.contract.events import MAX_TARGET_VALUES


class SettingsError(Exception):
    """A setting is missing or has a bad value."""


class Settings(BaseSettings):
    """Every setting, read from the environment variable of its name in upper case.

    Each field's docstring is its one-line description: `run --help` and
    docs/configuration.md show it (one source; tests/unit/test_docs.py keeps the page in step).
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, use_attribute_docstrings=True
    )

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    """The Kafka brokers to start from: host:port, several separated by commas."""
    kafka_client_id: str = "ld-targeting-consumer"
    """The client id the consumer, producer and admin clients give the brokers."""
    kafka_session_timeout_ms: int = Field(10_000, ge=1_000)
    """How long the group waits without a heartbeat before it expels a member."""
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    """How often a member heartbeats; below KAFKA_SESSION_TIMEOUT_MS."""
    kafka_rebalance_timeout_ms: int = Field(30_000, ge=1_000)
    """How long the group waits for members to rejoin; a member's revoke and its commit end
    within it."""
    kafka_commit_timeout_ms: int = Field(5_000, ge=100)
    """Bound of every offset commit (aiokafka retries a commit without end while the broker
    is away)."""
    kafka_fetch_max_wait_ms: int = Field(50, ge=10)
    """How long a fetch waits for data; on brokers that do not answer a waiting fetch when
    data arrives (Tansu) this is added latency."""
    kafka_max_poll_records: int = Field(500, ge=1)
    """Most records one fetch hands over."""
    kafka_producer_idempotence: bool = True
    """The idempotent producer (with acks=all); false only on brokers without it (Tansu)."""
    kafka_producer_max_request_size: int = Field(16 * 1024 * 1024, ge=1_024)
    """The producer's own record size limit; keep it above the input topic's limit plus
    16 KiB of dead-letter headers (the brokers' limits are the ones that count)."""
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    """read_committed: records of aborted or open transactions are never applied."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How the clients talk to the brokers."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """The SASL mechanism, with a SASL_* protocol."""
    kafka_sasl_username: str | None = None
    """The SASL user; required with a SASL_* protocol."""
    kafka_sasl_password: SecretStr | None = None
    """The SASL password; required with a SASL_* protocol (never logged)."""
    kafka_ssl_cafile: FilePath | None = None
    """A CA bundle (PEM) to verify the brokers with, with SSL or SASL_SSL."""
    kafka_ssl_certfile: FilePath | None = None
    """A client certificate (PEM), for mutual TLS."""
    kafka_ssl_keyfile: FilePath | None = None
    """The client certificate's key (PEM)."""
    kafka_ssl_key_password: SecretStr | None = None
    """The password of KAFKA_SSL_KEYFILE, if it has one (never logged)."""

    # LaunchDarkly
    ld_api_token: SecretStr | None = None
    """The LaunchDarkly API access token, sent as given (no Bearer); or LD_API_TOKEN_FILE."""
    ld_api_token_file: Path | None = None
    """A file holding the token, re-read before every probe of the API gate (rotation
    without a restart); wins over LD_API_TOKEN."""
    ld_base_url: str = "https://app.launchdarkly.com"
    """LaunchDarkly's address (another instance, or the simulator)."""
    ld_request_timeout_ms: int = Field(10_000, ge=100)
    """Bound of one API request."""
    ld_unknown_outcome_settle_ms: int = Field(5_000, ge=0)
    """How long LaunchDarkly may still apply a request whose outcome is unknown (it timed out,
    or its connection dropped after it was sent): nothing more for its resource, not even the
    retry, is sent until this has passed."""
    ld_retry_max_attempts: int = Field(10, ge=1)
    """Failed attempts per event before it is failed (429s not counted)."""
    ld_retry_max_elapsed_ms: int = Field(300_000, ge=0)
    """Time budget per event from its first attempt, then failed."""
    ld_retry_base_delay_ms: int = Field(500, ge=1)
    """First backoff after a 5xx, a timeout or a dropped connection (doubling, full jitter)."""
    ld_retry_max_delay_ms: int = Field(30_000, ge=1)
    """Longest backoff between two attempts."""
    ld_conflict_max_retries: int = Field(3, ge=0)
    """Retries of a 409 (optimistic locking) before the events are rejected."""
    ld_rate_limit_default_wait_ms: int = Field(10_000, ge=0)
    """Wait after a 429 whose answer names no reset."""
    ld_rate_limit_jitter_ms: int = Field(1_000, ge=0)
    """Up to this much is added at random to every 429 wait."""
    ld_outage_window_ms: int = Field(10_000, ge=100)
    """How long every write must fail (no answer, 5xx) with no other answer before the API
    counts as down and the service pauses."""
    ld_probe_max_delay_ms: int = Field(30_000, ge=100)
    """Longest pause between probes of a closed API gate."""
    ld_segment_kind_ttl_ms: int = Field(300_000, ge=0)
    """How long a segment's kind (standard or big) is trusted after reading it."""

    # The consumer
    consumer_group_id: str = "ld-targeting-consumer"
    """The Kafka consumer group of the members."""
    consumer_input_topic: str = "ld.targeting-changes"
    """The topic of targeting-change events."""
    consumer_results_topic: str = "ld.targeting-results"
    """The topic of outcomes, one per input record."""
    consumer_dlq_topic: str = "ld.targeting-changes.dlq"
    """The dead-letter topic: copies of the records rejected, invalid or failed."""
    consumer_batch_max_size: int = Field(50, ge=1, le=MAX_TARGET_VALUES)
    """Most instructions in one request (1-1,500)."""
    consumer_batch_linger_ms: int = Field(200, ge=0)
    """Longest wait of a batch's oldest event before its request goes."""
    consumer_batch_max_wait_ms: int = Field(60_000, ge=0)
    """Longest a due batch is held back to fill while the lanes waiting on its rate-limit route
    outnumber the requests left in the window (with requests to spare, the linger alone
    decides; 0 never holds)."""
    consumer_batch_comment_max_chars: int = Field(4_000, ge=1_000)
    """Longest joined comment of one request; a batch closes early rather than pass it."""
    consumer_max_in_flight_requests: int = Field(128, ge=1)
    """Requests (to different URLs) on the wire at once: at least the requests per second the
    lanes want times the API's latency (Little's law), or events wait for a slot."""
    consumer_max_pending_events: int = Field(10_000, ge=1)
    """Records taken but not finished before fetching pauses (bounds memory)."""
    consumer_http_port: int = Field(8080, ge=0, le=65_535)
    """Port of /healthz, /readyz and /metrics; 0 turns them off."""
    consumer_auto_offset_reset: Literal["earliest", "latest", "none"] = "earliest"
    """Where a partition without a committed offset (or out of range) starts: earliest, so a
    new group skips nothing."""
    consumer_commit_interval_ms: int = Field(1_000, ge=10)
    """How often offsets are committed."""
    consumer_shutdown_timeout_ms: int = Field(20_000, ge=0)
    """Bound of the drain on SIGTERM; batches are sent until LD_REQUEST_TIMEOUT_MS +
    LD_UNKNOWN_OUTCOME_SETTLE_MS before its end, then only requests on the wire (or that may
    still land) are waited for."""
    consumer_revoke_timeout_ms: int = Field(20_000, ge=0)
    """How long a revoke waits for requests on the wire (or that may still land) for its
    partitions."""
    consumer_recovery_lookback_ms: int = Field(120_000)
    """Crash recovery: how far before a waiting record's timestamp to look for outcomes
    already published; negative turns recovery off."""
    consumer_recovery_timeout_ms: int = Field(60_000, ge=100)
    """Bound of that scan; past it nothing is skipped."""
    consumer_replay_max_count: int = Field(3, ge=1)
    """`replay` refuses originals replayed this often (its --max-replays)."""

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """debug, info, warning or error."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """json, console, or auto: JSON lines unless on a terminal."""

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

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for address in value.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65_536:
                raise ValueError(
                    f"{address.strip()!r} is not host:port (e.g. localhost:9092; several are"
                    " separated by commas)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        found = violations(self)
        if found:
            # One error carrying every broken rule, with the variables each one names, so
            # load_settings can report them all alongside the single bad values.
            raise PydanticCustomError(
                "settings_rules",
                "{message}",
                {"message": "; ".join(v.message for v in found), "violations": found},
            )
        return self

    def secrets(self) -> list[str]:
        """Values never to be printed (the redactor's list)."""
        found = [self.kafka_sasl_password, self.kafka_ssl_key_password, self.ld_api_token]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as the environment variables that give them back (for a child process),
    those that are None left out. The API token is left out too: a caller adds its own
    LD_API_TOKEN (or LD_API_TOKEN_FILE), and the result is never printed with a token in it."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None or name == "ld_api_token":
            continue
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass(frozen=True)
class Violation:
    """A rule between settings that does not hold: the variables it names, and why."""

    fields: tuple[str, ...]
    message: str


def violations(s: Settings) -> list[Violation]:
    """Every rule between settings that `s` breaks (all of them, not the first)."""
    found: list[Violation] = []

    def rule(holds: bool, message: str, *fields: str) -> None:
        if not holds:
            found.append(Violation(fields, message))

    if s.kafka_security_protocol.startswith("SASL_"):
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            rule(
                getattr(s, name) is not None,
                f"{name.upper()} is required with KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol}",
                name,
                "kafka_security_protocol",
            )
    rule(
        s.kafka_heartbeat_interval_ms < s.kafka_session_timeout_ms,
        "KAFKA_HEARTBEAT_INTERVAL_MS must be lower than KAFKA_SESSION_TIMEOUT_MS"
        f" ({s.kafka_heartbeat_interval_ms} >= {s.kafka_session_timeout_ms})",
        "kafka_heartbeat_interval_ms",
        "kafka_session_timeout_ms",
    )
    # A request on the wire when its partition is revoked must end, and may no longer be
    # applied, within the revoke; the revoke with its commit within the group's rebalance
    # (leases.py, rule 4; sender.py, unknown outcomes).
    landed = s.ld_request_timeout_ms + s.ld_unknown_outcome_settle_ms
    rule(
        landed < s.consumer_revoke_timeout_ms,
        "LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS must be lower than"
        f" CONSUMER_REVOKE_TIMEOUT_MS ({landed} >= {s.consumer_revoke_timeout_ms})",
        "ld_request_timeout_ms",
        "ld_unknown_outcome_settle_ms",
        "consumer_revoke_timeout_ms",
    )
    revoke = s.consumer_revoke_timeout_ms + s.kafka_commit_timeout_ms
    rule(
        revoke < s.kafka_rebalance_timeout_ms,
        "CONSUMER_REVOKE_TIMEOUT_MS + KAFKA_COMMIT_TIMEOUT_MS must be lower than"
        f" KAFKA_REBALANCE_TIMEOUT_MS ({revoke} >= {s.kafka_rebalance_timeout_ms})",
        "consumer_revoke_timeout_ms",
        "kafka_commit_timeout_ms",
        "kafka_rebalance_timeout_ms",
    )
    rule(
        landed < s.consumer_shutdown_timeout_ms,
        "LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS must be lower than"
        f" CONSUMER_SHUTDOWN_TIMEOUT_MS ({landed} >= {s.consumer_shutdown_timeout_ms})",
        "ld_request_timeout_ms",
        "ld_unknown_outcome_settle_ms",
        "consumer_shutdown_timeout_ms",
    )
    rule(
        s.ld_outage_window_ms < s.ld_retry_max_elapsed_ms,
        "LD_OUTAGE_WINDOW_MS must be lower than LD_RETRY_MAX_ELAPSED_MS"
        f" ({s.ld_outage_window_ms} >= {s.ld_retry_max_elapsed_ms})",
        "ld_outage_window_ms",
        "ld_retry_max_elapsed_ms",
    )
    return found


def load_settings(*, need_token: bool = False, **overrides: object) -> Settings:
    """Build the settings; a `SettingsError` lists every problem found, on one line.

    Every bad value is reported (pydantic checks every field), and so is every rule between
    settings whose variables are themselves valid, and the token's problems (checked again
    with the bad values at their defaults). A value is shown only for settings that are not
    secrets. `need_token`: also check that a usable API token is configured (`run`, `check`).
    """
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        bad: set[str] = set()
        for error in exc.errors():
            ctx = error.get("ctx") or {}
            if error["type"] == "settings_rules":
                problems.extend(v.message for v in ctx["violations"])
                continue
            name = ".".join(str(part) for part in error["loc"])
            bad.add(name)
            problems.append(f"{name.upper()}: {_describe(name, error)}")
        if bad:
            rules, rest = _with_defaults(bad, overrides)
            problems.extend(rules)
            if need_token and rest is not None and "ld_api_token" not in bad:
                problems.extend(token_problems(rest))
    if settings is not None and need_token:
        problems.extend(token_problems(settings))
    if problems:
        raise SettingsError(
            f"invalid setting {problems[0]}"
            if len(problems) == 1
            else f"{len(problems)} invalid settings: " + "; ".join(problems)
        )
    assert settings is not None
    return settings


def _describe(name: str, error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    field = Settings.model_fields.get(name)
    secret = field is not None and "SecretStr" in str(field.annotation)
    if secret or isinstance(error.get("input"), dict):
        return message
    return f"{message} (got {str(error.get('input'))[:80]!r})"


def _with_defaults(
    bad: set[str], overrides: dict[str, object]
) -> tuple[list[str], Settings | None]:
    """The settings again with the `bad` fields at their defaults: the broken rules that name
    none of them, and the settings when no rule is broken."""
    defaults = {name: Settings.model_fields[name].default for name in bad}
    try:
        return [], Settings(**{**overrides, **defaults})
    except ValidationError as exc:
        rules = [
            v.message
            for error in exc.errors()
            if error["type"] == "settings_rules"
            for v in (error.get("ctx") or {})["violations"]
            if not bad.intersection(v.fields)
        ]
        return rules, None


# What `run` (and `check`, `verify`) cannot do without: `run --help` marks them required.
REQUIRED = {"ld_api_token": "or LD_API_TOKEN_FILE"}

# Shorter than any LaunchDarkly access token (`api-` and a UUID): such a value is a mistake,
# and redacting it from logs could only mangle other text (logs.Redactor matches whole tokens).
MIN_TOKEN_LENGTH = 16


def token_problems(settings: Settings) -> list[str]:
    """Why the configured API token cannot be used, naming the variable; empty when it can."""
    path = settings.ld_api_token_file
    if path is not None:
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            return [f"LD_API_TOKEN_FILE: {path} does not exist (mount the token file there)"]
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            return [f"LD_API_TOKEN_FILE: cannot read {path}: {reason}"]
        where = f"LD_API_TOKEN_FILE: {path}"
    elif settings.ld_api_token is not None:
        token = settings.ld_api_token.get_secret_value().strip()
        where = "LD_API_TOKEN"
    else:
        return ["LD_API_TOKEN: not set (set LD_API_TOKEN or LD_API_TOKEN_FILE)"]
    if not token:
        return [f"{where}: empty (it must hold the LaunchDarkly API access token)"]
    if len(token) < MIN_TOKEN_LENGTH:
        return [
            f"{where}: the token is {len(token)} characters, too short for a LaunchDarkly"
            f" access token (at least {MIN_TOKEN_LENGTH})"
        ]
    return []


def require_token(settings: Settings) -> None:
    problems = token_problems(settings)
    if problems:
        raise SettingsError(f"invalid setting {problems[0]}")
