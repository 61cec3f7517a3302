import pytest

from consumer.contract.codes import ErrorCode
from consumer.contract.events import Invalid
from consumer.contract.outcomes import (
    Outcome,
    Status,
    failed_positions,
    invalid_outcome,
    match_item,
    outcome_for,
    results_from_body,
    results_from_error,
)
from consumer.launchdarkly.errors import NotFound, ServerError
from tests.factories import event_dict, pending


def test_failed_positions_count_from_zero_and_ignore_strays() -> None:
    body = {
        "errors": [
            {"instructionIndex": 0, "message": "first"},
            {"instructionIndex": 2, "message": "third"},
            {"instructionIndex": 3, "message": "out of range"},
            {"instructionIndex": True, "message": "not a number"},
            {"message": "no index"},
            "garbage",
        ]
    }
    assert failed_positions(body, 3) == {0: "first", 2: "third"}
    assert failed_positions({}, 3) == {}
    assert failed_positions({"errors": None}, 3) == {}


def _expiring(key: str) -> dict[str, object]:
    return event_dict("segment", "addExpiringTarget", contextKey=key)


def test_results_from_a_200_with_errors_land_on_the_right_instructions() -> None:
    items = [pending(_expiring(f"u{i}")) for i in range(4)]
    body = {
        "items": [
            {"contextKey": "u0", "contextKind": "user", "targetType": "included", "_version": 1},
            {"contextKey": "u3", "contextKind": "user", "targetType": "included", "_version": 1},
        ],
        "errors": [
            {"instructionIndex": 1, "message": "nope"},
            {"instructionIndex": 2, "message": "no"},
        ],
    }
    results = results_from_body(
        "b1", items, body, http_status=200, attempts=[1, 1, 2, 1], per_instruction_errors=True
    )
    assert [r.status for r in results] == [
        Status.SUCCEEDED,
        Status.REJECTED,
        Status.REJECTED,
        Status.SUCCEEDED,
    ]
    assert results[1].error is not None and results[1].error.message == "nope"
    assert results[1].error.code is ErrorCode.INSTRUCTION_ERROR
    assert results[0].item is not None and results[0].item["contextKey"] == "u0"
    assert results[3].item is not None and results[3].item["contextKey"] == "u3"
    assert [r.batch.index for r in results] == [0, 1, 2, 3]
    assert {r.batch.size for r in results} == {4} and results[2].attempts == 2


def test_segment_patch_200_succeeds_everything_without_items() -> None:
    items = [pending() for _ in range(2)]
    body = {"key": "beta", "version": 3, "errors": [{"instructionIndex": 0, "message": "ignored"}]}
    results = results_from_body(
        "b", items, body, http_status=200, attempts=[1, 1], per_instruction_errors=False
    )
    assert all(r.status is Status.SUCCEEDED and r.item is None for r in results)


def test_match_item_needs_exactly_one_match() -> None:
    event = pending(_expiring("u1")).event
    twin = {"contextKey": "u1", "contextKind": "user", "targetType": "included"}
    assert match_item(event, [twin]) == twin
    assert match_item(event, [twin, dict(twin)]) is None
    assert match_item(event, [{**twin, "targetType": "excluded"}]) is None
    remove = pending(event_dict("segment", "removeExpiringTarget")).event
    assert match_item(remove, [twin]) is None
    user = pending(event_dict("segment", "addExpireUserTargetDate")).event
    assert match_item(user, [{"userKey": "u1", "targetType": "included"}]) is not None
    flag = pending(event_dict("flag", "addExpiringTarget")).event
    assert match_item(flag, [twin]) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("HTTP 404", status=404), Status.REJECTED),
        (ServerError("HTTP 503", status=503), Status.FAILED),
    ],
)
def test_errors_are_pinned_on_every_instruction(error: Exception, status: Status) -> None:
    items = [pending() for _ in range(3)]
    results = results_from_error("b", items, error, status=status, attempts=[4, 4, 4])  # type: ignore[arg-type]
    assert len(results) == 3
    for index, result in enumerate(results):
        assert result.status is status and result.batch.index == index
        assert result.error is not None and result.error.code is error.code  # type: ignore[attr-defined]
        assert result.http_status == error.status  # type: ignore[attr-defined]


def test_outcome_for_fills_every_field() -> None:
    item = pending(event_dict(comment="c"))
    [result] = results_from_body(
        "b", [item], {}, http_status=200, attempts=[2], per_instruction_errors=False
    )
    message = outcome_for(item, result, "2026-11-25T00:00:00.123456Z")
    assert message.status is Status.SUCCEEDED and message.attempts == 2
    outcome = Outcome.model_validate_json(message.value)
    assert outcome.eventId == item.event.eventId
    assert outcome.resource is not None and outcome.resource.key == "beta"
    assert outcome.instructionKind == "addIncludedTargets"
    assert outcome.http is not None
    assert (outcome.http.method, outcome.http.path, outcome.http.status, outcome.http.attempts) == (
        "PATCH",
        "/api/v2/segments/proj/production/beta",
        200,
        2,
    )
    assert outcome.source.offset == item.record.offset
    assert outcome.completedAt.microsecond == 123456 and outcome.item is None


def test_invalid_outcome() -> None:
    record = pending().record
    message = invalid_outcome(record, Invalid(ErrorCode.NOT_JSON, "bad", None))
    assert message.attempts == 0 and message.http_status is None
    outcome = Outcome.model_validate_json(message.value)
    assert outcome.status is Status.INVALID and outcome.eventId is None
    assert outcome.batch is None and outcome.http is None and outcome.resource is None
    assert outcome.error is not None and outcome.error.code is ErrorCode.NOT_JSON
    assert outcome.source.offset == record.offset


def test_long_messages_are_clipped() -> None:
    item = pending()
    [result] = results_from_error(
        "b", [item], NotFound("x" * 5000, status=404), status=Status.REJECTED, attempts=[1]
    )
    assert result.error is not None and len(result.error.message) == 1000


def test_outcomes_are_written_exactly_as_the_schema_model_writes_them() -> None:
    item = pending(_expiring("ü-1"))
    body = {
        "items": [
            {
                "contextKey": "ü-1",
                "contextKind": "user",
                "targetType": "included",
                "_version": 1,
                "nested": {"list": [1, 2.5, None, "é"]},
            }
        ]
    }
    [result] = results_from_body(
        "b", [item], body, http_status=200, attempts=[1], per_instruction_errors=True
    )
    assert result.item is not None
    for completed_at in ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00.000120Z"):
        value = outcome_for(item, result, completed_at).value
        assert Outcome.model_validate_json(value).model_dump_json().encode() == value


def test_an_item_with_an_integer_past_64_bits_is_kept_exactly() -> None:
    item = pending(_expiring("u1"))
    body = {
        "items": [
            {"contextKey": "u1", "contextKind": "user", "targetType": "included", "_version": 2**70}
        ]
    }
    [result] = results_from_body(
        "b", [item], body, http_status=200, attempts=[1], per_instruction_errors=True
    )
    outcome = Outcome.model_validate_json(outcome_for(item, result, "2026-11-25T10:00:00Z").value)
    assert outcome.item is not None and outcome.item["_version"] == 2**70
