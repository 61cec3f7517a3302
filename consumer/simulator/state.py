"""The simulator's state and the semantics of each instruction, as the seed pages describe them.

Pure: no HTTP here. `server.py` maps requests onto these methods and their errors onto statuses.

- Expiring-target endpoints apply instruction by instruction; a failed one is reported by its
  position (from 0) and the others still apply.
- The segment semantic PATCH is all-or-nothing: any failing instruction fails the request
  (`RequestRejected`, a 400) and nothing is applied; at most 1,500 keys per request.
- A context can be scheduled for removal only if it is an individual target; an update with a
  `version` that is not the current one fails; for the legacy user form the version is the
  segment's (as its page says).
- Big segments (`unbounded`, one context kind): targets change through `POST .../contexts`
  and `.../users` (a `SegmentUserState` body, 204); included and excluded are two
  independent lists (the membership read answers both). What a write meant for the other
  kind of segment does is decided in one place, `require_kind`: 400.
- The segment PATCH also takes a JSON patch or a JSON merge patch: `patches.py` applies them
  to the representation and writes the editable fields of the result back, all or nothing,
  under the same rules as the semantic patch.
- Representations carry every field LaunchDarkly's official client requires (`UserSegment`,
  `FeatureFlag`): dates are epoch milliseconds from the clock the `Store` is given (fixed at
  creation; `lastModifiedDate` and `version` move with each write of the segment).
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEGMENT_TARGET_OPERATIONS = 1_500
_ids = itertools.count(1)


class NotFoundError(Exception):
    """The project, environment, segment or flag does not exist (404)."""


class RequestRejected(Exception):
    """The request as a whole is refused (400)."""


class InstructionFailed(Exception):
    """One instruction failed; the others of the request are unaffected."""


# ---------------------------------------------------------------------------------------------
# Admin input (seed file and admin API)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ProjectIn(_In):
    key: str
    environments: list[str] = Field(default_factory=list)


class SegmentIn(_In):
    projectKey: str
    environmentKey: str
    key: str
    name: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    included: dict[str, list[str]] = Field(default_factory=dict)
    excluded: dict[str, list[str]] = Field(default_factory=dict)
    # A big segment (list-based over 15,000 entries, or synced) of one context kind.
    unbounded: bool = False
    unboundedContextKind: str = "user"


class VariationIn(_In):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), alias="_id")
    value: Any = None
    name: str | None = None


class FlagTargetIn(_In):
    variationId: str
    contextKind: str = "user"
    values: list[str]


class FlagIn(_In):
    projectKey: str
    key: str
    name: str | None = None
    variations: list[VariationIn] = Field(
        default_factory=lambda: [
            VariationIn(value=True, name="on"),
            VariationIn(value=False, name="off"),
        ]
    )
    targets: dict[str, list[FlagTargetIn]] = Field(default_factory=dict)


class SegmentTargetsIn(_In):
    targetType: str = Field(pattern="^(included|excluded)$")
    contextKind: str = "user"
    values: list[str]
    remove: bool = False  # take the keys out instead (a change made behind the consumer's back)


class SeedIn(_In):
    projects: list[ProjectIn] = Field(default_factory=list)
    segments: list[SegmentIn] = Field(default_factory=list)
    flags: list[FlagIn] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Expiring:
    context_kind: str
    context_key: str
    value: int
    target_type: str | None = None
    variation_id: str | None = None
    version: int = 1
    id: str = field(default_factory=lambda: f"{next(_ids):024x}")

    def item(self, resource: dict[str, str], *, user_form: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {
            "_id": self.id,
            "_version": self.version,
            "expirationDate": self.value,
        }
        if user_form:
            item["userKey"] = self.context_key
        else:
            item["contextKind"] = self.context_kind
            item["contextKey"] = self.context_key
        if self.target_type is not None:
            item["targetType"] = self.target_type
        if self.variation_id is not None:
            item["variationId"] = self.variation_id
        item["_resourceId"] = resource
        return item


@dataclass
class Segment:
    project: str
    environment: str
    key: str
    name: str
    created_ms: int  # creationDate
    version: int = 1
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 1  # how many times a segment of this key was created
    modified_ms: int = 0  # lastModifiedDate (creationDate until the first write)
    # target type -> context kind -> keys, in insertion order
    targets: dict[str, dict[str, dict[str, None]]] = field(
        default_factory=lambda: {"included": {}, "excluded": {}}
    )
    # (target type, context kind, context key) -> scheduled removal
    expiring: dict[tuple[str, str, str], Expiring] = field(default_factory=dict)
    unbounded: bool = False
    context_kind: str = "user"  # a big segment's only context kind

    def has_target(self, target_type: str, kind: str, key: str) -> bool:
        return key in self.targets[target_type].get(kind, {})

    def changed(self, now_ms: int) -> None:
        """A write: a new version, modified now."""
        self.version += 1
        self.modified_ms = max(now_ms, self.created_ms)

    def resource_id(self) -> dict[str, str]:
        return {
            "kind": "segment",
            "projectKey": self.project,
            "environmentKey": self.environment,
            "key": self.key,
        }

    def representation(self) -> dict[str, Any]:
        """The segment as the API answers it (`UserSegment` in the official client)."""

        def contexts(target_type: str) -> list[dict[str, Any]]:
            return [
                {"contextKind": kind, "values": list(keys)}
                for kind, keys in self.targets[target_type].items()
                if kind != "user" and keys
            ]

        path = f"/api/v2/segments/{self.project}/{self.environment}"
        common: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            # "omitted in the response if not provided"
            **({"description": self.description} if self.description is not None else {}),
            "tags": list(self.tags),
            "creationDate": self.created_ms,
            "lastModifiedDate": max(self.modified_ms, self.created_ms),
            "version": self.version,
            "generation": self.generation,
            "rules": copy.deepcopy(self.rules),
            "deleted": False,
            "_links": {
                "self": {"href": f"{path}/{self.key}", "type": "application/json"},
                "parent": {"href": path, "type": "application/json"},
            },
        }
        if self.unbounded:  # a big segment's members are read one by one, never listed
            return {
                **common,
                "included": [],
                "excluded": [],
                "includedContexts": [],
                "excludedContexts": [],
                "unbounded": True,
                "unboundedContextKind": self.context_kind,
                "_unboundedMetadata": {
                    "includedCount": len(self.big_members("included")),
                    "excludedCount": len(self.big_members("excluded")),
                },
            }
        return {
            **common,
            "included": list(self.targets["included"].get("user", {})),
            "excluded": list(self.targets["excluded"].get("user", {})),
            "includedContexts": contexts("included"),
            "excludedContexts": contexts("excluded"),
            "unbounded": False,
        }

    def big_members(self, target_type: str) -> dict[str, None]:
        return self.targets[target_type].setdefault(self.context_kind, {})


@dataclass
class Flag:
    project: str
    key: str
    name: str
    variations: list[dict[str, Any]]
    created_ms: int  # creationDate, and every environment's lastModified
    # environment -> variation id -> context kind -> keys
    targets: dict[str, dict[str, dict[str, dict[str, None]]]] = field(default_factory=dict)
    # environment -> (context kind, context key) -> scheduled removal (one variation per context)
    expiring: dict[str, dict[tuple[str, str], Expiring]] = field(default_factory=dict)
    salt: str = field(default_factory=lambda: uuid.uuid4().hex)

    def variation_ids(self) -> set[str]:
        return {v["_id"] for v in self.variations}

    def representation(self, environments: list[str]) -> dict[str, Any]:
        """The flag as `GET /api/v2/flags/{project}/{flag}` answers it (`FeatureFlag` in the
        official client), with `environments`' settings: individual targets by variation
        index, users in `targets` and other context kinds in `contextTargets`."""
        index = {v["_id"]: i for i, v in enumerate(self.variations)}
        values = [v.get("value") for v in self.variations]
        boolean = len(values) == 2 and {type(v) for v in values} == {bool}
        off = len(self.variations) - 1
        path = f"/api/v2/flags/{self.project}"

        def targets(environment: str, *, users: bool) -> list[dict[str, Any]]:
            return [
                {"variation": index[vid], "contextKind": kind, "values": list(keys)}
                for vid, kinds in self.targets.get(environment, {}).items()
                for kind, keys in kinds.items()
                if keys and (kind == "user") == users
            ]

        return {
            "key": self.key,
            "name": self.name,
            "kind": "boolean" if boolean else "multivariate",
            "description": "",
            "_version": 1,
            "creationDate": self.created_ms,
            "variations": copy.deepcopy(self.variations),
            "temporary": False,
            "tags": [],
            "archived": False,
            "deprecated": False,
            "includeInSnippet": False,
            "customProperties": {},
            "experiments": {"baselineIdx": 0, "items": []},
            "defaults": {"onVariation": 0, "offVariation": off},
            "_links": {
                "self": {"href": f"{path}/{self.key}", "type": "application/json"},
                "parent": {"href": path, "type": "application/json"},
            },
            "environments": {
                environment: {
                    "on": False,
                    "archived": False,
                    "salt": self.salt,
                    "sel": self.salt[::-1],
                    "lastModified": self.created_ms,
                    "version": 1,
                    "targets": targets(environment, users=True),
                    "contextTargets": targets(environment, users=False),
                    "rules": [],
                    "fallthrough": {"variation": 0},
                    "offVariation": off,
                    "prerequisites": [],
                    "_site": {
                        "href": f"/{self.project}/{environment}/features/{self.key}",
                        "type": "text/html",
                    },
                    "_environmentName": environment,
                    "trackEvents": False,
                    "trackEventsFallthrough": False,
                }
                for environment in environments
            },
        }

    def state_view(self) -> dict[str, Any]:
        """The flag in `GET /admin/state`: targets by variation id, with expiring targets."""
        return {
            "key": self.key,
            "name": self.name,
            "variations": self.variations,
            "environments": {
                env: {
                    "targets": [
                        {"variation": vid, "contextKind": kind, "values": list(keys)}
                        for vid, kinds in by_variation.items()
                        for kind, keys in kinds.items()
                        if keys
                    ],
                    "expiringTargets": [
                        e.item(self.resource_id(env)) for e in self.expiring.get(env, {}).values()
                    ],
                }
                for env, by_variation in self.targets.items()
            },
        }

    def resource_id(self, environment: str) -> dict[str, str]:
        return {
            "kind": "flag",
            "projectKey": self.project,
            "environmentKey": environment,
            "key": self.key,
            "flagKey": self.key,
        }


class Store:
    def __init__(self, clock: Callable[[], int]) -> None:
        """`clock`: now, in epoch milliseconds (the dates of representations)."""
        self.clock = clock
        self.environments: dict[str, set[str]] = {}
        self.segments: dict[tuple[str, str, str], Segment] = {}
        self.flags: dict[tuple[str, str], Flag] = {}

    # -- admin --------------------------------------------------------------------------------

    def seed(self, seed: SeedIn) -> None:
        for project in seed.projects:
            self.environments.setdefault(project.key, set()).update(project.environments)
        for segment in seed.segments:
            self.put_segment(segment)
        for flag in seed.flags:
            self.put_flag(flag)

    def put_segment(self, spec: SegmentIn) -> Segment:
        self.environments.setdefault(spec.projectKey, set()).add(spec.environmentKey)
        earlier = self.segments.get((spec.projectKey, spec.environmentKey, spec.key))
        segment = Segment(
            spec.projectKey,
            spec.environmentKey,
            spec.key,
            spec.name or spec.key,
            self.clock(),
            description=spec.description,
            tags=list(dict.fromkeys(spec.tags)),
            generation=earlier.generation + 1 if earlier is not None else 1,
            unbounded=spec.unbounded,
            context_kind=spec.unboundedContextKind,
        )
        for target_type, by_kind in (("included", spec.included), ("excluded", spec.excluded)):
            for kind, keys in by_kind.items():
                segment.targets[target_type][kind] = dict.fromkeys(keys)
        self.segments[(spec.projectKey, spec.environmentKey, spec.key)] = segment
        return segment

    def put_flag(self, spec: FlagIn) -> Flag:
        flag = Flag(
            spec.projectKey,
            spec.key,
            spec.name or spec.key,
            # `value` stays even when null: the official client's `Variation` requires it.
            [
                {"_id": v.id, "value": v.value, **({"name": v.name} if v.name else {})}
                for v in spec.variations
            ],
            self.clock(),
        )
        self.flags[(spec.projectKey, spec.key)] = flag
        for environment, targets in spec.targets.items():
            for target in targets:
                self.add_flag_targets(spec.projectKey, spec.key, environment, target)
        return flag

    def add_flag_targets(
        self, project: str, key: str, environment: str, spec: FlagTargetIn
    ) -> None:
        flag = self.flags.get((project, key))
        if flag is None:
            raise NotFoundError(f"unknown flag {project}/{key}")
        if spec.variationId not in flag.variation_ids():
            raise RequestRejected(f"unknown variation {spec.variationId}")
        self.environments.setdefault(project, set()).add(environment)
        by_kind = flag.targets.setdefault(environment, {}).setdefault(spec.variationId, {})
        by_kind.setdefault(spec.contextKind, {}).update(dict.fromkeys(spec.values))

    def add_segment_targets(
        self, project: str, environment: str, key: str, spec: SegmentTargetsIn
    ) -> None:
        segment = self.segment(project, environment, key)
        keys = segment.targets[spec.targetType].setdefault(spec.contextKind, {})
        if spec.remove:
            for value in spec.values:
                keys.pop(value, None)
        else:
            keys.update(dict.fromkeys(spec.values))
        segment.changed(self.clock())

    def snapshot(self) -> dict[str, Any]:
        return {
            "environments": {p: sorted(envs) for p, envs in self.environments.items()},
            "segments": [
                {
                    "projectKey": s.project,
                    "environmentKey": s.environment,
                    **s.representation(),
                    "expiringTargets": [e.item(s.resource_id()) for e in s.expiring.values()],
                    **(
                        {
                            "bigSegmentTargets": {
                                "included": list(s.big_members("included")),
                                "excluded": list(s.big_members("excluded")),
                            }
                        }
                        if s.unbounded
                        else {}
                    ),
                }
                for s in self.segments.values()
            ],
            "flags": [{"projectKey": f.project, **f.state_view()} for f in self.flags.values()],
        }

    # -- lookups ------------------------------------------------------------------------------

    def _environment(self, project: str, environment: str) -> None:
        if environment not in self.environments.get(project, set()):
            raise NotFoundError(f"unknown project or environment {project}/{environment}")

    def segment(self, project: str, environment: str, key: str) -> Segment:
        self._environment(project, environment)
        segment = self.segments.get((project, environment, key))
        if segment is None:
            raise NotFoundError(f"unknown segment {key}")
        return segment

    def segments_of(self, project: str, environment: str) -> list[Segment]:
        """An environment's segments, by key (the list endpoint's order)."""
        self._environment(project, environment)
        found = [s for (p, e, _), s in self.segments.items() if (p, e) == (project, environment)]
        return sorted(found, key=lambda s: s.key)

    def flag(self, project: str, environment: str, key: str) -> Flag:
        self._environment(project, environment)
        flag = self.flags.get((project, key))
        if flag is None:
            raise NotFoundError(f"unknown flag {key}")
        return flag

    # -- expiring targets (per instruction) ---------------------------------------------------

    def segment_expiring(
        self, segment: Segment, instruction: dict[str, Any], *, user_form: bool
    ) -> dict[str, Any] | None:
        kind = instruction["kind"]
        target_type = instruction["targetType"]
        context_kind = "user" if user_form else instruction["contextKind"]
        context_key = instruction["userKey"] if user_form else instruction["contextKey"]
        slot = (target_type, context_kind, context_key)
        current = segment.expiring.get(slot)
        label = f"{context_kind} '{context_key}'"
        if kind in {"addExpiringTarget", "addExpireUserTargetDate"}:
            if not segment.has_target(target_type, context_kind, context_key):
                raise InstructionFailed(
                    f"{label} is not an individual {target_type} target of segment '{segment.key}'"
                )
            if current is not None:
                raise InstructionFailed(f"{label} already has a scheduled removal")
            current = segment.expiring[slot] = Expiring(
                context_kind, context_key, instruction["value"], target_type=target_type
            )
            return current.item(segment.resource_id(), user_form=user_form)
        if current is None:
            raise InstructionFailed(f"{label} has no scheduled removal in segment '{segment.key}'")
        if kind in {"updateExpiringTarget", "updateExpireUserTargetDate"}:
            expected = segment.version if user_form else current.version
            version = instruction.get("version")
            if version is not None and version != expected:
                raise InstructionFailed(
                    f"version mismatch: current version is {expected}, got {version}"
                )
            current.value = instruction["value"]
            current.version += 1
            return current.item(segment.resource_id(), user_form=user_form)
        del segment.expiring[slot]
        return None

    def flag_expiring(
        self, flag: Flag, environment: str, instruction: dict[str, Any]
    ) -> dict[str, Any] | None:
        kind = instruction["kind"]
        variation = instruction["variationId"]
        context_kind, context_key = instruction["contextKind"], instruction["contextKey"]
        label = f"{context_kind} '{context_key}'"
        if variation not in flag.variation_ids():
            raise InstructionFailed(f"unknown variation '{variation}' on flag '{flag.key}'")
        scheduled = flag.expiring.setdefault(environment, {})
        current = scheduled.get((context_kind, context_key))
        if kind == "addExpiringTarget":
            targeted = flag.targets.get(environment, {}).get(variation, {}).get(context_kind, {})
            if context_key not in targeted:
                raise InstructionFailed(
                    f"{label} is not an individual target of variation '{variation}'"
                )
            if current is not None:
                raise InstructionFailed(f"{label} already has a scheduled removal on this flag")
            current = scheduled[(context_kind, context_key)] = Expiring(
                context_kind, context_key, instruction["value"], variation_id=variation
            )
            return current.item(flag.resource_id(environment))
        if current is None or current.variation_id != variation:
            raise InstructionFailed(f"{label} has no scheduled removal on variation '{variation}'")
        if kind == "updateExpiringTarget":
            version = instruction.get("version")
            if version is not None and version != current.version:
                raise InstructionFailed(
                    f"version mismatch: current version is {current.version}, got {version}"
                )
            current.value = instruction["value"]
            current.version += 1
            return current.item(flag.resource_id(environment))
        del scheduled[(context_kind, context_key)]
        return None

    # -- the segment semantic PATCH (all or nothing) ------------------------------------------

    def patch_segment(self, segment: Segment, instructions: list[dict[str, Any]]) -> None:
        if any(i["kind"] != "updateName" for i in instructions):
            require_kind(segment, big=False)
        operations = sum(len(i.get("values") or []) for i in instructions)
        if operations > MAX_SEGMENT_TARGET_OPERATIONS:
            raise RequestRejected(
                f"too many target operations: {operations}"
                f" (at most {MAX_SEGMENT_TARGET_OPERATIONS})"
            )
        targets = copy.deepcopy(segment.targets)
        expiring = dict(segment.expiring)
        name = segment.name
        for instruction in instructions:
            kind = instruction["kind"]
            if kind == "updateName":
                name = instruction["value"]
                continue
            verb = "add" if kind.startswith("add") else "remove"
            side = "included" if "Included" in kind else "excluded"
            other = "excluded" if side == "included" else "included"
            context_kind = "user" if kind.endswith("Users") else instruction["contextKind"]
            keys = targets[side].setdefault(context_kind, {})
            for key in instruction["values"]:
                if verb == "add":
                    if key in targets[other].get(context_kind, {}):
                        raise RequestRejected(
                            f"{context_kind} '{key}' cannot be both included and excluded"
                        )
                    keys[key] = None
                else:
                    keys.pop(key, None)
                    expiring.pop((side, context_kind, key), None)
        segment.targets = targets
        segment.expiring = expiring
        segment.name = name
        segment.changed(self.clock())

    # -- big segments ---------------------------------------------------------------------------

    def update_big_segment(self, segment: Segment, body: Any, *, users: bool) -> None:
        """`POST .../contexts` (`users`: `.../users`): a `SegmentUserState`, all or nothing."""
        require_kind(segment, big=True)
        if users and segment.context_kind != "user":
            raise RequestRejected(
                f"segment '{segment.key}' is a big segment of {segment.context_kind} contexts,"
                " not of users"
            )
        lists = _segment_user_state(body)
        total = sum(len(keys) for keys in lists.values())
        if total > MAX_SEGMENT_TARGET_OPERATIONS:
            raise RequestRejected(
                f"too many keys: {total} (at most {MAX_SEGMENT_TARGET_OPERATIONS})"
            )
        for side in ("included", "excluded"):
            both = set(lists.get((side, "add"), [])) & set(lists.get((side, "remove"), []))
            if both:
                raise RequestRejected(
                    f"keys both added to and removed from {side}: {sorted(both)[:5]}"
                )
        for (side, verb), keys in lists.items():
            members = segment.big_members(side)
            for key in keys:
                if verb == "add":
                    members[key] = None
                else:
                    members.pop(key, None)
        segment.changed(self.clock())

    def big_membership(self, segment: Segment, key: str, *, users: bool) -> dict[str, Any]:
        """The membership read of one context (`users`: of one user) in a big segment."""
        require_kind(segment, big=True)
        if users and segment.context_kind != "user":
            raise RequestRejected(f"segment '{segment.key}' is not a big segment of users")
        return {
            "userKey": key,
            "included": key in segment.big_members("included"),
            "excluded": key in segment.big_members("excluded"),
        }


def require_kind(segment: Segment, *, big: bool) -> None:
    """What a target write meant for the other kind of segment does: 400, never applied.

    The Segments page says the big-segment endpoints do "not support standard segments"; the
    segment PATCH's target instructions are documented for standard segments only. The safer
    reading both ways is a refusal (nothing applied, the writer told), not a silent success.
    """
    if segment.unbounded and not big:
        raise RequestRejected(
            f"segment '{segment.key}' is a big segment: change its targets through"
            " POST .../contexts or .../users"
        )
    if big and not segment.unbounded:
        raise RequestRejected(
            f"segment '{segment.key}' is a standard segment: this operation does not support"
            " standard segments"
        )


def _segment_user_state(body: Any) -> dict[tuple[str, str], list[str]]:
    if not isinstance(body, dict) or set(body) - {"included", "excluded"}:
        raise RequestRejected("the body must be a SegmentUserState: included and/or excluded")
    lists: dict[tuple[str, str], list[str]] = {}
    for side, user_list in body.items():
        if not isinstance(user_list, dict) or set(user_list) - {"add", "remove"}:
            raise RequestRejected(f"{side} must be an object with add and/or remove")
        for verb, keys in user_list.items():
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise RequestRejected(f"{side}.{verb} must be a list of keys")
            lists[(side, verb)] = keys
    return lists
