"""The input event: its models and `decode(bytes)` (the outcome is in outcomes.py, the
dead-letter headers in dead_letters.py).

One input event carries exactly one LaunchDarkly semantic-patch instruction. The instruction
models mirror the API's camelCase fields, so `instruction.model_dump()` is the request item.
Everything is strict: unknown fields, wrong JSON types and keys that could change a URL path
make the event invalid rather than being coerced or dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from consumer.contract.codes import ErrorCode

# ---------------------------------------------------------------------------------------------
# Field types

# The ECMA form (with the look-ahead) is what the JSON Schema publishes. The check itself runs
# in pydantic's Rust regex engine, which has no look-ahead: "at least one character that is
# not a dot" says the same, and its `$` is the end of the text (no trailing newline slips by).
LD_KEY_PATTERN = r"^(?!\.+$)[A-Za-z0-9._-]{1,256}$"
_LD_KEY_CHECK = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$"
LD_KEY_RULE = "must be 1-256 characters of A-Z a-z 0-9 . _ -, not dots alone"
# The most keys one request may add or remove (the segment PATCH's documented cap, and the
# big-segment endpoints'); also the most one event may carry. Written once: routing.py and
# big_segments.py use it.
MAX_TARGET_VALUES = 1_500

LdKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=_LD_KEY_CHECK),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": LD_KEY_PATTERN,
            "minLength": 1,
            "maxLength": 256,
            "description": "A LaunchDarkly key: 1-256 of A-Z a-z 0-9 . _ -, not dots alone.",
        }
    ),
]


def _context_kind_allowed(value: str) -> str:
    if value in {"kind", "multi"}:
        raise ValueError(f"'{value}' is not a valid context kind")
    return value


ContextKind = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,256}$"),
    AfterValidator(_context_kind_allowed),
]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=65_536)]
UnixMillis = Annotated[int, Field(ge=0, le=2**63 - 1, description="Unix milliseconds")]
Version = Annotated[int, Field(ge=0, le=2**63 - 1)]
TargetType = Literal["included", "excluded"]
TargetValues = Annotated[list[ContextKey], Field(min_length=1, max_length=MAX_TARGET_VALUES)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Instructions: one model per instruction kind of the contract's table


class SegmentAddExpiringTarget(Strict):
    kind: Literal["addExpiringTarget"]
    targetType: TargetType
    contextKey: ContextKey
    contextKind: ContextKind
    value: UnixMillis


class SegmentUpdateExpiringTarget(Strict):
    kind: Literal["updateExpiringTarget"]
    targetType: TargetType
    contextKey: ContextKey
    contextKind: ContextKind
    value: UnixMillis
    version: Version | None = None


class SegmentRemoveExpiringTarget(Strict):
    kind: Literal["removeExpiringTarget"]
    targetType: TargetType
    contextKey: ContextKey
    contextKind: ContextKind


class AddExpireUserTargetDate(Strict):
    kind: Literal["addExpireUserTargetDate"]
    targetType: TargetType
    userKey: ContextKey
    value: UnixMillis


class UpdateExpireUserTargetDate(Strict):
    kind: Literal["updateExpireUserTargetDate"]
    targetType: TargetType
    userKey: ContextKey
    value: UnixMillis
    version: Version


class RemoveExpireUserTargetDate(Strict):
    kind: Literal["removeExpireUserTargetDate"]
    targetType: TargetType
    userKey: ContextKey


class SegmentTargets(Strict):
    kind: Literal[
        "addIncludedTargets", "addExcludedTargets", "removeIncludedTargets", "removeExcludedTargets"
    ]
    contextKind: ContextKind
    values: TargetValues


class SegmentUsers(Strict):
    kind: Literal[
        "addIncludedUsers", "addExcludedUsers", "removeIncludedUsers", "removeExcludedUsers"
    ]
    values: TargetValues


class UpdateName(Strict):
    """Renames the segment (the segment PATCH's `updateName`)."""

    kind: Literal["updateName"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=1_000)]


class FlagAddExpiringTarget(Strict):
    kind: Literal["addExpiringTarget"]
    variationId: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    contextKey: ContextKey
    contextKind: ContextKind
    value: UnixMillis


class FlagUpdateExpiringTarget(Strict):
    kind: Literal["updateExpiringTarget"]
    variationId: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    contextKey: ContextKey
    contextKind: ContextKind
    value: UnixMillis
    version: Version | None = None


class FlagRemoveExpiringTarget(Strict):
    kind: Literal["removeExpiringTarget"]
    variationId: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    contextKey: ContextKey
    contextKind: ContextKind


# The instruction kinds, listed once per resource kind.
_SegmentInstructions = (
    SegmentAddExpiringTarget
    | SegmentUpdateExpiringTarget
    | SegmentRemoveExpiringTarget
    | AddExpireUserTargetDate
    | UpdateExpireUserTargetDate
    | RemoveExpireUserTargetDate
    | SegmentTargets
    | SegmentUsers
    | UpdateName
)
_FlagInstructions = FlagAddExpiringTarget | FlagUpdateExpiringTarget | FlagRemoveExpiringTarget
SegmentInstruction = Annotated[_SegmentInstructions, Field(discriminator="kind")]
FlagInstruction = Annotated[_FlagInstructions, Field(discriminator="kind")]
Instruction = _SegmentInstructions | _FlagInstructions


# ---------------------------------------------------------------------------------------------
# The input event


class SegmentRef(Strict):
    kind: Literal["segment"]
    key: LdKey


class FlagRef(Strict):
    kind: Literal["flag"]
    key: LdKey


class _EventFields(Strict):
    eventId: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    projectKey: LdKey
    environmentKey: LdKey
    comment: Annotated[str, StringConstraints(max_length=1_000)] | None = None
    occurredAt: AwareDatetime | None = None


class SegmentEvent(_EventFields):
    """A change to a segment's targets or to the expiry of a segment target."""

    resource: SegmentRef
    instruction: SegmentInstruction


class FlagEvent(_EventFields):
    """A change to the expiry of a flag's individual target."""

    resource: FlagRef
    instruction: FlagInstruction


RESOURCE_KINDS = ("segment", "flag")


def _resource_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return str(value.resource.kind)  # type: ignore[attr-defined]
    resource = value.get("resource") if isinstance(value, dict) else None
    kind = resource.get("kind", "segment") if isinstance(resource, dict) else "segment"
    # A missing resource or kind is reported by the field check of the segment model; only a
    # kind that is present and unknown is an error of the discriminator itself.
    return kind if kind in RESOURCE_KINDS else None


Event = Annotated[
    Annotated[SegmentEvent, Tag("segment")] | Annotated[FlagEvent, Tag("flag")],
    Discriminator(
        _resource_kind,
        custom_error_type="invalid_resource_kind",
        custom_error_message="must be 'segment' or 'flag'",
    ),
]
EVENT_ADAPTER: TypeAdapter[SegmentEvent | FlagEvent] = TypeAdapter(Event)

TargetingEvent = SegmentEvent | FlagEvent


def record_key(event: TargetingEvent | Mapping[str, Any]) -> bytes:
    """The recommended record key, `project/environment/kind/key`: one target's events share a
    partition and keep their order. Of a decoded event or of its JSON object."""
    if isinstance(event, Mapping):
        resource = event["resource"]
        parts = (event["projectKey"], event["environmentKey"], resource["kind"], resource["key"])
    else:
        parts = (event.projectKey, event.environmentKey, event.resource.kind, event.resource.key)
    return "/".join(str(part) for part in parts).encode()


def instruction_body(event: TargetingEvent) -> dict[str, Any]:
    """The instruction as the API documents it (optional fields left out when unset).

    Every field is a JSON type already (str, int, list of str), so the fields are taken as
    they are; `model_dump` would cost more than the rest of building the request.
    """
    return {name: value for name, value in vars(event.instruction).items() if value is not None}


def target_operations(event: TargetingEvent) -> int:
    """Keys this instruction adds or removes (the segment PATCH accepts at most 1,500)."""
    instruction = event.instruction
    if isinstance(instruction, SegmentTargets | SegmentUsers):
        return len(instruction.values)
    if isinstance(instruction, UpdateName):
        return 0
    return 1


# ---------------------------------------------------------------------------------------------
# Decoding raw record values


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a record is not a valid event; `event_id` when one could still be read."""

    code: ErrorCode
    message: str
    event_id: str | None = None


_MAX_MESSAGE_ERRORS = 5


def decode(value: bytes | None) -> TargetingEvent | Invalid:
    """Parse one record value; never raises.

    A valid event is validated straight from the bytes, once; only a value that fails goes
    through the slower steps that tell exactly what is wrong with it.
    """
    if value is None:
        return Invalid(ErrorCode.NOT_JSON, "record has no value (tombstone)")
    # The likely model first (a hint from the bytes; the model decides): the discriminated
    # union's resource-kind function would turn the whole JSON into Python objects first.
    first, second = _FLAG_FIRST if b'"flag"' in value else _SEGMENT_FIRST
    try:
        return first.model_validate_json(value)
    except ValidationError:
        pass
    try:
        return second.model_validate_json(value)
    except ValidationError:
        return _diagnose(value)


_SEGMENT_FIRST: tuple[type[TargetingEvent], type[TargetingEvent]] = (SegmentEvent, FlagEvent)
_FLAG_FIRST: tuple[type[TargetingEvent], type[TargetingEvent]] = (FlagEvent, SegmentEvent)


def _diagnose(value: bytes) -> Invalid:
    """Why `value` is not a valid event: the first step that fails, with the event id if any."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(ErrorCode.NOT_UTF8, f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return Invalid(ErrorCode.NOT_JSON, f"value is not JSON: {detail}")
    if not isinstance(parsed, dict):
        return Invalid(
            ErrorCode.NOT_AN_OBJECT, f"value is a JSON {type(parsed).__name__}, not an object"
        )
    event_id = parsed.get("eventId")
    event_id = event_id if isinstance(event_id, str) and 0 < len(event_id) <= 200 else None
    try:
        # From the text, not the dict: strict JSON mode reads RFC 3339 strings as datetimes.
        EVENT_ADAPTER.validate_json(text)
    except ValidationError as exc:
        code, message = describe_validation_error(exc)
        return Invalid(code, message, event_id)
    # Valid as text but not as bytes: cannot happen with UTF-8 input; said, not assumed.
    return Invalid(ErrorCode.INVALID_EVENT, "value is not a valid event", event_id)


_KEY_FIELDS = {"projectKey", "environmentKey", "key"}
_KEY_ERRORS = {"string_pattern_mismatch", "string_too_short", "string_too_long"}


def describe_validation_error(exc: ValidationError) -> tuple[ErrorCode, str]:
    """The most telling error code and a one-line message listing the failures."""
    errors = exc.errors(include_url=False, include_input=False)
    codes: list[ErrorCode] = []
    parts: list[str] = []
    for error in errors:
        loc = [str(part) for part in error["loc"]]
        # Drop pydantic's union tags ("segment", "addExpiringTarget") from the location.
        path = ".".join(p for p in loc if p not in RESOURCE_KINDS and not _is_tag(p))
        code = _classify(error["type"], loc)
        message = error["msg"].removeprefix("Value error, ")
        if code is ErrorCode.INVALID_RESOURCE_KIND:
            path = "resource.kind"
        elif code is ErrorCode.INVALID_KEY:
            message = LD_KEY_RULE  # not the regular expression it is checked with
        codes.append(code)
        parts.append(f"{path or '<event>'}: {message}")
    code = min(codes, key=_PRIORITY.index)
    more = (
        f" (and {len(parts) - _MAX_MESSAGE_ERRORS} more)"
        if len(parts) > _MAX_MESSAGE_ERRORS
        else ""
    )
    return code, "; ".join(parts[:_MAX_MESSAGE_ERRORS]) + more


def _is_tag(part: str) -> bool:
    return part.startswith(("add", "update", "remove")) and part[0].islower() and "." not in part


def _classify(error_type: str, loc: list[str]) -> ErrorCode:
    if error_type == "extra_forbidden":
        return ErrorCode.UNKNOWN_FIELD
    if error_type == "invalid_resource_kind":
        return ErrorCode.INVALID_RESOURCE_KIND
    if error_type in {"union_tag_invalid", "union_tag_not_found"}:
        return ErrorCode.UNKNOWN_INSTRUCTION_KIND
    if loc and loc[-1] in _KEY_FIELDS and error_type in _KEY_ERRORS:
        return ErrorCode.INVALID_KEY
    return ErrorCode.INVALID_EVENT


_PRIORITY = [
    ErrorCode.INVALID_KEY,
    ErrorCode.UNKNOWN_FIELD,
    ErrorCode.INVALID_RESOURCE_KIND,
    ErrorCode.UNKNOWN_INSTRUCTION_KIND,
    ErrorCode.INVALID_EVENT,
]
