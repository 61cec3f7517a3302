"""A consumer killed mid-stream and started again: every record ends with an outcome, and only
what was in flight at the kill is applied twice."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

from consumer.contract.events import record_key
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    committed,
    create_topics,
    make_settings,
    outcomes,
    outcomes_covering,
    produce,
    running,
    seed,
    start_process,
)


def applied_values(requests: list[dict[str, Any]]) -> Counter[str]:
    """How many successful requests carried each key (every event adds a unique key)."""
    seen: Counter[str] = Counter()
    for request in requests:
        if request["method"] == "PATCH" and request["status"] == 200:
            for instruction in request["body"]["instructions"]:
                seen.update(instruction["values"])
    return seen


async def test_sigkill_mid_stream_then_restart_repeats_at_most_the_in_flight(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    keys, total, batch, in_flight = 20, 400, 5, 4
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    await admin.set_faults(latency_ms=[40, 120])
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=batch,
        consumer_max_in_flight_requests=in_flight,
        consumer_batch_linger_ms=20,
    )
    await create_topics(settings, partitions=4)
    events = [
        event_dict(key=f"s{i % keys}", project=PROJECT, env=ENV, values=[f"v{i}"])
        for i in range(total)
    ]
    ends = await produce(settings, [(record_key(e), encode(e), []) for e in events])
    # The first process never commits: after the kill, every record it finished comes back
    # from Kafka, and only the results topic can tell that it was done.
    process = await start_process(settings, CONSUMER_COMMIT_INTERVAL_MS="600000")
    try:
        before = await outcomes(settings, 120, timeout=60)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert len(before) >= 120
    # Nothing committed past where each partition started (the grant's handover mark).
    assert set((await committed(settings, list(ends))).values()) <= {0}
    async with running(settings) as handle:
        await outcomes_covering(settings, ends)
        await asyncio.sleep(1.0)  # let stray duplicates, if any, arrive
        results = await outcomes_covering(settings, ends)
        skipped = handle.service.pipeline.skipped_already_done
        await handle.shutdown()
    per_record = Counter((o.source.partition, o.source.offset) for o in results)
    expected = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
    assert set(per_record) == expected  # every record has an outcome
    repeated_outcomes = sum(n - 1 for n in per_record.values())
    applied = applied_values(await admin.requests())
    assert set(applied) == {f"v{i}" for i in range(total)}
    repeated = sum(n - 1 for n in applied.values())
    # The README's bound: batches with a request under way, and as many again publishing
    # their outcomes, can be applied without an outcome to show for it.
    bound = 2 * in_flight * batch
    assert skipped >= len(before) - bound  # recovery found what was done
    assert repeated <= bound, f"{repeated} instructions applied twice"
    assert repeated_outcomes <= bound
    assert await committed(settings, list(ends)) == ends
