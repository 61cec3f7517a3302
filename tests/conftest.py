"""Fixtures: a real Kafka-protocol broker for the whole session (Tansu, or the broker named by
KAFKA_BOOTSTRAP_SERVERS), and the LaunchDarkly simulator on loopback per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from consumer.demo.tansu import TansuBroker
from consumer.fake_api import RunningSimulator, Simulator
from consumer.fake_api.admin_client import SimulatorAdmin
from tests.factories import TOKEN


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with TansuBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def on_tansu() -> bool:
    return not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with RunningSimulator(Simulator({TOKEN})) as running:
        yield running


@pytest.fixture
async def admin(simulator: RunningSimulator) -> AsyncIterator[SimulatorAdmin]:
    async with SimulatorAdmin(simulator.base_url) as client:
        yield client
