"""The operator filter (filters.py): matching, the resource path, times, and the options as the
three commands declare and read them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from consumer import cli
from consumer.cli_errors import UsageError
from consumer.commands import outcomes, replay
from consumer.commands.filters import Filter, from_args, parse_when, resource_path

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_an_empty_filter_selects_everything() -> None:
    assert Filter().reason_to_skip(0) is None
    assert (
        Filter().reason_to_skip(T, status="x", error_code="y", event_id="z", resource="a/b/c/d")
        is None
    )
    assert Filter(resource="").takes_resource("a/b/c/d")
    assert Filter().takes_any_event(set())
    assert not Filter().reads_events


def test_since_is_inclusive_and_until_exclusive_unless_asked() -> None:
    window = Filter(since_ms=T, until_ms=T + 10)
    assert window.reason_to_skip(T - 1) == "before --since"
    assert window.reason_to_skip(T) is None
    assert window.reason_to_skip(T + 9.5) is None
    assert window.reason_to_skip(T + 10) == "after --until"
    assert window.outside(T + 10, until_inclusive=True) is None
    assert window.outside(T + 10.1, until_inclusive=True) == "after --until"


def test_the_first_reason_is_given_in_a_fixed_order() -> None:
    everything = Filter(
        event_ids=frozenset({"e1"}),
        statuses=frozenset({"failed"}),
        error_codes=frozenset({"not_found"}),
        resource="web/*",
        since_ms=T,
    )
    record: dict[str, Any] = {
        "status": "failed",
        "error_code": "not_found",
        "event_id": "e1",
        "resource": "web/production/segment/beta",
    }
    assert everything.reason_to_skip(T, **record) is None
    assert everything.reason_to_skip(T - 1, status="other") == "before --since"
    assert everything.reason_to_skip(T, **record | {"status": "rejected"}) == "other status"
    assert everything.reason_to_skip(T, **record | {"error_code": "x"}) == "other error code"
    assert everything.reason_to_skip(T, **record | {"event_id": None}) == "other event id"
    assert everything.reason_to_skip(T, **record | {"resource": "api/p/segment/b"}) == (
        "other resource"
    )
    assert everything.reads_events and Filter(event_ids=frozenset({"e"})).reads_events


def test_repeated_values_match_any_one() -> None:
    two = Filter(statuses=frozenset({"failed", "rejected"}), event_ids=frozenset({"a", "b"}))
    assert two.reason_to_skip(0, status="rejected", event_id="b") is None
    assert two.takes_any_event({"x", "a"})
    assert not two.takes_any_event({"x"})


def test_the_resource_glob_is_case_sensitive_over_project_env_kind_key() -> None:
    path = resource_path("web", "production", "segment", "Beta-users")
    assert path == "web/production/segment/Beta-users"
    assert Filter(resource="web/*/segment/Beta-*").takes_resource(path)
    assert not Filter(resource="web/*/segment/beta-*").takes_resource(path)
    assert not Filter(resource="web/*/flag/*").takes_resource(path)
    # An invalid event's parts that are not strings are empty, never their repr.
    assert resource_path(None, 5, "segment", ["k"]) == "//segment/"
    assert Filter(resource="/*").takes_resource(resource_path(None, None, None, None))


def test_times_are_rfc3339_or_a_duration_ago() -> None:
    now = datetime(2026, 1, 1, 2, tzinfo=UTC)
    assert parse_when("2h", now=now) == T
    assert parse_when(" 90s ", now=now) == T + 2 * 3_600_000 - 90_000
    assert parse_when("7d", now=now) == T + 2 * 3_600_000 - 7 * 86_400_000
    assert parse_when("2026-01-01T00:00:00Z") == T
    assert parse_when("2026-01-01T01:00:00+01:00") == T
    assert parse_when("2026-01-01T00:00:00") == T  # no offset: UTC
    for bad in ("yesterday", "2x", "h", ""):
        with pytest.raises(ValueError, match="not a time"):
            parse_when(bad)


def test_each_command_reads_its_options_into_one_filter() -> None:
    parse = cli._parser().parse_args
    args = parse(
        [
            "outcomes",
            *("--event-id", "e1", "--event-id", "e2", "--status", "succeeded"),
            *("--error-code", "not_found", "--resource", "web/*"),
            *("--since", "2026-01-01T00:00:00Z", "--until", "2026-01-01T00:00:01Z"),
        ]
    )
    assert from_args(args) == Filter(
        event_ids=frozenset({"e1", "e2"}),
        statuses=frozenset({"succeeded"}),
        error_codes=frozenset({"not_found"}),
        resource="web/*",
        since_ms=T,
        until_ms=T + 1_000,
    )
    args = parse(["replay", "--status", "failed", "--status", "rejected", "--limit", "3"])
    assert from_args(args) == Filter(statuses=frozenset({"failed", "rejected"}))
    # verify has no --status or --error-code: the filter leaves them open.
    assert from_args(parse(["verify", "--event-id", "e1"])) == Filter(event_ids=frozenset({"e1"}))
    assert not hasattr(parse(["verify"]), "status")
    assert from_args(parse(["outcomes"])) == Filter()


@pytest.mark.parametrize("command", ["outcomes", "replay", "verify"])
def test_a_time_that_does_not_parse_is_a_usage_error_naming_the_command(command: str) -> None:
    args = cli._parser().parse_args([command, "--until", "soon"])
    with pytest.raises(UsageError, match=rf"^{command}: not a time: 'soon'"):
        from_args(args)


def test_statuses_are_the_ones_each_command_can_meet(capsys: pytest.CaptureFixture[str]) -> None:
    parse = cli._parser().parse_args
    assert parse(["outcomes", "--status", "succeeded"]).status == ["succeeded"]
    with pytest.raises(SystemExit):  # a dead letter never succeeded
        parse(["replay", "--status", "succeeded"])
    with pytest.raises(SystemExit):
        parse(["outcomes", "--error-code", "no_such_code"])
    assert "invalid choice" in capsys.readouterr().err


def _record(value: bytes, headers: list[tuple[str, bytes]], timestamp: int = T) -> ConsumerRecord:
    return ConsumerRecord("t", 0, 7, timestamp, 0, b"k", value, None, 1, 1, headers)


def test_outcomes_match_on_the_outcome_and_its_record_time() -> None:
    outcome = {
        "eventId": "e1",
        "status": "failed",
        "error": {"code": "server_error", "message": "HTTP 503"},
        "resource": {"projectKey": "web", "environmentKey": "prod", "kind": "flag", "key": "f"},
    }
    record = _record(json.dumps(outcome).encode(), [])
    assert outcomes.matches(Filter(resource="web/prod/flag/*", since_ms=T), record, outcome)
    assert outcomes.matches(Filter(error_codes=frozenset({"server_error"})), record, outcome)
    assert not outcomes.matches(Filter(until_ms=T), record, outcome)
    assert not outcomes.matches(Filter(statuses=frozenset({"succeeded"})), record, outcome)
    bare = {"eventId": None, "status": "invalid", "error": None, "resource": None}
    assert outcomes.matches(Filter(resource="///"), record, bare)
    assert not outcomes.matches(Filter(error_codes=frozenset({"server_error"})), record, bare)


def test_dead_letters_match_on_their_headers_their_event_and_their_time() -> None:
    event = {
        "eventId": "e1",
        "projectKey": "web",
        "environmentKey": "prod",
        "resource": {"kind": "segment", "key": "beta"},
    }
    headers = [("ldc.status", b"rejected"), ("ldc.error.code", b"not_found")]
    letter = _record(json.dumps(event).encode(), headers)

    def skip(selection: Filter, record: ConsumerRecord = letter) -> str | None:
        return replay.reason_to_skip(selection, record, dict(record.headers))

    assert skip(Filter(statuses=frozenset({"rejected"}), resource="web/prod/segment/b*")) is None
    assert skip(Filter(error_codes=frozenset({"conflict"}))) == "other error code"
    assert skip(Filter(event_ids=frozenset({"e2"}))) == "other event id"
    assert skip(Filter(resource="web/prod/flag/*")) == "other resource"
    # A value that is not an event: no event id, an empty resource path.
    junk = _record(b"not json", headers)
    assert skip(Filter(statuses=frozenset({"rejected"})), junk) is None
    assert skip(Filter(event_ids=frozenset({"e1"})), junk) == "other event id"
    assert skip(Filter(resource="///"), junk) is None
