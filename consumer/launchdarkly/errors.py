"""Error codes of outcomes and the tree of LaunchDarkly API errors.

Each class says, as class attributes, the outcome `code` (ErrorCode) and `final_status` (the
outcome status, `rejected` or `failed`, of the instructions it is pinned on once no retry is
left), as well as `retryable` (the same request may succeed later), `outage` (it may mean the
API as a whole is down), `unknown_outcome` (below), `refuses_token` (the API gate closes),
`narrows` (the refusal may be one instruction's), `charge` (what a retry spends of the budget)
and `retry_after` (the wait a 429 names). What is done about an error is decided from these
alone, in one place (decisions.py), never from its class.

                               HTTP      code                 final_status
ApiError                                 unexpected_status    rejected
+-- Unauthorized               401       unauthorized         rejected (never pinned: the API
|                                                             gate closes, gate.py)
+-- RetryableApiError                    (retried with backoff inside the per-event budget)
|   +-- RateLimited            429       rate_limited         failed   (carries `retry_after`)
|   +-- ServerError            5xx       server_error         failed   (outage; 504: unknown)
|   +-- RequestTimeout                   timeout              failed   (outage; unknown)
|   +-- ConnectionFailed                 connection_error     failed   (outage; unknown once
|   |                                                                  the request was sent)
|   +-- Conflict               409       conflict             rejected (bounded retries)
+-- PermanentApiError                    (pinned on the instructions of the request)
|   +-- BadRequest             400/422   invalid_request      rejected (an all-or-nothing batch
|   |                                                                  is narrowed down first)
|   +-- Forbidden              403       forbidden            rejected
|   +-- NotFound               404       not_found            rejected
|   +-- UnexpectedStatus       other     unexpected_status    rejected
|   +-- InvalidResponse        2xx       invalid_response     failed   (unreadable body)
+-- InternalError                        internal_error       failed   (inside the consumer)

*Unknown outcome* (`unknown_outcome`): no answer says whether LaunchDarkly applied the request,
and it may still apply it after the client gave up (a timeout, a connection dropped after the
request was written, a gateway's 504). It is not "not applied": sender.py waits out
LD_UNKNOWN_OUTCOME_SETTLE_MS before anything more is sent for that resource.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from consumer.contract.codes import ErrorCode, FinalStatus


class Charge(enum.Enum):
    """What a retry of an error spends of the request's budget (retry.py)."""

    ATTEMPT = "attempt"  # a failed attempt: counts against `max_attempts`
    CONFLICT = "conflict"  # a 409: counts against `conflict_max_retries`
    TIME = "time"  # a 429: the elapsed budget only; being told to wait is not a failure


class ApiError(Exception):
    """LaunchDarkly answered with an error, or did not answer."""

    code: ErrorCode = ErrorCode.UNEXPECTED_STATUS
    # The outcome status of the instructions it ends up pinned on.
    final_status: FinalStatus = "rejected"
    retryable: bool = False
    # Says nothing about the request itself: counted by the gate's outage detector.
    outage: bool = False
    # LaunchDarkly may have applied the request, or may still apply it (see above).
    unknown_outcome: bool = False
    # The token was refused: wrong for every request alike, so the API gate closes and the
    # request waits for it to open (never pinned on instructions).
    refuses_token: ClassVar[bool] = False
    # Refused for what the request holds, maybe for one instruction only: a request of several
    # is narrowed down to the ones that fail alone.
    narrows: ClassVar[bool] = False
    charge: ClassVar[Charge] = Charge.ATTEMPT
    # Seconds LaunchDarkly asked to wait before the next request (a 429), else None.
    retry_after: float | None = None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Unauthorized(ApiError):
    """The API token was refused (401); it is wrong for every event alike. The gate closes
    and the events wait (no outcome); the code names it wherever it is reported."""

    code = ErrorCode.UNAUTHORIZED
    refuses_token = True


class RetryableApiError(ApiError):
    """A passing failure: the same request may succeed later."""

    final_status: FinalStatus = "failed"
    retryable = True


class RateLimited(RetryableApiError):
    """429: wait `retry_after` seconds before the next request."""

    code = ErrorCode.RATE_LIMITED
    charge = Charge.TIME
    retry_after: float

    def __init__(self, message: str, *, retry_after: float, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(RetryableApiError):
    """5xx from LaunchDarkly or a proxy in front of it. A 504 is a gateway that stopped
    waiting for LaunchDarkly, which may still apply the request: an unknown outcome."""

    code = ErrorCode.SERVER_ERROR
    outage = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.unknown_outcome = status == 504


class RequestTimeout(RetryableApiError):
    """No complete response within the request timeout: the request may have been sent, and
    may still be applied (unknown outcome)."""

    code = ErrorCode.TIMEOUT
    outage = True
    unknown_outcome = True


class ConnectionFailed(RetryableApiError):
    """The connection was refused, reset or dropped before a response came. `sent`: whether
    the request may have reached LaunchDarkly (anything but a connection never made), which
    makes its outcome unknown."""

    code = ErrorCode.CONNECTION_ERROR
    outage = True

    def __init__(self, message: str, *, sent: bool = True, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.unknown_outcome = sent


class Conflict(RetryableApiError):
    """409 optimistic_locking_error: a concurrent change; retried a bounded number of times."""

    code = ErrorCode.CONFLICT
    charge = Charge.CONFLICT
    # Outlived its retries: LaunchDarkly's refusal.
    final_status: FinalStatus = "rejected"


class PermanentApiError(ApiError):
    """The request will fail the same way however often it is sent."""


class BadRequest(PermanentApiError):
    """400 or 422: the request, or one instruction in it, is not acceptable."""

    code = ErrorCode.INVALID_REQUEST
    narrows = True


class Forbidden(PermanentApiError):
    """403: the token may not change this resource."""

    code = ErrorCode.FORBIDDEN


class NotFound(PermanentApiError):
    """404: the project, environment, segment or flag does not exist."""

    code = ErrorCode.NOT_FOUND


class UnexpectedStatus(PermanentApiError):
    """A status this client does not know how to retry."""

    code = ErrorCode.UNEXPECTED_STATUS


class InvalidResponse(PermanentApiError):
    """A 2xx whose body could not be read: what was applied is unknown, so nothing is resent."""

    code = ErrorCode.INVALID_RESPONSE
    # What was applied is unknown: a failure to get an answer, not a refusal.
    final_status: FinalStatus = "failed"


class InternalError(ApiError):
    """Sending a batch failed inside the consumer itself."""

    code = ErrorCode.INTERNAL_ERROR
    final_status: FinalStatus = "failed"


def retry_reasons() -> list[ErrorCode]:
    """The codes of the errors retried with backoff: `ldc_api_retries_total`'s reasons."""
    found: list[ErrorCode] = []
    pending: list[type[ApiError]] = [RetryableApiError]
    while pending:
        cls = pending.pop()
        if cls.retryable and cls.code not in found and cls is not RetryableApiError:
            found.append(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(found)
