"""An API slower than the request timeout, then fast again, under a steady stream: requests
time out on our side and LaunchDarkly (the simulator) applies them later anyway. Nothing later
for a resource may be sent while such a request may still land, and a retry that finds its own
effect applied succeeds: 0 stale targets, 0 wrongly rejected."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from consumer.settings import Settings
from consumer.simulator import RunningSimulator, chains
from consumer.simulator.admin_client import SimulatorAdmin
from tests.integration.harness import create_topics, make_settings, outcomes_covering, running
from tests.integration.streams import assert_stream_held, steady_stream

LATENCY_MS = 2_000  # the API's, for a while
TIMEOUT_MS = 1_500  # ours: every request in that while times out, and lands 0.5 s later
SETTLE_MS = 1_500


def _settings(bootstrap: str, on_tansu: bool, url: str, settle_ms: int) -> Settings:
    return make_settings(
        bootstrap,
        url,
        on_tansu=on_tansu,
        ld_request_timeout_ms=TIMEOUT_MS,
        ld_unknown_outcome_settle_ms=settle_ms,
        consumer_revoke_timeout_ms=TIMEOUT_MS + settle_ms + 1_000,
        kafka_rebalance_timeout_ms=TIMEOUT_MS + settle_ms + 4_000,
        consumer_shutdown_timeout_ms=TIMEOUT_MS + settle_ms + 5_000,
        # Retries outlast the slow period instead of failing events.
        ld_retry_max_elapsed_ms=120_000,
        ld_outage_window_ms=60_000,
        consumer_batch_max_size=10,
    )


@pytest.mark.slow
async def test_requests_that_land_after_their_timeout_are_never_overtaken(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    found = chains.targets(segments=4, per_segment=6)
    await admin.seed(chains.seed(found))
    settings = _settings(kafka_bootstrap, on_tansu, simulator.base_url, settle_ms=SETTLE_MS)
    await create_topics(settings, partitions=3)

    async def slow_then_fast() -> None:
        await admin.set_faults(latency_ms=[LATENCY_MS, LATENCY_MS], paths=["/api/v2/segments/*"])
        await asyncio.sleep(6)
        await admin.set_faults()

    async with running(settings) as handle:
        (ends, last_step), _ = await asyncio.gather(
            steady_stream(settings, found, 0, 8), slow_then_fast()
        )
        results = await outcomes_covering(settings, ends, timeout=120)
        timeouts = _timeouts(handle.service.registry)
    assert timeouts > 0  # the slow while did make requests time out
    await assert_stream_held(settings, admin, ends, last_step, results)


def _timeouts(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "ldc_api_requests_total" and sample.labels.get("status") == "timeout"
    )
