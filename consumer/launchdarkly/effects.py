"""What an instruction leaves in LaunchDarkly, and how to read it back. Pure, no I/O.

A *target* is one thing an instruction sets: a segment membership (standard: per side,
context kind and key; big: per side and key), a scheduled removal (segment: per target type,
context kind and key; flag: per context), or a segment's name. `effects` says which targets
an instruction sets and to what; `reads` groups targets by the GET that shows them (one
segment read serves all its standard members and its name, one expiring-targets read all of
a segment's or flag's scheduled removals, a big segment's membership is read per context);
`found_in` takes each target's value out of its read's answer.

Used by `verify` (LaunchDarkly against the outcomes) and by the sender, which reads a resource
back after a request whose outcome was unknown (sender.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from consumer.contract.events import (
    AddExpireUserTargetDate,
    FlagAddExpiringTarget,
    FlagRemoveExpiringTarget,
    FlagUpdateExpiringTarget,
    Instruction,
    RemoveExpireUserTargetDate,
    SegmentAddExpiringTarget,
    SegmentRemoveExpiringTarget,
    SegmentTargets,
    SegmentUpdateExpiringTarget,
    SegmentUsers,
    UpdateExpireUserTargetDate,
    UpdateName,
)

# How a target is read (the read endpoints of the seed pages).
SEGMENT = "segment"  # GET /api/v2/segments/{p}/{e}/{s}: standard members and the name
MEMBERSHIP = "membership"  # GET /api/v2/segments/{p}/{e}/{s}/contexts/{key}: big segments
SEGMENT_EXPIRING = "segment-expiring"  # GET /api/v2/segments/{p}/{s}/expiring-targets/{e}
SEGMENT_EXPIRING_USERS = "segment-expiring-users"  # .../expiring-user-targets/{e}
FLAG_EXPIRING = "flag-expiring"  # GET /api/v2/flags/{p}/{f}/expiring-targets/{e}


@dataclass(frozen=True, order=True, slots=True)
class Target:
    resource: str  # project/environment/kind/key
    aspect: str  # "included", "excluded", "expires included", "expires excluded", "expires", "name"
    context_kind: str = ""
    key: str = ""

    def label(self) -> str:
        if self.aspect == "name":
            return "name"
        return f"{self.aspect} {self.context_kind}:{self.key}"


class Unread:
    """The found value of a target whose read did not succeed."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<not read: {self.why}>"


class Expected(Protocol):
    """A target with the read that shows it (verify's Expectation, the sender's read-back)."""

    @property
    def target(self) -> Target: ...

    @property
    def read(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Effect:
    """One target an instruction sets, to `value`, shown by the read of kind `read`; `clears`:
    targets it removes along with it (a removed member's scheduled removal)."""

    target: Target
    value: Any
    read: str
    clears: tuple[Target, ...] = ()


def effects(resource: str, instruction: Instruction, *, big: bool) -> list[Effect]:
    """What applying `instruction` to `resource` ("project/environment/kind/key") leaves: one
    effect per target (`big`: it went to a big segment's membership lists)."""
    found: list[Effect] = []
    if isinstance(instruction, SegmentTargets | SegmentUsers):
        side = "included" if "Included" in instruction.kind else "excluded"
        add = instruction.kind.startswith("add")
        kind = instruction.contextKind if isinstance(instruction, SegmentTargets) else "user"
        for key in instruction.values:
            clears = () if add or big else (Target(resource, f"expires {side}", kind, key),)
            found.append(
                Effect(
                    Target(resource, side, kind, key), add, MEMBERSHIP if big else SEGMENT, clears
                )
            )
    elif isinstance(instruction, UpdateName):
        found.append(Effect(Target(resource, "name"), instruction.value, SEGMENT))
    elif isinstance(
        instruction,
        SegmentAddExpiringTarget | SegmentUpdateExpiringTarget | SegmentRemoveExpiringTarget,
    ):
        target = Target(
            resource,
            f"expires {instruction.targetType}",
            instruction.contextKind,
            instruction.contextKey,
        )
        found.append(Effect(target, getattr(instruction, "value", None), SEGMENT_EXPIRING))
    elif isinstance(
        instruction,
        AddExpireUserTargetDate | UpdateExpireUserTargetDate | RemoveExpireUserTargetDate,
    ):
        target = Target(resource, f"expires {instruction.targetType}", "user", instruction.userKey)
        found.append(Effect(target, getattr(instruction, "value", None), SEGMENT_EXPIRING_USERS))
    elif isinstance(
        instruction,
        FlagAddExpiringTarget | FlagUpdateExpiringTarget | FlagRemoveExpiringTarget,
    ):
        expected = (
            None
            if isinstance(instruction, FlagRemoveExpiringTarget)
            else {"variationId": instruction.variationId, "value": instruction.value}
        )
        target = Target(resource, "expires", instruction.contextKind, instruction.contextKey)
        found.append(Effect(target, expected, FLAG_EXPIRING))
    return found


@dataclass(slots=True)
class Read:
    kind: str
    path: str
    targets: list[Target] = field(default_factory=list)


def _q(text: str) -> str:
    return quote(text, safe="")


def reads(expected: Iterable[Expected]) -> list[Read]:
    """The reads that show these targets, grouped per resource where the API allows it."""
    found: dict[tuple[str, str], Read] = {}
    for expectation in expected:
        target = expectation.target
        project, environment, _, key = target.resource.split("/")
        p, e, k = _q(project), _q(environment), _q(key)
        kind = expectation.read
        if kind == SEGMENT:
            path = f"/api/v2/segments/{p}/{e}/{k}"
        elif kind == MEMBERSHIP:
            path = f"/api/v2/segments/{p}/{e}/{k}/contexts/{_q(target.key)}"
        elif kind == SEGMENT_EXPIRING:
            path = f"/api/v2/segments/{p}/{k}/expiring-targets/{e}"
        elif kind == SEGMENT_EXPIRING_USERS:
            path = f"/api/v2/segments/{p}/{k}/expiring-user-targets/{e}"
        else:
            path = f"/api/v2/flags/{p}/{k}/expiring-targets/{e}"
        found.setdefault((kind, path), Read(kind, path)).targets.append(target)
    return sorted(found.values(), key=lambda r: r.path)


def found_in(read: Read, status: int, body: Any) -> dict[Target, Any]:
    """Each target's value in its read's answer (`status` 404: the resource is gone)."""
    if status == 404 and read.kind == MEMBERSHIP:
        body = {"included": False, "excluded": False}  # no membership to show
    elif status == 404:
        return dict.fromkeys(read.targets, "(resource not found)")
    if not isinstance(body, dict):
        return {t: Unread("the answer is not a JSON object") for t in read.targets}
    values: dict[Target, Any] = {}
    if read.kind == SEGMENT:
        members: dict[tuple[str, str], set[str]] = defaultdict(set)
        for side in ("included", "excluded"):
            members[(side, "user")].update(_strings(body.get(side)))
            for entry in body.get(f"{side}Contexts") or []:
                if isinstance(entry, dict):
                    members[(side, str(entry.get("contextKind")))].update(
                        _strings(entry.get("values"))
                    )
        for t in read.targets:
            if t.aspect == "name":
                values[t] = body.get("name")
            else:
                values[t] = t.key in members[(t.aspect, t.context_kind)]
    elif read.kind == MEMBERSHIP:
        for t in read.targets:
            values[t] = body.get(t.aspect) is True
    else:
        scheduled: dict[tuple[str, str, str], Any] = {}
        for item in body.get("items") or []:
            if not isinstance(item, dict):
                continue
            if read.kind == FLAG_EXPIRING:
                found = {
                    "variationId": item.get("variationId"),
                    "value": item.get("expirationDate"),
                }
                scheduled[
                    ("expires", str(item.get("contextKind")), str(item.get("contextKey")))
                ] = found
            else:
                user = read.kind == SEGMENT_EXPIRING_USERS
                key = item.get("userKey") if user else item.get("contextKey")
                kind = "user" if user else item.get("contextKind")
                aspect = f"expires {item.get('targetType')}"
                scheduled[(aspect, str(kind), str(key))] = item.get("expirationDate")
        for t in read.targets:
            values[t] = scheduled.get((t.aspect, t.context_kind, t.key))
    return values


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
