"""Assignment and revoke (rebalancing.py) in a service made of fakes: a grant runs outside
aiokafka's callback, a revoke cancels it, a partition without a position does not hold the
others up, and a stop grants nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from consumer.service import rebalancing as app
from consumer.service.lifecycle import Service
from consumer.service.rebalancing import Rebalancing, cancelled
from consumer.service.wiring import build
from consumer.settings import Settings
from tests.factories import FetchedRecord, until
from tests.unit.test_pipeline import Publisher

P0, P1, P2 = (TopicPartition("in", p) for p in range(3))


class Consumer:
    """What the lifecycle asks of the aiokafka consumer during a rebalance."""

    def __init__(self, positions: dict[TopicPartition, int | None]) -> None:
        self.positions = positions  # None: never known (no leader, say)
        self.paused_tps: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.asking = 0  # position() calls under way

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    async def position(self, tp: TopicPartition) -> int:
        self.asking += 1
        try:
            while (known := self.positions[tp]) is None:  # aiokafka waits for it, too
                await asyncio.sleep(0.01)
            return known
        finally:
            self.asking -= 1

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: getattr(o, "offset", o) for tp, o in offsets.items()})

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


SETTINGS = Settings(
    ld_api_token="api-test",  # type: ignore[arg-type]
    consumer_http_port=0,
    consumer_recovery_lookback_ms=-1,  # no scan: nothing here reaches a broker
)
Make = Callable[[Consumer], Service]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """A service around this consumer (no Kafka client, no HTTP session is made)."""
    made: list[Service] = []

    def service(consumer: Consumer) -> Service:
        parts = build(SETTINGS, consumer=consumer, publisher=Publisher())  # type: ignore[arg-type]
        made.append(Service(parts))
        return made[-1]

    yield service
    await cancelled(*(service.rebalancing.granting for service in made))


async def test_the_callback_pauses_and_returns_the_grant_follows(make: Make) -> None:
    consumer = Consumer({P0: 5, P1: 9})
    service = make(consumer)
    # Returns at once: aiokafka heartbeats again.
    await service.rebalancing.on_partitions_assigned({P0, P1})
    assert consumer.paused_tps == {P0, P1}
    await until(lambda: service.assigned == {P0, P1})
    assert [(lease.tp, lease.next) for lease in service.leases.active()] == [(P0, 5), (P1, 9)]


async def test_a_revoke_during_the_grant_grants_nothing(make: Make) -> None:
    consumer = Consumer({P0: None})  # the grant is stuck on its position
    service = make(consumer)
    await service.rebalancing.on_partitions_assigned({P0})
    await until(lambda: consumer.asking == 1)  # the grant waits for P0's position
    await service.rebalancing.on_partitions_revoked({P0})
    granting = service.rebalancing.granting
    assert granting is not None and granting.done()
    await until(lambda: consumer.asking == 0)  # and its read of the position ended
    consumer.positions[P0] = 3  # too late: nothing is left to take it
    assert service.assigned == set() and service.leases.all() == []


async def test_a_partition_without_a_position_does_not_hold_the_others_up(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "POSITION_WAIT", 0.1)
    consumer = Consumer({P0: 1, P1: None, P2: 2})
    service = make(consumer)
    await service.rebalancing.on_partitions_assigned({P0, P1, P2})
    await until(lambda: service.assigned == {P0, P2})
    consumer.positions[P1] = 7  # known at last: granted too
    await until(lambda: service.assigned == {P0, P1, P2})
    assert service.leases.get(P1) is not None and service.leases.get(P1).next == 7  # type: ignore[union-attr]


async def test_nothing_is_granted_once_the_service_stops() -> None:
    consumer = Consumer({P0: 0})
    parts = build(SETTINGS, consumer=consumer, publisher=Publisher())  # type: ignore[arg-type]

    async def commit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing to commit")

    rebalancing = Rebalancing(
        parts.consumer,
        parts.leases,
        parts.membership,
        parts.pipeline,
        parts.recovery,
        parts.vitals,
        commit=commit,
        released=lambda tps: None,
        stopping=lambda: True,
        revoke_timeout=1.0,
        commit_timeout=1.0,
        handover_wait=0.0,
    )
    await rebalancing.on_partitions_assigned({P0})
    # No grant started: none can come later.
    assert consumer.paused_tps == {P0} and rebalancing.granting is None
    assert parts.leases.all() == []


async def test_a_kept_partition_sharing_a_stopped_batch_is_rewound(make: Make) -> None:
    """Rule 5: records of a kept partition in a batch stopped by a revoke are taken again."""
    consumer = Consumer({P0: 0, P1: 4})
    service = make(consumer)
    await service.rebalancing.on_partitions_assigned({P0, P1})
    await until(lambda: service.assigned == {P0, P1})
    kept = service.leases.get(P1)
    assert kept is not None
    for tp, offset in ((P0, 0), (P1, 4)):  # one URL, two partitions: one batch
        lease = service.leases.get(tp)
        assert lease is not None
        service.pipeline.accept(lease, [FetchedRecord(tp, offset, "shared")], offset, 0.0, None)
    # Launched by hand: the dispatch would not cut it while the gate is closed, but a retry
    # can wait there (the gate closed after its first request).
    [batch] = service.pipeline.batcher.ready(now=1.0, limit=1)
    service.pipeline._launch(batch, None)
    dispatch = asyncio.create_task(service.pipeline.dispatch())
    await until(lambda: service.pipeline.sending == 1)  # waiting at the gate, not on the wire
    await service.rebalancing.on_partitions_revoked({P0})
    rewound = service.leases.get(P1)
    assert rewound is not None and rewound is not kept and rewound.next == 4
    assert consumer.seeks[-1] == (P1, 4) and service.assigned == {P1}  # after the grants
    dispatch.cancel()
    await service.pipeline.cancel_all()
