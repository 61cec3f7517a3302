"""The LaunchDarkly REST client: one aiohttp session, semantic-patch requests, errors by status.

It sends and classifies; it does not retry (that is `sender.py`, with `retry.py`'s policy).
The token goes into the Authorization header exactly as given and nowhere else: no message,
log line or exception built here contains it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from consumer import __version__
from consumer.launchdarkly.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidResponse,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
)
from consumer.launchdarkly.retry import rate_limit_wait
from consumer.launchdarkly.routing import API_VERSION, CONTENT_TYPE, JSON_CONTENT_TYPE, METHOD

# What an answer keeps of its headers: those `retry.rate_limit_wait` and the throttle read
# (and `check` shows).
RATE_LIMIT_HEADERS = (
    "Retry-After",
    "X-Ratelimit-Reset",
    "X-Ratelimit-Auth-Token-Reset",
    "X-Ratelimit-Global-Remaining",
    "X-Ratelimit-Route-Remaining",
)
_MAX_MESSAGE = 500


class TokenSource:
    """Where the API token comes from: the setting, or a file re-read on `refresh()`.

    A file wins over the plain setting, so a mounted secret can be rotated without a restart.
    """

    def __init__(self, token: SecretStr | None = None, path: Path | None = None) -> None:
        if token is None and path is None:
            raise ValueError("an API token or a token file is required")
        self._token = token
        self._path = path
        self._current = self._read()

    def _read(self) -> SecretStr:
        if self._path is not None:
            try:
                return SecretStr(self._path.read_text().strip())
            except OSError:
                if self._token is None:
                    return SecretStr("")
        assert self._token is not None
        return self._token

    def refresh(self) -> bool:
        """Re-read the file; True when the token changed."""
        fresh = self._read()
        changed = fresh.get_secret_value() != self._current.get_secret_value()
        self._current = fresh
        return changed

    def value(self) -> str:
        return self._current.get_secret_value()


_UNPARSED: Any = object()


@dataclass(slots=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    raw: bytes
    _body: Any = _UNPARSED

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    @property
    def body(self) -> Any:
        """The parsed JSON body (None when absent or not JSON), parsed on first use: the
        segment PATCH answers with the whole segment, which nobody reads on success."""
        if self._body is _UNPARSED:
            self._body = _json_or_none(self.raw)
        return self._body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class LdClient:
    """Owns the one `aiohttp.ClientSession` of the process. `start`/`stop` are idempotent."""

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # No pool limit: a request must not wait inside aiohttp for a connection after
                # the sender checked its batch is live (leases.py, rule 4), nor have that wait
                # count toward its timeout. Concurrency is bounded by the request slots.
                connector=aiohttp.TCPConnector(limit=0),
                headers={"User-Agent": f"ld-targeting-consumer/{__version__}"},
                raise_for_status=False,
            )

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> LdClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def patch(self, path: str, body: dict[str, Any]) -> ApiResponse:
        """Send one semantic patch. Raises `RequestTimeout` or `ConnectionFailed` only."""
        return await self._request(METHOD, path, orjson.dumps(body), CONTENT_TYPE)

    async def post(self, path: str, body: dict[str, Any]) -> ApiResponse:
        """A plain JSON POST (a big segment's targets). Raises like `patch`."""
        return await self._request("POST", path, orjson.dumps(body), JSON_CONTENT_TYPE)

    async def get(self, path: str) -> ApiResponse:
        """A read. Raises `RequestTimeout` or `ConnectionFailed` only."""
        return await self._request("GET", path, None, None)

    async def _request(
        self, method: str, path: str, data: bytes | None, content_type: str | None
    ) -> ApiResponse:
        if self._session is None:
            raise RuntimeError("LdClient.start() was not called")
        headers = {
            "Authorization": self.token.value(),
            "LD-API-Version": API_VERSION,
            "Accept": "application/json",
        }
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._session.request(
                method, self.base_url + path, data=data, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
                kept = {
                    name: response.headers[name]
                    for name in RATE_LIMIT_HEADERS
                    if name in response.headers
                }
        except TimeoutError:
            raise RequestTimeout(f"no response within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
            raise ConnectionFailed(f"connection failed: {type(exc).__name__}", sent=False) from None
        except aiohttp.ClientError as exc:  # dropped after it may have been sent
            raise ConnectionFailed(f"connection failed: {type(exc).__name__}") from None
        return ApiResponse(status, kept, raw)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def error_for(
    response: ApiResponse, *, now_ms: float, rate_limit_default: float, needs_body: bool = True
) -> ApiError | None:
    """The error an answer stands for, or None for a success.

    `needs_body`: a 2xx means something only with a readable body (per-instruction errors);
    for an all-or-nothing request the status alone says everything was applied.
    """
    status = response.status
    if response.ok:
        if needs_body and not isinstance(response.body, dict):
            return InvalidResponse(
                f"HTTP {status} with a body that is not a JSON object", status=status
            )
        return None
    message = f"HTTP {status}{_describe(response)}"
    if status == 401:
        return Unauthorized(message, status=status)
    if status == 429:
        wait = rate_limit_wait(response.headers, now_ms, rate_limit_default)
        return RateLimited(message, retry_after=wait, status=status)
    if status == 409:
        return Conflict(message, status=status)
    if status >= 500:
        return ServerError(message, status=status)
    if status in (400, 422):
        return BadRequest(message, status=status)
    if status == 403:
        return Forbidden(message, status=status)
    if status == 404:
        return NotFound(message, status=status)
    return UnexpectedStatus(message, status=status)


def _describe(response: ApiResponse) -> str:
    body = response.body
    if isinstance(body, dict) and ("code" in body or "message" in body):
        text = f" {body.get('code', '')}: {body.get('message', '')}".rstrip(": ")
    else:
        stripped = response.text.strip()
        text = f": {stripped}" if stripped else ""
    return text[:_MAX_MESSAGE]
