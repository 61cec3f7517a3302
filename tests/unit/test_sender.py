"""The sender against an in-memory LaunchDarkly client: what it sends, and what it no longer
sends once its batch's lease is revoked (leases.py, rule 4)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from consumer.launchdarkly.client import ApiResponse, TokenSource
from consumer.launchdarkly.errors import ConnectionFailed
from consumer.launchdarkly.gate import ApiGate
from consumer.launchdarkly.retry import RetryPolicy
from consumer.service.batcher import Batch, Batcher
from consumer.service.leases import Leases
from consumer.service.sender import BatchSender
from tests.factories import event_dict, pending, until

TP = TopicPartition("in", 7)
OK_SEGMENT = orjson.dumps({"key": "s"})


class FakeClient:
    """Answers each request with the next of `answers` (the last one repeats); a callable
    answer is called with the request body. Records every request."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, Any]] = []
        self.hold: asyncio.Event | None = None  # while set up, requests wait for it

    async def _answer(self, method: str, path: str, body: Any) -> ApiResponse:
        self.requests.append((method, path, body))
        if self.hold is not None:
            await self.hold.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            answer = answer(body)
        if isinstance(answer, Exception):
            raise answer
        status, raw, *headers = answer
        return ApiResponse(status, headers[0] if headers else {}, raw)

    async def patch(self, path: str, body: dict[str, Any]) -> ApiResponse:
        return await self._answer("PATCH", path, body)

    async def post(self, path: str, body: dict[str, Any]) -> ApiResponse:
        return await self._answer("POST", path, body)

    async def get(self, path: str) -> ApiResponse:
        return await self._answer("GET", path, None)


async def open_gate() -> ApiGate:
    async def healthy() -> None:
        return None

    gate = ApiGate(TokenSource(SecretStr("api-test")), healthy, outage_window=60)
    await gate.probe_now()
    assert gate.is_open
    return gate


async def sender_for(client: FakeClient, backoff: float = 0.05) -> BatchSender:
    # Seeded: the first backoff is about 0.13 x `backoff`.
    return BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(base_delay=backoff, max_delay=backoff),
        await open_gate(),
        rng=random.Random(1),
    )


def batch_of(size: int, leases: Leases) -> Batch:
    lease = leases.get(TP) or leases.grant(TP, 0)
    batcher = Batcher(max_size=size, linger=0.0)
    for i in range(size):
        batcher.add(pending(event_dict(key="s", values=[f"k{i}"]), lease=lease), now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    return batch


async def test_a_revoked_batch_sends_no_retry() -> None:
    client = FakeClient((503, b""), (200, OK_SEGMENT))
    leases = Leases()
    batch = batch_of(3, leases)
    task = asyncio.create_task((await sender_for(client, backoff=2.0)).send(batch))
    await until(lambda: len(client.requests) == 1)  # answered 503: backing off
    leases.revoke([TP])
    results = await task
    assert results == [None, None, None]
    await asyncio.sleep(0.1)
    assert len(client.requests) == 1


async def test_a_revoked_batch_takes_no_further_narrowing_step() -> None:
    leases = Leases()

    def refuse_k0(body: dict[str, Any]) -> tuple[int, bytes]:
        keys = [v for i in body["instructions"] for v in i["values"]]
        return (400, b'{"message": "bad"}') if "k0" in keys else (200, OK_SEGMENT)

    client = FakeClient(refuse_k0)
    client.hold = asyncio.Event()
    batch = batch_of(4, leases)
    task = asyncio.create_task((await sender_for(client)).send(batch))
    await until(lambda: len(client.requests) == 1)
    client.hold.set()  # the whole batch: 400, narrowing starts
    client.hold = asyncio.Event()
    await until(lambda: len(client.requests) == 2)  # the first half [k0, k1] is on the wire
    leases.revoke([TP])
    client.hold.set()  # answered (400 again) after the revoke: no further step
    results = await task
    assert results == [None, None, None, None]
    assert len(client.requests) == 2


async def test_a_request_answered_after_the_revoke_keeps_its_results() -> None:
    leases = Leases()
    client = FakeClient((200, OK_SEGMENT))
    client.hold = asyncio.Event()
    batch = batch_of(2, leases)
    task = asyncio.create_task((await sender_for(client)).send(batch))
    await until(lambda: len(client.requests) == 1)
    leases.revoke([TP])
    client.hold.set()
    results = await task
    assert [r.status.value for r in results if r is not None] == ["succeeded", "succeeded"]


async def test_a_live_batch_is_retried_until_it_succeeds() -> None:
    client = FakeClient(ConnectionFailed("reset"), (503, b""), (200, OK_SEGMENT))
    leases = Leases()
    results = await (await sender_for(client)).send(batch_of(2, leases))
    assert [r.status.value for r in results if r is not None] == ["succeeded", "succeeded"]
    assert len(client.requests) == 3


async def test_401_closes_the_gate_and_the_batch_waits_for_it() -> None:
    client = FakeClient((401, b""), (200, OK_SEGMENT))
    sender = await sender_for(client)
    leases = Leases()
    task = asyncio.create_task(sender.send(batch_of(1, leases)))
    await until(lambda: len(client.requests) == 1)
    gate = sender._gate
    await until(lambda: not gate.is_open)
    await asyncio.sleep(0.1)
    assert not task.done() and len(client.requests) == 1
    await gate.probe_now()  # the token was fixed: the probe is answered
    results = await task
    assert results[0] is not None and results[0].status.value == "succeeded"


async def test_an_error_answered_after_the_revoke_ends_the_batch_at_once() -> None:
    """No backoff, no wait at the gate: the revoke need not wait for what will never send."""
    for answer in [(503, b""), (429, b""), (401, b""), ConnectionFailed("reset")]:
        leases = Leases()
        client = FakeClient(answer)
        client.hold = asyncio.Event()
        task = asyncio.create_task(
            (await sender_for(client, backoff=60.0)).send(batch_of(2, leases))
        )
        await until(lambda client=client: len(client.requests) == 1)
        leases.revoke([TP])
        client.hold.set()
        assert await asyncio.wait_for(task, 5) == [None, None], answer
        assert len(client.requests) == 1


@pytest.mark.parametrize("failure", [ConnectionFailed("reset"), (429, b"", {"Retry-After": "0"})])
async def test_a_request_failing_across_a_closed_gate_is_charged_to_nobody(failure: Any) -> None:
    """It was on the wire while the gate closed (an outage) and opened again: its failure
    belongs to the outage, so even a budget of one attempt (and no time) is not spent by it."""
    client = FakeClient(failure, (200, OK_SEGMENT))
    client.hold = asyncio.Event()
    gate = await open_gate()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(max_attempts=1, max_elapsed=0.01, base_delay=0.01, max_delay=0.01),
        gate,
        rng=random.Random(1),
    )
    task = asyncio.create_task(sender.send(batch_of(1, Leases())))
    await until(lambda: len(client.requests) == 1)
    gate.unauthorized()  # closed meanwhile (any reason) ...
    await gate.probe_now()  # ... and open again before the answer came
    client.hold.set()
    [result] = await asyncio.wait_for(task, 5)
    assert result is not None and result.status.value == "succeeded"
    assert len(client.requests) == 2


@pytest.mark.parametrize(
    ("answers", "status", "requests"),
    [
        ([(503, b""), (200, OK_SEGMENT)], "succeeded", 2),  # the outage had just ended
        ([(503, b""), (503, b"")], "failed", 2),  # this resource fails on its own
    ],
)
async def test_out_of_budget_while_others_are_answered_one_more_try_decides(
    answers: list[Any], status: str, requests: int
) -> None:
    client = FakeClient(*answers)
    gate = await open_gate()
    sender = BatchSender(
        client,  # type: ignore[arg-type]
        RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
        gate,
        rng=random.Random(1),
    )
    task = asyncio.create_task(sender.send(batch_of(1, Leases())))
    await until(lambda: len(client.requests) == 1)
    await asyncio.sleep(0.05)
    assert not task.done()  # settling: is the API down?
    gate.answered()  # another write is answered
    [result] = await asyncio.wait_for(task, 5)
    assert result is not None and result.status.value == status
    assert len(client.requests) == requests
