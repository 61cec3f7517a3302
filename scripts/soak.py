"""Soak the consumer under faults and print figures (a benchmark, not a test).

    .venv/bin/python scripts/soak.py                      # 20k records under faults, one kill
    .venv/bin/python scripts/soak.py --records 1000000 --no-faults --no-kill --max-seconds 120

Starts Tansu (unless KAFKA_BOOTSTRAP_SERVERS is set) and the simulator in this process, produces
the records, runs `ld-targeting-consumer run` as a child process (SIGKILLed once mid-stream and
started again, by default), waits until every record has an outcome, stops it with SIGTERM and
prints: records, outcomes by status, API requests, 429s received, requests sent early (before a
429's reset), instructions applied twice, peak memory of the consumer process, throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from consumer import kafka
from consumer.fake_api import Faults, Limits, RunningSimulator, Simulator
from consumer.fake_api.state import SeedIn
from consumer.samples import recommended_key
from consumer.settings import Settings
from consumer.tansu import TANSU_SETTINGS, TansuBroker

TOKEN = "api-soak-token"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=200, help="distinct segments (request URLs)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument(
        "--route-limit", type=int, default=0, help="requests per route per window (0: none)"
    )
    parser.add_argument("--window-ms", type=int, default=1_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    return parser.parse_args()


def _event(index: int, keys: int) -> tuple[bytes, bytes]:
    event = {
        "eventId": f"soak-{index}",
        "projectKey": "soak",
        "environmentKey": "production",
        "resource": {"kind": "segment", "key": f"s{index % keys}"},
        "instruction": {
            "kind": "addIncludedTargets",
            "contextKind": "org",
            "values": [f"v{index}"],
        },
    }
    return recommended_key(event), json.dumps(event).encode()


class Child:
    """The consumer as a child process, with its peak resident memory sampled."""

    def __init__(self, settings: Settings) -> None:
        env = dict(os.environ)
        for name, value in settings.model_dump().items():
            if value is not None and name != "ld_api_token":
                env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(LD_API_TOKEN=TOKEN, LOG_LEVEL="warning", LOG_FORMAT="json")
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.peak_kib = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer", "run", env=self.env, stderr=asyncio.subprocess.DEVNULL
        )

    def sample(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    async def stop(self, signum: int) -> int:
        assert self.process is not None
        self.sample()
        self.process.send_signal(signum)
        return await self.process.wait()


async def _count_outcomes(
    settings: Settings, stop_at: int, child: Child, deadline: float
) -> Counter[tuple[int, int]]:
    """Follow the results topic until `stop_at` distinct records have an outcome."""
    partitions = await kafka.topic_partitions(settings, settings.consumer_results_topic)
    consumer = AIOKafkaConsumer(
        **kafka.common_config(settings), group_id=None, fetch_max_wait_ms=100
    )
    await consumer.start()
    seen: Counter[tuple[int, int]] = Counter()
    statuses: Counter[str] = Counter()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        while len(seen) < stop_at and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    outcome = json.loads(record.value)
                    seen[(outcome["source"]["partition"], outcome["source"]["offset"])] += 1
                    statuses[outcome["status"]] += 1
            child.sample()
    finally:
        await consumer.stop()
    seen_statuses.clear()
    seen_statuses.update(statuses)
    return seen


seen_statuses: Counter[str] = Counter()


async def main() -> int:
    args = _args()
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        tansu = not bootstrap
        if tansu:
            bootstrap = stack.enter_context(TansuBroker()).bootstrap_servers
        faults = (
            Faults()
            if args.no_faults
            else Faults(
                latency_ms=(5, 50),
                error_rate=0.2,
                rate_limit_rate=0.1,
                rate_limit_reset_ms=300,
                drop_rate=0.02,
                conflict_rate=0.02,
            )
        )
        limits = Limits(window_ms=args.window_ms, route_limit=args.route_limit or 1_000_000)
        seed = SeedIn.model_validate(
            {
                "projects": [{"key": "soak", "environments": ["production"]}],
                "segments": [
                    {"projectKey": "soak", "environmentKey": "production", "key": f"s{i}"}
                    for i in range(args.keys)
                ],
            }
        )
        simulator = Simulator({TOKEN}, faults=faults, limits=limits, seed=seed, max_log=5_000_000)
        async with RunningSimulator(simulator) as api:
            suffix = str(int(time.time()))
            settings = Settings(
                kafka_bootstrap_servers=bootstrap,
                ld_base_url=api.base_url,
                consumer_group_id=f"soak-{suffix}",
                consumer_input_topic=f"soak-in-{suffix}",
                consumer_results_topic=f"soak-results-{suffix}",
                consumer_dlq_topic=f"soak-dlq-{suffix}",
                consumer_http_port=0,
                **(TANSU_SETTINGS if tansu else {}),
            )
            await kafka.ensure_topics(
                settings,
                {
                    settings.consumer_input_topic: args.partitions,
                    settings.consumer_results_topic: args.partitions,
                    settings.consumer_dlq_topic: 1,
                },
            )
            producer = kafka.make_producer(settings)
            await producer.start()
            started = time.monotonic()
            for index in range(args.records):
                key, value = _event(index, args.keys)
                await producer.send(settings.consumer_input_topic, value, key=key)
            await producer.flush()
            await producer.stop()
            print(
                f"produced {args.records} records in {time.monotonic() - started:.1f} s", flush=True
            )

            child = Child(settings)
            deadline = time.monotonic() + args.max_seconds
            started = time.monotonic()
            await child.start()
            kills = 0
            if not args.no_kill:
                await _count_outcomes(settings, args.records // 2, child, deadline)
                await child.stop(signal.SIGKILL)
                kills = 1
                print("killed the consumer (SIGKILL) half way; starting it again", flush=True)
                await child.start()
            seen = await _count_outcomes(settings, args.records, child, deadline)
            elapsed = time.monotonic() - started
            code = await child.stop(signal.SIGTERM)

        applied: Counter[str] = Counter()
        for request in simulator.requests:
            if request["method"] == "PATCH" and request["status"] == 200:
                for instruction in request["body"]["instructions"]:
                    applied.update(instruction["values"])
        stats = simulator.stats
        rows = [
            ("records", args.records),
            ("records with an outcome", len(seen)),
            ("outcomes by status", dict(seen_statuses)),
            ("records with two outcomes or more", sum(1 for n in seen.values() if n > 1)),
            ("API requests", stats["requests"]),
            ("429s received", stats["rate_limited"]),
            ("requests sent early (before a 429's reset)", stats["early_requests"]),
            ("instructions applied twice", sum(n - 1 for n in applied.values() if n > 1)),
            ("kills (SIGKILL) and restarts", kills),
            ("exit code after SIGTERM", code),
            ("peak memory of the consumer (VmHWM)", f"{child.peak_kib / 1024:.1f} MiB"),
            ("elapsed", f"{elapsed:.1f} s"),
            ("throughput", f"{len(seen) / elapsed:.0f} records/s"),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
    return 0 if len(seen) == args.records and code == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
