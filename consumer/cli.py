"""The command line: parses, configures logging, delegates.

Only this module (and pydantic-settings, called from here) reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from consumer import __version__, logs
from consumer.cli_errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, handled
from consumer.commands import filters
from consumer.settings import REQUIRED, Settings, load_settings

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (and exit 2), like every other failure (cli_errors)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _wait_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=60.0,
        metavar="SECONDS",
        help=f"then wait for the outcome of each {what} and show them (60 s without a value);"
        " exit 1 unless every one succeeded",
    )


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (options whose default is unset say what they override);
    epilogs (the environment table) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _shown_default(name: str) -> str:
    if name in REQUIRED:
        return "required"
    default = Settings.model_fields[name].default
    if default is None:
        return "none"
    return str(default).lower() if isinstance(default, bool) else str(default)


def describe_setting(name: str) -> str:
    """A setting's one-line description: its field docstring (settings.py, the one source)."""
    text = " ".join((Settings.model_fields[name].description or "").split())
    if name in REQUIRED:
        text += f" Required ({REQUIRED[name]})."
    return text


def environment_help() -> str:
    """Every environment variable with its default and description, from `Settings`: it
    cannot go stale."""
    names = list(Settings.model_fields)
    width = max(map(len, names))
    defaults = max(len(_shown_default(name)) for name in names)
    lines = ["environment variables (default, description; docs/configuration.md):"]
    for name in names:
        lines.append(
            f"  {name.upper():<{width}}  {_shown_default(name):<{defaults}}"
            f"  {describe_setting(name)}"
        )
    return "\n".join(lines)


# The Kafka connection: read by every command that talks to a broker (kafka.common_config).
CONNECTION = (
    "kafka_bootstrap_servers",
    "kafka_client_id",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_ssl_key_password",
)


def reads(*names: str, note: str = "") -> str:
    """A command's epilog: the environment variables it reads (checked against `Settings`)."""
    unknown = [name for name in names if name not in Settings.model_fields]
    assert not unknown, unknown
    shown = ", ".join(name.upper() for name in names if name not in CONNECTION)
    connection = (
        "the Kafka connection (KAFKA_BOOTSTRAP_SERVERS, KAFKA_CLIENT_ID,"
        " KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*)"
        if set(CONNECTION) <= set(names)
        else ""
    )
    listed = "; ".join(part for part in (connection, shown) if part)
    text = f"environment: {listed or 'none'}"
    text += f". {note}" if note else "."
    return textwrap.fill(text, 94) + "\n(each variable: `run --help` or docs/configuration.md)"


EVENT_HELP = """\
an event (one JSON object per line, a JSON array of them, or one object):
  {"eventId": "8d6f…", "projectKey": "web", "environmentKey": "production",
   "resource": {"kind": "segment", "key": "beta-users"},
   "instruction": {"kind": "addIncludedTargets", "contextKind": "user", "values": ["u1"]},
   "comment": "optional", "occurredAt": "2026-01-31T12:00:00Z (optional)"}
instruction: one LaunchDarkly semantic-patch instruction, exactly as the API documents it;
every kind and its fields: docs/events.md, schemas/event.schema.json; one of each kind:
examples/events.jsonl"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ld-targeting-consumer",
        description="Apply targeting-change events from Kafka to LaunchDarkly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    run = commands.add_parser(
        "run", help="run the service (configured by the environment)", epilog=environment_help()
    )
    run.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    run.add_argument("--group-id", help="overrides CONSUMER_GROUP_ID")
    run.add_argument("--base-url", help="overrides LD_BASE_URL")
    run.add_argument("--http-port", type=int, help="overrides CONSUMER_HTTP_PORT (0: off)")

    schemas = commands.add_parser(
        "schemas", help="write the JSON Schemas of every message", epilog=reads()
    )
    schemas.add_argument(
        "--dir", type=Path, default=Path("schemas"), help="where the schema files are"
    )
    schemas.add_argument("--check", action="store_true", help="fail when the files are stale")

    fake = commands.add_parser(
        "fake-api",
        help="serve the LaunchDarkly API simulator",
        epilog=reads(
            "ld_api_token", "log_level", "log_format", note="LD_API_TOKEN: the token it accepts"
        ),
    )
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on")
    fake.add_argument("--port", type=int, default=8765, help="port to listen on")
    fake.add_argument(
        "--token",
        action="append",
        help="an accepted API token (repeatable; default: LD_API_TOKEN)",
    )
    fake.add_argument("--seed", type=Path, help="JSON file of projects, segments and flags")
    fake.add_argument("--sample-seed", action="store_true", help="load the demo's sample data")
    fake.add_argument("--faults", help='JSON, e.g. {"error_rate": 0.2, "latency_ms": [5, 50]}')
    fake.add_argument("--limits", help='JSON, e.g. {"route_limit": 50, "window_ms": 10000}')
    fake.add_argument(
        "--request-log",
        type=int,
        default=100_000,
        help="requests kept for GET /admin/requests (0: none; counts in /admin/stats go on)",
    )

    replay = commands.add_parser(
        "replay",
        help="copy dead-letter records back to the input topic, once per original record",
        description="Copy selected dead-letter records back to the input topic: one replay per"
        " original record (its topic, partition and offset), however many dead letters it has;"
        " --again replays originals replayed before once more. docs/outcomes.md says how.",
        epilog=reads(
            *CONNECTION,
            "kafka_producer_idempotence",
            "kafka_isolation_level",
            "consumer_dlq_topic",
            "consumer_input_topic",
            "consumer_replay_max_count",
            "consumer_results_topic",
            "consumer_group_id",
            note="The last two with --wait.",
        ),
    )
    filters.add_options(
        replay,
        *("--status", "--error-code", "--event-id", "--resource", "--since", "--until"),
        statuses=["rejected", "invalid", "failed"],
        wording={
            "--status": "the dead letter's status (repeatable)",
            "--error-code": "e.g. not_found (repeatable; the codes: docs/outcomes.md)",
        },
    )
    replay.add_argument(
        "--limit",
        type=_at_least_one,
        help="replay at most this many originals (those replayed before do not count, so"
        " runs page forward)",
    )
    replay.add_argument("--to", help="target topic (default: CONSUMER_INPUT_TOPIC)")
    replay.add_argument(
        "--max-replays",
        type=_at_least_one,
        help="refuse records replayed this often (default: CONSUMER_REPLAY_MAX_COUNT)",
    )
    replay.add_argument(
        "--again",
        action="store_true",
        help="replay originals replayed before once more (one copy per original, however"
        " many dead letters it has)",
    )
    replay.add_argument("--dry-run", action="store_true", help="show what would go; change nothing")
    _wait_option(replay, "record replayed")
    replay.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")

    produce = commands.add_parser(
        "produce",
        help="publish events from a JSON/JSONL file or stdin",
        description="Validate events and publish them to the input topic, keyed"
        " {projectKey}/{environmentKey}/{resource.kind}/{resource.key}. All or nothing: one"
        " invalid event and nothing is sent (--skip-invalid, --allow-invalid).",
        epilog=EVENT_HELP
        + "\n\n"
        + reads(
            *CONNECTION,
            "kafka_producer_idempotence",
            "kafka_producer_max_request_size",
            "kafka_isolation_level",
            "consumer_input_topic",
            "consumer_results_topic",
            "consumer_group_id",
            note="The last two with --wait.",
        ),
    )
    produce.add_argument("file", help="a .json or .jsonl file, or - for stdin")
    produce.add_argument("--topic", help="default: CONSUMER_INPUT_TOPIC")
    invalid = produce.add_mutually_exclusive_group()
    invalid.add_argument(
        "--skip-invalid",
        action="store_true",
        help="send the valid events when some are invalid (exit 1 all the same)",
    )
    invalid.add_argument(
        "--allow-invalid", action="store_true", help="send invalid events too, as they are"
    )
    produce.add_argument(
        "--dry-run", action="store_true", help="validate and show what would go; send nothing"
    )
    _wait_option(produce, "event")
    produce.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")

    outcomes = commands.add_parser(
        "outcomes",
        help="read the results topic: what happened to an event",
        epilog=reads(*CONNECTION, "kafka_isolation_level", "consumer_results_topic"),
    )
    filters.add_options(
        outcomes,
        *("--event-id", "--status", "--error-code", "--resource", "--since", "--until"),
        statuses=["succeeded", "rejected", "invalid", "failed"],
        wording={"--event-id": "repeatable; stops once all found"},
    )
    outcomes.add_argument(
        "--limit",
        type=_at_least_one,
        metavar="N",
        help="the newest N matching outcomes, in time order (oldest first); without it every"
        " match is shown as read, in order within each partition",
    )
    outcomes.add_argument(
        "--follow", action="store_true", help="keep reading new outcomes (Ctrl-C stops)"
    )
    outcomes.add_argument("--json", action="store_true", help="one outcome per line, as published")
    outcomes.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")

    check = commands.add_parser(
        "check",
        help="preflight: broker, topics, the group's lag, LaunchDarkly and the token",
        epilog=reads(
            *CONNECTION,
            "kafka_producer_idempotence",
            "kafka_producer_max_request_size",
            "kafka_isolation_level",
            "consumer_input_topic",
            "consumer_results_topic",
            "consumer_dlq_topic",
            "consumer_group_id",
            "ld_api_token",
            "ld_api_token_file",
            "ld_base_url",
            "ld_request_timeout_ms",
        ),
    )
    check.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    check.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    check.add_argument("--group-id", help="overrides CONSUMER_GROUP_ID")
    check.add_argument("--base-url", help="overrides LD_BASE_URL")

    broker = commands.add_parser(
        "broker",
        help="run the embedded broker (Tansu) with the topics, for the other commands by hand",
        description="Start Tansu (memory storage), create the three topics (names from"
        " CONSUMER_INPUT_TOPIC, CONSUMER_RESULTS_TOPIC, CONSUMER_DLQ_TOPIC), print the"
        " environment for the other commands, and run until Ctrl-C or SIGTERM.",
        epilog=reads(
            "consumer_input_topic",
            "consumer_results_topic",
            "consumer_dlq_topic",
            "log_level",
            "log_format",
        ),
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.add_argument("--port", type=int, default=9092, help="port to listen on")
    broker.add_argument(
        "--advertised-host",
        help="address clients are told to use (default: --host, or 127.0.0.1 for 0.0.0.0)",
    )
    broker.add_argument(
        "--input-partitions", type=_at_least_one, default=4, help="partitions of the input topic"
    )
    broker.add_argument(
        "--results-partitions",
        type=_at_least_one,
        help="partitions of the results topic, as many as the input topic's or more"
        " (default: as many)",
    )
    broker.add_argument(
        "--dlq-partitions",
        type=_at_least_one,
        default=1,
        help="partitions of the dead-letter topic",
    )

    verify = commands.add_parser(
        "verify",
        help="compare LaunchDarkly's state with what the outcomes say it should hold",
        epilog=reads(
            *CONNECTION,
            "kafka_isolation_level",
            "consumer_results_topic",
            "ld_api_token",
            "ld_api_token_file",
            "ld_base_url",
            "ld_request_timeout_ms",
            "ld_retry_base_delay_ms",
            "ld_retry_max_delay_ms",
            "ld_rate_limit_default_wait_ms",
            note="The input topic is the one each outcome names.",
        ),
    )
    filters.add_options(
        verify,
        *("--since", "--until", "--resource", "--event-id"),
        wording={
            "--since": "outcomes completed since: RFC 3339 or 30m, 2h, 7d ago",
            "--until": "outcomes completed until: RFC 3339 or a duration ago",
            "--event-id": "targets these events touched",
        },
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    verify.add_argument("--base-url", help="overrides LD_BASE_URL")

    demo = commands.add_parser(
        "demo",
        help="broker + simulator + consumer with sample events",
        epilog=reads(
            "kafka_bootstrap_servers",
            note="Only when set: a broker to use (with topics of its own) instead of starting"
            " Tansu.",
        ),
    )
    demo.add_argument("--verbose", action="store_true", help="show the service's logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = COMMANDS[args.command]
    # Tracebacks are for bugs, and for LOG_LEVEL=debug (cli_errors.handled).
    debug = os.environ.get("LOG_LEVEL", "").strip().lower() == "debug"
    return handled(lambda: command(args), debug=debug)


def _settings(args: argparse.Namespace, *, need_token: bool = False) -> Settings:
    overrides = {
        name: value
        for name, value in (
            ("kafka_bootstrap_servers", getattr(args, "bootstrap_servers", None)),
            ("consumer_group_id", getattr(args, "group_id", None)),
            ("ld_base_url", getattr(args, "base_url", None)),
            ("consumer_http_port", getattr(args, "http_port", None)),
        )
        if value is not None
    }
    settings = load_settings(need_token=need_token, **overrides)
    for secret in settings.secrets():
        logs.REDACTOR.add(secret)
    return settings


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args, need_token=True)
    logs.configure(settings.log_level, settings.log_format)
    from consumer.commands.run import run_service

    return asyncio.run(run_service(settings))


def _schemas(args: argparse.Namespace) -> int:
    from consumer.contract import schemas

    if args.check:
        stale = schemas.stale(args.dir)
        if stale:
            print(
                f"stale schemas in {args.dir}: {', '.join(stale)};"
                " run `ld-targeting-consumer schemas` and commit the result",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(f"schemas in {args.dir} are up to date")
        return EXIT_OK
    for path in schemas.write(args.dir):
        print(f"wrote {path}")
    return EXIT_OK


def _fake_api(args: argparse.Namespace) -> int:
    from consumer.simulator.main import serve

    tokens = args.token or ([os.environ["LD_API_TOKEN"]] if os.environ.get("LD_API_TOKEN") else [])
    if not tokens:
        raise UsageError("fake-api needs --token or LD_API_TOKEN")
    logs.configure(os.environ.get("LOG_LEVEL", "info"), os.environ.get("LOG_FORMAT", "auto"))
    return serve(
        host=args.host,
        port=args.port,
        tokens=set(tokens),
        seed_path=args.seed,
        sample=args.sample_seed,
        faults_json=args.faults,
        limits_json=args.limits,
        request_log=max(0, args.request_log),
    )


def _broker(args: argparse.Namespace) -> int:
    from consumer.commands import broker
    from consumer.kafka import clients as kafka
    from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker

    if not 0 < args.port < 65_536:
        raise UsageError(f"broker: --port must be 1-65535, not {args.port}")
    if args.results_partitions is None:
        args.results_partitions = args.input_partitions
    if args.results_partitions < args.input_partitions:
        raise UsageError(
            f"broker: --results-partitions ({args.results_partitions}) must be at least"
            f" --input-partitions ({args.input_partitions}): outcomes are read per partition"
        )
    tansu = TansuBroker(args.port, host=args.host, advertised_host=args.advertised_host)
    # The clients' settings for this broker: topic names (and anything else) from the
    # environment, the address and the Tansu settings from here.
    overrides: dict[str, object] = {
        **TANSU_SETTINGS,
        "kafka_bootstrap_servers": tansu.bootstrap_servers,
        "kafka_security_protocol": "PLAINTEXT",
    }
    settings = load_settings(need_token=False, **overrides)
    logs.configure("debug" if settings.log_level == "debug" else "error", settings.log_format)
    partitions = kafka.service_topics(
        settings, args.input_partitions, args.results_partitions, args.dlq_partitions
    )
    if len(partitions) < 3:
        raise UsageError("broker: the input, results and dead-letter topics must differ")
    return asyncio.run(broker.serve(tansu, settings, partitions, sys.stdout))


def _demo(args: argparse.Namespace) -> int:
    from consumer.demo.run import run_demo

    logs.configure("info" if args.verbose else "error", "auto")
    return asyncio.run(run_demo())


def _replay(args: argparse.Namespace) -> int:
    from consumer.commands import replay

    settings = _settings(args)
    logs.configure("warning", settings.log_format)
    replayer = replay.Replayer(
        settings,
        filters.from_args(args),
        limit=args.limit,
        target_topic=args.to,
        max_replays=args.max_replays
        if args.max_replays is not None
        else settings.consumer_replay_max_count,
        again=args.again,
        dry_run=args.dry_run,
    )
    report = asyncio.run(replayer.run())
    replay.print_report(report, sys.stdout, dry_run=args.dry_run)
    if args.wait is None or args.dry_run or not report.placed:
        return EXIT_OK
    from consumer.commands.produce import wait_for_outcomes

    found, missing = asyncio.run(
        wait_for_outcomes(
            settings,
            report.placed,
            since_ms=report.started_ms,
            timeout=args.wait,
            out=sys.stdout,
            progress=sys.stderr,
        )
    )
    succeeded = not missing and all(o["status"] == "succeeded" for o in found.values())
    return EXIT_OK if succeeded else EXIT_FAILURE


def _produce(args: argparse.Namespace) -> int:
    from consumer.commands import produce

    settings = _settings(args)
    logs.configure("debug" if settings.log_level == "debug" else "critical", settings.log_format)
    name = "stdin" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"produce: cannot read {name}: {exc.strerror}") from None
    mode: produce.Mode = (
        "skip-invalid" if args.skip_invalid else "allow-invalid" if args.allow_invalid else "all"
    )
    return asyncio.run(
        produce.run(
            settings,
            data,
            name=name,
            topic=args.topic or settings.consumer_input_topic,
            topic_variable="--topic" if args.topic else "CONSUMER_INPUT_TOPIC",
            mode=mode,
            dry_run=args.dry_run,
            wait=args.wait,
            out=sys.stdout,
            err=sys.stderr,
        )
    )


def _check(args: argparse.Namespace) -> int:
    from consumer.commands import check
    from consumer.launchdarkly.client import TokenSource
    from consumer.settings import token_problems

    # Without a usable token the Kafka rows still run; the LaunchDarkly row says why.
    settings = _settings(args)
    logs.configure("debug" if settings.log_level == "debug" else "critical", settings.log_format)
    problems = token_problems(settings)
    token = None if problems else TokenSource(settings.ld_api_token, settings.ld_api_token_file)
    no_token = problems[0] if problems else None
    report = asyncio.run(check.preflight(settings, token, no_token=no_token))
    (check.print_json if args.json else check.print_table)(report, sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _outcomes(args: argparse.Namespace) -> int:
    from consumer.commands import outcomes as outcomes_reader

    settings = _settings(args)
    logs.configure("debug" if settings.log_level == "debug" else "critical", settings.log_format)
    selection = filters.from_args(args)
    printer = outcomes_reader.Printer(sys.stdout, as_json=args.json)
    try:
        shown, missing = asyncio.run(
            outcomes_reader.read(settings, selection, printer, limit=args.limit, follow=args.follow)
        )
    except KeyboardInterrupt:  # how --follow ends
        return EXIT_OK
    print(f"{shown} outcome{'s' * (shown != 1)}", file=sys.stderr)
    if missing:
        print(f"no outcome for: {', '.join(sorted(missing))}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    import json

    from consumer.commands import verify

    settings = _settings(args, need_token=True)
    logs.configure("debug" if settings.log_level == "debug" else "critical", settings.log_format)
    report = asyncio.run(verify.Verifier(settings, filters.from_args(args)).run())
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        verify.print_report(report, sys.stdout)
    return EXIT_OK if report.clean else EXIT_FAILURE


COMMANDS = {
    "outcomes": _outcomes,
    "check": _check,
    "run": _run,
    "schemas": _schemas,
    "fake-api": _fake_api,
    "broker": _broker,
    "demo": _demo,
    "replay": _replay,
    "produce": _produce,
    "verify": _verify,
}
