"""Stopping, rebalancing and the process as a user runs it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from collections import Counter

import pytest

from consumer.cli_errors import EXIT_INTERRUPTED
from consumer.contract.outcomes import Status
from consumer.demo.run import run_demo
from consumer.kafka.apache import ApacheKafka
from consumer.kafka.tansu import TansuBroker
from consumer.service.lifecycle import STOP_GRACE
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import TOKEN
from tests.integration.harness import (
    committed,
    create_topics,
    events,
    make_settings,
    merge_ends,
    outcomes,
    outcomes_covering,
    produce,
    running,
    seed,
    start_process,
    wait_until,
)


async def test_sigterm_drains_commits_and_exits_0(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(8)}))
    await admin.set_faults(latency_ms=[30, 80])
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_max_size=5
    )
    await create_topics(settings, partitions=4)
    ends = await produce(settings, events(200, 8))
    env = {
        **os.environ,
        **{
            name.upper(): str(value)
            for name, value in settings.model_dump().items()
            if value is not None
        },
        "LD_API_TOKEN": TOKEN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "CONSUMER_HTTP_PORT": "0",
    }
    env = {k: ("true" if v == "True" else "false" if v == "False" else v) for k, v in env.items()}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await outcomes(settings, 30)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        elapsed = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
    log = stderr.decode()
    assert process.returncode == 0, log[-6000:]
    assert elapsed < 15
    assert '"service.drained"' in log and '"service.stopped"' in log
    assert TOKEN not in log
    # Everything committed has an outcome, and what was taken was finished, not dropped.
    positions = await committed(settings, list(ends))
    assert positions, "nothing was committed"
    done = {(o.source.partition, o.source.offset) for o in await outcomes(settings, 200, timeout=3)}
    for tp, position in positions.items():
        assert {(tp.partition, o) for o in range(position)} <= done


async def test_two_members_split_the_partitions_and_a_rebalance_loses_nothing(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    keys = 12
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    await admin.set_faults(latency_ms=[20, 60])
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, consumer_batch_max_size=4
    )
    await create_topics(settings, partitions=4)
    first = events(150, keys)
    ends = await produce(settings, first)
    async with running(settings) as one:
        await outcomes(settings, 20)
        async with running(settings, wait=False) as two:
            await two.wait_assigned()
            assert one.service.assigned and two.service.assigned
            assert not one.service.assigned & two.service.assigned
            assert len(one.service.assigned | two.service.assigned) == 4
            second = events(150, keys)
            more = await produce(settings, second)
            ends = merge_ends(ends, more)
            results = await outcomes(settings, 300, timeout=60)
            await two.shutdown()
        await one.shutdown()
    seen = Counter((o.source.partition, o.source.offset) for o in results)
    expected = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
    assert set(seen) == expected
    assert all(o.status is Status.SUCCEEDED for o in results)
    assert await committed(settings, list(ends)) == ends
    # Each key's changes were applied in order: the segment lists its keys in production order.
    state = await admin.state()
    for segment in state["segments"]:
        values = [v for c in segment["includedContexts"] for v in c["values"]]
        numbers = [int(v[1:]) for v in values]
        assert numbers == sorted(numbers), segment["key"]


async def test_a_group_member_leaving_hands_its_work_over(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={f"s{i}": {} for i in range(6)}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=2)
    async with running(settings) as one, running(settings, wait=False) as two:
        await two.wait_assigned()
        await two.shutdown()
        ends = await produce(settings, events(60, 6))
        results = await outcomes(settings, 60)
        assert len(one.service.assigned) == 2  # it took over the partitions of the leaver
    assert {(o.source.partition, o.source.offset) for o in results} == {
        (tp.partition, o) for tp, end in ends.items() for o in range(end)
    }


async def test_demo_runs_end_to_end(kafka_bootstrap: str) -> None:
    out = io.StringIO()
    assert await run_demo(out) == 0, out.getvalue()
    text = out.getvalue()
    assert "every event has the outcome it should" in text
    assert "Requests sent to LaunchDarkly" in text


async def test_a_rebalance_during_a_rate_limit_wait_does_not_send_twice(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    keys = 6
    await admin.seed(seed(segments={f"s{i}": {} for i in range(keys)}))
    await admin.set_faults(rate_limit_rate=1.0, rate_limit_reset_ms=4_000)
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, ld_rate_limit_jitter_ms=10
    )
    await create_topics(settings, partitions=4)
    ends = await produce(settings, events(60, keys))
    async with running(settings) as one:
        await wait_until(lambda: one.service.metrics.rate_limited._value.get() > 0)
        async with running(settings, wait=False) as two:
            await two.wait_assigned()  # one gave its waiting batches up in the rebalance
            await admin.set_faults()
            results = await outcomes_covering(settings, ends)
            await asyncio.sleep(5)  # past the 429's reset: a stray batch would have gone by now
            await two.shutdown()
        await one.shutdown()
    applied: Counter[str] = Counter()
    for request in await admin.requests():
        if request["method"] == "PATCH" and request["status"] == 200:
            for instruction in request["body"]["instructions"]:
                applied.update(instruction["values"])
    assert applied == Counter({f"k{i}": 1 for i in range(60)})
    assert {o.status for o in results} == {Status.SUCCEEDED}


async def test_sigterm_with_the_broker_gone_exits_within_the_bound_and_a_second_signal_at_once(
    on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    if not on_tansu:
        pytest.skip("stops its own broker: runs on the embedded one")
    await admin.seed(seed(segments={f"s{i}": {} for i in range(4)}))
    shutdown_ms = 2_000
    with TansuBroker() as broker:
        settings = make_settings(
            broker.bootstrap_servers,
            simulator.base_url,
            on_tansu=on_tansu,
            consumer_shutdown_timeout_ms=shutdown_ms,
        )
        await create_topics(settings, partitions=2)
        await produce(settings, events(20, 4))
        # Two groups, so that each process reads everything and has work of its own (and
        # results of its own: recovery would rightly skip what the other group finished).
        other = settings.model_copy(
            update={
                "consumer_group_id": settings.consumer_group_id + "-2",
                "consumer_results_topic": settings.consumer_results_topic + "-2",
                "consumer_dlq_topic": settings.consumer_dlq_topic + "-2",
            }
        )
        await create_topics(other, partitions=2)
        patient, hasty = (
            await start_process(settings, stderr=asyncio.subprocess.DEVNULL),
            await start_process(other, stderr=asyncio.subprocess.DEVNULL),
        )
        try:
            assert len(await outcomes(settings, 20)) == 20
            assert len(await outcomes(other, 20)) == 20
            # Slow answers: requests are on the wire and outcomes unpublished when the broker
            # goes, so the drain has something to wait for.
            await admin.set_faults(latency_ms=[1_200, 1_200])
            await produce(settings, events(100, 4))
            await asyncio.sleep(1.0)
        finally:
            broker.stop()
    try:
        started = time.monotonic()
        patient.send_signal(signal.SIGTERM)
        hasty.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        hasty.send_signal(signal.SIGTERM)
        await asyncio.wait_for(hasty.wait(), 5)
        hasty_s = time.monotonic() - started
        await asyncio.wait_for(patient.wait(), 30)
        patient_s = time.monotonic() - started
    finally:
        for process in (patient, hasty):
            if process.returncode is None:
                process.kill()
    assert hasty.returncode == EXIT_INTERRUPTED and hasty_s < 2
    # The drain's bound, then the last commit and the closes share STOP_GRACE.
    assert patient_s < shutdown_ms / 1000 + STOP_GRACE + 2, patient_s


async def test_sigterm_after_the_broker_stopped_exits_0_without_a_traceback(
    broker_kind: str, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """The broker stopped under a running consumer, then SIGTERM: exit 0, no traceback (aiokafka's
    fetcher, closed while it retries the connection, must not end the process in an error)."""
    if broker_kind == "external":
        pytest.skip("stops its own broker")
    await admin.seed(seed(segments={f"s{i}": {} for i in range(4)}))
    broker: ApacheKafka | TansuBroker = (
        ApacheKafka(nodes=1) if broker_kind == "apache" else TansuBroker()
    )
    with broker:
        settings = make_settings(
            broker.bootstrap_servers,
            simulator.base_url,
            on_tansu=broker_kind == "tansu",
            consumer_shutdown_timeout_ms=2_000,
            log_level="info",
        )
        await create_topics(settings, partitions=2)
        await produce(settings, events(20, 4))
        process = await start_process(settings)
        try:
            assert len(await outcomes(settings, 20)) == 20
        except BaseException:
            if process.returncode is None:
                process.kill()
            _, stderr = await process.communicate()
            raise AssertionError(stderr.decode()[-3000:]) from None
    try:
        await asyncio.sleep(4)  # the fetcher and the coordinator retry the connection
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
    log = stderr.decode()
    assert process.returncode == 0, log[-6000:]
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert '"service.stopped"' in log
    # aiokafka's connection errors, many a second while the broker is away, are rate-limited
    # (logs.LibraryFlood): each kind once, then at most one line per window.
    library = Counter(
        json.loads(line)["event"].split(":")[0]
        for line in log.splitlines()
        if line.startswith("{") and json.loads(line)["logger"].startswith("aiokafka")
    )
    assert library and sum(library.values()) <= 2 * len(library), library
