"""`ld-targeting-consumer broker`: the embedded broker (Tansu) on a port, for running the other
commands by hand.

It starts Tansu, creates the three topics with the partition counts asked for, prints the
environment the other terminals need (the Tansu client settings, `consumer/kafka/tansu.py`),
and runs until SIGINT or SIGTERM. Memory storage: topics, records and offsets are gone when it
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TextIO

from consumer.cli_errors import EXIT_OK, CommandFailed
from consumer.kafka import clients as kafka
from consumer.kafka.tansu import TANSU_SETTINGS, TansuBroker
from consumer.listening import CannotListen
from consumer.settings import Settings
from consumer.signals import on_stop

# How often the broker process is looked at while waiting for a signal.
WATCH_INTERVAL_S = 0.5


def environment(settings: Settings) -> dict[str, str]:
    """The variables the other commands need to use this broker, as `export` values: its
    address, the Tansu client settings, and the topic names when they are not the defaults."""
    names = ["kafka_bootstrap_servers", *TANSU_SETTINGS]
    for name in ("consumer_input_topic", "consumer_results_topic", "consumer_dlq_topic"):
        if getattr(settings, name) != Settings.model_fields[name].default:
            names.append(name)
    values: dict[str, str] = {}
    for name in names:
        value = getattr(settings, name)
        values[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


async def serve(
    broker: TansuBroker, settings: Settings, partitions: dict[str, int], out: TextIO
) -> int:
    """Run `broker` with `partitions` (topic -> count) created until SIGINT/SIGTERM.

    `settings` are the clients' settings for this broker (its address, the Tansu settings).
    """
    stop = asyncio.Event()
    on_stop(stop)
    try:
        broker.start()
    except CannotListen as exc:
        exc.setting, exc.host_setting = "--port", "--host"
        raise
    try:
        await kafka.ensure_topics(settings, partitions)
        topics = ", ".join(f"{name} ({count})" for name, count in partitions.items())
        print(f"# Tansu (Kafka protocol, memory storage) on {broker.bootstrap_servers}", file=out)
        print(f"# topics (partitions): {topics}", file=out)
        print("# for the other commands, in every terminal:", file=out)
        for name, value in environment(settings).items():
            print(f"export {name}={value}", file=out)
        print("# Ctrl-C stops the broker; its topics and records are then gone", file=out)
        out.flush()
        while not stop.is_set():
            code = broker.exit_code()
            if code is not None:
                raise CommandFailed(f"the broker (tansu) exited with code {code}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
    finally:
        broker.stop()
    print("# broker stopped", file=out, flush=True)
    return EXIT_OK
