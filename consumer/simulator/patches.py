"""The segment PATCH's two document formats: JSON patch (RFC 6902) and JSON merge patch
(RFC 7386), as LaunchDarkly's API documentation ("Updates") describes them. Pure: a document
in, a document out; anything that cannot apply is a `RequestRejected` (400).

Which format a non-semantic request is, from its Content-Type and body:

- `application/merge-patch+json`: the body is a merge patch document;
- `application/json` (or `application/json-patch+json`): a list of operations, or
  `{"patch": [...], "comment": "..."}` (a JSON patch with a comment, the `PatchWithComment`
  of LaunchDarkly's OpenAPI document), or `{"merge": {...}, "comment": "..."}` (a merge patch
  with a comment). Any other object is refused: LaunchDarkly reads a body without the
  semantic-patch Content-Type as a JSON patch, so a semantic patch sent that way is a 400.

`write_back` then decides what of the patched representation may change, all or nothing.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.simulator.state import RequestRejected, Segment, require_kind

MERGE_PATCH = "application/merge-patch+json"
JSON_TYPES = ("application/json", "application/json-patch+json")


@dataclass(frozen=True, slots=True)
class DocumentPatch:
    format: Literal["json", "merge"]
    patch: Any  # the operations, or the merge document (a comment is only checked)

    def apply(self, document: Any) -> Any:
        if self.format == "json":
            return json_patch(document, self.patch)
        return merge_patch(document, self.patch)


def parse(content_type: str | None, body: Any) -> DocumentPatch:
    """The patch a request without the semantic-patch Content-Type carries."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == MERGE_PATCH:
        if not isinstance(body, dict):
            raise RequestRejected("a JSON merge patch must be a JSON object")
        return DocumentPatch("merge", body)
    if media not in JSON_TYPES:
        raise RequestRejected(f"unsupported Content-Type: {content_type!r}")
    if isinstance(body, list):
        return DocumentPatch("json", body)
    if isinstance(body, dict):
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise RequestRejected("comment must be a string")
        if "patch" in body and set(body) <= {"patch", "comment"}:
            if not isinstance(body["patch"], list):
                raise RequestRejected("patch must be a list of operations")
            return DocumentPatch("json", body["patch"])
        if "merge" in body and set(body) <= {"merge", "comment"}:
            if not isinstance(body["merge"], dict):
                raise RequestRejected("merge must be a JSON object")
            return DocumentPatch("merge", body["merge"])
    raise RequestRejected(
        'expected a JSON patch (a list of operations, or {"patch": [...]}) or {"merge": {...}};'
        " a semantic patch needs Content-Type with domain-model=launchdarkly.semanticpatch"
    )


# ---------------------------------------------------------------------------------------------
# RFC 7386


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


# ---------------------------------------------------------------------------------------------
# RFC 6902: every operation applies to the result of the previous one; one that cannot
# apply (or a failed `test`) rejects the whole patch.


def json_patch(document: Any, operations: list[Any]) -> Any:
    if not operations:
        raise RequestRejected("a JSON patch needs at least one operation")
    result = copy.deepcopy(document)
    for position, operation in enumerate(operations):
        where = f"patch[{position}]"
        if not isinstance(operation, dict):
            raise RequestRejected(f"{where} is not an object")
        op, raw_path = operation.get("op"), operation.get("path")
        if not isinstance(op, str) or not isinstance(raw_path, str):
            raise RequestRejected(f"{where}: op and path must be strings")
        path = _pointer(raw_path, where)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise RequestRejected(f"{where}: {op} needs a value")
        if op in ("move", "copy") and not isinstance(operation.get("from"), str):
            raise RequestRejected(f"{where}: {op} needs from")
        value = copy.deepcopy(operation.get("value"))
        if op == "add":
            result = _add(result, path, value, where)
        elif op == "remove":
            result, _ = _remove(result, path, where)
        elif op == "replace":
            result, _ = _remove(result, path, where)
            result = _add(result, path, value, where)
        elif op == "move":
            source = _pointer(operation["from"], where)
            if path[: len(source)] == source and len(path) > len(source):
                raise RequestRejected(f"{where}: cannot move a value into itself")
            result, moved = _remove(result, source, where)
            result = _add(result, path, moved, where)
        elif op == "copy":
            copied = copy.deepcopy(_get(result, _pointer(operation["from"], where), where))
            result = _add(result, path, copied, where)
        elif op == "test":
            if not _same(_get(result, path, where), value):
                raise RequestRejected(f"{where}: test of {raw_path} failed")
        else:
            raise RequestRejected(f"{where}: unknown op {op!r}")
    return result


def _pointer(text: str, where: str) -> list[str]:
    """A JSON pointer (RFC 6901) as its reference tokens."""
    if text == "":
        return []
    if not text.startswith("/"):
        raise RequestRejected(f"{where}: path {text!r} must start with /")
    return [token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/")]


def _index(container: list[Any], token: str, where: str, *, end: int) -> int:
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise RequestRejected(f"{where}: {token!r} is not an array index")
    index = int(token)
    if index > end:
        raise RequestRejected(f"{where}: index {index} is out of range")
    return index


def _get(document: Any, path: list[str], where: str) -> Any:
    for token in path:
        if isinstance(document, dict):
            if token not in document:
                raise RequestRejected(f"{where}: no member {token!r}")
            document = document[token]
        elif isinstance(document, list):
            document = document[_index(document, token, where, end=len(document) - 1)]
        else:
            raise RequestRejected(
                f"{where}: cannot address {token!r} in a {type(document).__name__}"
            )
    return document


def _add(document: Any, path: list[str], value: Any, where: str) -> Any:
    if not path:
        return value  # the whole document
    parent, last = _get(document, path[:-1], where), path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else _index(parent, last, where, end=len(parent))
        parent.insert(index, value)
    else:
        raise RequestRejected(f"{where}: cannot add to a {type(parent).__name__}")
    return document


def _remove(document: Any, path: list[str], where: str) -> tuple[Any, Any]:
    if not path:
        raise RequestRejected(f"{where}: cannot remove the whole document")
    parent, last = _get(document, path[:-1], where), path[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise RequestRejected(f"{where}: no member {last!r}")
        return document, parent.pop(last)
    if isinstance(parent, list):
        return document, parent.pop(_index(parent, last, where, end=len(parent) - 1))
    raise RequestRejected(f"{where}: cannot remove from a {type(parent).__name__}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's, `true` is not `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# ---------------------------------------------------------------------------------------------
# Writing back: a segment's editable fields, as a patch leaves them (`UserSegment` in the
# official client; the rule and clause shapes are its `UserSegmentRule` and `Clause`).


def _new_id() -> str:
    return str(uuid.uuid4())


class _In(BaseModel):
    # Strict: JSON types as sent (a `"true"` is not a boolean, a 1 not a string).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class ClauseIn(_In):
    id: str = Field(default_factory=_new_id, alias="_id")
    attribute: str
    op: str
    values: list[Any]
    negate: bool = False
    contextKind: str = "user"  # "if not provided, defaults to user" (the segment PATCH page)


class RuleIn(_In):
    id: str = Field(default_factory=_new_id, alias="_id")  # the server names new rules
    clauses: list[ClauseIn]
    description: str | None = None
    weight: int | None = Field(None, ge=0, le=100_000)
    rolloutContextKind: str | None = None
    bucketBy: str | None = None


class ContextTargetsIn(_In):
    contextKind: str
    values: list[str]


class SegmentDocument(BaseModel):
    """The fields of a segment representation a patch may change. The others must come out of
    a patch as they went in (`write_back`)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(min_length=1)
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    included: list[str] = Field(default_factory=list)
    excluded: list[str] = Field(default_factory=list)
    includedContexts: list[ContextTargetsIn] = Field(default_factory=list)
    excludedContexts: list[ContextTargetsIn] = Field(default_factory=list)
    rules: list[RuleIn] = Field(default_factory=list)


EDITABLE = frozenset(SegmentDocument.model_fields)


def document_of(segment: Segment) -> dict[str, Any]:
    """What a patch applies to: the representation, with `description` even when it is null
    (the answer omits it then), so that the documented `replace /description` works on a
    segment that has none yet."""
    return {"description": None, **segment.representation()}


def write_back(segment: Segment, document: Any, now_ms: int) -> None:
    """Write back what a JSON or merge patch made of `document_of(segment)`.

    Only the editable fields may change (`SegmentDocument`; a `test` of `/version` is
    fine, a change to it is not); targets follow the semantic patch's rules: a key both
    included and excluded is refused, a removed key loses its scheduled removal, and a big
    segment's targets do not change this way (`require_kind`). User keys are `included` /
    `excluded`; `includedContexts` / `excludedContexts` are for other context kinds.
    """
    before = document_of(segment)
    if not isinstance(document, dict):
        raise RequestRejected("the patched segment is not a JSON object")
    for name in (set(before) | set(document)) - EDITABLE:
        if not _same(before.get(name), document.get(name)):
            raise RequestRejected(f"{name} cannot be changed by a patch")
    try:
        edited = SegmentDocument.model_validate(document)
    except ValidationError as exc:
        raise RequestRejected(f"invalid segment: {_first_error(exc)}") from None
    targets: dict[str, dict[str, dict[str, None]]] = {"included": {}, "excluded": {}}
    for side, users, others in (
        ("included", edited.included, edited.includedContexts),
        ("excluded", edited.excluded, edited.excludedContexts),
    ):
        if users:
            targets[side]["user"] = dict.fromkeys(users)
        for entry in others:
            if entry.contextKind == "user":
                raise RequestRejected(f"user keys go in {side}, not {side}Contexts")
            targets[side].setdefault(entry.contextKind, {}).update(dict.fromkeys(entry.values))
    if segment.unbounded:
        # Its representation lists no members: any key in the patched one is a write.
        if any(keys for kinds in targets.values() for keys in kinds.values()):
            require_kind(segment, big=False)
    else:
        for kind, keys in targets["included"].items():
            both = [key for key in keys if key in targets["excluded"].get(kind, {})]
            if both:
                raise RequestRejected(f"{kind} '{both[0]}' cannot be both included and excluded")
        segment.expiring = {
            slot: item
            for slot, item in segment.expiring.items()
            if slot[2] in targets[slot[0]].get(slot[1], {})
        }
        segment.targets = targets
    segment.name = edited.name
    segment.description = edited.description
    segment.tags = list(dict.fromkeys(edited.tags))
    segment.rules = [rule.model_dump(by_alias=True, exclude_none=True) for rule in edited.rules]
    segment.changed(now_ms)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = "/".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
