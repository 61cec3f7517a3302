"""The API gate (gate.py): a refused token or an API that cannot be reached pauses the service
instead of failing events, whatever rebalances happen meanwhile, and it resumes by itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from consumer.kafka.tansu import free_port
from consumer.simulator import Faults, RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN
from tests.integration.harness import (
    assert_all_succeeded,
    create_topics,
    dead_letters,
    events,
    make_settings,
    merge_ends,
    outcomes,
    outcomes_covering,
    produce,
    running,
    seed,
    wait_until,
)


async def _readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, json.loads(await response.text())


async def test_a_refused_token_across_a_rebalance_resumes_once_the_token_file_is_fixed(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    tmp_path: Path,
) -> None:
    keys = 6
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        ld_api_token=None,
        ld_api_token_file=token_file,
        ld_probe_max_delay_ms=300,
    )
    await create_topics(settings, partitions=4)
    first = await produce(settings, events(20, keys))
    async with running(settings) as one:
        await outcomes_covering(settings, first)
        # The token is rotated at LaunchDarkly: every request is now refused.
        await admin.set_tokens("api-rotated-token")
        more = await produce(settings, events(40, keys))
        await wait_until(lambda: not one.service.auth_ok)
        async with running(settings, wait=False) as two:  # a rebalance while closed
            await two.wait_assigned()
            await wait_until(lambda: not two.service.auth_ok)
            await asyncio.sleep(1.0)
            assert one.service.paused() == one.service.assigned
            assert two.service.paused() == two.service.assigned
            token_file.write_text("api-rotated-token\n")  # the operator fixes the file
            ends = merge_ends(first, more)
            results = await outcomes_covering(settings, ends, timeout=30)
            assert one.service.auth_ok and two.service.auth_ok
            await two.shutdown()
        await one.shutdown()
    await assert_all_succeeded(settings, results, ends)


async def test_an_api_outage_longer_than_the_retry_budget_fails_nothing(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    keys = 4
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    port = free_port()
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_http_port=port,
        ld_retry_max_attempts=3,
        ld_retry_max_elapsed_ms=2_000,
        ld_outage_window_ms=1_000,
        ld_probe_max_delay_ms=300,
    )
    await create_topics(settings, partitions=2)
    async with running(settings) as handle:
        assert (await _readyz(port))[0] == 200
        # Unreachable: nothing listens on the API's port.
        await simulator.stop()
        ends = await produce(settings, events(20, keys))
        await wait_until(lambda: not handle.service.gate.is_open)
        status, body = await _readyz(port)
        assert status == 503
        assert any("unavailable" in str(reason) for reason in body["reasons"])  # type: ignore[attr-defined]
        await asyncio.sleep(3)  # longer than the per-event budget
        # Back, but answering 503 to everything.
        simulator.simulator.faults = Faults(error_rate=1.0)  # before it listens again
        await simulator.start()
        more = await produce(settings, events(20, keys))
        await asyncio.sleep(3)
        assert not handle.service.gate.is_open
        # Then only the writes fail: the probe's read works, the segment PATCHes do not.
        await admin.set_faults(error_rate=1.0, paths=["/api/v2/segments/*"])
        await asyncio.sleep(3)
        assert await outcomes(settings, 1, timeout=0.5) == []
        assert await dead_letters(settings, 1, timeout=0.5) == []
        await admin.set_faults()
        ends = merge_ends(ends, more)
        results = await outcomes_covering(settings, ends, timeout=30)
        assert (await _readyz(port))[0] == 200
        await handle.shutdown()
    await assert_all_succeeded(settings, results, ends)
