"""/healthz, /readyz and /metrics of a running service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from consumer.contract.events import record_key
from consumer.kafka.tansu import free_port
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN, encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
    wait_until,
)


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_readiness_follows_assignment_and_metrics_move_with_traffic(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"s0": {}, "s1": {}}, excluded={"s1": {"org": ["bad"]}}))
    port = free_port()
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_http_port=port
    )
    await create_topics(settings)
    async with running(settings, wait=False) as handle:
        deadline = time.monotonic() + 10
        status = None
        while status is None and time.monotonic() < deadline:
            try:
                status, body = await _get(port, "/readyz")
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        # The HTTP server starts before the consumer joins its group: the first answer is "no".
        assert status == 503 and '"partitions_assigned": false' in body
        await handle.wait_assigned()
        assert (await _get(port, "/healthz"))[0] == 200
        assert (await _get(port, "/readyz"))[0] == 200
        events = [
            event_dict(key="s0", project=PROJECT, env=ENV, values=[f"k{i}"]) for i in range(6)
        ]
        events.append(
            event_dict(key="s1", project=PROJECT, env=ENV, contextKind="org", values=["bad"])
        )
        messages = [(record_key(e), encode(e), []) for e in events] + [(None, b"not json", [])]
        await produce(settings, messages)
        await outcomes(settings, 8)
        await asyncio.sleep(settings.consumer_commit_interval_ms / 1000 * 2)
        code, text = await _get(port, "/metrics")
    assert code == 200
    samples = _samples(text)
    assert _value(samples, "ldc_records_consumed_total") == 8
    assert _value(samples, "ldc_outcomes_total", status="succeeded") == 6
    assert _value(samples, "ldc_outcomes_total", status="rejected") == 1
    assert _value(samples, "ldc_outcomes_total", status="invalid") == 1
    assert _value(samples, "ldc_dead_letters_total", status="invalid") == 1
    assert _value(samples, "ldc_api_requests_total", endpoint="segment-targets", status="200") >= 1
    assert _value(samples, "ldc_api_requests_total", endpoint="segment-targets", status="400") == 1
    assert _value(samples, "ldc_batch_size_count", endpoint="segment-targets") >= 2
    assert (
        _value(samples, "ldc_api_request_duration_seconds_count", endpoint="segment-targets") >= 2
    )
    assert _value(samples, "ldc_commits_total", result="ok") >= 1
    assert _value(samples, "ldc_api_token_accepted") == 1
    assert any(name == "ldc_consumer_lag" for name, _ in samples)


async def test_readiness_is_false_during_an_auth_outage(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    tmp_path: Path,
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("wrong")
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_http_port=port,
        ld_api_token=None,
        ld_api_token_file=token_file,
        ld_probe_max_delay_ms=200,
    )
    await create_topics(settings)
    event = event_dict(key="s0", project=PROJECT, env=ENV)
    await produce(settings, [(record_key(event), encode(event), [])])
    async with running(settings) as handle:
        await wait_until(lambda: not handle.service.auth_ok)
        status, body = await _get(port, "/readyz")
        assert status == 503 and '"api_token_accepted": false' in body
        assert (await _get(port, "/healthz"))[0] == 200
        assert _value(_samples((await _get(port, "/metrics"))[1]), "ldc_api_token_accepted") == 0
        token_file.write_text(TOKEN)
        await outcomes(settings, 1)
        assert (await _get(port, "/readyz"))[0] == 200
