"""The error codes of outcomes (`error.code`), and the outcome status each ends in: part of the
outside contract (schemas/outcome.schema.json lists them). The LaunchDarkly errors that lead to
them are in launchdarkly/errors.py."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# The outcome status (outcomes.Status) an error ends in once no retry is left.
FinalStatus = Literal["rejected", "failed"]


class ErrorCode(StrEnum):
    # invalid: the record is not a valid event
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_INSTRUCTION_KIND = "unknown_instruction_kind"
    INVALID_RESOURCE_KIND = "invalid_resource_kind"
    INVALID_KEY = "invalid_key"
    INVALID_EVENT = "invalid_event"
    # rejected: LaunchDarkly refused the instruction
    INSTRUCTION_ERROR = "instruction_error"
    INVALID_REQUEST = "invalid_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNEXPECTED_STATUS = "unexpected_status"
    # the token was refused (401): never an event's outcome while the gate holds them back
    UNAUTHORIZED = "unauthorized"
    # rejected without a request: the event's context kind is not its big segment's
    CONTEXT_KIND_MISMATCH = "context_kind_mismatch"
    # failed: given up after retries, or the answer could not be read
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    INVALID_RESPONSE = "invalid_response"
    INTERNAL_ERROR = "internal_error"


# The outcome status each code ends in: the series `ldc_outcome_errors_total` starts with at
# zero (metrics.py), so a dashboard shows every code before its first error. The API errors'
# own `final_status` agree (tests/unit/test_errors.py). `unauthorized` is never an outcome's.
STATUS_OF_CODE: dict[ErrorCode, str] = {
    **dict.fromkeys(
        [
            ErrorCode.NOT_UTF8,
            ErrorCode.NOT_JSON,
            ErrorCode.NOT_AN_OBJECT,
            ErrorCode.UNKNOWN_FIELD,
            ErrorCode.UNKNOWN_INSTRUCTION_KIND,
            ErrorCode.INVALID_RESOURCE_KIND,
            ErrorCode.INVALID_KEY,
            ErrorCode.INVALID_EVENT,
        ],
        "invalid",
    ),
    **dict.fromkeys(
        [
            ErrorCode.INSTRUCTION_ERROR,
            ErrorCode.INVALID_REQUEST,
            ErrorCode.FORBIDDEN,
            ErrorCode.NOT_FOUND,
            ErrorCode.CONFLICT,
            ErrorCode.UNEXPECTED_STATUS,
            ErrorCode.CONTEXT_KIND_MISMATCH,
        ],
        "rejected",
    ),
    **dict.fromkeys(
        [
            ErrorCode.RATE_LIMITED,
            ErrorCode.SERVER_ERROR,
            ErrorCode.TIMEOUT,
            ErrorCode.CONNECTION_ERROR,
            ErrorCode.INVALID_RESPONSE,
            ErrorCode.INTERNAL_ERROR,
        ],
        "failed",
    ),
}
