"""The LaunchDarkly API simulator over HTTP: the four PATCH endpoints (the segment PATCH also
as a JSON patch or a JSON merge patch, `patches.py`), the big-segment POSTs (`/contexts`,
`/users`), the reads (segments, big-segment membership, expiring targets, flags, caller
identity), an admin API. Every answer deserializes in LaunchDarkly's official client's models
(tests/integration/test_official_client.py).

Every /api response carries the rate-limit headers (a per-token limit, when set, its own
`X-Ratelimit-Auth-Token-*`). Requests are checked in LaunchDarkly's order: token (401), rate
limits (429), injected faults, resource (404), body (400), then the instructions. The admin API
(/admin/...) has no authentication: it is a local test tool.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import json
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.simulator import patches
from consumer.simulator.instructions import (
    FLAG_EXPIRING,
    SEGMENT_EXPIRING,
    SEGMENT_EXPIRING_USERS,
    SEGMENT_TARGETS,
    check_instruction,
    per_instruction,
)
from consumer.simulator.state import (
    FlagIn,
    FlagTargetIn,
    NotFoundError,
    RequestRejected,
    SeedIn,
    SegmentIn,
    SegmentTargetsIn,
    Store,
)

SEMANTIC_PATCH = "domain-model=launchdarkly.semanticpatch"
# The request body, parsed once by the middleware for the handler (each request runs in
# its own task, so a context variable is per request).
_PARSED_BODY: ContextVar[Any] = ContextVar("parsed_body")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Faults(BaseModel):
    """Injected failures, each drawn independently per request."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: tuple[int, int] = (0, 0)
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered 5xx")
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="share answered 429")
    rate_limit_reset_ms: int = Field(1_000, ge=0, description="reset of an injected 429, from now")
    rate_limit_retry_after: bool = Field(False, description="injected 429s carry Retry-After")
    drop_rate: float = Field(0.0, ge=0, le=1, description="share of connections dropped")
    conflict_rate: float = Field(0.0, ge=0, le=1, description="share answered 409")
    paths: list[str] = Field(
        default_factory=list,
        description="only requests whose path matches one of these globs get faults (empty: all)",
    )
    refused_keys: list[str] = Field(
        default_factory=list,
        description="globs of target keys a segment write refuses with 400 (a key LaunchDarkly"
        " does not accept), whatever the other faults",
    )

    def apply_to(self, path: str) -> bool:
        return not self.paths or any(fnmatch.fnmatchcase(path, p) for p in self.paths)


NO_FAULTS = Faults()


class Limits(BaseModel):
    """A real rate limit: fixed windows, one count for the account and one per route, and
    optionally one per access token."""

    model_config = ConfigDict(extra="forbid")

    window_ms: int = Field(10_000, ge=1)
    global_limit: int = Field(100_000, ge=1)
    route_limit: int = Field(100_000, ge=1)
    token_limit: int | None = Field(
        None,
        ge=1,
        description="requests per window for each access token (None: no such limit). Its"
        " window starts at the token's first request; answers carry X-Ratelimit-Auth-Token-*,"
        " and its 429 names its reset only in X-Ratelimit-Auth-Token-Reset, as LaunchDarkly"
        " documents for per-token limits.",
    )


class _Window:
    def __init__(self) -> None:
        self.start_ms = 0.0
        self.counts: Counter[str] = Counter()

    def roll(self, now_ms: float, window_ms: int) -> None:
        if now_ms >= self.start_ms + window_ms:
            self.start_ms = (
                now_ms - (now_ms - self.start_ms) % window_ms if self.start_ms else now_ms
            )
            self.counts.clear()


class Simulator:
    def __init__(
        self,
        tokens: set[str],
        *,
        faults: Faults | None = None,
        limits: Limits | None = None,
        seed: SeedIn | None = None,
        rng: random.Random | None = None,
        max_log: int = 100_000,
    ) -> None:
        self.tokens = set(tokens)
        self.faults = faults or Faults()
        self.limits = limits or Limits()
        self.store = Store(_now_ms)
        if seed is not None:
            self.store.seed(seed)
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_log)
        self.stats: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._window = _Window()
        # Keyed by the token itself: in memory only, never logged or answered.
        self._token_windows: dict[str, _Window] = {}
        self._blocked_until_ms = 0.0
        self._blocked_since_ms = 0.0

    # -- app ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        # Large enough for an admin seed of a benchmark's worth of targets.
        app = web.Application(middlewares=[self._api_middleware], client_max_size=256 * 1024**2)
        r = app.router
        r.add_patch(
            "/api/v2/segments/{project}/{resource}/expiring-targets/{environment}",
            self.segment_expiring,
        )
        r.add_patch(
            "/api/v2/segments/{project}/{resource}/expiring-user-targets/{environment}",
            self.segment_expiring_users,
        )
        r.add_patch(
            "/api/v2/flags/{project}/{resource}/expiring-targets/{environment}", self.flag_expiring
        )
        r.add_patch("/api/v2/segments/{project}/{environment}/{resource}", self.segment_patch)
        r.add_get("/api/v2/segments/{project}/{environment}/{resource}", self.get_segment)
        r.add_get("/api/v2/segments/{project}/{environment}", self.list_segments)
        big = "/api/v2/segments/{project}/{environment}/{resource}"
        r.add_post(big + "/contexts", self.big_segment_contexts)
        r.add_post(big + "/users", self.big_segment_users)
        r.add_get(big + "/contexts/{key}", self.big_segment_context)
        r.add_get(big + "/users/{key}", self.big_segment_user)
        r.add_get(
            "/api/v2/segments/{project}/{resource}/expiring-targets/{environment}",
            self.get_segment_expiring,
        )
        r.add_get(
            "/api/v2/segments/{project}/{resource}/expiring-user-targets/{environment}",
            self.get_segment_expiring_users,
        )
        r.add_get(
            "/api/v2/flags/{project}/{resource}/expiring-targets/{environment}",
            self.get_flag_expiring,
        )
        r.add_get("/api/v2/flags/{project}/{resource}", self.get_flag)
        r.add_get("/api/v2/caller-identity", self.caller_identity)
        r.add_get("/admin/health", self.admin_health)
        r.add_get("/admin/state", self.admin_state)
        r.add_post("/admin/reset", self.admin_reset)
        r.add_post("/admin/seed", self.admin_seed)
        r.add_post("/admin/segments", self.admin_segment)
        r.add_post(
            "/admin/segments/{project}/{environment}/{resource}/targets", self.admin_segment_targets
        )
        r.add_post("/admin/flags", self.admin_flag)
        r.add_post("/admin/flags/{project}/{resource}/targets", self.admin_flag_targets)
        r.add_get("/admin/requests", self.admin_requests)
        r.add_delete("/admin/requests", self.admin_clear_requests)
        r.add_get("/admin/stats", self.admin_stats)
        r.add_get("/admin/faults", self.admin_get_faults)
        r.add_put("/admin/faults", self.admin_put_faults)
        r.add_put("/admin/limits", self.admin_put_limits)
        r.add_put("/admin/tokens", self.admin_put_tokens)
        return app

    # -- the request pipeline -----------------------------------------------------------------

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        received_ms = time.time() * 1000
        entry: dict[str, Any] = {
            "receivedAt": received_ms,
            "method": request.method,
            "path": request.path,
            "contentType": request.headers.get("Content-Type"),
            "apiVersion": request.headers.get("LD-API-Version"),
            "auth": self._auth(request),
            "body": None,
            "status": None,
            "fault": None,
        }
        raw = await request.read()
        try:
            entry["body"] = json.loads(raw) if raw else None
        except ValueError:
            entry["body"] = raw.decode("utf-8", "replace")
        self.requests.append(entry)
        self.stats["requests"] += 1
        self.stats[f"method_{request.method}"] += 1
        if received_ms < self._blocked_until_ms and received_ms > self._blocked_since_ms + 50:
            # Sent after a 429 told the client to wait, before the time it named.
            self.stats["early_requests"] += 1
            entry["early"] = True
        response = await self._answer(request, entry, received_ms)
        entry["status"] = response.status
        self.stats[f"status_{response.status}"] += 1
        return response

    async def _answer(
        self, request: web.Request, entry: dict[str, Any], now_ms: float
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = f"{request.method} {resource.canonical if resource else request.path}"
        limits = self.limits
        self._window.roll(now_ms, limits.window_ms)
        if entry["auth"] == "ok":  # only authenticated requests count against the limits
            self._window.counts["*"] += 1
            self._window.counts[route] += 1
        reset_ms = self._window.start_ms + limits.window_ms
        global_left = limits.global_limit - self._window.counts["*"]
        route_left = limits.route_limit - self._window.counts[route]
        headers = {
            "X-Ratelimit-Global-Remaining": str(max(0, global_left)),
            "X-Ratelimit-Route-Remaining": str(max(0, route_left)),
            "X-Ratelimit-Reset": str(int(reset_ms)),
        }
        if entry["auth"] != "ok":
            return self._error(401, "unauthorized", "Invalid access token", now_ms, headers)
        if global_left < 0 or route_left < 0:
            entry["fault"] = "limit"
            return self._rate_limited(reset_ms, now_ms, headers, retry_after=False)
        if limits.token_limit is not None:
            window = self._token_windows.setdefault(request.headers["Authorization"], _Window())
            window.roll(now_ms, limits.window_ms)
            window.counts["*"] += 1
            token_left = limits.token_limit - window.counts["*"]
            token_reset_ms = window.start_ms + limits.window_ms
            token_headers = {
                "X-Ratelimit-Auth-Token-Limit": str(limits.token_limit),
                "X-Ratelimit-Auth-Token-Remaining": str(max(0, token_left)),
                "X-Ratelimit-Auth-Token-Reset": str(int(token_reset_ms)),
            }
            if token_left < 0:
                # Only the token's own headers: its reset is not X-Ratelimit-Reset's.
                entry["fault"] = "token-limit"
                return self._rate_limited(
                    token_reset_ms,
                    now_ms,
                    token_headers,
                    retry_after=False,
                    reset_header="X-Ratelimit-Auth-Token-Reset",
                )
            headers.update(token_headers)
        faults = self.faults if self.faults.apply_to(request.path) else NO_FAULTS
        low, high = faults.latency_ms
        if high > 0:
            await asyncio.sleep(self._rng.uniform(low, max(low, high)) / 1000)
        if self._rng.random() < faults.drop_rate:
            entry["fault"] = "drop"
            self.stats["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if self._rng.random() < faults.rate_limit_rate:
            entry["fault"] = "429"
            reset = now_ms + faults.rate_limit_reset_ms
            headers["X-Ratelimit-Reset"] = str(int(reset))
            return self._rate_limited(
                reset, now_ms, headers, retry_after=faults.rate_limit_retry_after
            )
        if self._rng.random() < faults.error_rate:
            entry["fault"] = "5xx"
            status = self._rng.choice([500, 502, 503])
            return self._error(status, "internal_error", "injected server error", now_ms, headers)
        if request.method == "PATCH" and self._rng.random() < faults.conflict_rate:
            entry["fault"] = "409"
            return self._error(
                409,
                "optimistic_locking_error",
                "concurrent update, retry your request",
                now_ms,
                headers,
            )
        try:
            response = await self._handle(request, entry)
        except NotFoundError as exc:
            return self._error(
                404, "not_found", f"Invalid resource identifier: {exc}", now_ms, headers
            )
        except RequestRejected as exc:
            return self._error(400, "invalid_request", str(exc), now_ms, headers)
        except web.HTTPException as exc:
            code = "not_found" if exc.status == 404 else "invalid_request"
            return self._error(exc.status, code, exc.reason, now_ms, headers)
        response.headers.update(headers)
        return response

    async def _handle(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        handler = request.match_info.handler
        if request.method == "PATCH":
            semantic = SEMANTIC_PATCH in (entry["contentType"] or "")
            # Only the segment PATCH also takes a JSON patch or a merge patch (its handler
            # reads which); the expiring-targets endpoints are semantic patches only.
            if not semantic and handler != self.segment_patch:
                raise RequestRejected(
                    "expected Content-Type with domain-model=launchdarkly.semanticpatch"
                )
            if semantic and not isinstance(entry["body"], dict):
                raise RequestRejected("request body is not a JSON object")
            _PARSED_BODY.set(entry["body"])
        elif request.method == "POST":
            _PARSED_BODY.set(entry["body"])
        return await handler(request)

    def _auth(self, request: web.Request) -> str:
        value = request.headers.get("Authorization")
        if value is None:
            return "missing"
        return "ok" if value in self.tokens else "invalid"

    def _rate_limited(
        self,
        reset_ms: float,
        now_ms: float,
        headers: dict[str, str],
        *,
        retry_after: bool,
        reset_header: str = "X-Ratelimit-Reset",
    ) -> web.Response:
        self.stats["rate_limited"] += 1
        self._blocked_until_ms = max(self._blocked_until_ms, reset_ms)
        # From when the 429 leaves (after any injected latency), not from when its request came:
        # a client cannot hold back before the answer reaches it.
        self._blocked_since_ms = time.time() * 1000
        headers = dict(headers, **{reset_header: str(int(reset_ms))})
        if retry_after:
            headers["Retry-After"] = str(max(0, round((reset_ms - now_ms) / 1000)))
        return self._error(
            429, "rate_limited", "You've exceeded the API rate limit.", now_ms, headers
        )

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        now_ms: float,
        headers: dict[str, str],
    ) -> web.Response:
        body = {"code": code, "message": message, "id": f"{int(now_ms):x}"}
        response = web.json_response(body, status=status)
        response.headers.update(headers)
        return response

    # -- the API ------------------------------------------------------------------------------

    async def _instructions(
        self, request: web.Request, allowed: dict[str, set[str]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        body: dict[str, Any] = _PARSED_BODY.get()
        instructions = body.get("instructions")
        if not isinstance(instructions, list) or not instructions:
            raise RequestRejected("instructions must be a non-empty list")
        unknown = set(body) - {"instructions", "comment", "environmentKey"}
        if unknown:
            raise RequestRejected(f"unknown body fields: {sorted(unknown)}")
        for position, instruction in enumerate(instructions):
            check_instruction(position, instruction, allowed)
        return body, instructions

    async def segment_expiring(self, request: web.Request) -> web.Response:
        return await self._expiring(request, SEGMENT_EXPIRING, user_form=False)

    async def segment_expiring_users(self, request: web.Request) -> web.Response:
        return await self._expiring(request, SEGMENT_EXPIRING_USERS, user_form=True)

    async def _expiring(
        self, request: web.Request, allowed: dict[str, set[str]], *, user_form: bool
    ) -> web.Response:
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        _, instructions = await self._instructions(request, allowed)
        return per_instruction(
            instructions,
            lambda instruction: self.store.segment_expiring(
                segment, instruction, user_form=user_form
            ),
        )

    async def flag_expiring(self, request: web.Request) -> web.Response:
        m = request.match_info
        flag = self.store.flag(m["project"], m["environment"], m["resource"])
        _, instructions = await self._instructions(request, FLAG_EXPIRING)
        return per_instruction(
            instructions,
            lambda instruction: self.store.flag_expiring(flag, m["environment"], instruction),
        )

    async def segment_patch(self, request: web.Request) -> web.Response:
        """`dryRun=true` (the API's query parameter): answered as if applied, nothing kept."""
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        if request.query.get("dryRun") == "true":
            segment = copy.deepcopy(segment)
        content_type = request.headers.get("Content-Type")
        if SEMANTIC_PATCH not in (content_type or ""):
            update = patches.parse(content_type, _PARSED_BODY.get())
            patches.write_back(segment, update.apply(patches.document_of(segment)), _now_ms())
            return web.json_response(segment.representation())
        body, instructions = await self._instructions(request, SEGMENT_TARGETS)
        if self.faults.refused_keys:
            self._refuse([key for i in instructions for key in i.get("values") or []])
        if body.get("environmentKey") != m["environment"]:
            raise RequestRejected("environmentKey in the body must name the environment of the URL")
        self.store.patch_segment(segment, instructions)
        return web.json_response(segment.representation())

    async def get_segment(self, request: web.Request) -> web.Response:
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        return web.json_response(segment.representation())

    async def list_segments(self, request: web.Request) -> web.Response:
        """The segment list, with the one filter the consumer uses (`unbounded equals true` or
        `false`) and `limit` (at most 50, as LaunchDarkly pages it) / `offset`."""
        m = request.match_info
        found = self.store.segments_of(m["project"], m["environment"])
        wanted = request.query.get("filter", "").strip()
        if wanted:
            field, _, value = wanted.partition(" equals ")
            if field.strip() != "unbounded" or value.strip() not in ("true", "false"):
                raise RequestRejected(f"unsupported filter: {wanted}")
            found = [s for s in found if s.unbounded == (value.strip() == "true")]
        try:
            limit = min(50, max(1, int(request.query.get("limit", "20"))))
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            raise RequestRejected("limit and offset are numbers") from None
        page = found[offset : offset + limit]
        return web.json_response(
            {"items": [s.representation() for s in page], "totalCount": len(found), "_links": {}}
        )

    async def big_segment_contexts(self, request: web.Request) -> web.Response:
        return self._big_segment_write(request, users=False)

    async def big_segment_users(self, request: web.Request) -> web.Response:
        return self._big_segment_write(request, users=True)

    def _big_segment_write(self, request: web.Request, *, users: bool) -> web.Response:
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        body = _PARSED_BODY.get()
        if self.faults.refused_keys and isinstance(body, dict):
            keys = [
                key
                for lists in body.values()
                if isinstance(lists, dict)
                for values in lists.values()
                if isinstance(values, list)
                for key in values
            ]
            self._refuse(keys)
        self.store.update_big_segment(segment, body, users=users)
        return web.Response(status=204)

    def _refuse(self, keys: list[Any]) -> None:
        for key in keys:
            if isinstance(key, str) and any(
                fnmatch.fnmatchcase(key, p) for p in self.faults.refused_keys
            ):
                raise RequestRejected(f"invalid target key {key!r}")

    async def big_segment_context(self, request: web.Request) -> web.Response:
        return self._membership(request, users=False)

    async def big_segment_user(self, request: web.Request) -> web.Response:
        return self._membership(request, users=True)

    def _membership(self, request: web.Request, *, users: bool) -> web.Response:
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        return web.json_response(self.store.big_membership(segment, m["key"], users=users))

    async def get_segment_expiring(self, request: web.Request) -> web.Response:
        return self._segment_expiring_read(request, user_form=False)

    async def get_segment_expiring_users(self, request: web.Request) -> web.Response:
        return self._segment_expiring_read(request, user_form=True)

    def _segment_expiring_read(self, request: web.Request, *, user_form: bool) -> web.Response:
        m = request.match_info
        segment = self.store.segment(m["project"], m["environment"], m["resource"])
        items = [
            e.item(segment.resource_id(), user_form=user_form)
            for e in segment.expiring.values()
            if not user_form or e.context_kind == "user"
        ]
        return web.json_response({"items": items, "_links": {}})

    async def get_flag_expiring(self, request: web.Request) -> web.Response:
        m = request.match_info
        flag = self.store.flag(m["project"], m["environment"], m["resource"])
        scheduled = flag.expiring.get(m["environment"], {}).values()
        items = [e.item(flag.resource_id(m["environment"])) for e in scheduled]
        return web.json_response({"items": items, "_links": {}})

    async def get_flag(self, request: web.Request) -> web.Response:
        """With every environment of the project, or those `env` names (LaunchDarkly's
        filter)."""
        m = request.match_info
        flag = self.store.flags.get((m["project"], m["resource"]))
        if flag is None:
            raise NotFoundError(f"unknown flag {m['resource']}")
        environments = sorted(self.store.environments.get(m["project"], set()))
        wanted = request.query.getall("env", [])
        if wanted:
            environments = [e for e in environments if e in wanted]
        return web.json_response(flag.representation(environments))

    async def caller_identity(self, request: web.Request) -> web.Response:
        # CallerIdentityRep in LaunchDarkly's OpenAPI document; the consumer's API gate probes
        # it (only the status matters to it).
        return web.json_response(
            {
                "accountId": "simulator",
                "authKind": "token",
                "tokenKind": "auth",
                "tokenName": "simulator token",
                "serviceToken": True,
            }
        )

    # -- admin --------------------------------------------------------------------------------

    async def admin_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.store.snapshot())

    async def admin_reset(self, request: web.Request) -> web.Response:
        self.store = Store(_now_ms)
        self.requests.clear()
        self.stats.clear()
        self.faults = Faults()
        self._blocked_until_ms = 0.0
        return web.json_response({"ok": True})

    async def admin_seed(self, request: web.Request) -> web.Response:
        self.store.seed(await _model(request, SeedIn))
        return web.json_response({"ok": True})

    async def admin_segment(self, request: web.Request) -> web.Response:
        segment = self.store.put_segment(await _model(request, SegmentIn))
        return web.json_response(segment.representation(), status=201)

    async def admin_segment_targets(self, request: web.Request) -> web.Response:
        m = request.match_info
        spec = await _model(request, SegmentTargetsIn)
        try:
            self.store.add_segment_targets(m["project"], m["environment"], m["resource"], spec)
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        return web.json_response({"ok": True})

    async def admin_flag(self, request: web.Request) -> web.Response:
        flag = self.store.put_flag(await _model(request, FlagIn))
        environments = sorted(self.store.environments.get(flag.project, set()))
        return web.json_response(flag.representation(environments), status=201)

    async def admin_flag_targets(self, request: web.Request) -> web.Response:
        m = request.match_info
        body = await request.json()
        environment = body.pop("environmentKey", None)
        if not isinstance(environment, str):
            raise web.HTTPBadRequest(text="environmentKey is required")
        try:
            spec = FlagTargetIn.model_validate(body)
            self.store.add_flag_targets(m["project"], m["resource"], environment, spec)
        except ValidationError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except RequestRejected as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"ok": True})

    async def admin_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.requests))

    async def admin_clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"ok": True})

    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

    async def admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"faults": self.faults.model_dump(), "limits": self.limits.model_dump()}
        )

    async def admin_put_faults(self, request: web.Request) -> web.Response:
        self.faults = await _model(request, Faults)
        return web.json_response(self.faults.model_dump())

    async def admin_put_limits(self, request: web.Request) -> web.Response:
        self.limits = await _model(request, Limits)
        self._window = _Window()
        self._token_windows.clear()
        return web.json_response(self.limits.model_dump())

    async def admin_put_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise web.HTTPBadRequest(text='expected {"tokens": ["..."]}')
        self.tokens = set(tokens)
        return web.json_response({"ok": True, "count": len(self.tokens)})


M = TypeVar("M", bound=BaseModel)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _model(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(await request.json())
    except (ValidationError, ValueError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
