"""The pipeline without a broker: an in-memory sender and publisher. The commit order, task
bookkeeping that survives cancellation at any point, and what a revoke stops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from consumer.contract.outcomes import InstructionResult, OutcomeMessage, results_from_body
from consumer.launchdarkly.routing import Route
from consumer.launchdarkly.throttle import Permit, Window
from consumer.service.batcher import Batch, Batcher
from consumer.service.deadline import Deadline
from consumer.service.leases import Lease, Leases
from consumer.service.metrics import Metrics
from consumer.service.pipeline import Pipeline
from consumer.service.publisher import Refused
from consumer.service.records import ConsumedRecord
from consumer.service.slots import Hold
from tests.factories import FetchedRecord, until

P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class Sender:
    """Holds each batch until released, then answers it; `wire` says which are 'on the wire'
    (a real sender would not start a request for a batch that is not live)."""

    def __init__(self) -> None:
        self.sent: list[Batch] = []
        self.answer: dict[str, asyncio.Event] = {}
        self.wire: set[str] = set()
        # Late binding: seconds until a route may go (missing: now); the permits handed out
        # and those given back.
        self.delays: dict[str, float | None] = {}
        self.asked: list[str] = []  # the paths whose delay the dispatch asked, in order
        self.units: dict[str, int | None] = {}  # what each route's budget has left
        self.granted: list[Permit] = []
        self.released: set[int] = set()
        # Paths whose batches wait in a backoff (slot given back) until `backoff_over`.
        self.failing: set[str] = set()
        self.backoff_over = asyncio.Event()

    def admitted_on(self, route: Route) -> str:
        return route.path

    def delay(self, route: Route) -> float | None:
        self.asked.append(route.path)
        return self.delays.get(route.path, 0.0)

    def window(self, route: Route) -> Window:
        return Window(self.units.get(route.path), None)

    def grant(self, route: Route, waited: float) -> Permit:
        permit = Permit(len(self.granted) + 1, waited)
        self.granted.append(permit)
        return permit

    def release(self, permit: Permit | None) -> None:
        if permit is not None:
            self.released.add(permit.seq)

    async def send(
        self, batch: Batch, permit: Permit | None = None, hold: Hold | None = None
    ) -> list[InstructionResult | None]:
        assert permit is not None and permit.seq not in self.released
        assert hold is not None and hold.held
        self.sent.append(batch)
        gate = self.answer.setdefault(batch.id, asyncio.Event())
        if batch.path in self.failing:  # a backoff: the slot is given back meanwhile
            async with hold.waiting():
                await self.backoff_over.wait()
        await gate.wait()
        self.wire.discard(batch.id)
        return list(
            results_from_body(
                batch.id,
                batch.items,
                {},
                http_status=200,
                attempts=[1] * len(batch),
                per_instruction_errors=False,
            )
        )

    def requesting(self, batch_id: str) -> bool:
        return batch_id in self.wire


class Publisher:
    def __init__(self) -> None:
        self.published: list[tuple[ConsumedRecord, OutcomeMessage]] = []
        self.hold: asyncio.Event | None = None
        self.calls = 0  # publish() entered, held or not
        self.refuse: set[int] = set()  # offsets whose dead-letter copy is "too large"

    async def publish(
        self, pairs: Sequence[tuple[ConsumedRecord, OutcomeMessage]]
    ) -> list[Refused]:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        refused = [Refused(r, "too large") for r, _ in pairs if r.offset in self.refuse]
        self.published.extend((r, o) for r, o in pairs if r.offset not in self.refuse)
        return refused


def pipeline_with(sender: Sender, publisher: Publisher, *, batch: int = 10) -> Pipeline:
    return Pipeline(
        Batcher(max_size=batch, linger=0.0),
        sender,
        publisher,
        Metrics(),
        max_in_flight=4,
    )


def take(pipeline: Pipeline, lease: Lease, offsets: range, segment: str) -> None:
    raws = [FetchedRecord(lease.tp, o, segment) for o in offsets]
    assert pipeline.accept(lease, raws, offsets.start, now=0.0, wall_ms=None) == len(raws)


async def running(pipeline: Pipeline) -> asyncio.Task[Any]:
    return asyncio.create_task(pipeline.dispatch())


async def test_a_record_is_done_only_once_its_outcome_is_acknowledged() -> None:
    sender, publisher = Sender(), Publisher()
    publisher.hold = asyncio.Event()
    pipeline = pipeline_with(sender, publisher)
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(3), "s")
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    sender.answer[sender.sent[0].id].set()
    await until(lambda: publisher.calls == 1)  # answered; its outcomes wait for their acks
    assert lease.offsets.to_commit() is None
    publisher.hold.set()
    await until(lambda: lease.offsets.to_commit() == 3)
    assert [r.offset for r, _ in publisher.published] == [0, 1, 2]
    dispatch.cancel()


async def test_the_next_batch_of_a_resource_goes_while_the_last_ones_outcomes_publish() -> None:
    """Issue 23 (latency): answered in full, a batch frees its resource's lane at once; its
    outcomes' publishing no longer delays the next request for the resource."""
    sender, publisher = Sender(), Publisher()
    publisher.hold = asyncio.Event()
    pipeline = pipeline_with(sender, publisher, batch=2)
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(4), "s")  # two batches of one resource
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    sender.answer[sender.sent[0].id].set()
    await until(lambda: len(sender.sent) == 2)  # before the first batch's outcomes are out
    assert publisher.published == []
    sender.answer[sender.sent[1].id].set()
    publisher.hold.set()
    await until(lambda: lease.offsets.to_commit() == 4)
    assert sorted(r.offset for r, _ in publisher.published) == [0, 1, 2, 3]
    dispatch.cancel()


async def test_a_refused_record_is_never_done_and_its_owner_hears_of_it() -> None:
    """A dead-letter copy the topic cannot take (publisher.py): that record stays pending, so
    the commit stops before it; the others of the batch are done; the owner halts it."""
    sender, publisher = Sender(), Publisher()
    publisher.refuse = {1}
    refused: list[Refused] = []
    pipeline = Pipeline(
        Batcher(max_size=10, linger=0.0),
        sender,
        publisher,
        Metrics(),
        max_in_flight=4,
        on_refused=refused.extend,
    )
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(3), "s")
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    sender.answer[sender.sent[0].id].set()
    await until(lambda: len(publisher.published) == 2)
    await until(lambda: pipeline.idle())
    assert [r.record.offset for r in refused] == [1]
    assert lease.offsets.to_commit() == 1  # offset 0 done; 1 is not, so 2 is not committed
    assert lease.offsets.pending() == 1
    dispatch.cancel()


async def test_batches_waiting_in_a_backoff_hold_no_request_slot() -> None:
    """Issue 24: as many failing resources as there are slots, all in a backoff, and a
    healthy resource still gets its request out; the failing ones take a slot back after."""
    sender, publisher = Sender(), Publisher()
    pipeline = Pipeline(
        Batcher(max_size=10, linger=0.0), sender, publisher, Metrics(), max_in_flight=2
    )
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(0, 1), "bad0")
    take(pipeline, lease, range(1, 2), "bad1")
    sender.failing = {
        "/api/v2/segments/proj/production/bad0",
        "/api/v2/segments/proj/production/bad1",
    }
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 2)
    take(pipeline, lease, range(2, 3), "good")
    await until(lambda: len(sender.sent) == 3)  # a slot was free for it
    assert sender.sent[2].path.endswith("/good")
    sender.answer[sender.sent[2].id].set()
    await until(lambda: len(publisher.published) == 1)
    sender.backoff_over.set()
    for batch in sender.sent[:2]:
        sender.answer[batch.id].set()
    await until(lambda: len(publisher.published) == 3)
    assert pipeline._slots.used == 0
    dispatch.cancel()


async def test_a_flight_cancelled_before_it_ever_ran_frees_its_url_and_slot() -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher, batch=1)
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(2), "s")  # two batches for one URL
    [first] = pipeline.batcher.ready(now=0.0, limit=4)
    permit = sender.grant(first.route, 0.0)
    pipeline._launch(first, permit)
    await pipeline.cancel_all()  # cancelled before its first step
    assert sender.sent == [] and pipeline.sending == 0
    assert permit.seq in sender.released  # its rate-limit unit was given back
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)  # the URL was freed: the next batch goes
    assert sender.sent[0].items[0].record.offset == 1
    dispatch.cancel()


async def test_a_revoke_cancels_what_waits_and_waits_for_what_is_on_the_wire() -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher, batch=2)
    leases = Leases()
    lease = leases.grant(P0, 0)
    take(pipeline, lease, range(0, 2), "a")
    take(pipeline, lease, range(2, 4), "b")
    take(pipeline, lease, range(4, 6), "a")  # waits behind the first batch for "a"
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 2)
    on_wire, waiting = sender.sent
    sender.wire.add(on_wire.id)
    leases.revoke([P0])
    revoke = asyncio.create_task(pipeline.revoke([lease], Deadline.after(5)))
    await until(lambda: pipeline.sending == 1)  # the waiting flight was cancelled and ended
    assert not revoke.done()  # waits for the request on the wire
    assert pipeline.batcher.waiting == 0  # the third batch was handed over
    sender.answer[on_wire.id].set()
    assert await revoke == set()
    assert [r.offset for r, _ in publisher.published] == [0, 1]  # answered: published
    assert lease.offsets.to_commit() == 2
    assert len(sender.sent) == 2 and pipeline.idle()
    assert waiting.id not in {b.id for b in sender.sent[2:]}
    dispatch.cancel()


async def test_a_revoke_returns_kept_partitions_that_shared_a_stopped_batch() -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher, batch=2)
    leases = Leases()
    gone, kept = leases.grant(P0, 0), leases.grant(P1, 0)
    take(pipeline, gone, range(0, 1), "shared")
    take(pipeline, kept, range(0, 1), "shared")
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    leases.revoke([P0])
    rewind = await pipeline.revoke([gone], Deadline.after(5))
    assert rewind == {kept}
    assert publisher.published == [] and pipeline.idle()
    dispatch.cancel()


async def test_two_revokes_of_one_lease_both_wait_for_its_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher)
    waits = 0  # revokes that reached their wait for a flight to end
    wait_progress = pipeline._wait_progress

    async def counted(deadline: float) -> bool:
        nonlocal waits
        waits += 1
        return await wait_progress(deadline)

    monkeypatch.setattr(pipeline, "_wait_progress", counted)
    leases = Leases()
    lease = leases.grant(P0, 0)
    take(pipeline, lease, range(2), "a")
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    sender.wire.add(sender.sent[0].id)
    deadline = Deadline.after(5)
    first = asyncio.create_task(pipeline.revoke(leases.revoke([P0]), deadline))  # a stop
    second = asyncio.create_task(pipeline.revoke(leases.revoke([P0]), deadline))  # a rebalance
    await until(lambda: waits == 2)
    assert not first.done() and not second.done()
    sender.answer[sender.sent[0].id].set()
    await asyncio.gather(first, second)
    assert lease.offsets.to_commit() == 2
    dispatch.cancel()


async def test_a_lane_held_back_by_the_rate_limiter_fills_while_others_go() -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher, batch=5)
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(2), "held")
    held_path = pipeline.batcher._lanes[next(iter(pipeline.batcher._lanes))].head().route.path
    sender.delays[held_path] = 0.5
    dispatch = await running(pipeline)
    take(pipeline, lease, range(2, 3), "free")
    await until(lambda: len(sender.sent) == 1)
    assert sender.sent[0].path != held_path  # the free URL went; the held one was not cut
    asked = len(sender.asked)
    take(pipeline, lease, range(3, 9), "held")  # six more for the held URL
    await until(lambda: held_path in sender.asked[asked:])  # a dispatch pass saw them, held
    assert len(sender.sent) == 1 and pipeline.batcher.waiting == 8
    sender.delays[held_path] = 0.0
    pipeline.wake()
    await until(lambda: len(sender.sent) == 2)
    assert len(sender.sent[1]) == 5  # cut when it could go: full
    assert sender.granted[1].waited > 0  # the hold is measured
    dispatch.cancel()


async def test_a_closed_gate_holds_every_lane_until_woken() -> None:
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher)
    lease = Leases().grant(P0, 0)
    take(pipeline, lease, range(3), "s")
    path = pipeline.batcher._lanes[next(iter(pipeline.batcher._lanes))].head().route.path
    sender.delays[path] = None  # the gate is closed: no timer, only a wake
    dispatch = await running(pipeline)
    await until(lambda: path in sender.asked)  # told the gate is closed
    assert sender.sent == []
    sender.delays[path] = 0.0
    pipeline.wake()
    await until(lambda: len(sender.sent) == 1)
    assert len(sender.sent[0]) == 3
    dispatch.cancel()


async def test_the_dispatch_stops_when_cancelled_as_it_is_woken() -> None:
    """Python 3.11's wait_for returns the inner result when the waiter is cancelled as it
    completes, swallowing the cancel: a dispatch built on it never stopped (a stop hung)."""
    sender = Sender()
    pipeline = pipeline_with(sender, Publisher())
    take(pipeline, Leases().grant(P0, 0), range(1), "held")
    [lane] = pipeline.batcher._lanes.values()
    sender.delays[lane.head().route.path] = 5.0  # the dispatch waits with a timeout
    for _ in range(3):
        sender.asked.clear()
        dispatch = await running(pipeline)
        await until(lambda: sender.asked != [])  # it waits now
        pipeline.wake()
        dispatch.cancel()
        async with asyncio.timeout(2):
            await asyncio.gather(dispatch, return_exceptions=True)
        assert dispatch.cancelled()


async def test_waiting_for_progress_stops_when_cancelled_as_it_is_woken() -> None:
    pipeline = pipeline_with(Sender(), Publisher())
    pipeline._progress.set()
    waiter = asyncio.create_task(pipeline._wait_progress(Deadline.after(10)))
    await until(lambda: not pipeline._progress.is_set())  # cleared as it began to wait
    pipeline._progress.set()
    waiter.cancel()
    async with asyncio.timeout(2):
        await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()


async def test_a_kept_partition_in_a_stopped_flight_sends_nothing_more_until_rewound() -> None:
    """Rule 5: batch [P0@0, P1@0] is stopped by P0's revoke; P1@1, waiting for the same URL,
    must not go before P1 is rewound and P1@0 goes again."""
    sender, publisher = Sender(), Publisher()
    pipeline = pipeline_with(sender, publisher, batch=2)
    leases = Leases()
    gone, kept = leases.grant(P0, 0), leases.grant(P1, 0)
    take(pipeline, gone, range(0, 1), "x")
    take(pipeline, kept, range(0, 2), "x")  # P1@0 joins the first batch, P1@1 waits
    dispatch = await running(pipeline)
    await until(lambda: len(sender.sent) == 1)
    leases.revoke([P0])
    rewind = await pipeline.revoke([gone], Deadline.after(1))
    assert rewind == {kept} and not kept.active
    # Until the caller rewinds (it commits first) nothing of P1 is left to send: P1@1 left
    # the batcher (it is read again after the rewind) and the stopped flight ended.
    assert pipeline.idle() and pipeline.batcher.waiting == 0
    assert len(sender.sent) == 1
    dispatch.cancel()
