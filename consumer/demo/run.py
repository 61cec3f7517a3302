"""`ld-targeting-consumer demo`: broker, simulator and consumer in one process, sample events in,
outcomes shown. Nothing needs to run beforehand; with KAFKA_BOOTSTRAP_SERVERS set it uses that
broker (and topics of its own) instead of starting Tansu.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any, TextIO

from consumer.cli_errors import EXIT_INTERRUPTED
from consumer.commands.text import clip, plural
from consumer.contract.outcomes import Outcome
from consumer.demo.samples import Sample, demo_samples
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker
from consumer.service.lifecycle import Service
from consumer.service.wiring import build
from consumer.settings import Settings
from consumer.signals import on_stop
from consumer.simulator import RunningSimulator, Simulator, sample_seed

DEMO_TOKEN = "api-demo-0000-token"  # noqa: S105 - accepted by the demo simulator only


def _settings(bootstrap: str, base_url: str, on_tansu: bool, suffix: str) -> Settings:
    topics: dict[str, Any] = {
        "consumer_input_topic": "ld.targeting-changes",
        "consumer_results_topic": "ld.targeting-results",
        "consumer_dlq_topic": "ld.targeting-changes.dlq",
    }
    if not on_tansu:  # a shared broker: keep the demo's records apart from anything else
        topics = {name: f"{topic}.demo-{suffix}" for name, topic in topics.items()}
    overrides: dict[str, Any] = dict(TANSU_SETTINGS) if on_tansu else {}
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        ld_api_token=DEMO_TOKEN,
        ld_base_url=base_url,
        consumer_group_id=f"ld-targeting-consumer-demo-{suffix}",
        consumer_http_port=0,
        consumer_batch_linger_ms=300,
        **topics,
        **overrides,
    )


async def run_demo(
    out: TextIO = sys.stdout, err: TextIO = sys.stderr, *, timeout: float = 90.0
) -> int:
    """The demo; SIGINT (Ctrl-C) or SIGTERM stops it early, in order: the consumer (which
    drains), the simulator, then the broker; one line says so, exit 130."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    interrupted = asyncio.Event()
    on_stop(interrupted)
    demo = asyncio.create_task(_demo(out, external, timeout))
    signalled = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({demo, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if demo.done():
        return demo.result()
    # Cancelling unwinds _demo's own clean-up: the consumer is stopped in _run, then the
    # simulator and the broker leave their context managers.
    demo.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await demo
    stopped = "the consumer, the simulator" + ("" if external else " and the broker")
    print(f"Demo interrupted: stopped {stopped}.", file=err, flush=True)
    return EXIT_INTERRUPTED


def _say(out: TextIO, line: str) -> None:
    """Progress lines appear as they happen, also when the output is a pipe."""
    print(line, file=out, flush=True)


async def _demo(out: TextIO, external: str | None, timeout: float) -> int:
    suffix = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        if external:
            bootstrap = external
            _say(out, f"Using the Kafka broker at {bootstrap}")
        else:
            broker = stack.enter_context(TansuBroker())
            bootstrap = broker.bootstrap_servers
            _say(out, f"Started Tansu (Kafka protocol) on {bootstrap}")
        async with RunningSimulator(Simulator({DEMO_TOKEN}, seed=sample_seed())) as api:
            _say(out, f"Started the LaunchDarkly simulator on {api.base_url}")
            settings = _settings(bootstrap, api.base_url, not external, suffix)
            await kafka.ensure_service_topics(settings, 4, 4, 1)
            samples = demo_samples()
            outcomes, elapsed = await _run(settings, samples, timeout, out)
            dead_letters = await kafka.read_topic(
                settings,
                settings.consumer_dlq_topic,
                until=lambda r: len(r) >= sum(o.status.value != "succeeded" for o in outcomes),
                timeout=10,
            )
            requests = [r for r in api.simulator.requests if r["method"] in ("PATCH", "POST")]
            return _report(out, samples, outcomes, len(dead_letters), len(requests), elapsed)


async def _run(
    settings: Settings, samples: list[Sample], timeout: float, out: TextIO
) -> tuple[list[Outcome], float]:
    stop = asyncio.Event()
    service = Service(build(settings))
    task = asyncio.create_task(service.run(stop))
    started = time.monotonic()
    try:
        producer = kafka.make_producer(settings)
        await kafka.start(producer, settings)
        try:
            for sample in samples:
                await producer.send(settings.consumer_input_topic, sample.value, key=sample.key)
            await producer.flush()
        finally:
            await producer.stop()
        _say(out, f"Produced {len(samples)} events to {settings.consumer_input_topic}")
        records = await kafka.read_topic(
            settings,
            settings.consumer_results_topic,
            until=lambda r: len(r) >= len(samples) or task.done(),
            timeout=timeout,
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        await task
    return [Outcome.model_validate_json(r.value) for r in records], elapsed


def _report(
    out: TextIO,
    samples: list[Sample],
    outcomes: list[Outcome],
    dead_letters: int,
    requests: int,
    elapsed: float,
) -> int:
    expected = {f"demo-{i + 1:03d}": s for i, s in enumerate(samples)}
    counts = Counter(o.status.value for o in outcomes)
    print("\nOutcomes by status", file=out)
    for status in ("succeeded", "rejected", "invalid", "failed"):
        print(f"  {status:<10} {counts.get(status, 0):>4}", file=out)
    mismatches = [
        o
        for o in outcomes
        if o.eventId in expected and expected[o.eventId].expected != o.status.value
    ]
    shown: dict[tuple[str | None, str], Outcome] = {}
    for o in sorted(outcomes, key=lambda o: (o.source.partition, o.source.offset)):
        shown.setdefault((o.instructionKind, o.status.value), o)
    print("\nSample outcomes", file=out)
    header = f"  {'event':<12} {'instruction':<27} {'status':<10} {'http':<5} {'batch':<8} error"
    print(header, file=out)
    for o in shown.values():
        batch = f"{o.batch.index + 1}/{o.batch.size}" if o.batch else "-"
        http = str(o.http.status) if o.http and o.http.status else "-"
        error = f"{o.error.code}: {o.error.message}" if o.error else ""
        print(
            f"  {(o.eventId or '-'):<12} {(o.instructionKind or '-'):<27} {o.status.value:<10}"
            f" {http:<5} {batch:<8} {clip(error, 70)}",
            file=out,
        )
    valid = sum(1 for s in samples if s.expected != "invalid")
    print(
        f"\nRequests sent to LaunchDarkly: {requests} for {valid} valid events"
        f" ({valid / max(1, requests):.1f} instructions per request)",
        file=out,
    )
    print(f"Dead-letter copies: {dead_letters}", file=out)
    print(f"All {len(outcomes)} outcomes in {elapsed:.1f} s", file=out)
    ok = len(outcomes) == len(samples) and not mismatches
    if mismatches:
        print(
            f"\n{plural(len(mismatches), 'outcome')} not as the samples expect:",
            file=out,
        )
        for o in mismatches:
            detail = o.error.model_dump(mode="json") if o.error else None
            print(f"  {o.eventId}: {o.status.value} {json.dumps(detail)}", file=out)
    if len(outcomes) != len(samples):
        print(f"\nMissing outcomes: got {len(outcomes)} of {len(samples)}", file=out)
    print(
        "\nDemo " + ("finished: every event has the outcome it should." if ok else "FAILED."),
        file=out,
    )
    return 0 if ok else 1
