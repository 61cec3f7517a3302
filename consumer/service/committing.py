"""Committing the leases' done prefixes (offsets.py), with the handover mark (handover.py).

- Only a current member commits (membership.py): a member whose membership lapsed may have
  lost its partitions to others, who commit further; a commit of ours would take their
  offsets back (a broker may take it: Kafka does from a member whose generation was reset).
- A position beyond the partition's log end (as the last fetch saw it) is never committed:
  the log lost records (leases.py, rule 2b), and the group must not start past them.
- One commit at a time (the commit loop's, a revoke's, the stop's), each bounded by
  KAFKA_COMMIT_TIMEOUT_MS, waiting for the one under way included. A failure is logged: the
  next commit covers it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumer.service import handover
from consumer.service.health import Vitals
from consumer.service.leases import Lease, Leases
from consumer.service.membership import Membership
from consumer.service.metrics import Metrics

log = structlog.get_logger(__name__)


class Committer:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        leases: Leases,
        membership: Membership,
        metrics: Metrics,
        vitals: Vitals,
        *,
        timeout: float,
    ) -> None:
        """`consumer`: the aiokafka consumer (`commit`, `highwater`); `timeout`: seconds a
        commit may take (KAFKA_COMMIT_TIMEOUT_MS)."""
        self._consumer = consumer
        self._leases = leases
        self._membership = membership
        self._metrics = metrics
        self._vitals = vitals
        self._timeout = timeout
        self._lock = asyncio.Lock()

    async def commit(
        self,
        leases: Iterable[Lease] | None = None,
        timeout: float | None = None,
        *,
        clean: bool = False,
    ) -> None:
        """Commit the done prefix of live leases (all, or those given), within the commit
        timeout (or `timeout`, if lower).

        Every commit carries a handover mark in its metadata (handover.py): `live` while this
        member may have requests for the partition that can still land; `clean` (`clean=True`,
        the given leases' positions committed even when they did not move) once it has none,
        at the end of a revoke or a stop that abandoned nothing."""
        if not self._membership.current():
            log.info("commit.skipped", reason="not a current member of the group")
            return
        limit = self._timeout if timeout is None else min(self._timeout, timeout)
        started = time.monotonic()
        try:
            # The bound covers waiting for a commit under way (the loop's, or a revoke's).
            async with asyncio.timeout(limit), self._lock:
                chosen = self._leases.to_commit(leases)
                if clean and leases is not None:
                    chosen = {lease: lease.offsets.position() for lease in leases} | chosen
                found = {
                    lease: position
                    for lease, position in chosen.items()
                    if self._within_log(lease, position)
                }
                if not found:
                    return
                positions = {lease.tp: position for lease, position in found.items()}
                mark = handover.CLEAN if clean else handover.LIVE
                await self._consumer.commit(
                    {tp: OffsetAndMetadata(position, mark) for tp, position in positions.items()}
                )
                for lease, position in found.items():
                    lease.offsets.mark_committed(position)
        except (KafkaError, TimeoutError) as exc:
            self._metrics.commits.labels(result="failed").inc()
            log.warning("commit.failed", error=repr(exc))
            return
        self._vitals.broker_seen()
        self._metrics.commit_latency.observe(time.monotonic() - started)
        self._metrics.commits.labels(result="ok").inc()
        log.debug(
            "commit.done",
            positions={f"{tp.topic}[{tp.partition}]": o for tp, o in positions.items()},
        )

    def _within_log(self, lease: Lease, position: int) -> bool:
        end = self._consumer.highwater(lease.tp)
        return end is None or position <= end
