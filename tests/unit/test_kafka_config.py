from aiokafka.partitioner import DefaultPartitioner

from consumer.kafka.clients import KeyPartitioner


def test_key_partitions_are_the_default_partitioners() -> None:
    default = DefaultPartitioner()
    memoised = KeyPartitioner(max_keys=50)  # small: the memo is cleared and refilled
    for round_ in range(2):
        for i in range(200):
            key = f"proj/env/segment/s-{i}".encode()
            for count in (1, 4, 6, 7):
                expected = default(key, list(range(count)), list(range(count)))
                assert memoised.partition(key, count) == expected, (round_, key, count)


def test_records_without_a_key_are_left_to_the_producer() -> None:
    assert KeyPartitioner().partition(None, 6) is None
