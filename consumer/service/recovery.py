"""Which records of newly assigned partitions already have an outcome: crash recovery.

The results topic is the record of what was done. A record past its partition's committed
offset whose outcome was published (by a member that crashed before committing, or that gave
the partition up mid-batch) must not be applied again. On assignment, for each partition with
records waiting at its position:

1. read the record at the position (there is none when only offsets without a record for us,
   such as a transaction marker, lie before the end: nothing to recover): every outcome for it
   or a later record was published after it was consumed, so after its timestamp (or after
   now, for a timestamp in the future), less CONSUMER_RECOVERY_LOOKBACK_MS for clock skew and
   records that waited long;
2. look the results topic up from that time (`offsets_for_times`; a broker that cannot answer
   gives offset 0, which is only slower) up to its high watermark;
3. collect the source offsets at or past each position.

Outcomes carry `ldc.source.*` headers so the scan needs no JSON parsing; it falls back to the
value for records without them. The scan is bounded by CONSUMER_RECOVERY_TIMEOUT_MS; a scan
that did not reach the end it first saw is not used at all (everything is sent again, in
order: repeats are allowed, reordering is not).

Skipping never reorders (`Recovered`): for one resource (all its URLs), only a prefix of the
records waiting may be skipped. Once a record for a resource is sent again, every later record
for that resource is sent again too, outcome or not: skipping a later one that the previous
owner applied would leave it applied *before* the earlier one now sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from consumer.contract.outcomes import source_of
from consumer.kafka import clients as kafka
from consumer.service.deadline import Deadline
from consumer.settings import Settings

log = structlog.get_logger(__name__)


class Recovered:
    """What a scan found, and the prefix rule for skipping it. Pure."""

    def __init__(self, done: Mapping[TopicPartition, set[int]] | None = None) -> None:
        self._done = {tp: set(offsets) for tp, offsets in (done or {}).items() if offsets}
        self._sent: set[str] = set()  # resources with a record sent again: nothing more skipped

    def __bool__(self) -> bool:
        return bool(self._done)

    def skip(self, tp: TopicPartition, offset: int, path: str | None) -> bool:
        """Whether to skip this record, in consumption order. `path`: its resource
        (`Route.resource`; None for a record that is not a valid event: skipping it reorders
        nothing)."""
        done = self._done.get(tp)
        if path is not None and path in self._sent:
            found = False
        else:
            found = done is not None and offset in done
        if done is not None and offset in done:
            done.discard(offset)
            if not done:
                del self._done[tp]
        if not found and path is not None:
            self._sent.add(path)
        return found

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._done.pop(tp, None)


class Recovery:
    def __init__(self, settings: Settings, *, timeout: float) -> None:
        """`timeout`: seconds a scan may take (CONSUMER_RECOVERY_TIMEOUT_MS)."""
        self._settings = settings
        self._lookback_ms = settings.consumer_recovery_lookback_ms
        self._timeout = timeout

    async def already_done(
        self, positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, set[int]]:
        """Offsets at or past each position whose outcome is already on the results topic."""
        if not positions:
            return {}
        started = time.monotonic()
        async with kafka.reading(self._settings) as consumer:
            deadline = Deadline(started + self._timeout)
            stamps = await self._first_timestamps(consumer, positions, deadline)
            if not stamps:
                return {}
            now_ms = time.time() * 1000
            # Clamped: a record timestamp (or a lookback) before 1970 is a valid input, not one
            # to make `offsets_for_times` raise and recovery stop.
            since_ms = max(
                0, int(min(min(ts, now_ms) for ts in stamps.values()) - self._lookback_ms)
            )
            waiting = {tp: positions[tp] for tp in stamps}
            done, scanned, complete = await self._scan(consumer, waiting, since_ms, deadline)
        if not complete:
            log.warning(
                "recovery.incomplete",
                outcomes_scanned=scanned,
                message="the scan did not finish in time; nothing is skipped",
            )
            return {}
        log.info(
            "recovery.scanned",
            partitions=len(waiting),
            outcomes_scanned=scanned,
            already_done=sum(len(v) for v in done.values()),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return done

    async def _first_timestamps(
        self,
        consumer: AIOKafkaConsumer,
        positions: Mapping[TopicPartition, int],
        deadline: Deadline,
    ) -> dict[TopicPartition, int]:
        """The timestamp of the record at each position; partitions with none are left out."""
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        stamps: dict[TopicPartition, int] = {}
        open_ = set(positions)
        while open_ and not deadline.expired():
            fetched = await consumer.getmany(*open_, timeout_ms=200, max_records=len(open_) * 10)
            for tp, records in fetched.items():
                if records and tp in open_:
                    stamps[tp] = records[0].timestamp
                    open_.discard(tp)
            for tp in list(open_):
                end = kafka.readable_end(consumer, tp)
                if end is None:
                    continue
                # Nothing waits there (the position is the end), or only offsets without a
                # record for us (a transaction marker, aborted records): the consumer passed
                # them, and no fetch will ever return a record to wait for.
                if end <= positions[tp] or await consumer.position(tp) >= end:
                    open_.discard(tp)
        if open_:
            log.warning("recovery.timestamps_incomplete", partitions=len(open_))
            stamps.update(dict.fromkeys(open_, 0))  # unknown: scan from the start
        return stamps

    async def _scan(
        self,
        consumer: AIOKafkaConsumer,
        positions: Mapping[TopicPartition, int],
        since_ms: int,
        deadline: Deadline,
    ) -> tuple[dict[TopicPartition, set[int]], int, bool]:
        """(source offsets found per input partition, outcomes scanned, whether the scan
        reached the end of every results partition)."""
        tps = await kafka.topic_partitions(self._settings, self._settings.consumer_results_topic)
        consumer.assign(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        remaining = set()
        for tp in tps:
            found = starts.get(tp)
            if found is not None:
                consumer.seek(tp, found.offset)
                remaining.add(tp)
        by_partition = {tp.partition: (tp, offset) for tp, offset in positions.items()}
        input_topic = self._settings.consumer_input_topic
        done: dict[TopicPartition, set[int]] = {}
        ends: dict[TopicPartition, int | None] = {}
        scanned = 0
        while remaining and not deadline.expired():
            fetched = await consumer.getmany(*remaining, timeout_ms=100, max_records=5_000)
            for records in fetched.values():
                scanned += len(records)
                for record in records:
                    source = source_of(record)
                    if source is None or source[0] != input_topic:
                        continue
                    wanted = by_partition.get(source[1])
                    if wanted is not None and source[2] >= wanted[1]:
                        done.setdefault(wanted[0], set()).add(source[2])
            for tp in list(remaining):
                # The end is fixed when first seen: the previous owners stopped before this
                # assignment, so what other members publish meanwhile is not about our records.
                end = ends.setdefault(tp, kafka.readable_end(consumer, tp))
                if end is None:
                    del ends[tp]
                elif await consumer.position(tp) >= end:
                    remaining.discard(tp)
        return done, scanned, not remaining
