"""Replay's identity rule (replay.py, rule 1) and the wording helpers, without a broker."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from consumer.commands.replay import original_of, replay_count, replay_headers
from consumer.commands.text import clip, plural
from consumer.contract.dead_letters import REPLAY_COUNT, REPLAY_OF, replay_of


def dead_letter(headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord("in.dlq", 0, 42, 0, 0, b"k", b"v", None, 1, 1, headers)


def test_a_dead_letter_names_its_original_else_it_is_its_own() -> None:
    named = [
        ("ldc.original.topic", b"in"),
        ("ldc.original.partition", b"3"),
        ("ldc.original.offset", b"17"),
    ]
    assert original_of(dead_letter(named), dict(named)) == ("in", 3, 17)
    assert original_of(dead_letter([]), {}) == ("in.dlq", 0, 42)
    broken = dict(named) | {"ldc.original.offset": b"x"}
    assert original_of(dead_letter(list(broken.items())), broken) == ("in.dlq", 0, 42)


def test_a_copy_carries_the_original_and_the_next_count_and_no_other_ldc_header() -> None:
    headers = [("trace", b"t"), ("ldc.status", b"rejected"), (REPLAY_COUNT, b"2")]
    copy = replay_headers(headers, ("in", 3, 17), replay_count(headers) + 1)
    assert copy == [("trace", b"t"), (REPLAY_COUNT, b"3"), (REPLAY_OF, b"in/3/17")]
    # The consumer reads it back (dlq.dead_letter_headers names that original).
    assert replay_of(copy) == ("in", 3, 17)
    assert replay_of([(REPLAY_OF, b"in/x/1")]) is None
    assert replay_of([("trace", b"in/3/17")]) is None


def test_wording() -> None:
    assert [plural(n, "outcome") for n in (0, 1, 2)] == ["0 outcomes", "1 outcome", "2 outcomes"]
    assert clip("short", 10) == "short"
    text = "not_found: HTTP 404 segment no-such-segment does not exist in production"
    clipped = clip(text, 40)
    assert len(clipped) <= 40 and clipped.endswith("…")
    assert text.startswith(clipped[:-1]) and text[len(clipped) - 1] == " "  # a whole word
