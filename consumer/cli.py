"""The command line: parses, configures logging, delegates.

Only this module (and pydantic-settings, called from here) reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from consumer import __version__, logs
from consumer.settings import Settings, SettingsError, load_settings, require_token

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ld-targeting-consumer",
        description="Apply targeting-change events from Kafka to LaunchDarkly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the service (configured by the environment)")
    run.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    run.add_argument("--group-id", help="overrides CONSUMER_GROUP_ID")
    run.add_argument("--base-url", help="overrides LD_BASE_URL")
    run.add_argument("--http-port", type=int, help="overrides CONSUMER_HTTP_PORT (0: off)")

    schemas = commands.add_parser("schemas", help="write the JSON Schemas of every message")
    schemas.add_argument("--dir", type=Path, default=Path("schemas"))
    schemas.add_argument("--check", action="store_true", help="fail when the files are stale")

    fake = commands.add_parser("fake-api", help="serve the LaunchDarkly API simulator")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
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

    replay = commands.add_parser("replay", help="copy dead-letter records back to the input topic")
    replay.add_argument("--status", action="append", choices=["rejected", "invalid", "failed"])
    replay.add_argument("--error-code", action="append", help="e.g. not_found (repeatable)")
    replay.add_argument("--event-id", action="append", help="repeatable")
    replay.add_argument(
        "--resource", help="project/env/kind/key glob, e.g. 'demo/production/segment/*'"
    )
    replay.add_argument("--since", help="RFC 3339 time or a duration ago (30m, 2h, 7d)")
    replay.add_argument("--until", help="RFC 3339 time or a duration ago")
    replay.add_argument("--limit", type=int, help="replay at most this many records")
    replay.add_argument("--to", help="target topic (default: CONSUMER_INPUT_TOPIC)")
    replay.add_argument(
        "--max-replays", type=int, help="refuse records replayed this often (default 3)"
    )
    replay.add_argument("--again", action="store_true", help="also replay records replayed before")
    replay.add_argument("--dry-run", action="store_true", help="show what would go; change nothing")
    replay.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")

    produce = commands.add_parser("produce", help="publish events from a JSON/JSONL file or stdin")
    produce.add_argument("file", help="a .json or .jsonl file, or - for stdin")
    produce.add_argument("--topic", help="default: CONSUMER_INPUT_TOPIC")
    produce.add_argument("--allow-invalid", action="store_true", help="send invalid events too")
    produce.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=60.0,
        metavar="SECONDS",
        help="then wait for each event's outcome and show them (default 60 s)",
    )
    produce.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")

    verify = commands.add_parser(
        "verify", help="compare LaunchDarkly's state with what the outcomes say it should hold"
    )
    verify.add_argument("--since", help="outcomes completed since: RFC 3339 or 30m, 2h, 7d ago")
    verify.add_argument("--until", help="outcomes completed until: RFC 3339 or a duration ago")
    verify.add_argument(
        "--resource", help="project/env/kind/key glob, e.g. 'demo/production/segment/*'"
    )
    verify.add_argument("--event-id", action="append", help="targets these events touched")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--bootstrap-servers", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    verify.add_argument("--base-url", help="overrides LD_BASE_URL")

    demo = commands.add_parser("demo", help="broker + simulator + consumer with sample events")
    demo.add_argument("--verbose", action="store_true", help="show the service's logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "schemas":
            return _schemas(args)
        if args.command == "fake-api":
            return _fake_api(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "produce":
            return _produce(args)
        if args.command == "verify":
            return _verify(args)
    except SettingsError as exc:
        print(f"ld-targeting-consumer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    raise AssertionError(args.command)


def _settings(args: argparse.Namespace) -> Settings:
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
    settings = load_settings(**overrides)
    for secret in settings.secrets():
        logs.REDACTOR.add(secret)
    return settings


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    require_token(settings)
    logs.configure(settings.log_level, settings.log_format)
    from consumer.runner import run_service

    return asyncio.run(run_service(settings))


def _schemas(args: argparse.Namespace) -> int:
    from consumer import schemas

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
    import os

    from consumer.fake_api.main import serve

    tokens = args.token or ([os.environ["LD_API_TOKEN"]] if os.environ.get("LD_API_TOKEN") else [])
    if not tokens:
        raise SettingsError("fake-api needs --token or LD_API_TOKEN")
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


def _demo(args: argparse.Namespace) -> int:
    from consumer.demo import run_demo

    logs.configure("info" if args.verbose else "error", "auto")
    return asyncio.run(run_demo())


def _replay(args: argparse.Namespace) -> int:
    from consumer import replay

    settings = _settings(args)
    logs.configure("warning", settings.log_format)
    try:
        selection = replay.Selection(
            statuses=frozenset(args.status or ()),
            error_codes=frozenset(args.error_code or ()),
            event_ids=frozenset(args.event_id or ()),
            resource=args.resource,
            since_ms=replay.parse_when(args.since) if args.since else None,
            until_ms=replay.parse_when(args.until) if args.until else None,
            limit=args.limit,
        )
    except ValueError as exc:
        raise SettingsError(f"replay: {exc}") from None
    replayer = replay.Replayer(
        settings,
        selection,
        target_topic=args.to,
        max_replays=args.max_replays
        if args.max_replays is not None
        else settings.consumer_replay_max_count,
        again=args.again,
        dry_run=args.dry_run,
    )
    report = asyncio.run(replayer.run())
    replay.print_report(report, sys.stdout, dry_run=args.dry_run)
    return EXIT_OK


def _produce(args: argparse.Namespace) -> int:
    from consumer import produce

    settings = _settings(args)
    logs.configure("warning", settings.log_format)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise SettingsError(f"produce: {exc}") from None
    topic = args.topic or settings.consumer_input_topic
    total = sum(1 for _ in produce.read_lines(text))
    started_ms = int(time.time() * 1000) - 60_000
    report = asyncio.run(
        produce.produce(settings, text, topic=topic, allow_invalid=args.allow_invalid)
    )
    produce.print_report(
        report, sys.stdout, total=total, topic=topic, allow_invalid=args.allow_invalid
    )
    missing = 0
    if args.wait is not None and report.sent:
        missing = asyncio.run(
            produce.wait_for_outcomes(
                settings, report, since_ms=started_ms, timeout=args.wait, out=sys.stdout
            )
        )
    return EXIT_OK if (not report.invalid or args.allow_invalid) and not missing else EXIT_FAILURE


def _verify(args: argparse.Namespace) -> int:
    import json

    from consumer import verify
    from consumer.replay import parse_when

    settings = _settings(args)
    require_token(settings)
    logs.configure("warning", settings.log_format)
    try:
        selection = verify.Selection(
            since_ms=parse_when(args.since) if args.since else None,
            until_ms=parse_when(args.until) if args.until else None,
            resource=args.resource,
            event_ids=frozenset(args.event_id or ()),
        )
    except ValueError as exc:
        raise SettingsError(f"verify: {exc}") from None
    report = asyncio.run(verify.Verifier(settings, selection).run())
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        verify.print_report(report, sys.stdout)
    return EXIT_OK if report.clean else EXIT_FAILURE
