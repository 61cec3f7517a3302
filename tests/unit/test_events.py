import json
from typing import Any

import pytest

from consumer.contract.codes import ErrorCode
from consumer.contract.dead_letters import DeadLetterHeaders
from consumer.contract.events import (
    MAX_TARGET_VALUES,
    FlagEvent,
    Invalid,
    SegmentEvent,
    decode,
    instruction_body,
    target_operations,
)
from consumer.contract.outcomes import Outcome, Source, Status
from tests.factories import INSTRUCTIONS, encode, event_dict


@pytest.mark.parametrize(("resource_kind", "kind"), sorted(INSTRUCTIONS))
def test_every_instruction_kind_decodes_and_round_trips(resource_kind: str, kind: str) -> None:
    event = event_dict(resource_kind, kind)
    decoded = decode(encode(event))
    assert isinstance(decoded, SegmentEvent if resource_kind == "segment" else FlagEvent)
    assert decoded.instruction.kind == kind
    assert instruction_body(decoded) == event["instruction"]


def test_optional_version_is_left_out_of_the_request_when_unset() -> None:
    event = event_dict("segment", "updateExpiringTarget")
    del event["instruction"]["version"]
    decoded = decode(encode(event))
    assert not isinstance(decoded, Invalid)
    assert "version" not in instruction_body(decoded)


def test_optional_event_fields() -> None:
    event = event_dict(comment="ticket 7")
    event["occurredAt"] = "2026-11-25T10:00:00+01:00"
    decoded = decode(encode(event))
    assert not isinstance(decoded, Invalid)
    assert decoded.comment == "ticket 7"
    assert decoded.occurredAt is not None and decoded.occurredAt.utcoffset() is not None


def test_target_operations_count_keys() -> None:
    segment = decode(encode(event_dict(values=["a", "b", "c"])))
    expiring = decode(encode(event_dict("segment", "addExpiringTarget")))
    assert not isinstance(segment, Invalid) and not isinstance(expiring, Invalid)
    assert target_operations(segment) == 3
    assert target_operations(expiring) == 1
    rename = decode(encode(event_dict("segment", "updateName")))
    assert not isinstance(rename, Invalid)
    assert target_operations(rename) == 0  # no keys: does not count against the 1,500


def test_update_name_needs_a_non_empty_string_and_only_on_segments() -> None:
    for value in ("", 7, None):
        assert isinstance(
            decode(_with("instruction", {"kind": "updateName", "value": value})), Invalid
        )
    flag = event_dict("segment", "updateName")
    flag["resource"]["kind"] = "flag"
    assert isinstance(decode(encode(flag)), Invalid)


def _with(path: str, value: Any) -> bytes:
    event = event_dict("segment", "addExpiringTarget")
    *parents, last = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return encode(event)


_DELETE = object()

REJECTIONS: list[tuple[str, bytes | None, ErrorCode]] = [
    ("tombstone", None, ErrorCode.NOT_JSON),
    ("not utf-8", b"\xff\xfe\x00", ErrorCode.NOT_UTF8),
    ("truncated utf-8", '{"a": "é'.encode()[:-1], ErrorCode.NOT_UTF8),
    ("not json", b"{not json", ErrorCode.NOT_JSON),
    ("empty", b"", ErrorCode.NOT_JSON),
    ("array", b"[1, 2]", ErrorCode.NOT_AN_OBJECT),
    ("string", b'"text"', ErrorCode.NOT_AN_OBJECT),
    ("null", b"null", ErrorCode.NOT_AN_OBJECT),
    (
        "unknown instruction kind",
        _with("instruction.kind", "deleteAll"),
        ErrorCode.UNKNOWN_INSTRUCTION_KIND,
    ),
    (
        "instruction kind missing",
        _with("instruction.kind", _DELETE),
        ErrorCode.UNKNOWN_INSTRUCTION_KIND,
    ),
    (
        "unknown field in instruction",
        _with("instruction.contextkey", "u1"),
        ErrorCode.UNKNOWN_FIELD,
    ),
    ("unknown field in event", _with("extra", 1), ErrorCode.UNKNOWN_FIELD),
    ("unknown field in resource", _with("resource.name", "x"), ErrorCode.UNKNOWN_FIELD),
    (
        "unknown resource kind",
        _with("resource.kind", "environment"),
        ErrorCode.INVALID_RESOURCE_KIND,
    ),
    ("value as string", _with("instruction.value", "1754092860000"), ErrorCode.INVALID_EVENT),
    ("value as float", _with("instruction.value", 1.5), ErrorCode.INVALID_EVENT),
    ("value as bool", _with("instruction.value", True), ErrorCode.INVALID_EVENT),
    ("negative value", _with("instruction.value", -1), ErrorCode.INVALID_EVENT),
    ("bad target type", _with("instruction.targetType", "both"), ErrorCode.INVALID_EVENT),
    ("missing field", _with("instruction.contextKey", _DELETE), ErrorCode.INVALID_EVENT),
    ("empty context key", _with("instruction.contextKey", ""), ErrorCode.INVALID_EVENT),
    ("context kind 'kind'", _with("instruction.contextKind", "kind"), ErrorCode.INVALID_EVENT),
    ("missing eventId", _with("eventId", _DELETE), ErrorCode.INVALID_EVENT),
    ("eventId too long", _with("eventId", "x" * 201), ErrorCode.INVALID_EVENT),
    ("eventId number", _with("eventId", 7), ErrorCode.INVALID_EVENT),
    ("comment too long", _with("comment", "c" * 1001), ErrorCode.INVALID_EVENT),
    ("naive occurredAt", _with("occurredAt", "2026-11-25T10:00:00"), ErrorCode.INVALID_EVENT),
    ("occurredAt not a date", _with("occurredAt", "friday"), ErrorCode.INVALID_EVENT),
    ("resource missing", _with("resource", _DELETE), ErrorCode.INVALID_EVENT),
]
KEYS = ["..", ".", "...", "a/b", "a%2Fb", "a b", "", "k" * 257, "abc\n", "é", "a?b", "a#b", "a\\b"]


@pytest.mark.parametrize(("name", "value", "code"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections(name: str, value: bytes | None, code: ErrorCode) -> None:
    decoded = decode(value)
    assert isinstance(decoded, Invalid), name
    assert decoded.code is code, decoded.message
    assert decoded.message


@pytest.mark.parametrize("field", ["projectKey", "environmentKey", "resource.key"])
@pytest.mark.parametrize("key", KEYS)
def test_keys_that_could_change_a_path_are_invalid(field: str, key: str) -> None:
    decoded = decode(_with(field, key))
    assert isinstance(decoded, Invalid)
    assert decoded.code is ErrorCode.INVALID_KEY, decoded.message
    assert field in decoded.message and "A-Z a-z 0-9 . _ -, not dots alone" in decoded.message


@pytest.mark.parametrize("key", ["a", "a.b", "A-Z_0.9", "k" * 256, ".hidden", "a..b"])
def test_good_keys(key: str) -> None:
    assert not isinstance(decode(_with("resource.key", key)), Invalid)


def test_resource_kind_must_match_instruction_kind() -> None:
    event = event_dict("segment", "addIncludedTargets")
    event["resource"]["kind"] = "flag"
    decoded = decode(encode(event))
    assert isinstance(decoded, Invalid)
    assert decoded.code is ErrorCode.UNKNOWN_INSTRUCTION_KIND
    # A flag expiring target with a segment's targetType is not silently accepted either.
    segment_style = event_dict("segment", "addExpiringTarget")
    segment_style["resource"]["kind"] = "flag"
    assert isinstance(decode(encode(segment_style)), Invalid)


def test_values_limits() -> None:
    assert isinstance(
        decode(_with("instruction", {"kind": "addIncludedUsers", "values": []})), Invalid
    )
    too_many = {
        "kind": "addIncludedUsers",
        "values": [f"u{i}" for i in range(MAX_TARGET_VALUES + 1)],
    }
    assert isinstance(decode(_with("instruction", too_many)), Invalid)
    most = {"kind": "addIncludedUsers", "values": [f"u{i}" for i in range(MAX_TARGET_VALUES)]}
    assert not isinstance(decode(_with("instruction", most)), Invalid)


def test_event_id_is_kept_when_readable() -> None:
    decoded = decode(_with("instruction.kind", "nope"))
    assert isinstance(decoded, Invalid)
    assert decoded.event_id is not None and decoded.event_id.startswith("evt-")
    assert decode(b"[]").event_id is None  # type: ignore[union-attr]


def test_message_lists_several_problems_on_one_line() -> None:
    event = event_dict("segment", "addExpiringTarget")
    event["instruction"]["value"] = "soon"
    event["projectKey"] = "a/b"
    decoded = decode(encode(event))
    assert isinstance(decoded, Invalid)
    assert decoded.code is ErrorCode.INVALID_KEY
    assert "projectKey" in decoded.message and "instruction.value" in decoded.message
    assert "\n" not in decoded.message


def _outcome(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventId": "e",
        "status": "succeeded",
        "source": {"topic": "t", "partition": 0, "offset": 1},
        "resource": None,
        "instructionKind": None,
        "batch": None,
        "http": None,
        "error": None,
        "item": None,
        "completedAt": "2026-11-25T00:00:00Z",
    }
    return {**base, **changes}


def test_outcome_error_is_null_exactly_when_succeeded() -> None:
    Outcome.model_validate(_outcome())
    Outcome.model_validate(_outcome(status="rejected", error={"code": "not_found", "message": "m"}))
    with pytest.raises(ValueError, match="error must be null"):
        Outcome.model_validate(_outcome(status="failed"))
    with pytest.raises(ValueError, match="error must be null"):
        Outcome.model_validate(_outcome(error={"code": "not_found", "message": "m"}))


def test_outcome_serialises_every_field_with_nulls() -> None:
    outcome = Outcome.model_validate(_outcome())
    data = json.loads(outcome.to_bytes())
    assert set(data) == {
        "eventId",
        "status",
        "source",
        "resource",
        "instructionKind",
        "batch",
        "http",
        "error",
        "item",
        "completedAt",
    }
    assert data["batch"] is None and data["status"] == Status.SUCCEEDED.value
    assert Source.model_validate(data["source"]).offset == 1


def test_dead_letter_headers_leave_out_absent_ones() -> None:
    headers = DeadLetterHeaders(
        status="invalid",
        error_code="not_json",
        error_message="m",
        original_topic="t",
        original_partition="0",
        original_offset="5",
        original_timestamp="1",
        attempts="0",
        dead_lettered_at="2026-11-25T00:00:00Z",
    ).to_kafka()
    names = [name for name, _ in headers]
    assert "ldc.http.status" not in names and "ldc.replay.count" not in names
    assert ("ldc.original.offset", b"5") in headers
    assert all(name.startswith("ldc.") for name in names)
