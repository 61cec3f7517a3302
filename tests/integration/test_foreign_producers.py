"""Records from an upstream producer that is not ours (librdkafka through confluent-kafka):
every compression codec, both partitioners, idempotent and transactional; and what happens
when a fetch cannot be decoded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiokafka.codec
import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumer.contract import schemas
from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.kafka import clients as kafka
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration import librdkafka
from tests.integration.harness import (
    ENV,
    PROJECT,
    Message,
    committed,
    create_topics,
    make_settings,
    outcomes,
    outcomes_covering,
    running,
    seed,
    wait_until,
)


def _messages(prefix: str, count: int, segments: int) -> list[Message]:
    found = [
        event_dict(key=f"s{i % segments}", project=PROJECT, env=ENV, values=[f"{prefix}-{i}"])
        for i in range(count)
    ]
    return [(record_key(e), encode(e), [("origin", prefix.encode())]) for e in found]


def _included(state: dict[str, Any]) -> set[str]:
    """Every key included in a segment (users, and contexts of any kind)."""
    keys: set[str] = set()
    for segment in state["segments"]:
        keys.update(segment.get("included") or [])
        for target in segment.get("includedContexts") or []:
            keys.update(target["values"])
    return keys


async def test_every_codec_and_partitioner_gets_one_valid_outcome_per_record(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    segments = 6
    await admin.seed(seed(segments={f"s{i}": {} for i in range(segments)}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=4)
    sent: list[str] = []
    for codec in librdkafka.CODECS:
        for partitioner in librdkafka.PARTITIONERS:
            prefix = f"{codec}-{partitioner}"
            messages = _messages(prefix, 12, segments)
            await asyncio.to_thread(
                librdkafka.send,
                kafka_bootstrap,
                settings.consumer_input_topic,
                messages,
                **{
                    "compression.type": codec,
                    "partitioner": partitioner,
                    "enable.idempotence": True,
                },
            )
            sent.extend(f"{prefix}-{i}" for i in range(12))
    async with running(settings):
        ends = {TopicPartition(settings.consumer_input_topic, p): 0 for p in range(4)}
        found = await outcomes_covering(settings, await _ends(settings, ends))
    validator = jsonschema.Draft202012Validator(schemas.generate()["outcome.schema.json"])
    by_source = {}
    for outcome in found:
        validator.validate(json.loads(outcome.model_dump_json(by_alias=True)))
        by_source.setdefault((outcome.source.partition, outcome.source.offset), []).append(outcome)
    assert len(by_source) == len(sent)
    assert all(len(items) == 1 for items in by_source.values())  # exactly one each
    assert {o.status for o in found} == {Status.SUCCEEDED}
    assert _included(await admin.state()) == set(sent)


async def _ends(settings: Any, tps: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    async with kafka.reading(settings) as consumer:
        return await kafka.end_offsets(consumer, list(tps))


async def test_transactions_committed_are_applied_once_aborted_never(
    kafka_bootstrap: str, broker_kind: str, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """Partition 0 ends on a commit marker, partition 1 on an abort marker: both commit
    positions reach the end offsets (markers included), and the aborted records get no
    outcome and are never applied."""
    if broker_kind == "tansu":
        pytest.skip("Tansu does not filter aborted records (tests/brokers.py: Apache Kafka)")
    await admin.seed(seed(segments={"s0": {}, "s1": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=False)
    await create_topics(settings, partitions=2)
    topic = settings.consumer_input_topic
    committed_0 = _messages("c0", 5, 2) + _messages("c1", 5, 2)
    aborted = _messages("a0", 5, 2) + _messages("a1", 5, 2)
    await asyncio.to_thread(
        librdkafka.transaction,
        kafka_bootstrap,
        topic,
        [(committed_0[:5], True), (aborted[:5], False), (committed_0[5:], True)],
        partition=0,
    )
    await asyncio.to_thread(
        librdkafka.transaction,
        kafka_bootstrap,
        topic,
        [(_messages("c2", 4, 2), True), (aborted[5:], False)],
        partition=1,
        compression="zstd",
    )
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    ends = await _ends(settings, dict.fromkeys(tps, 0))
    # 5 + marker + 5 + marker + 5 + marker; 4 + marker + 5 + marker.
    assert ends == {tps[0]: 18, tps[1]: 11}
    async with running(settings) as service:
        await wait_until(lambda: _lag_zero(service.service, tps), timeout=30)
        assert await committed(settings, tps) == ends
    found = await outcomes(settings, 15, timeout=5)  # one more than wanted: none may come
    assert len(found) == 14
    assert {o.status for o in found} == {Status.SUCCEEDED}
    applied = _included(await admin.state())
    wanted = {f"c0-{i}" for i in range(5)} | {f"c1-{i}" for i in range(5)}
    wanted |= {f"c2-{i}" for i in range(4)}
    assert applied == wanted  # nothing aborted applied


def _lag_zero(service: Any, tps: list[TopicPartition]) -> bool:
    leases = {lease.tp: lease for lease in service.leases.active()}
    if set(tps) - set(leases):
        return False
    return all(
        leases[tp].offsets.committed == service._consumer.highwater(tp)
        and leases[tp].offsets.committed > 0
        for tp in tps
    )


async def test_recovery_does_not_wait_for_records_behind_a_marker(
    kafka_bootstrap: str, broker_kind: str, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """The group's offset sits on a commit marker (what a consumer that commits only past
    data records leaves): the assignment is granted without waiting out the recovery scan's
    timeout for a record that no fetch returns."""
    if broker_kind == "tansu":
        pytest.skip("Tansu's transactions are not Kafka's (tests/brokers.py)")
    await admin.seed(seed(segments={"s0": {}}))
    settings = make_settings(
        kafka_bootstrap,
        simulator.base_url,
        on_tansu=False,
        consumer_recovery_timeout_ms=120_000,
    )
    await create_topics(settings, partitions=1)
    topic = settings.consumer_input_topic
    await asyncio.to_thread(
        librdkafka.transaction, kafka_bootstrap, topic, [(_messages("c", 3, 1), True)]
    )
    tp = TopicPartition(topic, 0)
    # The offset of the marker: the last data record + 1.
    group = AIOKafkaConsumer(**kafka.consumer_config(settings))
    await group.start()
    try:
        group.assign([tp])
        await group.commit({tp: OffsetAndMetadata(3, "")})
    finally:
        await group.stop()
    async with running(settings, wait=False) as service:
        # Well before the scan's 120 s bound (the old code waited it out).
        await service.wait_assigned(timeout=30)
        await wait_until(lambda: _lag_zero(service.service, [tp]), timeout=30)
    assert await committed(settings, [tp]) == {tp: 4}


async def test_a_partition_that_cannot_be_decoded_halts_alone_and_goes_on_after_a_restart(
    kafka_bootstrap: str,
    on_tansu: bool,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lz4 records on partition 0 while the client library lacks lz4, gzip on partition 1:
    partition 1 is processed, partition 0 halts (no outcome, nothing committed, /readyz says
    which partition, offset and why, naming the client library); once the codec is back, a
    restarted member processes it."""
    await admin.seed(seed(segments={"s0": {}, "s1": {}}))
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings, partitions=2)
    topic = settings.consumer_input_topic
    await asyncio.to_thread(
        librdkafka.send,
        kafka_bootstrap,
        topic,
        _messages("lz4", 6, 2),
        partition=0,
        **{"compression.type": "lz4"},
    )
    await asyncio.to_thread(
        librdkafka.send,
        kafka_bootstrap,
        topic,
        _messages("gzip", 6, 2),
        partition=1,
        **{"compression.type": "gzip"},
    )
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)
    async with running(settings) as handle:
        service = handle.service
        await wait_until(lambda: bool(service.vitals.halted), timeout=30)
        await wait_until(lambda: service.leases.get(tps[1]).offsets.committed == 6, timeout=30)
        [reason] = service.vitals.halted
        assert f"{topic}[0] stopped at offset 0" in reason
        assert "aiokafka" in reason and "lz4" in reason
        assert "partitions_flowing" in service.vitals.readiness()
        assert not service.vitals.readiness()["partitions_flowing"]
        assert service.metrics.halted._value.get() == 1
        assert not handle.task.done()  # the member did not exit
    assert await committed(settings, tps) == {tps[0]: 0, tps[1]: 6}  # nothing past the halt
    assert _included(await admin.state()) == {f"gzip-{i}" for i in range(6)}
    monkeypatch.undo()
    async with running(settings) as handle:
        await wait_until(
            lambda: (
                (lease := handle.service.leases.get(tps[0])) is not None
                and lease.offsets.committed == 6
            ),
            timeout=30,
        )
        assert handle.service.vitals.halted == []
    state = _included(await admin.state())
    assert state == {f"gzip-{i}" for i in range(6)} | {f"lz4-{i}" for i in range(6)}
