"""Each API error says its outcome code and the status it ends in (consumer/launchdarkly/errors.py)."""

import pytest

from consumer.contract.codes import STATUS_OF_CODE, ErrorCode
from consumer.contract.outcomes import Status
from consumer.launchdarkly import errors


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


def _api_errors(cls: type[errors.ApiError] = errors.ApiError) -> list[type[errors.ApiError]]:
    return [cls, *(found for sub in cls.__subclasses__() for found in _api_errors(sub))]


def test_every_code_but_unauthorized_has_the_status_it_ends_in_and_the_classes_agree() -> None:
    assert set(STATUS_OF_CODE) == set(ErrorCode) - {ErrorCode.UNAUTHORIZED}
    for cls in _api_errors():
        if cls is not errors.Unauthorized and cls is not errors.RetryableApiError:
            assert STATUS_OF_CODE[cls.code] == cls.final_status, cls


def test_the_retry_reasons_are_the_retried_errors() -> None:
    assert errors.retry_reasons() == sorted(
        [
            ErrorCode.RATE_LIMITED,
            ErrorCode.SERVER_ERROR,
            ErrorCode.TIMEOUT,
            ErrorCode.CONNECTION_ERROR,
            ErrorCode.CONFLICT,
        ]
    )
