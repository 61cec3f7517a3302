"""Unknown outcomes (sender.py): a request that timed out may still be applied. Nothing more is
sent for the batch's resource until the settle time has passed, a revoke waits for it, and a
retry that finds its own earlier effect applied counts it as succeeded (readback.py). And a
resource that keeps failing fails fast."""

from __future__ import annotations

import asyncio
import random

import orjson
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from consumer.launchdarkly.client import TokenSource
from consumer.launchdarkly.errors import ConnectionFailed, RequestTimeout
from consumer.launchdarkly.gate import ApiGate
from consumer.launchdarkly.retry import RetryPolicy
from consumer.service.batcher import Batch, Batcher
from consumer.service.leases import Leases
from consumer.service.sender import BatchSender
from tests.factories import LATER, event_dict, pending, until
from tests.unit.test_sender import FakeClient, open_gate

TP = TopicPartition("in", 3)
SETTLE = 0.4
EXPIRING = "/api/v2/segments/proj/s/expiring-targets/production"


async def sender_for(client: FakeClient) -> BatchSender:
    return BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=0.01, max_delay=0.01),
        await open_gate(),
        rng=random.Random(1),
        settle=SETTLE,
    )


def expiring_batch(users: list[str], leases: Leases) -> Batch:
    lease = leases.get(TP) or leases.grant(TP, 0)
    batcher = Batcher(max_size=len(users), linger=0.0)
    for user in users:
        event = event_dict("segment", "addExpiringTarget", key="s", contextKey=user)
        batcher.add(pending(event, lease=lease), now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    return batch


def refused(*indexes: int) -> tuple[int, bytes]:
    """A 200 whose `errors` name these instructions (the rest applied)."""
    errors = [{"instructionIndex": i, "message": "already scheduled"} for i in indexes]
    return 200, orjson.dumps({"items": [], "errors": errors})


def scheduled(*users: str) -> tuple[int, bytes]:
    """The expiring-targets read: these users scheduled for removal at LATER."""
    items = [
        {
            "contextKey": user,
            "contextKind": "user",
            "targetType": "included",
            "expirationDate": LATER,
            "resourceId": {},
        }
        for user in users
    ]
    return 200, orjson.dumps({"items": items})


async def test_after_a_timeout_the_retry_waits_out_the_settle_time() -> None:
    client = FakeClient(RequestTimeout("slow"), (200, orjson.dumps({"items": []})))
    sender = await sender_for(client)
    batch = expiring_batch(["u1"], Leases())
    task = asyncio.create_task(sender.send(batch))
    await until(lambda: len(client.requests) == 1)
    await asyncio.sleep(SETTLE / 2)
    assert len(client.requests) == 1  # not resent while it may still land
    assert sender.requesting(batch.id)  # a revoke waits for it
    results = await task
    assert [r.status.value for r in results if r is not None] == ["succeeded"]
    assert len(client.requests) == 2


async def test_a_connection_never_made_is_retried_without_settling() -> None:
    client = FakeClient(ConnectionFailed("refused", sent=False), (200, b'{"items": []}'))
    sender = await sender_for(client)
    batch = expiring_batch(["u1"], Leases())
    task = asyncio.create_task(sender.send(batch))
    await until(lambda: len(client.requests) == 2, timeout=SETTLE / 2)
    await task


async def test_a_revoke_after_a_timeout_ends_the_batch_only_once_it_cannot_land() -> None:
    client = FakeClient(RequestTimeout("slow"))
    sender = await sender_for(client)
    leases = Leases()
    batch = expiring_batch(["u1"], leases)
    task = asyncio.create_task(sender.send(batch))
    await until(lambda: len(client.requests) == 1)
    leases.revoke([TP])
    await asyncio.sleep(SETTLE / 2)
    assert not task.done() and sender.requesting(batch.id)
    assert await task == [None]
    assert not sender.requesting(batch.id) and len(client.requests) == 1


async def test_a_retry_that_finds_its_own_effect_applied_succeeds() -> None:
    """The timed-out request did land: the retry is refused for u1 and u2; the read-back
    shows u1 scheduled as the event asks (applied before), u2 not: u2 stays rejected."""
    client = FakeClient(RequestTimeout("slow"), refused(0, 1), scheduled("u1"))
    sender = await sender_for(client)
    results = await sender.send(expiring_batch(["u1", "u2", "u3"], Leases()))
    statuses = [r.status.value for r in results if r is not None]
    assert statuses == ["succeeded", "rejected", "succeeded"]
    assert client.requests[-1][:2] == ("GET", EXPIRING)


async def test_refusals_without_an_unknown_outcome_are_not_read_back() -> None:
    client = FakeClient(refused(0), scheduled("u1"))
    sender = await sender_for(client)
    results = await sender.send(expiring_batch(["u1"], Leases()))
    assert [r.status.value for r in results if r is not None] == ["rejected"]
    assert [method for method, _, _ in client.requests] == ["PATCH"]


async def test_a_resource_that_keeps_failing_fails_its_next_batches_fast() -> None:
    """Its first batch spends its whole budget; the next ones get no backoff retries (a
    settle, then one more try), until the resource is answered again."""

    async def healthy() -> None:
        return None

    gate = ApiGate(TokenSource(SecretStr("api-test")), healthy, outage_window=0.05)
    await gate.probe_now()
    client = FakeClient((503, b""))
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.01),
        gate,
        rng=random.Random(1),
    )
    leases = Leases()
    first = await sender.send(expiring_batch(["u1"], leases))
    assert [r.status.value for r in first if r is not None] == ["failed"]
    spent = len(client.requests)
    assert spent >= 4
    second = await sender.send(expiring_batch(["u2"], leases))
    assert [r.status.value for r in second if r is not None] == ["failed"]
    assert len(client.requests) - spent == 2  # one try, and the last one after the settle
    client.answers = [(200, b'{"items": []}')]
    await sender.send(expiring_batch(["u3"], leases))  # answered: a full budget again
    client.answers = [(503, b"")]
    before = len(client.requests)
    await sender.send(expiring_batch(["u4"], leases))
    assert len(client.requests) - before >= 4
