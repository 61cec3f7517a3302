"""Soak the consumer under faults and print figures (a benchmark, not a test).

    .venv/bin/python bench/soak.py                        # 20k records under faults, one kill
    .venv/bin/python bench/soak.py --records 1000000 --no-faults --no-kill --max-seconds 120
    .venv/bin/python bench/soak.py --churn                # 100k records, a steady stream while
                                                          # members join, leave and are killed

Churn mode: the records are chains of changes per target (consumer/simulator/chains.py), the
adds applied first, then the updates produced as a steady stream at --rate while a scheduler
starts, stops (SIGTERM) and kills (SIGKILL) `run` processes every --churn-every seconds (at
most --members at once, never none). It prints records, records without an outcome, outcomes
by status, repeats, stale targets (final state against in-order application), committed
offsets against the end, joins/leaves/kills and peak memory.

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
import random
import signal
import sys
import time
from collections import Counter

from aiokafka.admin import AIOKafkaAdminClient
from common import TOKEN, Child, consumer_command, service_env

from consumer.contract.events import record_key
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker
from consumer.settings import Settings
from consumer.simulator import Faults, Limits, RunningSimulator, Simulator, chains
from consumer.simulator.state import SeedIn


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
    parser.add_argument("--churn", action="store_true", help="see above")
    parser.add_argument("--rate", type=int, default=1_000, help="churn: events/s produced")
    parser.add_argument("--members", type=int, default=3, help="churn: most members at once")
    parser.add_argument("--churn-every", type=float, default=3.0, help="churn: seconds")
    parser.add_argument("--seed", type=int, default=1, help="churn: the scheduler's random seed")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=500,
        help="churn: KAFKA_FETCH_MAX_WAIT_MS; a long one makes fetches straddle rebalances",
    )
    args = parser.parse_args()
    if args.churn and "--records" not in sys.argv:
        args.records = 100_000
    return args


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
    return record_key(event), json.dumps(event).encode()


def _child(settings: Settings) -> Child:
    """`ld-targeting-consumer run` for these settings (common.Child: CPU and peak memory)."""
    return Child([*consumer_command(), "run"], service_env(settings, LOG_LEVEL="warning"))


async def _count_outcomes(
    settings: Settings, stop_at: int, children: list[Child], deadline: float
) -> tuple[Counter[tuple[int, int]], Counter[str]]:
    """Follow the results topic until `stop_at` distinct records have an outcome: how many
    outcomes each (partition, offset) got, and the statuses."""
    partitions = await kafka.topic_partitions(settings, settings.consumer_results_topic)
    seen: Counter[tuple[int, int]] = Counter()
    statuses: Counter[str] = Counter()
    async with kafka.reading(settings) as consumer:
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        while len(seen) < stop_at and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    outcome = json.loads(record.value)
                    seen[(outcome["source"]["partition"], outcome["source"]["offset"])] += 1
                    statuses[outcome["status"]] += 1
            for child in children:
                child.sample()
    return seen, statuses


async def _setup(
    bootstrap: str | None, base_url: str, name: str, partitions: int, tansu: bool
) -> Settings:
    """The run's settings (topics and group of its own) and its topics."""
    suffix = str(int(time.time()))
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        ld_base_url=base_url,
        consumer_group_id=f"{name}-{suffix}",
        consumer_input_topic=f"{name}-in-{suffix}",
        consumer_results_topic=f"{name}-results-{suffix}",
        consumer_dlq_topic=f"{name}-dlq-{suffix}",
        consumer_http_port=0,
        **(TANSU_SETTINGS if tansu else {}),
    )
    await kafka.ensure_service_topics(settings, partitions, partitions, 1)
    return settings


def _print(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", flush=True)


async def main() -> int:
    args = _args()
    if args.churn:
        return await churn(args)
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
            settings = await _setup(bootstrap, api.base_url, "soak", args.partitions, tansu)
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

            child = _child(settings)
            deadline = time.monotonic() + args.max_seconds
            started = time.monotonic()
            await child.start()
            kills = 0
            if not args.no_kill:
                await _count_outcomes(settings, args.records // 2, [child], deadline)
                await child.stop(signal.SIGKILL)
                kills = 1
                print("killed the consumer (SIGKILL) half way; starting it again", flush=True)
                await child.start()
            seen, statuses = await _count_outcomes(settings, args.records, [child], deadline)
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
            ("outcomes by status", dict(statuses)),
            ("records with two outcomes or more", sum(1 for n in seen.values() if n > 1)),
            ("API requests", stats["requests"]),
            ("429s received", stats["rate_limited"]),
            ("requests sent early (before a 429's reset)", stats["early_requests"]),
            ("instructions applied twice", sum(n - 1 for n in applied.values() if n > 1)),
            ("kills (SIGKILL) and restarts", kills),
            ("exit code after SIGTERM", code),
            ("peak memory of the consumer (VmHWM)", f"{child.peak_rss_mib:.1f} MiB"),
            ("elapsed", f"{elapsed:.1f} s"),
            ("throughput", f"{len(seen) / elapsed:.0f} records/s"),
        ]
        _print(rows)
    return 0 if len(seen) == args.records and code == 0 else 1


# -- churn mode ---------------------------------------------------------------------------------


class Churn:
    """Members as child processes, started, stopped and killed by a seeded schedule."""

    def __init__(self, settings: Settings, most: int, seed: int) -> None:
        self.settings = settings
        self.most = most
        self.rng = random.Random(seed)
        self.live: list[Child] = []
        self.gone: list[Child] = []
        self.counts: Counter[str] = Counter()

    async def join(self) -> None:
        child = _child(self.settings)
        await child.start()
        self.live.append(child)
        self.counts["joins"] += 1

    async def step(self) -> None:
        moves = ["join"] if len(self.live) < self.most else []
        if len(self.live) > 1:
            moves += ["leave", "kill"]
        move = self.rng.choice(moves)
        if move == "join":
            await self.join()
            return
        child = self.live.pop(self.rng.randrange(len(self.live)))
        self.gone.append(child)
        code = await child.stop(signal.SIGTERM if move == "leave" else signal.SIGKILL)
        self.counts["leaves (SIGTERM)" if move == "leave" else "kills (SIGKILL)"] += 1
        if move == "leave" and code != 0:
            self.counts["leaves with a non-zero exit"] += 1

    async def run(self, every: float, until: asyncio.Event) -> None:
        while not until.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), every * self.rng.uniform(0.5, 1.5))
            if not until.is_set():
                await self.step()

    def children(self) -> list[Child]:
        return self.live + self.gone


async def _stream(
    settings: Settings, events: list[tuple[chains.Target, int, bytes, bytes]], rate: int
) -> dict[chains.Target, int]:
    """Produce at `rate` events/s, each chunk acknowledged before the next (keeps each
    target's order); returns each target's last step."""
    producer = kafka.make_producer(settings)
    await producer.start()
    last: dict[chains.Target, int] = {}
    chunk = max(1, rate // 20)
    started = time.monotonic()
    try:
        for i in range(0, len(events), chunk):
            part = events[i : i + chunk]
            futures = [
                await producer.send(settings.consumer_input_topic, value, key=key)
                for _, _, key, value in part
            ]
            await asyncio.gather(*futures)
            for target, step, _, _ in part:
                last[target] = step
            ahead = started + (i + len(part)) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return last


async def _committed(settings: Settings) -> dict[int, int]:
    tps = await kafka.topic_partitions(settings, settings.consumer_input_topic)
    admin = AIOKafkaAdminClient(**kafka.common_config(settings))
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(settings.consumer_group_id, partitions=tps)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if meta is not None}


async def churn(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        tansu = not bootstrap
        if tansu:
            bootstrap = stack.enter_context(TansuBroker()).bootstrap_servers
        per_segment = 25
        found = chains.targets(segments=args.keys, per_segment=per_segment)
        steps = max(1, -(-args.records // len(found)))
        faults = (
            Faults()
            if args.no_faults
            else Faults(
                latency_ms=(5, 1_000),  # requests on the wire at revokes
                error_rate=0.1,
                rate_limit_rate=0.02,
                rate_limit_reset_ms=300,
                drop_rate=0.01,
                conflict_rate=0.01,
                paths=["/api/v2/segments/*"],
            )
        )
        seed = SeedIn.model_validate(chains.seed(found))
        simulator = Simulator({TOKEN}, faults=Faults(), seed=seed, max_log=0)
        async with RunningSimulator(simulator) as api:
            settings = await _setup(bootstrap, api.base_url, "churn", args.partitions, tansu)
            settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": args.fetch_wait_ms})
            adds = [(t, s, k, json.dumps(e).encode()) for t, s, k, e in chains.rounds(found, 0, 0)]
            updates = [
                (t, s, k, json.dumps(e).encode()) for t, s, k, e in chains.rounds(found, 1, steps)
            ]
            total = len(adds) + len(updates)
            members = Churn(settings, args.members, args.seed)
            deadline = time.monotonic() + args.max_seconds
            await _stream(settings, adds, rate=100_000)
            await members.join()
            await _count_outcomes(settings, len(adds), members.children(), deadline)
            print(f"{len(adds)} adds applied; streaming {len(updates)} updates", flush=True)
            simulator.faults = faults
            started = time.monotonic()
            streaming_done = asyncio.Event()
            scheduler = asyncio.create_task(members.run(args.churn_every, streaming_done))
            last_step = await _stream(settings, updates, args.rate)
            streaming_done.set()
            await scheduler
            seen, statuses = await _count_outcomes(settings, total, members.children(), deadline)
            elapsed = time.monotonic() - started
            simulator.faults = Faults()
            await asyncio.sleep(2 * settings.consumer_commit_interval_ms / 1000)
            codes = [await child.stop(signal.SIGTERM) for child in members.live]
            committed = await _committed(settings)
        ends = dict(_all_offsets(seen))
        stale = chains.stale(simulator.store.snapshot(), last_step)
        stats = simulator.stats
        peak = max(child.peak_rss_mib for child in members.children())
        rows: list[tuple[str, object]] = [
            ("records (adds + updates)", total),
            ("records with an outcome", len(seen)),
            ("records without an outcome", total - len(seen)),
            ("outcomes by status", dict(statuses)),
            ("records with two outcomes or more (repeats)", sum(1 for n in seen.values() if n > 1)),
            ("stale targets (final state vs in-order)", len(stale)),
            ("committed offsets at the end", committed == ends),
            ("members", ", ".join(f"{k} {v}" for k, v in sorted(members.counts.items()))),
            ("exit codes of the last members (SIGTERM)", codes),
            ("API requests", stats["requests"]),
            ("429s received", stats["rate_limited"]),
            ("peak memory of a member (VmHWM)", f"{peak:.1f} MiB"),
            ("elapsed (stream and drain)", f"{elapsed:.1f} s"),
        ]
        if stale:
            rows.append(("stale, first few", sorted(stale.items())[:5]))
        _print(rows)
    ok = len(seen) == total and not stale and all(code == 0 for code in codes)
    return 0 if ok else 1


def _all_offsets(seen: Counter[tuple[int, int]]) -> list[tuple[int, int]]:
    """(partition, end offset) per partition: one past the highest offset with an outcome."""
    ends: dict[int, int] = {}
    for partition, offset in seen:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return list(ends.items())


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
