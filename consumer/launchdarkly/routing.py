"""Where each instruction goes: the contract's table, written once.

(resource kind, instruction kind) -> endpoint -> request path. Events with the same path are
batched into one request. A resource (a segment or flag in one environment) has several paths
(its segment PATCH, its expiring targets, its big-segment lists): `Route.resource` names it,
and order holds per resource (batcher.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

from consumer.contract.events import MAX_TARGET_VALUES, TargetingEvent


class Endpoint(StrEnum):
    SEGMENT_EXPIRING_TARGETS = "segment-expiring-targets"
    SEGMENT_EXPIRING_USER_TARGETS = "segment-expiring-user-targets"
    FLAG_EXPIRING_TARGETS = "flag-expiring-targets"
    SEGMENT_TARGETS = "segment-targets"
    # Big segments (big_segments.py): chosen at send time, never by the table below.
    BIG_SEGMENT_CONTEXTS = "big-segment-contexts"
    BIG_SEGMENT_USERS = "big-segment-users"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    template: str
    # 200 answers list failed instructions in `errors`; the others were applied.
    per_instruction_errors: bool
    # The body also carries `environmentKey` (the segment semantic PATCH).
    body_has_environment_key: bool
    # Most keys (in `values`) one request may add or remove; None when unlimited.
    max_target_operations: int | None
    # PATCH with a semantic patch of `instructions`, or POST of a big segment's
    # `SegmentUserState` (the instructions merged into add/remove lists, answered 204).
    method: str = "PATCH"


SPECS: dict[Endpoint, EndpointSpec] = {
    Endpoint.SEGMENT_EXPIRING_TARGETS: EndpointSpec(
        "/api/v2/segments/{project}/{resource}/expiring-targets/{environment}", True, False, None
    ),
    Endpoint.SEGMENT_EXPIRING_USER_TARGETS: EndpointSpec(
        "/api/v2/segments/{project}/{resource}/expiring-user-targets/{environment}",
        True,
        False,
        None,
    ),
    Endpoint.FLAG_EXPIRING_TARGETS: EndpointSpec(
        "/api/v2/flags/{project}/{resource}/expiring-targets/{environment}", True, False, None
    ),
    Endpoint.SEGMENT_TARGETS: EndpointSpec(
        "/api/v2/segments/{project}/{environment}/{resource}", False, True, MAX_TARGET_VALUES
    ),
    Endpoint.BIG_SEGMENT_CONTEXTS: EndpointSpec(
        "/api/v2/segments/{project}/{environment}/{resource}/contexts",
        False,
        False,
        MAX_TARGET_VALUES,
        "POST",
    ),
    Endpoint.BIG_SEGMENT_USERS: EndpointSpec(
        "/api/v2/segments/{project}/{environment}/{resource}/users",
        False,
        False,
        MAX_TARGET_VALUES,
        "POST",
    ),
}
BIG_SEGMENT_ENDPOINTS = (Endpoint.BIG_SEGMENT_CONTEXTS, Endpoint.BIG_SEGMENT_USERS)

ROUTES: dict[tuple[str, str], Endpoint] = {
    ("segment", "addExpiringTarget"): Endpoint.SEGMENT_EXPIRING_TARGETS,
    ("segment", "updateExpiringTarget"): Endpoint.SEGMENT_EXPIRING_TARGETS,
    ("segment", "removeExpiringTarget"): Endpoint.SEGMENT_EXPIRING_TARGETS,
    ("segment", "addExpireUserTargetDate"): Endpoint.SEGMENT_EXPIRING_USER_TARGETS,
    ("segment", "updateExpireUserTargetDate"): Endpoint.SEGMENT_EXPIRING_USER_TARGETS,
    ("segment", "removeExpireUserTargetDate"): Endpoint.SEGMENT_EXPIRING_USER_TARGETS,
    ("flag", "addExpiringTarget"): Endpoint.FLAG_EXPIRING_TARGETS,
    ("flag", "updateExpiringTarget"): Endpoint.FLAG_EXPIRING_TARGETS,
    ("flag", "removeExpiringTarget"): Endpoint.FLAG_EXPIRING_TARGETS,
    **{
        ("segment", f"{verb}{side}{what}"): Endpoint.SEGMENT_TARGETS
        for verb in ("add", "remove")
        for side in ("Included", "Excluded")
        for what in ("Targets", "Users")
    },
    ("segment", "updateName"): Endpoint.SEGMENT_TARGETS,
}

# The API gate's probe (gate.py): a cheap authenticated read, in LaunchDarkly's OpenAPI
# document as getCallerIdentity; a route of its own for the rate limiter.
CALLER_IDENTITY_PATH = "/api/v2/caller-identity"
CALLER_IDENTITY_ROUTE = "caller-identity"

METHOD = "PATCH"
CONTENT_TYPE = "application/json; domain-model=launchdarkly.semanticpatch"
JSON_CONTENT_TYPE = "application/json"
# The segment read (`GET /api/v2/segments/{project}/{env}/{segment}`, the segment PATCH's path)
# that tells whether a segment is big: a rate-limit route of its own.
SEGMENT_READ_ROUTE = "segment-read"
# The segment list (`GET /api/v2/segments/{project}/{env}?filter=unbounded equals true`): one
# read names every big segment of an environment; a rate-limit route of its own.
SEGMENT_LIST_ROUTE = "segment-list"
SEGMENT_LIST_PAGE = 50  # the most the list endpoint returns per page
API_VERSION = "20240415"


def segment_path(project: str, environment: str, key: str) -> str:
    """The segment PATCH's path (the key the kind cache and the batcher use)."""
    return SPECS[Endpoint.SEGMENT_TARGETS].template.format(
        project=_segment(project), environment=_segment(environment), resource=_segment(key)
    )


def big_segments_page_path(project: str, environment: str, offset: int) -> str:
    """One page of an environment's big segments (seed page: `?filter=unbounded equals true`)."""
    query = urlencode(
        {"filter": "unbounded equals true", "limit": SEGMENT_LIST_PAGE, "offset": offset},
        quote_via=quote,
    )
    return f"/api/v2/segments/{_segment(project)}/{_segment(environment)}?{query}"


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    path: str
    project_key: str
    environment_key: str
    # The resource every path of it shares: "{kind}/{project}/{environment}/{key}" (quoted).
    resource: str = ""

    @property
    def spec(self) -> EndpointSpec:
        return SPECS[self.endpoint]


class UnroutableEvent(ValueError):
    """The event's (resource kind, instruction kind) pair is not in the table."""


def _segment(key: str) -> str:
    # Keys are validated already; quoting everything is a second guard that no key can ever
    # add a path segment or escape one.
    quoted = quote(key, safe="")
    if quoted in {"", ".", ".."}:
        raise UnroutableEvent(f"key {key!r} cannot be a path segment")
    return quoted


_CACHE_SIZE = 10_000
_cache: dict[tuple[str, str, str, str, str], Route] = {}


def route(event: TargetingEvent) -> Route:
    # Memoised: a backlog names the same few resources over and over, and quoting is not free.
    key = (
        event.resource.kind,
        event.instruction.kind,
        event.projectKey,
        event.environmentKey,
        event.resource.key,
    )
    found = _cache.get(key)
    if found is None:
        found = _route(*key)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = found
    return found


def _route(
    resource_kind: str, instruction_kind: str, project: str, environment: str, key: str
) -> Route:
    endpoint = ROUTES.get((resource_kind, instruction_kind))
    if endpoint is None:
        raise UnroutableEvent(f"{instruction_kind} is not an instruction for a {resource_kind}")
    quoted = (_segment(project), _segment(environment), _segment(key))
    path = SPECS[endpoint].template.format(
        project=quoted[0], environment=quoted[1], resource=quoted[2]
    )
    return Route(endpoint, path, project, environment, resource_id(resource_kind, *quoted))


def resource_id(kind: str, project: str, environment: str, key: str) -> str:
    """The name of one resource across its paths (its parts already quoted)."""
    return f"{kind}/{project}/{environment}/{key}"


def big_segment_route(segment: Route, endpoint: Endpoint) -> Route:
    """The big-segment endpoint of the segment whose PATCH route is `segment`."""
    suffix = "/contexts" if endpoint is Endpoint.BIG_SEGMENT_CONTEXTS else "/users"
    return Route(
        endpoint,
        segment.path + suffix,
        segment.project_key,
        segment.environment_key,
        segment.resource,
    )


def request_body(
    route: Route, instructions: list[dict[str, Any]], comment: str | None
) -> dict[str, Any]:
    if route.endpoint in BIG_SEGMENT_ENDPOINTS:
        return segment_user_state(instructions)  # no comment: the body has no field for one
    body: dict[str, Any] = {}
    if route.spec.body_has_environment_key:
        body["environmentKey"] = route.environment_key
    body["instructions"] = instructions
    if comment:
        body["comment"] = comment
    return body


def segment_user_state(instructions: list[dict[str, Any]]) -> dict[str, Any]:
    """A big segment's `SegmentUserState` body: the *net* change of the target instructions,
    in order, as `included`/`excluded` x `add`/`remove` key lists. Per side, a key's last
    instruction wins (add k, remove k, add k: add k), which is what applying them one by one
    leaves (contract section 3); each key is listed once, empty lists and sides left out."""
    last: dict[str, dict[str, str]] = {}  # side -> key -> its last verb, in first-seen order
    for instruction in instructions:
        kind = instruction["kind"]
        side = "included" if "Included" in kind else "excluded"
        verb = "add" if kind.startswith("add") else "remove"
        keys = last.setdefault(side, {})
        for key in instruction["values"]:
            keys[key] = verb
    body: dict[str, Any] = {}
    for side in sorted(last, key=lambda name: name != "included"):
        lists: dict[str, list[str]] = {}
        for key, verb in last[side].items():
            lists.setdefault(verb, []).append(key)
        body[side] = {verb: lists[verb] for verb in ("add", "remove") if verb in lists}
    return body
