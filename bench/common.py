"""What every benchmark scenario shares: the broker, the simulator process, the workload,
following an output topic, and sampling a child process's CPU and memory.

Everything runs on loopback; the broker is Tansu or Apache Kafka (`stack(broker)`), unless
KAFKA_BOOTSTRAP_SERVERS names another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from consumer.contract.events import record_key
from consumer.kafka import clients as kafka
from consumer.kafka.apache import ApacheKafka
from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker, free_port
from consumer.settings import Settings, settings_environment
from consumer.simulator.admin_client import SimulatorAdmin

TOKEN = "api-bench-token-0123456789"
PROJECT = "bench"
ENV = "production"
ON = "bench-variation-on"
OFF = "bench-variation-off"
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01, in Unix milliseconds
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the workload --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Events spread round-robin over `segments` segments and `flags` flags.

    Segment events add one org key to a segment's included targets (the all-or-nothing segment
    PATCH); flag events schedule the removal of one of the flag's individual targets (the
    expiring-targets PATCH, answered per instruction). Every event succeeds.
    """

    segments: int = 100
    flags: int = 20

    @property
    def resources(self) -> int:
        return self.segments + self.flags

    def event(self, index: int, prefix: str) -> dict[str, Any]:
        slot = index % self.resources
        event: dict[str, Any] = {
            "eventId": f"{prefix}-{index}",
            "projectKey": PROJECT,
            "environmentKey": ENV,
        }
        if slot < self.segments:
            event["resource"] = {"kind": "segment", "key": f"seg-{slot}"}
            event["instruction"] = {
                "kind": "addIncludedTargets",
                "contextKind": "org",
                "values": [f"{prefix}-org-{index}"],
            }
        else:
            event["resource"] = {"kind": "flag", "key": f"flag-{slot - self.segments}"}
            event["instruction"] = {
                "kind": "addExpiringTarget",
                "variationId": ON,
                "contextKind": "user",
                "contextKey": f"{prefix}-user-{index}",
                "value": FAR_FUTURE,
            }
        return event

    def record(self, index: int, prefix: str) -> tuple[bytes, bytes]:
        event = self.event(index, prefix)
        return record_key(event), json.dumps(event, separators=(",", ":")).encode()

    def seed(self, count: int, prefix: str) -> dict[str, Any]:
        """Segments and flags for `count` events; flags already target the users they expire."""
        users: list[list[str]] = [[] for _ in range(self.flags)]
        for index in range(count):
            slot = index % self.resources
            if slot >= self.segments:
                users[slot - self.segments].append(f"{prefix}-user-{index}")
        return {
            "projects": [{"key": PROJECT, "environments": [ENV]}],
            "segments": [
                {"projectKey": PROJECT, "environmentKey": ENV, "key": f"seg-{i}"}
                for i in range(self.segments)
            ],
            "flags": [
                {
                    "projectKey": PROJECT,
                    "key": f"flag-{i}",
                    "variations": [
                        {"_id": ON, "value": True, "name": "on"},
                        {"_id": OFF, "value": False, "name": "off"},
                    ],
                    "targets": {
                        ENV: [{"variationId": ON, "contextKind": "user", "values": users[i]}]
                    },
                }
                for i in range(self.flags)
            ],
        }


@dataclass(frozen=True)
class BigSegmentWorkload:
    """Events over `segments` big segments (user contexts): adds and removes of keys from a
    small pool, so keys are removed and added again within one batch (the shape whose
    in-order plan needs a request wherever a key changes sides)."""

    segments: int = 5
    keys: int = 40

    def event(self, index: int, prefix: str) -> dict[str, Any]:
        rng = random.Random(index)
        verb = "add" if rng.random() < 0.6 else "remove"
        side = "Included" if rng.random() < 0.8 else "Excluded"
        return {
            "eventId": f"{prefix}-{index}",
            "projectKey": PROJECT,
            "environmentKey": ENV,
            "resource": {"kind": "segment", "key": f"big-{index % self.segments}"},
            "instruction": {
                "kind": f"{verb}{side}Targets",
                "contextKind": "user",
                "values": [f"u{rng.randrange(self.keys)}" for _ in range(rng.randint(1, 3))],
            },
        }

    def record(self, index: int, prefix: str) -> tuple[bytes, bytes]:
        event = self.event(index, prefix)
        return record_key(event), json.dumps(event, separators=(",", ":")).encode()

    def seed(self, count: int, prefix: str) -> dict[str, Any]:
        return {
            "projects": [{"key": PROJECT, "environments": [ENV]}],
            "segments": [
                {
                    "projectKey": PROJECT,
                    "environmentKey": ENV,
                    "key": f"big-{i}",
                    "unbounded": True,
                    "unboundedContextKind": "user",
                }
                for i in range(self.segments)
            ],
        }

    def expected(self, count: int, prefix: str) -> dict[str, dict[str, set[str]]]:
        """Each segment's members after applying the events in order."""
        members = {f"big-{i}": {"included": set(), "excluded": set()} for i in range(self.segments)}
        for index in range(count):
            event = self.event(index, prefix)
            kind = event["instruction"]["kind"]
            side = members[event["resource"]["key"]][
                "included" if "Included" in kind else "excluded"
            ]
            values = event["instruction"]["values"]
            if kind.startswith("add"):
                side.update(values)
            else:
                side.difference_update(values)
        return members


# -- the broker and the simulator ----------------------------------------------------------------


@dataclass
class Stack:
    bootstrap: str
    tansu: bool
    api_url: str
    admin: SimulatorAdmin

    def settings(self, name: str, **overrides: Any) -> Settings:
        """Service settings for one scenario: its own topics and group."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "ld_base_url": self.api_url,
            "consumer_group_id": f"{name}-group",
            "consumer_input_topic": f"{name}-in",
            "consumer_results_topic": f"{name}-results",
            "consumer_dlq_topic": f"{name}-dlq",
            "consumer_http_port": 0,
            **(TANSU_SETTINGS if self.tansu else {}),
        }
        values.update(overrides)
        return Settings(**values)

    async def topics(self, settings: Settings, partitions: int) -> None:
        await kafka.ensure_service_topics(settings, partitions, partitions, 1)

    async def simulator(
        self,
        seed: dict[str, Any],
        *,
        latency_ms: int = 0,
        route_limit: int = 1_000_000,
        window_ms: int = 10_000,
    ) -> None:
        """Fresh simulator state for a scenario."""
        await self.admin.reset()
        await self.admin.clear_requests()
        await self.admin.set_faults(latency_ms=[latency_ms, latency_ms])
        await self.admin.set_limits(
            route_limit=route_limit, global_limit=1_000_000, window_ms=window_ms
        )
        await self.admin.seed(seed)


BROKERS = ("tansu", "apache")


@contextlib.asynccontextmanager
async def stack(broker: str = "tansu") -> AsyncIterator[Stack]:
    """The broker (KAFKA_BOOTSTRAP_SERVERS when set, else `broker`: Tansu or an Apache Kafka
    node started here) and the simulator, for one benchmark run."""
    with contextlib.ExitStack() as exits:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        tansu = not bootstrap and broker == "tansu"
        if tansu:
            bootstrap = exits.enter_context(TansuBroker()).bootstrap_servers
        elif not bootstrap:
            bootstrap = exits.enter_context(ApacheKafka(nodes=1)).bootstrap_servers
        port = free_port()
        api = await asyncio.create_subprocess_exec(
            *consumer_command(),
            "fake-api",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--request-log",
            "0",
            env={**os.environ, "LOG_LEVEL": "warning"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            async with SimulatorAdmin(url) as admin:
                await _wait_for(admin)
                yield Stack(bootstrap, tansu, url, admin)
        finally:
            with contextlib.suppress(ProcessLookupError):
                api.send_signal(signal.SIGINT)
            await api.wait()


async def _wait_for(admin: SimulatorAdmin, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.stats()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def consumer_command() -> list[str]:
    return [sys.executable, "-m", "consumer"]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `ld-targeting-consumer run` use `settings`."""
    return {
        **os.environ,
        **settings_environment(settings),
        "LD_API_TOKEN": TOKEN,
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        **extra,
    }


# -- producing -----------------------------------------------------------------------------------


async def produce_backlog(
    settings: Settings,
    workload: Workload | BigSegmentWorkload,
    count: int,
    prefix: str,
    start: int = 0,
) -> None:
    producer = AIOKafkaProducer(
        **kafka.common_config(settings), linger_ms=20, max_batch_size=256 * 1024, acks=1
    )
    await producer.start()
    try:
        futures = []
        for index in range(start, start + count):
            key, value = workload.record(index, prefix)
            futures.append(await producer.send(settings.consumer_input_topic, value, key=key))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def next_reset_ms(api_url: str) -> float:
    """When the simulator's current rate-limit window ends (epoch ms), read as any client
    reads it: from an answer's `X-Ratelimit-Reset` (one request of another route)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{api_url}/api/v2/caller-identity", headers={"Authorization": TOKEN}
        ) as response,
    ):
        return float(response.headers["X-Ratelimit-Reset"])


# -- following an output topic -------------------------------------------------------------------


@dataclass
class Followed:
    count: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    # (partition, offset) of the input record -> (outcome timestamp, time seen), for latency
    by_source: dict[tuple[int, int], tuple[int, float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)


async def follow(
    settings: Settings,
    topic: str,
    *,
    until: int,
    timeout: float,
    sources: bool = False,
    on_poll: Any = None,
) -> Followed:
    """Read `topic` from the beginning until `until` records were seen (or `timeout`)."""
    partitions = await kafka.topic_partitions(settings, topic)
    seen = Followed()
    deadline = time.monotonic() + timeout
    async with kafka.reading(settings, fetch_max_wait_ms=10) as consumer:
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        while seen.count < until and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
            now = time.time()
            for records in batches.values():
                seen.count += len(records)
                for record in records:
                    ts = record.timestamp
                    if seen.first_ts_ms is None or ts < seen.first_ts_ms:
                        seen.first_ts_ms = ts
                    if seen.last_ts_ms is None or ts > seen.last_ts_ms:
                        seen.last_ts_ms = ts
                    if sources:
                        headers = dict(record.headers)
                        source = (
                            int(headers["ldc.source.partition"]),
                            int(headers["ldc.source.offset"]),
                        )
                        seen.by_source[source] = (ts, now)
            if on_poll is not None:
                on_poll()
    return seen


# -- child processes -----------------------------------------------------------------------------


class Child:
    """A child process whose CPU time and peak resident memory are sampled from /proc."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.peak_rss_mib = 0.0
        self.cpu_s = 0.0
        # BENCH_CHILD_LOG=FILE keeps what the children write to stderr (their logs).
        log = os.environ.get("BENCH_CHILD_LOG")
        self._log: Any = open(log, "ab") if log else asyncio.subprocess.DEVNULL  # noqa: SIM115

    async def start(self) -> Child:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            # Not the checkout: `python -m consumer` must import the version installed in the
            # interpreter it runs with (see --service-python), not the one in the current
            # directory.
            cwd=tempfile.gettempdir(),
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        return self

    def sample(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        pid = self.process.pid
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mib = max(self.peak_rss_mib, int(line.split()[1]) / 1024)
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` (after a last sample) and wait for the exit; returns its code. The
        same child may be started again (a restart after a kill)."""
        assert self.process is not None
        self.sample()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)
        await self.process.communicate()
        assert self.process.returncode is not None
        return self.process.returncode

    async def wait(self) -> bytes:
        assert self.process is not None
        out, _ = await self.process.communicate()
        return out


class Members:
    """Child processes run side by side (members of one consumer group), measured together."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @property
    def cpu_s(self) -> float:
        return sum(child.cpu_s for child in self.children)

    @property
    def peak_rss_mib(self) -> float:
        """Of the largest member: what each process needs."""
        return max(child.peak_rss_mib for child in self.children)

    async def start(self) -> None:
        for child in self.children:
            await child.start()

    def sample(self) -> None:
        for child in self.children:
            child.sample()

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]
