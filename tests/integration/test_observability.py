"""The dashboard and the alert rules stay true: every metric (and label) they read is served
by a running consumer's /metrics."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from consumer.contract.events import record_key
from consumer.kafka.tansu import free_port
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
)
from tests.observability import (
    SAMPLE_SUFFIXES,
    SYNTHETIC_METRICS,
    TARGET_LABELS,
    all_queries,
    uses,
)


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def _served(text: str) -> dict[str, set[str]]:
    """Every sample name the scrape declares -> the labels seen on its samples (none yet for
    a labelled family nothing has been counted in)."""
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SAMPLE_SUFFIXES[family.type]:
            served.setdefault(family.name + suffix, set())
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


async def test_every_metric_of_the_dashboard_and_the_rules_is_served(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    # Traffic that puts a sample in every labelled family: successes, a rejection (400), an
    # invalid record, and a resource whose requests always fail (retries, `failed`).
    await admin.seed(
        seed(segments={"s0": {}, "s1": {}, "s2": {}}, excluded={"s1": {"org": ["bad"]}})
    )
    await admin.set_faults(error_rate=1.0, paths=["/api/v2/segments/*/s2"])
    port = free_port()
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_http_port=port,
        ld_retry_max_attempts=2,
    )
    await create_topics(settings)
    events = [event_dict(key="s0", project=PROJECT, env=ENV, values=[f"k{i}"]) for i in range(3)]
    events.append(event_dict(key="s1", project=PROJECT, env=ENV, contextKind="org", values=["bad"]))
    events.append(event_dict(key="s2", project=PROJECT, env=ENV))
    messages = [(record_key(e), encode(e), []) for e in events] + [(None, b"not json", [])]
    async with running(settings):
        await produce(settings, messages)
        await outcomes(settings, len(messages))
        scraped: dict[str, set[str]] = {}

        async def refresh() -> None:
            scraped.update(_served(await _scrape(port)))

        # The gauges and commit figures are refreshed by the commit loop.
        while "partition" not in scraped.get("ldc_consumer_lag", set()) or not scraped.get(
            "ldc_commit_duration_seconds_bucket"
        ):
            await refresh()
            await asyncio.sleep(0.1)

    problems = []
    for where, queries in all_queries().items():
        for query in queries:
            found = uses(query)
            if not found:
                problems.append(f"{where}: {query} reads no metric")
            for use in found:
                if use.metric in SYNTHETIC_METRICS:
                    continue
                if use.metric not in scraped:
                    problems.append(f"{where}: {use.metric} is not served ({query})")
                    continue
                missing = use.labels - TARGET_LABELS - scraped[use.metric]
                if missing:
                    problems.append(f"{where}: {use.metric} has no label {sorted(missing)}")
    assert problems == []
