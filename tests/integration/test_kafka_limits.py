"""What a real Kafka refuses or removes: committed offsets deleted by retention, and records
too large for the results or dead-letter topic."""

from __future__ import annotations

import pytest
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumer.contract.outcomes import (
    OUTCOME_SHRUNK,
    BatchPosition,
    InstructionResult,
    Outcome,
    Status,
    completed_now,
    outcome_for,
)
from consumer.kafka import clients as kafka
from consumer.service.publisher import Publisher
from consumer.settings import Settings
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import pending
from tests.integration.commands import command
from tests.integration.harness import (
    committed,
    create_topics,
    environment,
    events,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
    wait_until,
)
from tests.integration.test_check import rows


@pytest.fixture
def apache(broker_kind: str) -> None:
    if broker_kind == "tansu":
        pytest.skip("Tansu has no delete_records and no topic record limits (TANSU.md)")


async def _commit(settings: Settings, tp: TopicPartition, offset: int) -> None:
    """The group's committed offset, as a member that stopped there left it."""
    group = AIOKafkaConsumer(**kafka.consumer_config(settings))
    await group.start()
    try:
        group.assign([tp])
        await group.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await group.stop()


async def _delete_before(settings: Settings, tp: TopicPartition, offset: int) -> None:
    admin = AIOKafkaAdminClient(**kafka.common_config(settings))
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=offset)})
    finally:
        await admin.close()


async def _retention_ate_the_committed_offset(
    settings: Settings, admin: SimulatorAdmin
) -> TopicPartition:
    """20 records; the group committed 5; retention deleted everything before 10."""
    await admin.seed(seed(segments={"s0": {}}))
    await create_topics(settings, partitions=1)
    tp = TopicPartition(settings.consumer_input_topic, 0)
    await produce(settings, events(20, 1))
    await _commit(settings, tp, 5)
    await _delete_before(settings, tp, 10)
    return tp


async def test_retention_past_the_committed_offset_follows_the_reset_policy_and_says_so(
    apache: None,
    kafka_bootstrap: str,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
) -> None:
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=False)
    tp = await _retention_ate_the_committed_offset(settings, admin)
    with structlog.testing.capture_logs() as logs:
        async with running(settings) as handle:
            await wait_until(lambda: handle.service.leases.get(tp).offsets.committed == 20, 30)
            resets = handle.service.metrics.offset_resets.labels(policy="earliest")._value.get()
            assert resets == 1
    found = await outcomes(settings, 11, timeout=5)
    assert sorted(o.source.offset for o in found) == list(range(10, 20))  # 5-9 are gone
    [line] = [entry for entry in logs if entry["event"] == "partition.offset_reset"]
    assert line["offset"] == 5 and line["policy"] == "earliest" and line["partition"] == 0


async def test_retention_past_the_committed_offset_with_no_reset_halts_the_partition(
    apache: None, kafka_bootstrap: str, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=False, consumer_auto_offset_reset="none"
    )
    tp = await _retention_ate_the_committed_offset(settings, admin)
    async with running(settings) as handle:
        await wait_until(lambda: bool(handle.service.vitals.halted), 30)
        [reason] = handle.service.vitals.halted
        assert "out of range" in reason and "CONSUMER_AUTO_OFFSET_RESET=none" in reason
        assert f"[{tp.partition}] stopped at offset 5" in reason
        assert not handle.task.done()
    assert await outcomes(settings, 1, timeout=2) == []
    assert await committed(settings, [tp]) == {tp: 5}  # no guess


@pytest.mark.parametrize("limit", ["producer", "topic"])
async def test_a_dead_letter_copy_too_large_halts_its_partition_only(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    limit: str,
) -> None:
    """A large invalid record on partition 0 cannot be dead-lettered byte for byte (the
    producer's limit, or the dead-letter topic's `max.message.bytes`, is below it): partition
    0 halts at it, uncommitted, with no outcome and no changed copy; partition 1 goes on; the
    member never exits, and a restart halts again rather than skipping it."""
    if limit == "topic" and on_tansu:
        pytest.skip("Tansu has no topic record limits (TANSU.md)")
    await admin.seed(seed(segments={"s0": {}}))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=on_tansu,
        **({"kafka_producer_max_request_size": 8_192} if limit == "producer" else {}),
    )
    await kafka.ensure_topics(
        settings,
        kafka.service_topics(settings, 2, 2, 1),
        configs={settings.consumer_dlq_topic: {"max.message.bytes": "8192"}}
        if limit == "topic"
        else {},
    )
    topic = settings.consumer_input_topic
    big = b'{"not": "an event", "padding": "' + b"x" * 20_000 + b'"}'
    upstream = settings.model_copy(update={"kafka_producer_max_request_size": 1_048_576})
    await produce(upstream, [(b"k", b"{}", []), (b"k", big, []), (b"k", b"{}", [])], partition=0)
    await produce(upstream, events(3, 1), partition=1)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    for _ in range(2):  # and again after a restart
        await _halts_at_the_large_record(settings, tps)
        assert await committed(settings, tps) == {tps[0]: 1, tps[1]: 3}
    found = await outcomes(settings, 6, timeout=3)
    by_source = {(o.source.partition, o.source.offset) for o in found}
    assert (0, 1) not in by_source  # the large one got no outcome
    assert {(1, 0), (1, 1), (1, 2), (0, 0)} <= by_source


async def _halts_at_the_large_record(settings: Settings, tps: list[TopicPartition]) -> None:
    async with running(settings) as handle:
        service = handle.service
        await wait_until(lambda: bool(service.vitals.halted), 30)
        await wait_until(lambda: service.leases.get(tps[1]).offsets.committed == 3, 30)
        await wait_until(lambda: service.leases.get(tps[0]).offsets.committed == 1, 30)
        [reason] = service.vitals.halted
        assert f"{tps[0].topic}[0] stopped at offset 1" in reason
        assert "dead-letter copy" in reason and "KAFKA_PRODUCER_MAX_REQUEST_SIZE" in reason
        assert not handle.task.done()


async def test_check_warns_when_the_dead_letter_topic_cannot_hold_an_input_record(
    apache: None, kafka_bootstrap: str, simulator: RunningSimulator
) -> None:
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=False)
    await kafka.ensure_topics(
        settings,
        kafka.service_topics(settings, 1, 1, 1),
        configs={settings.consumer_dlq_topic: {"max.message.bytes": "100000"}},
    )
    found = rows(await command("check", "--json", env=environment(settings)))
    status, detail = found["record sizes"]
    assert status == "warn"
    assert "dead-letter topic's max.message.bytes (100000 bytes)" in detail
    await kafka.ensure_service_topics(settings, 1, 1, 1)


async def test_an_outcome_too_large_for_the_results_topic_is_shrunk_and_says_so(
    apache: None, kafka_bootstrap: str, simulator: RunningSimulator
) -> None:
    """Through the publisher against a results topic that takes 2,000 bytes: an outcome with
    a large API item goes out without it, with the `ldc.outcome.shrunk` header."""
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=False)
    await kafka.ensure_topics(
        settings,
        kafka.service_topics(settings, 1, 1, 1),
        configs={settings.consumer_results_topic: {"max.message.bytes": "2000"}},
    )
    item = pending(topic=settings.consumer_input_topic)
    result = InstructionResult(
        Status.SUCCEEDED, BatchPosition("b", 1, 0), 200, 1, None, item={"blob": "y" * 5_000}
    )
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        publisher = Publisher(
            producer,
            results_topic=settings.consumer_results_topic,
            dlq_topic=settings.consumer_dlq_topic,
        )
        refused = await publisher.publish(
            [(item.record, outcome_for(item, result, completed_now()))]
        )
    finally:
        await producer.stop()
    assert refused == []
    [record] = await kafka.read_topic(
        settings, settings.consumer_results_topic, until=lambda r: len(r) >= 1, timeout=10
    )
    assert OUTCOME_SHRUNK in dict(record.headers)
    outcome = Outcome.model_validate_json(record.value)
    assert outcome.item is None and outcome.status is Status.SUCCEEDED
