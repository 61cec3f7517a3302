"""Chains of changes whose order can be checked against the simulator's final state.

Each target (a user in a segment) gets `addExpiringTarget` once, then `updateExpiringTarget`
events with rising values. Applied in order, every target's scheduled removal ends at the
value of its last event; a lost event, or an older change landing after a newer one, leaves
another value. Updates carry no `version`, so applying one again changes nothing: repeats
(allowed, at least once) pass the check, reorders do not.

Used by the churn test and `bench/soak.py --churn`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from consumer.contract.events import record_key

PROJECT, ENVIRONMENT = "chains", "production"
BASE_VALUE = 1_900_000_000_000  # epoch ms, far enough ahead to stay a valid expiry


@dataclass(frozen=True, slots=True, order=True)
class Target:
    segment: str
    user: str


def targets(segments: int, per_segment: int) -> list[Target]:
    return [Target(f"chain-s{s}", f"u{u}") for s in range(segments) for u in range(per_segment)]


def seed(found: list[Target]) -> dict[str, Any]:
    """Simulator seed: every target an included user of its segment."""
    users: dict[str, list[str]] = {}
    for target in found:
        users.setdefault(target.segment, []).append(target.user)
    return {
        "projects": [{"key": PROJECT, "environments": [ENVIRONMENT]}],
        "segments": [
            {
                "projectKey": PROJECT,
                "environmentKey": ENVIRONMENT,
                "key": segment,
                "included": {"user": keys},
            }
            for segment, keys in users.items()
        ],
    }


def event(target: Target, step: int, event_id: str) -> dict[str, Any]:
    """Step 0 adds the target's scheduled removal; step n > 0 moves it to a later value."""
    instruction: dict[str, Any] = {
        "kind": "addExpiringTarget" if step == 0 else "updateExpiringTarget",
        "targetType": "included",
        "contextKey": target.user,
        "contextKind": "user",
        "value": BASE_VALUE + step,
    }
    return {
        "eventId": event_id,
        "projectKey": PROJECT,
        "environmentKey": ENVIRONMENT,
        "resource": {"kind": "segment", "key": target.segment},
        "instruction": instruction,
    }


def rounds(
    found: list[Target], first_step: int, last_step: int, prefix: str = "chain"
) -> Iterator[tuple[Target, int, bytes, dict[str, Any]]]:
    """(target, step, record key, event) for steps first..last, one round over all targets
    per step, so each target's events come in rising order."""
    for step in range(first_step, last_step + 1):
        for target in found:
            built = event(target, step, f"{prefix}-{target.segment}-{target.user}-{step}")
            yield target, step, record_key(built), built


def stale(state: dict[str, Any], expected: dict[Target, int]) -> dict[Target, int | None]:
    """Targets whose scheduled removal in the simulator's state (`/admin/state`) is not
    `BASE_VALUE + expected step`: target -> the step found (None: no scheduled removal)."""
    found: dict[Target, int | None] = {}
    for segment in state["segments"]:
        for item in segment.get("expiringTargets", []):
            target = Target(segment["key"], item["contextKey"])
            if target in expected:
                found[target] = item["expirationDate"] - BASE_VALUE
    return {
        target: found.get(target) for target, step in expected.items() if found.get(target) != step
    }
