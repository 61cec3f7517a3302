"""Faults from the simulator against the real pipeline: retries, rate limits, 401, budgets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN, encode, event_dict
from tests.integration.harness import (
    ENV,
    PROJECT,
    assert_all_succeeded,
    committed,
    create_topics,
    dead_letters,
    events,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
    wait_until,
)


async def test_a_run_under_faults_ends_with_every_record_succeeded(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(10)}))
    await admin.set_faults(
        latency_ms=[1, 40],
        error_rate=0.2,
        rate_limit_rate=0.1,
        rate_limit_reset_ms=200,
        drop_rate=0.05,
        conflict_rate=0.05,
    )
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=5,
        ld_rate_limit_jitter_ms=50,
    )
    await create_topics(settings, partitions=3)
    ends = await produce(settings, events(150, 10))
    async with running(settings):
        results = await outcomes(settings, 150, timeout=90)
    assert Counter(o.status for o in results) == {Status.SUCCEEDED: 150}
    assert max(o.http.attempts for o in results if o.http) > 1  # the faults did happen
    stats = await admin.stats()
    faults = sum(
        stats.get(k, 0)
        for k in ("status_429", "status_500", "status_502", "status_503", "status_409", "dropped")
    )
    assert faults >= 5  # the faults did happen (each kind is drawn at random)
    assert stats.get("early_requests", 0) == 0, "a request went before a 429's reset"
    assert await committed(settings, list(ends)) == ends
    # Per resource, the keys were applied in production order despite the retries.
    for segment in (await admin.state())["segments"]:
        numbers = [int(v[1:]) for c in segment["includedContexts"] for v in c["values"]]
        assert numbers == sorted(numbers) and len(numbers) == 15


async def test_no_request_is_sent_before_a_429_reset(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(8)}))
    await admin.set_faults(rate_limit_rate=0.3, rate_limit_reset_ms=400)
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=2,
        ld_rate_limit_jitter_ms=20,
    )
    await create_topics(settings)
    await produce(settings, events(60, 8))
    async with running(settings):
        results = await outcomes(settings, 60, timeout=60)
    assert {o.status for o in results} == {Status.SUCCEEDED}
    requests = await admin.requests()
    limited = [r for r in requests if r["status"] == 429]
    assert limited
    # Every request received after a 429 was answered waited for that 429's reset.
    for answer in limited:
        reset = answer["receivedAt"] + 400
        later = [r for r in requests if answer["receivedAt"] + 50 < r["receivedAt"] < reset]
        assert not later, f"{len(later)} requests before the reset"


async def test_a_real_route_limit_is_approached_without_a_storm_of_429s(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(20)}))
    window, limit = 500, 8
    await admin.set_limits(window_ms=window, route_limit=limit, global_limit=1_000)
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        consumer_batch_max_size=2,
        consumer_batch_linger_ms=0,
    )
    await create_topics(settings)
    await produce(settings, events(120, 20))
    started = time.monotonic()
    async with running(settings):
        results = await outcomes(settings, 120, timeout=90)
    elapsed = time.monotonic() - started
    assert {o.status for o in results} == {Status.SUCCEEDED}
    requests = [r for r in await admin.requests() if r["method"] == "PATCH"]
    limited = sum(1 for r in requests if r["status"] == 429)
    windows = len(requests) / limit
    assert limited <= max(3, len(requests) // 10), f"{limited} 429s in {len(requests)} requests"
    # The budget is used, not wasted: close to one window per `limit` requests.
    assert elapsed < windows * window / 1000 * 2 + 10


async def test_the_all_or_nothing_batch_applies_every_good_instruction(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"orgs": {}}, excluded={"orgs": {"org": ["x3", "x11"]}}))
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_max_size=16
    )
    await create_topics(settings)
    events = [
        event_dict(key="orgs", project=PROJECT, env=ENV, contextKind="org", values=[f"x{i}"])
        for i in range(16)
    ]
    await produce(settings, [(record_key(e), encode(e), []) for e in events])
    async with running(settings):
        results = {o.eventId: o for o in await outcomes(settings, 16)}
    rejected = {i for i, e in enumerate(events) if results[e["eventId"]].status is Status.REJECTED}
    assert rejected == {3, 11}
    [segment] = (await admin.state())["segments"]
    assert segment["includedContexts"][0]["values"] == [
        f"x{i}" for i in range(16) if i not in (3, 11)
    ]
    patches = [r for r in await admin.requests() if r["method"] == "PATCH"]
    assert len(patches) <= 1 + 2 * 2 * 4  # bisection: about 2 log2(n) extra requests per bad one


async def test_401_pauses_without_rejecting_and_recovers_when_the_token_file_is_fixed(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    tmp_path: Path,
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(4)}))
    token_file = tmp_path / "token"
    token_file.write_text("api-wrong-token\n")
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        ld_api_token=None,
        ld_api_token_file=token_file,
        ld_probe_max_delay_ms=300,
    )
    await create_topics(settings)
    ends = await produce(settings, events(40, 4))
    async with running(settings) as handle:
        await wait_until(lambda: not handle.service.auth_ok)
        await asyncio.sleep(1.5)
        assert handle.service.paused()
        assert await outcomes(settings, 1, timeout=1) == []
        assert await dead_letters(settings, 1, timeout=1) == []
        # Nothing committed past where each partition started (the handover mark).
        assert set((await committed(settings, list(ends))).values()) <= {0}
        probes = [r for r in await admin.requests() if r["auth"] == "invalid"]
        assert 2 <= len(probes) <= 40  # one probe at a time, with backoff
        token_file.write_text(TOKEN + "\n")
        results = await outcomes(settings, 40, timeout=20)
        assert handle.service.auth_ok
        await handle.shutdown()
    await assert_all_succeeded(settings, results, ends)


async def test_retry_budget_spent_means_failed_and_dead_lettered(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    # One resource fails, the API as a whole answers (the gate's probe gets through).
    await admin.set_faults(error_rate=1.0, paths=["/api/v2/segments/*/s0"])
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, ld_retry_max_attempts=3
    )
    await create_topics(settings)
    await produce(settings, events(3, 1))
    async with running(settings):
        results = await outcomes(settings, 3)
        letters = await dead_letters(settings, 3)
    assert {o.status for o in results} == {Status.FAILED}
    assert {o.error.code for o in results if o.error} == {"server_error"}
    # The budget's 3, and one more once the probe showed the API answering (gate.py, rule 4).
    assert {o.http.attempts for o in results if o.http} == {4}
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["ldc.status"] == b"failed" and headers["ldc.attempts"] == b"4"
        assert headers["ldc.http.status"] in (b"500", b"502", b"503")


async def test_conflicts_are_retried_then_rejected(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    await admin.set_faults(conflict_rate=1.0)
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, ld_conflict_max_retries=2
    )
    await create_topics(settings)
    await produce(settings, events(2, 1))
    async with running(settings):
        results = await outcomes(settings, 2)
    assert {o.status for o in results} == {Status.REJECTED}
    assert {o.error.code for o in results if o.error} == {"conflict"}
    assert {o.http.attempts for o in results if o.http} == {3}


async def test_a_bug_while_sending_fails_and_dead_letters_instead_of_blocking(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer.service.sender import BatchSender

    await admin.seed(seed(segments={"s0": {}, "s1": {}}))
    original = BatchSender.send

    async def flaky(self: BatchSender, batch: Any, permit: Any = None, hold: Any = None) -> Any:
        if batch.path.endswith("/s1"):
            raise RuntimeError("injected bug")
        return await original(self, batch, permit, hold)

    monkeypatch.setattr(BatchSender, "send", flaky)
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    ends = await produce(settings, events(6, 2))
    async with running(settings) as handle:
        results = await outcomes(settings, 6)
        letters = await dead_letters(settings, 3)
        await handle.shutdown()
    by_key = Counter((o.resource.key if o.resource else None, o.status) for o in results)
    assert by_key == {("s0", Status.SUCCEEDED): 3, ("s1", Status.FAILED): 3}
    assert {o.error.code for o in results if o.error} == {"internal_error"}
    assert len(letters) == 3
    assert await committed(settings, list(ends)) == ends
