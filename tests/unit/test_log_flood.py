"""logs.LibraryFlood: aiokafka's repeated lines are held back and counted, others pass."""

from __future__ import annotations

import io
import json
import logging

from aiokafka.structs import TopicPartition

from consumer import logs
from consumer.kafka import clients as kafka


def record(
    at: float,
    *,
    name: str = "aiokafka.conn",
    msg: str = "Unable connect to node with id %s: %s",
    args: tuple[object, ...] = (1, "refused"),
    level: int = logging.ERROR,
) -> logging.LogRecord:
    found = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    found.created = at
    return found


def test_the_first_passes_the_repeats_are_held_then_counted_once_a_window() -> None:
    flood = logs.LibraryFlood(window=10)
    passed = [r for r in (record(t / 47) for t in range(47 * 25)) if flood.filter(r)]
    # 25 s at 47 lines a second: the first, then one line per 10 s carrying the count.
    assert [r.getMessage() for r in passed] == [
        "Unable connect to node with id 1: refused",
        "Unable connect to node with id 1: refused (469 more like this in the last 10 s)",
        "Unable connect to node with id 1: refused (469 more like this in the last 10 s)",
    ]


def test_templates_and_loggers_are_counted_apart() -> None:
    flood = logs.LibraryFlood(window=10)
    assert flood.filter(record(0.0))
    assert flood.filter(record(0.1, msg="Unable to update metadata from %s", args=([1],)))
    assert flood.filter(record(0.2, name="aiokafka.consumer.fetcher"))
    assert not flood.filter(record(0.3, args=(2, "timed out")))  # same template, other node


def test_other_loggers_and_lines_below_warning_pass() -> None:
    flood = logs.LibraryFlood(window=10)
    for at in range(5):
        assert flood.filter(record(at / 10, name="consumer.service.lifecycle"))
        assert flood.filter(record(at / 10, level=logging.INFO))
        assert flood.filter(record(at / 10, name="aiokafkax"))


def test_configure_installs_it_after_the_offset_reset_listener() -> None:
    """The fetcher's own filter (kafka.watching_offset_resets) still sees its lines first."""
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    seen: list[int] = []
    with kafka.watching_offset_resets(lambda tp, offset: seen.append(offset)):
        for offset in range(3):
            fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
            fetcher.info(
                "Fetch offset %s is out of range for partition %s, resetting offset",
                offset,
                TopicPartition("in", 0),
            )
    lines = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert lines == ["Failed fetch messages from 1: NodeNotReadyError"]
    assert seen == [0, 1, 2]
