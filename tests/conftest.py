"""Fixtures: a real Kafka broker for the whole session (tests/brokers.py says which), and the
LaunchDarkly simulator on loopback per test."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from consumer.kafka.apache import ApacheKafka
from consumer.kafka.tansu import TansuBroker
from consumer.simulator import RunningSimulator, Simulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.brokers import Choice, choose
from tests.factories import TOKEN


@functools.cache
def broker_choice() -> Choice:
    """Decided once per session."""
    return choose()


def pytest_report_header() -> str:
    return f"kafka broker: {broker_choice().why}"


@pytest.fixture(scope="session")
def broker_kind() -> str:
    return broker_choice().kind


@pytest.fixture(scope="session")
def apache_kafka(broker_kind: str) -> Iterator[ApacheKafka | None]:
    """The session's single Apache Kafka node (None on another broker)."""
    if broker_kind != "apache":
        yield None
        return
    with ApacheKafka(nodes=1) as kafka:
        yield kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str, apache_kafka: ApacheKafka | None) -> Iterator[str]:
    if broker_kind == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif apache_kafka is not None:
        yield apache_kafka.bootstrap_servers
    else:
        with TansuBroker() as broker:
            yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def on_tansu(broker_kind: str) -> bool:
    return broker_kind == "tansu"


@pytest.fixture(scope="session")
def kafka_cluster(broker_kind: str) -> Iterator[ApacheKafka]:
    """Three Apache Kafka nodes (replication factor 3, min.insync.replicas 2) for the
    failover tests; they need Apache Kafka started here (skipped otherwise, outside CI)."""
    if broker_kind != "apache":
        pytest.skip("the failover tests start their own Apache Kafka cluster (needs Java, Maven)")
    with ApacheKafka(nodes=3) as cluster:
        yield cluster


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with RunningSimulator(Simulator({TOKEN})) as running:
        yield running


@pytest.fixture
async def admin(simulator: RunningSimulator) -> AsyncIterator[SimulatorAdmin]:
    async with SimulatorAdmin(simulator.base_url) as client:
        yield client
