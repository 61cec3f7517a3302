"""Halted partitions (halts.py) and the fetch errors that halt one (kafka/clients.py)."""

from __future__ import annotations

from aiokafka.errors import OffsetOutOfRangeError, UnsupportedCodecError
from aiokafka.structs import TopicPartition

from consumer.kafka import clients as kafka
from consumer.service.halts import Halt, Halts

TP = TopicPartition("in", 3)


def test_the_first_reason_stays_and_a_revoke_ends_the_halt() -> None:
    halts = Halts()
    assert halts.add(Halt(TP, 7, "cannot decode"))
    assert not halts.add(Halt(TP, 9, "something else"))
    assert halts.describe() == ["partition in[3] stopped at offset 7: cannot decode"]
    assert TP in halts and len(halts) == 1
    halts.clear({TP})
    assert halts.describe() == [] and halts.partitions() == set()


def _unpack(tp: TopicPartition) -> None:
    """Stands for aiokafka's fetcher: the partition is a local `tp` of the raising frame."""
    raise UnsupportedCodecError("Libraries for lz4 compression codec not found")


def test_the_partition_of_a_decoding_error_is_found_in_the_frames_it_passed() -> None:
    try:
        _unpack(TP)
    except UnsupportedCodecError as exc:
        assert kafka.failed_partition(exc) == TP
    assert kafka.failed_partition(UnsupportedCodecError("no frames")) is None


def test_an_out_of_range_error_names_its_partition() -> None:
    assert kafka.failed_partition(OffsetOutOfRangeError({TP: 42})) == TP
