"""Which Kafka broker a test run uses, decided once per session.

1. `KAFKA_BOOTSTRAP_SERVERS`, when set: a broker the user runs (taken to be Apache Kafka or
   one built on it);
2. otherwise Apache Kafka (consumer/kafka/apache.py), when Java 17+ and Maven are found:
   a single KRaft node started for the session, and a three-node cluster for the failover
   tests, started when the first of them needs it;
3. otherwise Tansu (the embedded broker of the demo), saying so in the report header.

`TEST_BROKER=tansu` asks for Tansu even where Apache Kafka could run (the suite must pass on
both: the demo runs on Tansu).

Under `CI=true` a missing Java or Maven is an error, not a fallback: CI always runs the
integration suite on Apache Kafka.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from consumer.kafka.apache import kafka_version, missing_tools
from consumer.kafka.tansu import TANSU_SETTINGS

Kind = Literal["external", "apache", "tansu"]

# Client settings for the tests on Apache Kafka: Tansu's (timeouts nested as the settings
# require), with the idempotent producer on, a session short enough that a killed member is
# noticed in a few seconds (the test broker allows sessions from 1 s) and a fetch wait that
# only sets how often an idle consumer asks.
APACHE_TEST_SETTINGS: dict[str, Any] = {
    **{
        name: value
        for name, value in TANSU_SETTINGS.items()
        if name != "kafka_producer_idempotence"
    },
    "kafka_session_timeout_ms": 3_000,
    "kafka_fetch_max_wait_ms": 100,
}


class BrokerMissing(Exception):
    """CI must run on Apache Kafka and cannot here."""


@dataclass(frozen=True)
class Choice:
    kind: Kind
    why: str


def choose() -> Choice:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return Choice(
            "external", f"KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
        )
    if os.environ.get("TEST_BROKER") == "tansu":
        return Choice("tansu", "Tansu (embedded), as TEST_BROKER=tansu asks")
    missing = missing_tools()
    if missing is None:
        return Choice(
            "apache", f"Apache Kafka {kafka_version()} (KRaft) started by the test session"
        )
    if os.environ.get("CI") == "true":
        raise BrokerMissing(f"CI runs the integration tests on Apache Kafka, but {missing}")
    return Choice("tansu", f"Tansu (embedded), since Apache Kafka cannot run here: {missing}")
