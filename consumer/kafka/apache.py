"""Apache Kafka from Maven Central: one KRaft node or a small cluster, for tests and `broker`.

Needs Java 17+ and Maven. The broker's jars are resolved once with `apache-kafka.pom.xml`
(beside this module) into a cache outside the work tree (`$XDG_CACHE_HOME` or `~/.cache`,
`ld-targeting-consumer/apache-kafka-<version>/libs`), then each node runs as
`java kafka.Kafka <properties>` after `kafka.tools.StorageTool format`.

Every node is a combined broker and controller (KRaft), listening on free loopback ports, with
the settings Apache Kafka's own tests use for speed (no initial rebalance delay, a low minimum
session timeout, few internal-topic partitions, small buffers). A cluster of three has
replication factor 3 for its internal topics and `min.insync.replicas=2`. A node is ready when
a metadata call lists every node of the cluster, not when its port opens.

A node can be killed (SIGKILL) and started again with its data: the failover tests do both.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

from consumer.kafka.tansu import BrokerNotStarted, free_port

POM = "apache-kafka.pom.xml"
# Heap per node: Kafka's scripts default to 1 GiB; tests need far less.
HEAP = "384m"
MIN_JAVA = 17
READY_TIMEOUT = 90.0  # seconds a (re)started cluster has to list all its nodes
RESOLVE_TIMEOUT = 900.0  # seconds Maven has for the first download


def kafka_version() -> str:
    """The pinned Apache Kafka version (the pom's `kafka.version`)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _pom_text())
    assert found is not None, f"{POM} names no kafka.version"
    return found.group(1)


def _pom_text() -> str:
    return resources.files("consumer.kafka").joinpath(POM).read_text(encoding="utf-8")


def java_version() -> int | None:
    """The major version of `java` on PATH (or in JAVA_HOME), None when there is none."""
    java = _java()
    if java is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def missing_tools() -> str | None:
    """Why Apache Kafka cannot run here (None when it can): Java 17+ and Maven are needed."""
    version = java_version()
    if version is None:
        return "no java found (Java 17 or newer is needed)"
    if version < MIN_JAVA:
        return f"java {version} found; Apache Kafka 4 needs Java {MIN_JAVA} or newer"
    if shutil.which("mvn") is None and not _cached_libs().is_dir():
        return "no mvn found (Maven resolves the broker from Maven Central once)"
    return None


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ld-targeting-consumer" / f"apache-kafka-{kafka_version()}"


def _cached_libs() -> Path:
    return cache_dir() / "libs"


def resolve() -> Path:
    """The folder of the broker's jars, resolved from Maven Central on first use.

    A lock file makes concurrent first uses (two test sessions) wait for one download; the
    folder appears only once complete (resolved into a temporary one, then renamed).
    """
    libs = _cached_libs()
    if libs.is_dir():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerNotStarted("Apache Kafka needs Maven (mvn) to resolve its jars once")
        with tempfile.TemporaryDirectory(dir=libs.parent) as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_pom_text(), encoding="utf-8")
            staging = Path(work) / "libs"
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [
                    mvn,
                    "--batch-mode",
                    "--quiet",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                ],
                capture_output=True,
                text=True,
                timeout=RESOLVE_TIMEOUT,
                check=False,
            )
            if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
                raise BrokerNotStarted(
                    "resolving Apache Kafka from Maven Central failed: " + " | ".join(tail)
                )
            staging.rename(libs)
    return libs


def new_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding (what `kafka-storage random-uuid`
    prints), never starting with `-`: StorageTool's argument parser would read it as an
    option (Kafka's own random ids avoid it too)."""
    while True:
        found = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not found.startswith("-"):
            return found


LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
"""


@dataclass
class KafkaNode:
    """One combined broker + controller process."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def node_properties(node: KafkaNode, nodes: list[KafkaNode]) -> dict[str, str]:
    """The server.properties of one node of a cluster made of `nodes`."""
    replication = str(min(3, len(nodes)))
    min_isr = "2" if len(nodes) >= 3 else "1"
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        # A static quorum: every node is a voter, formatted with the same cluster id.
        "controller.quorum.voters": voters,
        "log.dirs": str(node.directory / "data"),
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "share.coordinator.state.topic.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.min.isr": min_isr,
        "min.insync.replicas": min_isr,
        "default.replication.factor": replication,
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.num.partitions": "5",
        # Defaults that slow tests down: a 3 s delay before every first join, and a
        # 6 s minimum session timeout that refuses short test sessions.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "auto.create.topics.enable": "false",
        "log.cleaner.dedupe.buffer.size": "2097152",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        # A dead broker's partitions get new leaders quickly, and a restarted one rejoins
        # the ISR soon (the failover tests kill brokers).
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "500",
        "replica.lag.time.max.ms": "5000",
        "unclean.leader.election.enable": "false",
    }


class ApacheKafka:
    """`with ApacheKafka(nodes=1) as kafka: kafka.bootstrap_servers`

    `kill(node_id)` ends a node with SIGKILL; `restart(node_id)` starts it again on the same
    ports with its data. `stop()` ends every node and deletes the data.
    """

    def __init__(self, nodes: int = 1, *, directory: Path | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self._owned_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        self.cluster_id = new_cluster_id()
        self.nodes = [
            KafkaNode(i, free_port(), free_port(), self.directory / f"node-{i}")
            for i in range(1, nodes + 1)
        ]
        self._libs: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        reason = missing_tools()
        if reason is not None:
            raise BrokerNotStarted(f"Apache Kafka cannot run here: {reason}")
        self._libs = resolve()
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.properties_file.write_text(
                "".join(f"{k}={v}\n" for k, v in node_properties(node, self.nodes).items()),
                encoding="utf-8",
            )
            (node.directory / "log4j2.properties").write_text(
                LOG4J2.format(log=node.log_file), encoding="utf-8"
            )
            self._format(node)
        for node in self.nodes:
            self._spawn(node)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _java_command(self, node: KafkaNode, main: str) -> list[str]:
        java = _java()
        assert java is not None and self._libs is not None
        return [
            java,
            f"-Xmx{HEAP}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            # Faster start on two cores; a test broker does not need C2's peak speed.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
            "-cp",
            f"{self._libs}/*",
            main,
        ]

    def _format(self, node: KafkaNode) -> None:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [
                *self._java_command(node, "kafka.tools.StorageTool"),
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(node.properties_file),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerNotStarted(
                f"formatting Kafka node {node.node_id} failed: {done.stderr.strip()[-500:]}"
            )

    def _spawn(self, node: KafkaNode) -> None:
        with open(node.directory / "stdout.log", "ab") as out:
            node.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [*self._java_command(node, "kafka.Kafka"), str(node.properties_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C meant for the clients must not stop it first.
                process_group=0,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a metadata call lists every running node (raises BrokerNotStarted)."""
        deadline = time.monotonic() + timeout
        wanted = {node.node_id for node in self.nodes if node.process is not None}
        last: str = "no answer"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise BrokerNotStarted(
                        f"Kafka node {node.node_id} exited with code {node.process.returncode}"
                        f" (see {node.log_file})"
                    )
            try:
                brokers = _in_thread(_broker_ids(self._running_bootstrap()))
                if wanted <= brokers:
                    return
                last = f"nodes {sorted(brokers)} of {sorted(wanted)}"
            except Exception as exc:  # noqa: BLE001 - not up yet: asked again
                last = repr(exc)
            time.sleep(0.2)
        raise BrokerNotStarted(f"Apache Kafka was not ready within {timeout:g} s ({last})")

    def _running_bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes if node.running())

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (its data stays for `restart`)."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def restart(self, node_id: int, timeout: float = READY_TIMEOUT) -> None:
        """Start a killed or stopped node again, with its data, and wait until it is back."""
        node = self.node(node_id)
        if node.running():
            return
        self._spawn(node)
        self.wait_ready(timeout)

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """A clean stop of one node (SIGTERM: controlled shutdown), SIGKILL past `timeout`."""
        node = self.node(node_id)
        process = node.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """End every node at once and delete the data (a test cluster keeps nothing)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait()
        if self._owned_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where things are -----------------------------------------------------------------------

    def leader(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """The node id leading a partition now (waits while it has none)."""
        return self._until(lambda: _leader(self._running_bootstrap(), topic, partition), timeout)

    def coordinator(self, group: str, timeout: float = 30.0) -> int:
        """The node id coordinating a consumer group now (its offsets topic partition is made
        on first use: waits for it)."""
        return self._until(lambda: _coordinator(self._running_bootstrap(), group), timeout)

    @staticmethod
    def _until(ask: Any, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found: int = _in_thread(ask())
                if found >= 0:
                    return found
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise LookupError("no leader or coordinator in time")
            time.sleep(0.2)


def _in_thread(coroutine: Any) -> Any:
    """Run a coroutine to its end from synchronous code, whether or not an event loop runs in
    this thread (a session fixture, the `broker` command)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextlib.asynccontextmanager
async def _admin(bootstrap: str) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    from consumer.logs import quiet_kafka_client

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    with quiet_kafka_client():
        await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _broker_ids(bootstrap: str) -> set[int]:
    async with _admin(bootstrap) as admin:
        cluster = await admin.describe_cluster()
    return {int(broker["node_id"]) for broker in cluster["brokers"]}


async def _leader(bootstrap: str, topic: str, partition: int) -> int:
    async with _admin(bootstrap) as admin:
        described = await admin.describe_topics([topic])
    for entry in described:
        for found in entry["partitions"]:
            if int(found["partition"]) == partition:
                return int(found["leader"])
    raise LookupError(f"{topic}[{partition}] not found")


async def _coordinator(bootstrap: str, group: str) -> int:
    async with _admin(bootstrap) as admin:
        node: int = await admin.find_coordinator(group)
    return node


def main(argv: list[str] | None = None) -> int:
    """`python -m consumer.kafka.apache resolve`: fetch the broker's jars now (scripts/test
    does, so that a first run shows the download instead of a silent fixture)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["resolve"]:
        print("usage: python -m consumer.kafka.apache resolve", file=sys.stderr)
        return 2
    reason = missing_tools()
    if reason is not None:
        print(f"Apache Kafka cannot run here: {reason}", file=sys.stderr)
        return 1
    if not _cached_libs().is_dir():
        print(
            f"resolving Apache Kafka {kafka_version()} from Maven Central (once)", file=sys.stderr
        )
    print(resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
