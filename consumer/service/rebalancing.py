"""Rebalances: granting the partitions assigned to this member, and giving up those revoked.

Who owns what is written in leases.py (rules 1-5), what the last owner leaves the next in
handover.py, and the commit order in pipeline.py; this module applies them to aiokafka's
rebalance callbacks:

- **Assignment** (`on_partitions_assigned`): the new partitions are paused before anything is
  awaited, and the callback returns at once: aiokafka does not heartbeat while it runs, and a
  member that outlives its session there is expelled while it goes on. A task (`_grant`)
  reads their positions, scans the results topic for what is already done (crash recovery),
  waits out an unclean handover, commits this member's `live` mark, and only then grants the
  leases (fetching is resumed by the fetch loop). A revoke cancels a grant still under way:
  nothing is granted for an assignment that has ended. Nothing is granted once the service
  stops (aiokafka's close waits for a join under way).
- **Revoke** (`on_partitions_revoked`): the leases stop at once (no request starts for their
  records), waiting work is handed over, requests on the wire are waited for (bounded by
  CONSUMER_REVOKE_TIMEOUT_MS), the done prefix is committed (bounded by
  KAFKA_COMMIT_TIMEOUT_MS; `clean` when nothing was abandoned on the wire), and the leases
  end. Kept partitions whose records shared a stopped batch start again from their commit
  position (`rewind`, rule 5).
- Every callback is counted (`rebalances`): a lease the fetch loop restarts (rule 2b) is not
  granted again when a rebalance came meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumer.kafka import clients as kafka
from consumer.service import handover
from consumer.service.deadline import Deadline
from consumer.service.health import Vitals
from consumer.service.leases import Lease, Leases
from consumer.service.membership import Membership
from consumer.service.pipeline import Pipeline
from consumer.service.recovery import Recovered, Recovery

log = structlog.get_logger(__name__)

POSITION_WAIT = 10.0  # seconds the newly assigned partitions' positions are awaited together


class Commit(Protocol):
    """Commit these leases' done prefix (committing.py)."""

    def __call__(self, leases: Collection[Lease], *, clean: bool) -> Awaitable[None]: ...


class Rebalancing(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        leases: Leases,
        membership: Membership,
        pipeline: Pipeline,
        recovery: Recovery | None,
        vitals: Vitals,
        *,
        commit: Commit,
        released: Callable[[set[TopicPartition]], None],
        stopping: Callable[[], bool],
        revoke_timeout: float,
        commit_timeout: float,
        handover_wait: float,
    ) -> None:
        """`recovery`: None when there is no scan (CONSUMER_RECOVERY_LOOKBACK_MS < 0);
        `released`: forget what the fetch loop knows of partitions given up; `stopping`:
        whether the service stops; the rest in seconds (`handover_wait`: handover.py, rule 2)."""
        self._consumer = consumer
        self._leases = leases
        self._membership = membership
        self._pipeline = pipeline
        self._recovery = recovery
        self._vitals = vitals
        self._commit = commit
        self._released = released
        self._stopping = stopping
        self._revoke_timeout = revoke_timeout
        self._commit_timeout = commit_timeout
        self._handover_wait = handover_wait
        self._granting: asyncio.Task[None] | None = None
        self.rebalances = 0

    @property
    def granting(self) -> asyncio.Task[None] | None:
        """The grant under way, if any (the stop cancels it)."""
        return self._granting

    # -- assignment -----------------------------------------------------------------------------

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Rule 1: pause at once, grant in a task (never raises, returns at once)."""
        self.rebalances += 1
        self._membership.assigned()  # the coordinator's word (membership.py)
        self._vitals.group_lapsed = None
        if assigned:
            self._consumer.pause(*assigned)  # before any await: nothing fetched for nobody
            if not self._stopping():
                self._granting = asyncio.create_task(self._grant(set(assigned)), name="grant")

    async def _grant(self, assigned: set[TopicPartition]) -> None:
        """Positions, then the recovery scan, then the leases (cancelled by a revoke).

        Positions are read together; partitions whose position is not known within
        POSITION_WAIT (a partition without a leader, say) do not hold the others up: they are
        granted when it is, without a scan (recovery only saves repeats)."""
        started = time.monotonic()
        reads = {tp: asyncio.ensure_future(self._position(tp)) for tp in sorted(assigned)}
        try:
            await asyncio.wait(reads.values(), timeout=POSITION_WAIT)
            positions = {tp: read.result() for tp, read in reads.items() if read.done()}
            recovered: dict[TopicPartition, set[int]] = {}
            if positions and self._recovery is not None:
                try:
                    recovered = await self._recovery.already_done(positions)
                except Exception:  # recovery is an optimisation of at-least-once, never a blocker
                    log.exception("recovery.failed")
            self._pipeline.recovered = Recovered(recovered)
            await self._claim(positions, started)
            for tp, read in reads.items():
                if tp not in positions:
                    await self._claim({tp: await read}, started)
        finally:
            for read in reads.values():
                read.cancel()

    async def _claim(self, positions: dict[TopicPartition, int], started: float) -> None:
        """Grant these partitions as handover.py says: at once when their last owner left them
        cleanly, after its requests can no longer land otherwise; and only once this member's
        own `live` mark is committed (a member that dies before then has sent nothing)."""
        unclean = await self._unclean(set(positions))
        ready = {tp: start for tp, start in positions.items() if tp not in unclean}
        if ready:
            await self._mark_live(ready)
            self._grant_now(ready, started)
        if unclean:
            wait = self._handover_wait
            log.warning(
                "partition.unclean_handover",
                partitions=sorted(tp.partition for tp in unclean),
                wait_s=wait,
                message="the last owner may still have requests landing (it crashed, froze"
                " or lost the group): these partitions start once they cannot",
            )
            await asyncio.sleep(wait)
            late = {tp: positions[tp] for tp in unclean}
            await self._mark_live(late)
            self._grant_now(late, started)

    async def _unclean(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """The partitions whose last commit says their owner may still have requests landing
        (handover.py); none when the marks cannot be read (a broker that keeps no metadata)."""
        if not tps:
            return set()
        try:
            async with asyncio.timeout(self._commit_timeout):
                marks = await kafka.committed_metadata(self._consumer, tps)
        except (KafkaError, TimeoutError) as exc:
            log.warning("partition.handover_unknown", error=repr(exc))
            return set()
        return {tp for tp, mark in marks.items() if handover.unclean(mark)}

    async def _mark_live(self, positions: dict[TopicPartition, int]) -> None:
        """Commit the `live` mark at these positions (handover.py, rule 1), tried again until
        it is (the partitions stay paused meanwhile; a revoke or stop cancels it)."""
        delay = 0.2
        marks = {tp: OffsetAndMetadata(start, handover.LIVE) for tp, start in positions.items()}
        while True:
            try:
                async with asyncio.timeout(self._commit_timeout):
                    await self._consumer.commit(marks)
                return
            except (KafkaError, TimeoutError) as exc:
                log.warning("partition.mark_failed", error=repr(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def _grant_now(self, positions: dict[TopicPartition, int], started: float) -> None:
        for tp, start in positions.items():
            self._leases.grant(tp, start)
            # The consumer fetches from where the lease starts, whatever it fetched meanwhile
            # (the partition was paused; this makes rule 1 hold by construction).
            self._consumer.seek(tp, start)
        self._vitals.partitions = len(self._leases.active())
        log.info(
            "partitions.assigned",
            partitions=sorted(tp.partition for tp in positions),
            positions={tp.partition: start for tp, start in positions.items()},
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _position(self, tp: TopicPartition) -> int:
        """The consumer's position for a newly assigned partition, tried again on errors."""
        delay = 0.2
        while True:
            try:
                position: int = await self._consumer.position(tp)
                return position
            except KafkaError as exc:
                log.warning("partition.position_failed", partition=tp.partition, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    # -- revoke ---------------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rule 4 (and 5): stop, wait for the wire, commit, end (never raises)."""
        self.rebalances += 1
        started = time.monotonic()
        deadline = Deadline(started + self._revoke_timeout)
        await cancelled(self._granting)  # an assignment that ended grants nothing
        leases = self._leases.revoke(revoked)  # from here no request starts for them
        pending = self._leases.pending(leases)
        rewind: set[Lease] = set()
        try:
            if leases:
                abandoned = self._pipeline.abandoned
                rewind = await self._pipeline.revoke(leases, deadline)
                # Nothing of ours for these partitions can land any more: say so to the next
                # owner (handover.py), unless a request was abandoned on the wire.
                await self._commit(leases, clean=self._pipeline.abandoned == abandoned)
        finally:
            unfinished = self._leases.pending(leases)
            self._leases.end(leases)
            self._vitals.partitions = len(self._leases.active())
            self._released(revoked)
        while rewind:
            rewind = await self.rewind(rewind, deadline)
        log.info(
            "partitions.revoked",
            partitions=sorted(tp.partition for tp in revoked),
            pending=pending,
            given_up=unfinished,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def rewind(self, leases: set[Lease], deadline: Deadline) -> set[Lease]:
        """Rule 5: these kept partitions had records in a stopped batch: start them again
        from their commit position. Returns further leases to rewind."""
        self._leases.revoke(lease.tp for lease in leases)
        more = await self._pipeline.revoke(leases, deadline)
        self._leases.end(leases)
        for lease in leases:
            position = lease.offsets.position()
            self._leases.grant(lease.tp, position)
            self._consumer.seek(lease.tp, position)
            log.warning("partition.rewound", partition=lease.tp.partition, position=position)
        return more - leases


async def cancelled(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel these tasks (None: none) and wait until they have ended."""
    found = [task for task in tasks if task is not None]
    for task in found:
        task.cancel()
    await asyncio.gather(*found, return_exceptions=True)
