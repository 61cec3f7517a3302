"""A broker restarted without its data under a running consumer (Tansu's memory storage does
this; so does a topic deleted and re-created): the members' positions are now beyond the
log. Nothing may be skipped: no position beyond the log is committed, and a lease beyond it
starts again where CONSUMER_AUTO_OFFSET_RESET says (leases.py, rule 2b). The old code committed
its old positions into the new group and skipped that many new records for good."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from consumer.contract.events import record_key
from consumer.contract.outcomes import Outcome, Status
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TansuBroker, free_port
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    Message,
    create_topics,
    make_settings,
    produce,
    running,
    seed,
)

pytestmark = pytest.mark.slow


def _event_ids(records: list[Any]) -> set[str]:
    return {json.loads(r.value)["eventId"] for r in records}


def _events(prefix: str, count: int) -> list[Message]:
    found = [
        event_dict(
            key=f"s{i % 4}",
            project=PROJECT,
            env=ENV,
            values=[f"{prefix}{i}"],
            event_id=f"{prefix}{i}",
        )
        for i in range(count)
    ]
    return [(record_key(e), encode(e), []) for e in found]


async def test_a_broker_restarted_empty_under_a_stream_skips_no_record(
    simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(4)}))
    port = free_port()
    broker = TansuBroker(port)
    broker.start()
    try:
        settings = make_settings(f"127.0.0.1:{port}", simulator.base_url, on_tansu=True)
        await create_topics(settings, partitions=4)
        async with running(settings) as handle:
            before = await produce(settings, _events("old", 400))
            # Slow requests: batches of the old log are on the wire when the broker goes, and
            # their outcomes and commits reach the new, empty broker.
            await admin.set_faults(latency_ms=[1_000, 1_500])
            await asyncio.sleep(2)
            broker.stop()
            broker = TansuBroker(port)
            broker.start()  # empty: no topics, records, groups or offsets
            # Tansu auto-creates a topic asked about with 4 partitions: the same count.
            await create_topics(settings, partitions=4)
            await asyncio.sleep(4)  # the old batches end meanwhile
            await admin.set_faults()
            after = await produce(settings, _events("new", 120))
            assert all(after[tp] < before[tp] for tp in after)  # the new log is shorter
            # Outcomes of the old log's last batches land in the new results topic too (they
            # name old offsets): wait for the new records' own, by event id.
            wanted = {f"new{i}" for i in range(120)}
            records = await kafka.read_topic(
                settings,
                settings.consumer_results_topic,
                until=lambda found: wanted <= _event_ids(found),
                timeout=90,
            )
            assert not handle.task.done()
        results = [Outcome.model_validate_json(r.value) for r in records]
        new = [o for o in results if o.eventId in wanted]
        missing = wanted - {o.eventId for o in new}
        assert not missing, f"{len(missing)} new records skipped"
        assert {o.status for o in new} == {Status.SUCCEEDED}
        applied = set()
        for segment in (await admin.state())["segments"]:
            for target in segment.get("includedContexts") or []:
                applied.update(target["values"])
            applied.update(segment.get("included") or [])
        assert {f"new{i}" for i in range(120)} <= applied
    finally:
        broker.stop()
