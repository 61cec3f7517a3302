"""Interleavings found by a red-team pass over the lifecycle (issue 24), each reproduced before
its fix: the settle time on every path, the read-back's claims, a lapse and a heartbeat, a
lease restart racing a rebalance, request slots under cancellation, a fetch error during a
lapse, and a request waiting for a connection after its batch was found live."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from consumer.kafka import clients as kafka
from consumer.launchdarkly.big_segments import KindCache
from consumer.launchdarkly.client import ApiResponse, TokenSource
from consumer.launchdarkly.errors import RequestTimeout
from consumer.launchdarkly.gate import ApiGate, Closed
from consumer.launchdarkly.retry import RetryPolicy
from consumer.launchdarkly.segment_kinds import KindResolver
from consumer.launchdarkly.throttle import RateLimiter
from consumer.service.leases import Leases, LeaseState
from consumer.service.lifecycle import Service
from consumer.service.metrics import Metrics
from consumer.service.rebalancing import cancelled
from consumer.service.sender import BatchSender
from consumer.service.slots import Slots
from consumer.service.wiring import build
from consumer.settings import Settings
from tests.factories import FetchedRecord, event_dict, until
from tests.unit.test_pipeline import Publisher
from tests.unit.test_pipeline import Sender as WireSender
from tests.unit.test_sender import OK_SEGMENT, FakeClient, open_gate
from tests.unit.test_sender_segments import BIG_ORG, Client
from tests.unit.test_sender_segments import batch_of as segment_batch
from tests.unit.test_unknown_outcome import expiring_batch

SETTLE = 1.0
P0 = TopicPartition("in", 0)


class TimedClient(FakeClient):
    """FakeClient that notes when each request starts."""

    def __init__(self, *answers: Any) -> None:
        super().__init__(*answers)
        self.times: list[float] = []

    async def _answer(self, method: str, path: str, body: Any) -> ApiResponse:
        self.times.append(time.monotonic())
        return await super()._answer(method, path, body)


async def healthy_gate(window: float) -> ApiGate:
    async def healthy() -> None:
        return None

    gate = ApiGate(TokenSource(SecretStr("api-test")), healthy, outage_window=window)
    await gate.probe_now()
    return gate


def unknown_then_ok() -> TimedClient:
    return TimedClient(RequestTimeout("slow"), (200, b'{"items": []}'))


# -- 1. the settle time is skipped on some paths (invariant B) ----------------------------------


async def test_1a_last_try_after_an_out_of_budget_timeout_waits_out_the_landing() -> None:
    """Timeout with no budget left -> gate.settle() (ANSWERING after the window) -> last try:
    sent at once, although the timed-out request may still land."""
    client = unknown_then_ok()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
        await healthy_gate(window=0.05),
        rng=random.Random(1),
        settle=SETTLE,
    )
    batch = expiring_batch(["u1"], Leases())
    results = await sender.send(batch)
    ended = time.monotonic()
    assert [r.status.value for r in results if r is not None] == ["succeeded"]
    gap = client.times[1] - client.times[0]
    # The batch ended (the lane is released, `requesting` is False) while the first request
    # may still land: the next batch for the resource can overtake it.
    assert not sender.requesting(batch.id)
    assert gap >= SETTLE and ended - client.times[0] >= SETTLE, (
        f"retry sent {gap:.3f}s after the timeout, batch ended {ended - client.times[0]:.3f}s"
        f" after it; settle is {SETTLE}s"
    )


async def test_1b_fail_fast_resource_timeout_waits_out_the_landing() -> None:
    """A resource failing fast (`_failing`) times out: delay None -> settle -> last try at once."""
    client = unknown_then_ok()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=0.01, max_delay=0.01),
        await healthy_gate(window=0.05),
        rng=random.Random(1),
        settle=SETTLE,
    )
    batch = expiring_batch(["u1"], Leases())
    sender._failing[batch.route.resource] = time.monotonic()  # its last batch ended failed
    await sender.send(batch)
    gap = client.times[1] - client.times[0]
    assert gap >= SETTLE, f"retry sent {gap:.3f}s after the timeout; settle is {SETTLE}s"


async def test_1c_gate_closed_while_on_the_wire_retry_waits_out_the_landing() -> None:
    """Timeout while the gate closed (`continue` past the backoff) -> wait_open -> reopened
    quickly -> retry sent at once."""
    gate = await healthy_gate(window=60)
    client = unknown_then_ok()
    client.hold = asyncio.Event()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=0.01, max_delay=0.01),
        gate,
        rng=random.Random(1),
        settle=SETTLE,
    )
    task = asyncio.create_task(sender.send(expiring_batch(["u1"], Leases())))
    await until(lambda: len(client.requests) == 1)
    gate._close(Closed.UNAVAILABLE, None)  # another URL's failures closed it meanwhile
    hold, client.hold = client.hold, None
    hold.set()  # ... and this one times out
    timed_out = time.monotonic()
    await asyncio.sleep(0.05)
    await gate.probe_now()  # the API is back
    await task
    gap = client.times[1] - timed_out
    assert gap >= SETTLE, f"retry sent {gap:.3f}s after the timeout; settle is {SETTLE}s"


async def test_1d_revoke_during_settle_ends_the_batch_only_once_it_cannot_land() -> None:
    """Timeout, out of budget, revoked while the gate settles: `_attempt` raises `_Stopped` and
    `_send` returns without `_landed`; `requesting` turns False early, so the revoke ends and
    the next owner may send while the request may still land."""
    client = TimedClient(RequestTimeout("slow"))
    leases = Leases()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
        await healthy_gate(window=0.3),
        rng=random.Random(1),
        settle=SETTLE,
    )
    batch = expiring_batch(["u1"], leases)
    task = asyncio.create_task(sender.send(batch))
    await until(lambda: len(client.requests) == 1)
    leases.revoke([batch.items[0].record.tp])
    assert await task == [None]
    ended = time.monotonic() - client.times[0]
    assert ended >= SETTLE, f"revoked batch ended {ended:.3f}s after its timeout (settle {SETTLE}s)"


# -- 2. read-back counts refusals as applied (change 2) -----------------------------------------


async def test_2a_big_segment_404_after_a_timeout_is_not_succeeded() -> None:
    """A removal from a big segment times out; the retry gets 404 (no such segment). The
    read-back of /contexts/a is 404 too, which found_in reads as 'not included' = what a
    removal sets: the event ends `succeeded` for a segment that does not exist."""
    client = Client(
        (200, BIG_ORG),  # the kind read: a big segment of orgs
        RequestTimeout("slow"),
        (404, b'{"message": "segment not found"}'),
        (404, b'{"message": "not found"}'),
    )
    gate = await open_gate()
    policy = RetryPolicy(base_delay=0.01, max_delay=0.01, max_attempts=3)
    throttle = RateLimiter()
    kinds = KindResolver(client, policy, gate, throttle, Metrics(), KindCache(ttl=60.0))  # type: ignore[arg-type]
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        policy,
        gate,
        throttle=throttle,
        rng=random.Random(1),
        kinds=kinds,
        settle=0.05,
    )
    batch = segment_batch(
        [event_dict("segment", "removeIncludedTargets", key="s", contextKind="org", values=["a"])]
    )
    results = await sender.send(batch)
    print([(m, p) for m, p, _ in client.requests])
    [result] = results
    assert result is not None
    assert result.status.value == "rejected", (
        f"404 on the write and on the read-back reported {result.status.value}"
    )


async def test_2b_a_refused_instruction_is_not_credited_with_a_later_ones_effect() -> None:
    """[schedule u1's removal, cancel it] on one resource; the timed-out request was not
    applied; the retry refuses both (say u1 is not a member, nothing is scheduled). The
    read-back shows nothing scheduled = what the *last* instruction leaves, and the first
    one, never applied, ends `succeeded`."""

    def both_refused() -> tuple[int, bytes]:
        errors = [{"instructionIndex": i, "message": "refused"} for i in (0, 1)]
        return 200, orjson.dumps({"items": [], "errors": errors})

    client = FakeClient(RequestTimeout("slow"), both_refused(), (200, b'{"items": []}'))
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=0.01, max_delay=0.01),
        await open_gate(),
        rng=random.Random(1),
        settle=0.05,
    )
    leases = Leases()
    lease = leases.grant(TopicPartition("in", 3), 0)
    from consumer.service.batcher import Batcher
    from tests.factories import pending

    batcher = Batcher(max_size=2, linger=0.0)
    for kind in ("addExpiringTarget", "removeExpiringTarget"):
        event = event_dict("segment", kind, key="s", contextKey="u1")
        batcher.add(pending(event, lease=lease), now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    results = await sender.send(batch)
    statuses = [r.status.value for r in results if r is not None]
    assert statuses[0] == "rejected", f"never-applied schedule reported {statuses}"


# -- service fixtures -----------------------------------------------------------------------------


class Consumer:
    """What the lifecycle asks of the aiokafka consumer (enough for grant/revoke/restart/take)."""

    def __init__(self, positions: dict[TopicPartition, int | None]) -> None:
        self.positions = positions
        self.assigned = set(positions)
        self.paused_tps: set[TopicPartition] = set()
        self.resumed: list[TopicPartition] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.beginning = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)
        self.resumed.extend(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        while (known := self.positions[tp]) is None:
            await asyncio.sleep(0.01)
        return known

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        await self.beginning.wait()
        return dict.fromkeys(tps, 0)


Make = Callable[..., Service]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """`make(consumer, **fakes)`: a service around this consumer, made of `wiring.build`'s
    parts with these fakes (`sender`, `publisher`, `clock`); a fake publisher by default."""
    settings = Settings(
        ld_api_token="api-test",  # type: ignore[arg-type]
        consumer_http_port=0,
        consumer_recovery_lookback_ms=-1,
        consumer_auto_offset_reset="earliest",
    )
    made: list[Service] = []

    def service(consumer: Consumer, **fakes: Any) -> Service:
        fakes.setdefault("publisher", Publisher())
        made.append(Service(build(settings, consumer=consumer, **fakes)))
        return made[-1]

    yield service
    for found in made:
        await cancelled(found.rebalancing.granting, *found._background)
        await found.pipeline.cancel_all()


# -- 3. membership: records stopped by a lapse are stranded when heard() comes first (A) ---------


async def test_3_records_stopped_by_a_lapse_are_sent_again_or_a_rejoin_is_asked(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = Consumer({P0: 0})
    client = FakeClient((503, b""), (200, OK_SEGMENT))
    client.hold = asyncio.Event()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=0.01, max_delay=0.01),
        await open_gate(),
        rng=random.Random(1),
    )
    now = [1000.0]
    service = make(consumer, sender=sender, clock=lambda: now[0])
    service.membership.heard()
    rejoins: list[object] = []
    monkeypatch.setattr(kafka, "request_rejoin", rejoins.append)
    await service.rebalancing.on_partitions_assigned({P0})
    await until(lambda: service.assigned == {P0})
    lease = service.leases.get(P0)
    assert lease is not None

    service.pipeline.accept(lease, [FetchedRecord(P0, 0, "s")], 0, 0.0, None)
    dispatch = asyncio.create_task(service.pipeline.dispatch())
    try:
        await until(lambda: len(client.requests) == 1)  # on the wire
        now[0] += 60  # no heartbeat answered for longer than the bound: not current
        hold, client.hold = client.hold, None
        hold.set()  # answered 503 after the lapse: not live, no retry, result None
        await until(service.pipeline.idle)
        service.membership.heard()  # a heartbeat answered before the fetch loop's next turn
        service._check_membership()  # the fetch loop: current again, nothing to do
        service.pipeline.accept(lease, [FetchedRecord(P0, o, "s") for o in (1, 2)], 1, 0.0, None)
        await until(service.pipeline.idle)
        await asyncio.sleep(0.2)
        assert rejoins or lease.offsets.pending() == 0, (
            f"record 0 stranded: pending={lease.offsets.pending()}, commit position"
            f" {lease.offsets.position()} (offsets 1-2 done), no rejoin asked, pipeline idle"
        )
    finally:
        dispatch.cancel()
        await asyncio.gather(dispatch, return_exceptions=True)


# -- 4. _restart_lease racing a rebalance: a stale grant, then records skipped (A) ---------------


async def test_4_a_restart_racing_a_rebalance_grants_nothing_stale(make: Make) -> None:
    consumer = Consumer({P0: 0})
    service = make(consumer, sender=WireSender())
    await service.rebalancing.on_partitions_assigned({P0})
    await until(lambda: service.assigned == {P0})
    old = service.leases.get(P0)
    assert old is not None
    # Rule 2b: the log end stayed below the lease (a broker that lost its data): restart it
    # where CONSUMER_AUTO_OFFSET_RESET=earliest says; it waits for the beginning offset.
    service._restart(old, None)
    await until(lambda: old.state is LeaseState.ENDED)
    # Meanwhile the group rebalances (the broker restart moved the coordinator): P0 is revoked
    # and assigned to this member again; its position is being read.
    consumer.positions[P0] = None
    await service.rebalancing.on_partitions_revoked({P0})
    await service.rebalancing.on_partitions_assigned({P0})
    consumer.beginning.set()  # the restart goes on
    await until(lambda: not service._restarting)
    stale = service.leases.get(P0)
    service.gate._reopen()
    service._apply_pauses()
    resumed_early = P0 in consumer.resumed
    # The fetch loop takes a run for P0 under whatever lease is there (offsets 0-4).
    fetch = service.leases.begin_fetch()
    service._take({P0: [FetchedRecord(P0, o, "s") for o in range(5)]}, fetch, 0.0, 0.0)
    consumer.positions[P0] = 0  # the grant's position read answers (the committed offset)
    await until(lambda: service.leases.get(P0) is not stale)
    fresh = service.leases.get(P0)
    assert fresh is not None
    # The consumer fetches from where the fresh lease was seeked to.
    resumed_at = [offset for tp, offset in consumer.seeks if tp == P0][-1]
    fetch = service.leases.begin_fetch()
    service._take({P0: [FetchedRecord(P0, o, "s") for o in range(resumed_at, 10)]}, fetch, 0.0, 0.0)
    # Offsets 0-4 were taken by the stale lease only (its batches are dead: not live).
    skipped = [o for o in range(5) if o < (fresh.offsets.to_commit() or 0)]
    await service.committer.commit()  # the commit loop
    assert stale is None and not resumed_early and not skipped, (
        f"restart granted {stale} during the new assignment's grant (P0 resumed:"
        f" {resumed_early}); the grant's lease then commits {consumer.commits},"
        f" past offsets {skipped} that have no outcome"
    )


# -- 5. Slots under random cancellation (D) -------------------------------------------------------


async def test_5_slots_never_exceed_the_limit_nor_leak() -> None:
    rng = random.Random(11)
    for _ in range(40):
        slots = Slots(3)
        peak = 0

        async def monitor(slots: Slots = slots) -> None:
            nonlocal peak
            while True:
                peak = max(peak, slots.used)
                await asyncio.sleep(0)

        async def flight(hold: Any) -> None:
            for _ in range(rng.randint(1, 4)):
                async with hold.waiting():
                    await asyncio.sleep(rng.random() * 0.002)
                assert hold.held
                await asyncio.sleep(rng.random() * 0.002)

        def launch(slots: Slots = slots) -> asyncio.Task[None]:
            hold = slots.take()  # as Pipeline._launch: taken synchronously, released by callback
            task = asyncio.create_task(flight(hold))
            task.add_done_callback(lambda _: hold.release())
            return task

        watcher = asyncio.create_task(monitor())
        tasks: list[asyncio.Task[None]] = []
        for _ in range(25):
            while slots.free() == 0:
                await asyncio.sleep(0)
            tasks.append(launch())
            for task in tasks:
                if rng.random() < 0.08:
                    asyncio.get_running_loop().call_later(rng.random() * 0.002, task.cancel)
            await asyncio.sleep(rng.random() * 0.001)
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.cancel()
        assert peak <= slots.limit
        assert slots.used == 0 and not slots._waiters


async def test_5b_a_slot_granted_to_a_task_cancelled_before_it_runs_is_passed_on() -> None:
    slots = Slots(1)
    b = slots.take()
    entered = asyncio.Event()

    async def waiting() -> None:
        async with b.waiting():
            entered.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(waiting())
    await entered.wait()
    a = slots.take()  # a new batch took the freed slot
    await asyncio.sleep(0.02)  # task now waits in _take_back
    assert slots.used == 1 and len(slots._waiters) == 1
    a.release()  # granted to the waiter ...
    task.cancel()  # ... and cancelled before it ran
    await asyncio.gather(task, return_exceptions=True)
    b.release()
    assert slots.used == 0 and not slots._waiters


# -- 6. a fetch error while the membership lapsed: resync skips the lapsed leases (A) ------------


class PositionedConsumer(Consumer):
    """Also exposes aiokafka's subscription state, which `kafka.consumed_position` reads."""

    def __init__(self, positions: dict[TopicPartition, int | None]) -> None:
        super().__init__(positions)
        self.at: dict[TopicPartition, int] = {}
        consumer = self

        class _State:
            def __init__(self, tp: TopicPartition) -> None:
                self.tp = tp

            @property
            def has_valid_position(self) -> bool:
                return self.tp in consumer.at

            @property
            def position(self) -> int:
                return consumer.at[self.tp]

        class _Assignment:
            @property
            def tps(self) -> set[TopicPartition]:
                return consumer.assignment()

            def state_value(self, tp: TopicPartition) -> _State:
                return _State(tp)

        from types import SimpleNamespace

        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=_Assignment()))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        super().seek(tp, offset)
        self.at[tp] = offset


async def test_6_a_fetch_error_during_a_lapse_skips_no_record(make: Make) -> None:
    from aiokafka.errors import OffsetOutOfRangeError

    p1 = TopicPartition("in", 1)
    consumer = PositionedConsumer({P0: 0, p1: 0})
    consumer.at = {P0: 0, p1: 0}
    now = [1000.0]
    service = make(consumer, clock=lambda: now[0])
    service.membership.heard()
    await service.rebalancing.on_partitions_assigned({P0, p1})
    await until(lambda: service.assigned == {P0, p1})
    lease = service.leases.get(P0)
    assert lease is not None
    now[0] += 60  # the membership lapses while a fetch is under way
    service.leases.begin_fetch()
    # getmany unpacked P0's records 0-4 (its position moved to 5), then raised for P1: the
    # drained records are dropped with the error.
    consumer.at[P0] = 5
    service._fetch_failed(OffsetOutOfRangeError({p1: 0}))
    # A heartbeat is answered before the next turn's _check_membership.
    service.membership.heard()
    fetch = service.leases.begin_fetch()
    service._check_membership()
    service._follow(fetch)
    await service.committer.commit()
    past_start = [c for c in consumer.commits if any(getattr(o, "offset", o) for o in c.values())]
    assert not past_start, (
        f"offsets 0-4 never taken, yet the lease commits {consumer.commits}"
        f" (seeks: {consumer.seeks})"
    )


# -- 7. "no await between live() and the request on the wire": aiohttp's pool wait (C) ----------


async def test_7_no_request_leaves_after_its_lease_is_revoked() -> None:
    from aiohttp import web

    from consumer.launchdarkly.client import LdClient
    from tests.unit.test_sender import TP, batch_of

    received: list[tuple[float, str]] = []
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def patch(request: web.Request) -> web.Response:
        received.append((time.monotonic(), request.path))
        return web.json_response({"key": "s"})

    web_app = web.Application()
    web_app.router.add_get("/slow", slow)
    web_app.router.add_patch("/api/v2/segments/{p}/{e}/{s}", patch)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # A slow read on another connection: the pool has no limit, so the PATCH does not wait in
    # aiohttp for a connection after its batch was found live (it had, with a full pool).
    client = LdClient(f"http://127.0.0.1:{port}", TokenSource(SecretStr("api-x")), timeout=5)
    await client.start()
    try:
        busy = asyncio.create_task(client.get("/slow"))  # e.g. a probe to a slow API
        await asyncio.sleep(0.1)
        sender = BatchSender(
            client,
            RetryPolicy(base_delay=0.01, max_delay=0.01),
            await open_gate(),
            rng=random.Random(1),
        )
        leases = Leases()
        batch = batch_of(1, leases)
        task = asyncio.create_task(sender.send(batch))
        await asyncio.sleep(0.2)  # passed live(): waiting for a connection
        leases.revoke([TP])  # or the membership lapses
        revoked_at = time.monotonic()
        await asyncio.sleep(0.1)
        release.set()
        await task
        await busy
        late = [path for at, path in received if at > revoked_at]
        assert not late, f"request started {late} after its lease was revoked"
    finally:
        await client.stop()
        await runner.cleanup()
