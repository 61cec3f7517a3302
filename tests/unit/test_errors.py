"""Each API error says its outcome code and the status it ends in (consumer/errors.py)."""

import pytest

from consumer import errors
from consumer.errors import ErrorCode
from consumer.outcomes import Status


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (errors.ApiError, ErrorCode.UNEXPECTED_STATUS, Status.REJECTED),
        (errors.Unauthorized, ErrorCode.UNAUTHORIZED, Status.REJECTED),
        (errors.RateLimited, ErrorCode.RATE_LIMITED, Status.FAILED),
        (errors.ServerError, ErrorCode.SERVER_ERROR, Status.FAILED),
        (errors.RequestTimeout, ErrorCode.TIMEOUT, Status.FAILED),
        (errors.ConnectionFailed, ErrorCode.CONNECTION_ERROR, Status.FAILED),
        (errors.Conflict, ErrorCode.CONFLICT, Status.REJECTED),
        (errors.BadRequest, ErrorCode.INVALID_REQUEST, Status.REJECTED),
        (errors.Forbidden, ErrorCode.FORBIDDEN, Status.REJECTED),
        (errors.NotFound, ErrorCode.NOT_FOUND, Status.REJECTED),
        (errors.UnexpectedStatus, ErrorCode.UNEXPECTED_STATUS, Status.REJECTED),
        (errors.InvalidResponse, ErrorCode.INVALID_RESPONSE, Status.FAILED),
        (errors.InternalError, ErrorCode.INTERNAL_ERROR, Status.FAILED),
    ],
)
def test_an_error_knows_its_code_and_final_status(
    cls: type[errors.ApiError], code: ErrorCode, status: Status
) -> None:
    assert cls.code is code
    assert Status(cls.final_status) is status
