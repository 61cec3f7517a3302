from aiokafka.structs import TopicPartition

from consumer.service.batcher import reading_backlog


def test_a_backlog_is_a_full_fetch_behind_while_fetches_return_records() -> None:
    a, b = TopicPartition("in", 0), TopicPartition("in", 1)
    fetched = {a: 100, b: 50}
    assert reading_backlog(fetched, {a: 400, b: 250}, since_records=0.0, threshold=500)
    assert not reading_backlog(fetched, {a: 120, b: 55}, since_records=0.0, threshold=500)
    assert not reading_backlog(fetched, {a: None, b: None}, since_records=0.0, threshold=500)
    # One empty fetch does not end a backlog; a second of them does, whatever the ends say
    # (offsets that never come back as records).
    assert reading_backlog(fetched, {a: 10_000, b: 50}, since_records=0.1, threshold=500)
    assert not reading_backlog(fetched, {a: 10_000, b: 50}, since_records=1.5, threshold=500)
