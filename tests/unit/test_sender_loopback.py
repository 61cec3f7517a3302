"""BatchSender against the LaunchDarkly simulator over loopback HTTP, without a broker: a
retry that ends in success, narrowing to the one refused instruction, a refused token closing
the gate until it is fixed, a URL failing on its own while the API answers, and a per-token
429 waited out until the reset it names."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from consumer.contract.codes import ErrorCode
from consumer.contract.outcomes import Status
from consumer.launchdarkly.client import LdClient, TokenSource
from consumer.launchdarkly.errors import ApiError
from consumer.launchdarkly.gate import ApiGate
from consumer.launchdarkly.retry import RetryPolicy
from consumer.service.batcher import Batch, Batcher
from consumer.service.leases import Leases
from consumer.service.sender import BatchSender
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN, event_dict, pending, until
from tests.integration.harness import ENV, PROJECT, seed
from tests.unit.test_sender import TP

SEGMENT = f"/api/v2/segments/{PROJECT}/{ENV}/s"


@pytest.fixture
async def sender(simulator: RunningSimulator, admin: SimulatorAdmin) -> AsyncIterator[BatchSender]:
    await admin.seed(seed(segments={"s": {}}))
    async with LdClient(simulator.base_url, TokenSource(SecretStr(TOKEN)), timeout=2) as client:
        box: list[BatchSender] = []

        async def probe() -> ApiError | None:
            return await box[0].probe()

        gate = ApiGate(client.token, probe, outage_window=0.5, base_delay=0.05, max_delay=0.2)
        box.append(
            BatchSender(
                client,
                RetryPolicy(base_delay=0.02, max_delay=0.05, max_attempts=3),
                gate,
                rng=random.Random(1),
            )
        )
        prober = asyncio.create_task(gate.run())
        await until(lambda: gate.is_open)
        yield box[0]
        prober.cancel()


def batch_of(*keys: str) -> Batch:
    lease = Leases().grant(TP, 0)
    batcher = Batcher(max_size=len(keys), linger=0.0)
    for key in keys:
        event = event_dict(key="s", project=PROJECT, env=ENV, values=[key])
        batcher.add(pending(event, lease=lease), now=0.0)
    [batch] = batcher.ready(now=0.0, limit=1)
    return batch


async def members(admin: SimulatorAdmin) -> list[Any]:
    [segment] = (await admin.state())["segments"]
    return [v for c in segment["includedContexts"] for v in c["values"]]


async def test_a_retried_request_ends_in_success(
    sender: BatchSender, admin: SimulatorAdmin
) -> None:
    await admin.set_faults(error_rate=1.0, paths=[SEGMENT])
    task = asyncio.create_task(sender.send(batch_of("k0", "k1")))
    await asyncio.sleep(0.1)  # a few 5xx answered and retried
    await admin.set_faults(error_rate=0.0)
    results = await task
    assert [r.status if r else None for r in results] == [Status.SUCCEEDED] * 2
    assert all(r is not None and r.attempts >= 2 for r in results)
    assert await members(admin) == ["k0", "k1"]


async def test_a_refused_instruction_is_narrowed_down_and_the_rest_applied_in_order(
    sender: BatchSender, admin: SimulatorAdmin
) -> None:
    await admin.set_faults(refused_keys=["k2"])
    results = await sender.send(batch_of("k0", "k1", "k2", "k3"))
    assert [r.status if r else None for r in results] == [
        Status.SUCCEEDED,
        Status.SUCCEEDED,
        Status.REJECTED,
        Status.SUCCEEDED,
    ]
    assert await members(admin) == ["k0", "k1", "k3"]


async def test_a_refused_token_closes_the_gate_until_it_is_accepted_again(
    sender: BatchSender, admin: SimulatorAdmin
) -> None:
    await admin.set_tokens("another-token-0123456789")
    task = asyncio.create_task(sender.send(batch_of("k0")))
    await asyncio.sleep(0.3)
    assert not task.done()  # waiting at the closed gate: nothing failed, nothing dropped
    await admin.set_tokens(TOKEN)
    [result] = await task
    assert result is not None and result.status is Status.SUCCEEDED
    assert await members(admin) == ["k0"]


async def test_a_url_failing_on_its_own_fails_once_the_api_is_seen_answering(
    sender: BatchSender, admin: SimulatorAdmin
) -> None:
    await admin.set_faults(error_rate=1.0, paths=[SEGMENT])  # the probe's path answers
    [result] = await sender.send(batch_of("k0"))
    assert result is not None and result.status is Status.FAILED
    assert result.error is not None and result.error.code is ErrorCode.SERVER_ERROR
    assert await members(admin) == []


async def test_a_per_token_429_waits_for_the_reset_it_names(
    sender: BatchSender, admin: SimulatorAdmin, simulator: RunningSimulator
) -> None:
    """A per-token limit answers 429 with only `X-Ratelimit-Auth-Token-Reset` (no `Retry-After`,
    no `X-Ratelimit-Reset`): the batch is sent again after that reset, not after the 10 s
    default wait for a 429 that names none."""
    await admin.set_limits(window_ms=1_500, token_limit=1)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            simulator.base_url + "/api/v2/caller-identity", headers={"Authorization": TOKEN}
        ) as spent,  # the token's only request of this window
    ):
        assert spent.status == 200
    [result] = await sender.send(batch_of("k0"))
    assert result is not None and result.status is Status.SUCCEEDED
    assert await members(admin) == ["k0"]
    [limited, retried] = [r for r in await admin.requests() if r["method"] == "PATCH"]
    assert (limited["status"], limited["fault"], retried["status"]) == (429, "token-limit", 200)
    stats = await admin.stats()
    assert stats.get("early_requests", 0) == 0  # nothing came before the reset it named
    default_wait_ms = RetryPolicy().rate_limit_default * 1000
    assert retried["receivedAt"] < limited["receivedAt"] + default_wait_ms
