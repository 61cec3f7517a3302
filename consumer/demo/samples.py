"""Sample events for the demo and `examples/`: every instruction kind, good and bad.

They fit the simulator's sample seed (`simulator/sample_seed.json`), and each carries the status
it should end with, so the demo can show that what happened is what was meant to happen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consumer.contract.events import record_key

PROJECT = "demo"
ENV = "production"
ON = "6f0b5f5e-0c57-4d1a-9d3e-0000000000a1"
OFF = "6f0b5f5e-0c57-4d1a-9d3e-0000000000b2"
FRIDAY = 1_798_761_600_000  # 2027-01-01T00:00:00Z, in Unix milliseconds


@dataclass(frozen=True)
class Sample:
    key: bytes | None
    value: bytes
    expected: str
    note: str


class _Builder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def event(
        self,
        kind: str,
        key: str,
        instruction: dict[str, Any],
        expected: str,
        note: str,
        *,
        env: str = ENV,
        comment: str | None = None,
    ) -> None:
        event: dict[str, Any] = {
            "eventId": f"demo-{len(self.samples) + 1:03d}",
            "projectKey": PROJECT,
            "environmentKey": env,
            "resource": {"kind": kind, "key": key},
            "instruction": instruction,
        }
        if comment:
            event["comment"] = comment
        self.samples.append(Sample(record_key(event), json.dumps(event).encode(), expected, note))

    def raw(self, value: bytes, note: str, key: bytes | None = b"demo/bad") -> None:
        self.samples.append(Sample(key, value, "invalid", note))


def demo_samples() -> list[Sample]:
    b = _Builder()
    ticket = "rollout plan RP-42"
    # Segment expiring targets (contexts): schedule, update, remove.
    for i in range(1, 26):
        b.event(
            "segment",
            "beta-users",
            {
                "kind": "addExpiringTarget",
                "targetType": "included",
                "contextKey": f"user-{i}",
                "contextKind": "user",
                "value": FRIDAY + i,
            },
            "succeeded",
            "schedule removal",
            comment=ticket,
        )
    for i in range(1, 4):
        b.event(
            "segment",
            "beta-users",
            {
                "kind": "updateExpiringTarget",
                "targetType": "included",
                "contextKey": f"user-{i}",
                "contextKind": "user",
                "value": FRIDAY + 86_400_000,
                "version": 1,
            },
            "succeeded",
            "move removal date (version 1)",
        )
    b.event(
        "segment",
        "beta-users",
        {
            "kind": "updateExpiringTarget",
            "targetType": "included",
            "contextKey": "user-1",
            "contextKind": "user",
            "value": FRIDAY,
            "version": 1,
        },
        "rejected",
        "stale version",
        comment="second update with an old version",
    )
    for i in range(4, 7):
        b.event(
            "segment",
            "beta-users",
            {
                "kind": "removeExpiringTarget",
                "targetType": "included",
                "contextKey": f"user-{i}",
                "contextKind": "user",
            },
            "succeeded",
            "cancel removal",
        )
    b.event(
        "segment",
        "beta-users",
        {
            "kind": "addExpiringTarget",
            "targetType": "included",
            "contextKey": "stranger",
            "contextKind": "user",
            "value": FRIDAY,
        },
        "rejected",
        "not an individual target",
    )
    # Segment expiring user targets (the legacy user form).
    for i in range(1, 10):
        b.event(
            "segment",
            "legacy-beta",
            {
                "kind": "addExpireUserTargetDate",
                "targetType": "included",
                "userKey": f"legacy-{i}",
                "value": FRIDAY,
            },
            "succeeded",
            "schedule removal (user form)",
        )
    b.event(
        "segment",
        "legacy-beta",
        {
            "kind": "updateExpireUserTargetDate",
            "targetType": "included",
            "userKey": "legacy-1",
            "value": FRIDAY + 1,
            "version": 1,
        },
        "succeeded",
        "move removal date (segment version 1)",
    )
    b.event(
        "segment",
        "legacy-beta",
        {"kind": "removeExpireUserTargetDate", "targetType": "included", "userKey": "legacy-2"},
        "succeeded",
        "cancel removal (user form)",
    )
    b.event(
        "segment",
        "legacy-beta",
        {"kind": "removeExpireUserTargetDate", "targetType": "included", "userKey": "legacy-10"},
        "rejected",
        "nothing scheduled",
    )
    # Flag expiring targets.
    for i in range(1, 21):
        b.event(
            "flag",
            "new-checkout",
            {
                "kind": "addExpiringTarget",
                "variationId": ON,
                "contextKey": f"user-{i}",
                "contextKind": "user",
                "value": FRIDAY,
            },
            "succeeded",
            "schedule flag target removal",
        )
    b.event(
        "flag",
        "new-checkout",
        {
            "kind": "updateExpiringTarget",
            "variationId": ON,
            "contextKey": "user-1",
            "contextKind": "user",
            "value": FRIDAY + 5,
        },
        "succeeded",
        "move flag removal date",
    )
    b.event(
        "flag",
        "new-checkout",
        {
            "kind": "removeExpiringTarget",
            "variationId": ON,
            "contextKey": "user-2",
            "contextKind": "user",
        },
        "succeeded",
        "cancel flag removal",
    )
    b.event(
        "flag",
        "new-checkout",
        {
            "kind": "addExpiringTarget",
            "variationId": OFF,
            "contextKey": "user-3",
            "contextKind": "user",
            "value": FRIDAY,
        },
        "rejected",
        "targeted on another variation",
    )
    # Segment targets (all-or-nothing PATCH): one conflicting instruction among good ones.
    for i in range(1, 9):
        b.event(
            "segment",
            "enterprise-orgs",
            {
                "kind": "addIncludedTargets",
                "contextKind": "org",
                "values": [f"org-{i}a", f"org-{i}b"],
            },
            "succeeded",
            "add org targets",
            comment="sales sync",
        )
    b.event(
        "segment",
        "enterprise-orgs",
        {"kind": "addIncludedTargets", "contextKind": "org", "values": ["org-banned"]},
        "rejected",
        "included and excluded at once",
    )
    for verb, side, expected in (
        ("remove", "Included", "succeeded"),
        ("add", "Excluded", "succeeded"),
        ("remove", "Excluded", "succeeded"),
    ):
        b.event(
            "segment",
            "enterprise-orgs",
            {"kind": f"{verb}{side}Targets", "contextKind": "org", "values": ["org-7a"]},
            expected,
            f"{verb} {side.lower()} org",
        )
    for verb, side in (
        ("add", "Included"),
        ("add", "Excluded"),
        ("remove", "Included"),
        ("remove", "Excluded"),
    ):
        b.event(
            "segment",
            "beta-users",
            {"kind": f"{verb}{side}Users", "values": [f"{verb}-{side.lower()}-user"]},
            "succeeded",
            f"{verb} {side.lower()} user",
        )
    b.event(
        "segment",
        "enterprise-orgs",
        {"kind": "updateName", "value": "Enterprise organisations"},
        "succeeded",
        "rename the segment",
    )
    for i in range(1, 6):
        b.event(
            "segment",
            "beta-users",
            {"kind": "addIncludedTargets", "contextKind": "device", "values": [f"device-{i}"]},
            "succeeded",
            "add device target",
            env="staging",
        )
    # A big segment (the simulator's sample seed marks it `unbounded`): the same target events
    # go to POST .../contexts, merged into a few requests.
    for i in range(1, 13):
        b.event(
            "segment",
            "vip-accounts",
            {
                "kind": "addIncludedTargets",
                "contextKind": "account",
                "values": [f"acct-{i}", f"acct-{i + 100}"],
            },
            "succeeded",
            "add accounts to a big segment",
            comment="CRM sync",
        )
    b.event(
        "segment",
        "vip-accounts",
        {"kind": "removeIncludedTargets", "contextKind": "account", "values": ["acct-legacy-1"]},
        "succeeded",
        "remove an account from a big segment",
    )
    b.event(
        "segment",
        "vip-accounts",
        {"kind": "addExcludedTargets", "contextKind": "account", "values": ["acct-7"]},
        "succeeded",
        "exclude an account from a big segment",
    )
    b.event(
        "segment",
        "vip-accounts",
        {"kind": "addIncludedUsers", "values": ["user-1"]},
        "rejected",
        "users on a big segment of accounts (context_kind_mismatch)",
    )
    # Resources that do not exist.
    b.event(
        "segment",
        "no-such-segment",
        {"kind": "addIncludedUsers", "values": ["someone"]},
        "rejected",
        "unknown segment (404)",
    )
    b.event(
        "flag",
        "no-such-flag",
        {
            "kind": "removeExpiringTarget",
            "variationId": ON,
            "contextKey": "user-1",
            "contextKind": "user",
        },
        "rejected",
        "unknown flag (404)",
    )
    # Records that are not valid events.
    b.raw(b"\xff\xfe not utf-8", "not UTF-8")
    b.raw(b'{"eventId": ', "not JSON")
    b.raw(b"[1, 2, 3]", "an array")
    b.raw(
        json.dumps(
            {
                "eventId": "bad-kind",
                "projectKey": PROJECT,
                "environmentKey": ENV,
                "resource": {"kind": "segment", "key": "beta-users"},
                "instruction": {"kind": "deleteEverything"},
            }
        ).encode(),
        "unknown instruction kind",
    )
    b.raw(
        json.dumps(
            {
                "eventId": "typo",
                "projectKey": PROJECT,
                "environmentKey": ENV,
                "resource": {"kind": "segment", "key": "beta-users"},
                "instruction": {
                    "kind": "removeExpiringTarget",
                    "targetType": "included",
                    "contextkey": "user-1",
                    "contextKind": "user",
                },
            }
        ).encode(),
        "unknown field (typo)",
    )
    b.raw(
        json.dumps(
            {
                "eventId": "path-escape",
                "projectKey": PROJECT,
                "environmentKey": ENV,
                "resource": {"kind": "segment", "key": "../../flags"},
                "instruction": {"kind": "addIncludedUsers", "values": ["x"]},
            }
        ).encode(),
        "key that would change the URL path",
    )
    b.raw(
        json.dumps(
            {
                "eventId": "wrong-type",
                "projectKey": PROJECT,
                "environmentKey": ENV,
                "resource": {"kind": "flag", "key": "new-checkout"},
                "instruction": {
                    "kind": "addExpiringTarget",
                    "variationId": ON,
                    "contextKey": "user-5",
                    "contextKind": "user",
                    "value": "next friday",
                },
            }
        ).encode(),
        "wrong type",
    )
    return b.samples
