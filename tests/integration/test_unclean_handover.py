"""A request on the wire when its member freezes (SIGSTOP past the session) may land after the
partition's new owner has sent a later change for the same resource. The lapse rule
(membership.py) only stops new requests of the frozen member; the new owner waits when the
last commit says its owner may still have requests landing (handover.py). Found by a red-team
pass: without the handover mark, the frozen member's "add k" landed after the new owner's
"remove k" (3 of 3 runs)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    make_settings,
    outcomes_covering,
    produce,
    running,
    seed,
    start_process,
)

pytestmark = pytest.mark.slow

SEG = "s"
LATENCY_MS = 7_000  # the frozen member's request is slow (within its request timeout)


def event(kind: str, key: str) -> bytes:
    return encode(event_dict("segment", kind, key=SEG, project=PROJECT, env=ENV, values=[key]))


async def members(admin: SimulatorAdmin) -> set[str]:
    [segment] = (await admin.state())["segments"]
    found = set(segment.get("included") or [])
    for entry in segment.get("includedContexts") or []:
        found.update(entry["values"])
    return found


async def test_a_request_on_the_wire_at_a_freeze_never_lands_after_the_new_owners(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={SEG: {}}))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        ld_request_timeout_ms=9_000,
        ld_unknown_outcome_settle_ms=500,
        consumer_revoke_timeout_ms=10_000,
        kafka_rebalance_timeout_ms=13_000,
        consumer_shutdown_timeout_ms=12_000,
    )
    await create_topics(settings, partitions=1)
    for _ in range(10):  # a fresh broker may not have a group coordinator yet
        frozen = await start_process(settings, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(frozen.wait(), 5)
        except TimeoutError:
            break
    try:
        warm = await produce(settings, [(None, event("addIncludedTargets", "warm"), [])])
        await outcomes_covering(settings, warm)  # the first member owns the partition
        await admin.set_faults(latency_ms=[LATENCY_MS, LATENCY_MS])
        await admin.clear_requests()
        await produce(settings, [(None, event("addIncludedTargets", "k"), [])])  # E1
        deadline = time.monotonic() + 20
        while not [r for r in await admin.requests() if r["method"] == "PATCH"]:
            assert time.monotonic() < deadline, "E1 never sent"
            await asyncio.sleep(0.02)
        frozen.send_signal(signal.SIGSTOP)  # E1 is on the wire, applied in LATENCY_MS
        frozen_at = time.monotonic()
        await admin.set_faults(latency_ms=[0, 0])
        ends = await produce(settings, [(None, event("removeIncludedTargets", "k"), [])])  # E2
        async with running(settings) as steady:  # the group hands the partition over
            await outcomes_covering(settings, ends, timeout=60)
            handed_over = time.monotonic() - frozen_at
            await asyncio.sleep(max(0.0, LATENCY_MS / 1000 + 1 - (time.monotonic() - frozen_at)))
            final = await members(admin)
            await steady.shutdown()
    finally:
        if frozen.returncode is None:
            frozen.kill()
        await frozen.wait()
    assert "k" not in final, (
        f"E2 (remove k) was the last change, applied by the new owner {handed_over:.1f}s after"
        f" the freeze; the frozen member's E1 (add k), on the wire, landed after it: {final}"
    )
