"""aiokafka clients built from the settings, and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    BrokerResponseError,
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedCodecError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from consumer.logs import quiet_kafka_client
from consumer.settings import Settings

log = structlog.get_logger(__name__)


class BrokerUnreachable(Exception):
    """No broker of KAFKA_BOOTSTRAP_SERVERS answered when a client started."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot reach the Kafka broker at {address}")
        self.address = address


class TopicMissing(Exception):
    """A topic a command reads or writes does not exist; `variable` names the setting (or
    option) that names it."""

    def __init__(self, topic: str, variable: str) -> None:
        super().__init__(f"the topic {topic} does not exist ({variable})")
        self.topic = topic
        self.variable = variable


class IdempotenceRefused(Exception):
    """The broker refused InitProducerId: it has no idempotent producer (Tansu 0.6)."""

    def __init__(self, address: str, error: BaseException) -> None:
        super().__init__(f"the Kafka broker at {address} refused InitProducerId: {error!r}")
        self.address = address


# How long a cancelled caller lets a client's start finish, so that it can be closed cleanly.
CANCELLED_START_WAIT = 5.0


async def start(client: Any, settings: Settings) -> None:
    """Start an aiokafka client (consumer, producer or admin) or fail with a known error.

    A client whose start failed is closed at once: aiokafka warns of an unclosed client
    otherwise. The broker's absence becomes `BrokerUnreachable`, and a producer start refused
    while idempotence is on `IdempotenceRefused`, so the CLI can say what to change.
    """
    starting = asyncio.ensure_future(client.start())
    try:
        with quiet_kafka_client():
            # Shielded: aiokafka's bootstrap leaks its connection when cancelled part-way (an
            # "Unclosed AIOKafkaConnection" error at exit), so a cancelled caller lets the start
            # end first (bounded), then closes the client below.
            await asyncio.shield(starting)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(CANCELLED_START_WAIT):
                    await starting
        with contextlib.suppress(Exception):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        address = settings.kafka_bootstrap_servers
        if isinstance(exc, KafkaConnectionError):
            raise BrokerUnreachable(address) from exc
        if (
            isinstance(client, AIOKafkaProducer)
            and settings.kafka_producer_idempotence
            and isinstance(exc, BrokerResponseError)
        ):
            raise IdempotenceRefused(address, exc) from exc
        raise


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**common_config(settings))
    await start(admin, settings)
    try:
        yield admin
    finally:
        await admin.close()


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings shared by every client (consumer, producer, admin)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        key_password = settings.kafka_ssl_key_password
        config["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=key_password.get_secret_value() if key_password else None,
        )
    if settings.kafka_security_protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return config


class _NullValue:
    """Stands for a null record value: aiokafka's `send()` refuses None for both key and value,
    yet such records exist, and their dead-letter copies must be the same."""

    def __repr__(self) -> str:
        return "NULL_VALUE"


NULL_VALUE: Any = _NullValue()


def _value_bytes(value: bytes | _NullValue | None) -> bytes | None:
    return None if isinstance(value, _NullValue) else value


def value_for_send(key: bytes | None, value: bytes | None) -> Any:
    """The value argument that makes `send()` write exactly `value` (None included)."""
    return NULL_VALUE if key is None and value is None else value


class KeyPartitioner:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java client),
    memoised; None for a record without a key, which the producer then places itself."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes | None, partitions: int) -> int | None:
        if key is None or partitions <= 0:
            return None
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed % partitions


# The producer's batch size: room for a few batches' outcomes per partition (at the default
# 16 KB a batch of outcomes fills it and every further send waits for the broker), below the
# brokers' default message.max.bytes (1 MB). A topic that takes less gets smaller batches
# (`producer_batch_size`): the broker refuses a batch larger than the topic's limit whole.
MAX_BATCH_SIZE = 512 * 1024


def producer_batch_size(limits: Iterable[int]) -> int:
    """The batch size for topics taking records of at most these sizes (max.message.bytes)."""
    smallest = min(limits, default=MAX_BATCH_SIZE + 1024)
    return max(1024, min(MAX_BATCH_SIZE, smallest - 1024))


def producer_config(settings: Settings, max_batch_size: int = MAX_BATCH_SIZE) -> dict[str, Any]:
    return {
        **common_config(settings),
        "value_serializer": _value_bytes,
        "acks": "all",
        "enable_idempotence": settings.kafka_producer_idempotence,
        "linger_ms": 5,
        "max_batch_size": max_batch_size,
        "request_timeout_ms": 30_000,
        "max_request_size": settings.kafka_producer_max_request_size,
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **common_config(settings),
        "group_id": settings.consumer_group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.consumer_auto_offset_reset,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.kafka_rebalance_timeout_ms,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "max_poll_records": settings.kafka_max_poll_records,
        "isolation_level": settings.kafka_isolation_level,
    }


def make_producer(settings: Settings, max_batch_size: int = MAX_BATCH_SIZE) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_config(settings, max_batch_size))


def make_consumer(settings: Settings, *topics: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **consumer_config(settings))


async def ensure_topics(
    settings: Settings,
    topics: dict[str, int],
    *,
    replication_factor: int = 1,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet (name -> partitions); raise on any other error.

    Brokers that auto-create topics (Tansu always does, with 4 partitions) would otherwise give
    a topic whose partition count nobody chose.
    """
    async with admin_client(settings) as admin:
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    partitions,
                    replication_factor,
                    topic_configs=(configs or {}).get(name, {}),
                )
                for name, partitions in topics.items()
            ]
        )
        for name, code, message in ((e[0], e[1], e[2]) for e in response.topic_errors):
            if code == 0:
                log.info("topic.created", topic=name, partitions=topics[name])
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                continue
            raise error(f"creating topic {name}: {message}")


# Kafka's default record size limit (the broker's message.max.bytes, and so every topic's
# max.message.bytes unless set).
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# What a dead-letter copy adds to its input record (the `ldc.*` headers of dead_letters.py, a trace
# context): the dead-letter topic must take that much more than the input topic, or a record
# near the input's limit could not be dead-lettered byte for byte (its partition would halt).
DEAD_LETTER_ROOM = 16_384


def service_topics(
    settings: Settings, input_partitions: int, results_partitions: int, dlq_partitions: int
) -> dict[str, int]:
    """The service's topics (input, results, dead letters) -> their partition counts."""
    return {
        settings.consumer_input_topic: input_partitions,
        settings.consumer_results_topic: results_partitions,
        settings.consumer_dlq_topic: dlq_partitions,
    }


def service_topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic configs the service's topics are created with (by `broker`, `demo`, the tests):
    the dead-letter topic takes any input record with its headers."""
    room = DEFAULT_MAX_MESSAGE_BYTES + DEAD_LETTER_ROOM
    return {settings.consumer_dlq_topic: {"max.message.bytes": str(room)}}


async def ensure_service_topics(
    settings: Settings, input_partitions: int, results_partitions: int, dlq_partitions: int
) -> None:
    """Create the service's topics that do not exist yet (`ensure_topics`)."""
    await ensure_topics(
        settings,
        service_topics(settings, input_partitions, results_partitions, dlq_partitions),
        configs=service_topic_configs(settings),
    )


def consumed_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset of the next record `getmany` would return for `tp`, without waiting (None
    when it is not known: not assigned, or a reset under way).

    `consumer.position()` is the public form, but it is a coroutine, and the fetch loop reads
    this between `getmany` and the end of its turn, where nothing may be awaited (leases.py,
    rule 2b). aiokafka's own subscription state is what `position()` reads.
    """
    try:
        assignment = consumer._subscription.subscription.assignment
        if assignment is None or tp not in assignment.tps:
            return None
        state = assignment.state_value(tp)
        if not state.has_valid_position:
            return None
        position: int = state.position
        return position
    except AttributeError:  # another aiokafka: the rule then only waits for records
        return None


# What `getmany` raises for one partition whose records cannot be had (the others go on): the
# service halts that partition (halts.py) instead of exiting or skipping records.
PARTITION_FETCH_ERRORS: tuple[type[Exception], ...] = (
    UnsupportedCodecError,
    CorruptRecordException,
    RecordTooLargeError,
    OffsetOutOfRangeError,
    NoOffsetForPartitionError,
    TopicAuthorizationFailedError,
)


def failed_partition(exc: BaseException) -> TopicPartition | None:
    """The partition a fetch error is about.

    An out-of-range error carries it; a decoding error raised out of `getmany` does not, but
    aiokafka's fetcher holds it in a local `tp` of the frames the error passed through (the
    innermost is the partition whose records were being unpacked).
    """
    if isinstance(exc, OffsetOutOfRangeError | NoOffsetForPartitionError) and exc.args:
        first = exc.args[0]
        if isinstance(first, dict) and first:
            found = next(iter(first))
            if isinstance(found, TopicPartition):
                return found
        if isinstance(first, TopicPartition):
            return first
    found_tp: TopicPartition | None = None
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("tp")
        if isinstance(candidate, TopicPartition):
            found_tp = candidate
        tb = tb.tb_next
    return found_tp


class _OffsetResets(logging.Filter):
    """aiokafka resets an out-of-range position by itself (auto_offset_reset) and says so only
    in an INFO line of its fetcher; this filter hands that line to the listeners (the service
    logs `partition.offset_reset` and counts it) instead, and drops the fetcher's other INFO
    lines, which the aiokafka logger's WARNING level kept out before."""

    PREFIX = "Fetch offset %s is out of range for partition %s"

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Callable[[TopicPartition, int], None]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        args = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith(self.PREFIX)
            and isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[1], TopicPartition)
        ):
            for listener in list(self.listeners):
                listener(args[1], int(str(args[0])))
            return False
        return logging.getLogger().isEnabledFor(logging.DEBUG)  # LOG_LEVEL=debug: all of it


_RESETS = _OffsetResets()
_FETCHER_LOG = logging.getLogger("aiokafka.consumer.fetcher")
_FETCHER_LOG.addFilter(_RESETS)


@contextlib.contextmanager
def watching_offset_resets(listener: Callable[[TopicPartition, int], None]) -> Iterator[None]:
    """Call `listener(tp, offset)` whenever aiokafka resets an out-of-range position (of any
    consumer in the process: the listener checks the partition is its own)."""
    if _FETCHER_LOG.getEffectiveLevel() > logging.INFO:
        _FETCHER_LOG.setLevel(logging.INFO)
    _RESETS.listeners.append(listener)
    try:
        yield
    finally:
        _RESETS.listeners.remove(listener)


def watch_membership(
    consumer: AIOKafkaConsumer, heard: Callable[[], None], lost: Callable[[], None]
) -> bool:
    """Tell `heard` of every heartbeat the coordinator answers, and `lost` when it says this
    member's id or generation is unknown (membership.py). aiokafka has no public hook for
    either: its group coordinator's two methods are wrapped. False (nothing watched) on
    another aiokafka, where only the assignments then count as news."""
    coordinator = getattr(consumer, "_coordinator", None)
    heartbeat = getattr(coordinator, "_do_heartbeat", None)
    reset = getattr(coordinator, "reset_generation", None)
    if coordinator is None or heartbeat is None or reset is None:
        return False

    async def watched_heartbeat() -> bool:
        answered: bool = await heartbeat()
        if answered:
            heard()
        return answered

    def watched_reset() -> None:
        reset()
        lost()

    coordinator._do_heartbeat = watched_heartbeat
    coordinator.reset_generation = watched_reset
    return True


async def committed_metadata(
    consumer: AIOKafkaConsumer, tps: set[TopicPartition]
) -> dict[TopicPartition, str]:
    """The metadata of each partition's committed offset (handover.py); empty for partitions
    without one. aiokafka's `committed()` gives the offset only: its group coordinator's fetch
    gives both."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not tps:
        return {}
    found = await coordinator.fetch_committed_offsets(tps)
    return {
        tp: meta.metadata
        for tp, meta in found.items()
        if meta is not None and meta.offset >= 0 and meta.metadata
    }


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make aiokafka rejoin the group (its revoke, then a fresh assignment)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator.request_rejoin()


def readable_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """Where reading `tp` ends for now, from the last fetch response (None before one came).

    The last stable offset under read_committed (records past it are not returned yet), the
    high watermark otherwise.
    """
    stable: int | None = consumer.last_stable_offset(tp)
    highwater: int | None = consumer.highwater(tp)
    return stable if stable is not None else highwater


async def end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's end as of now (assigns `partitions` to the group-less `consumer`).

    The larger of ListOffsets(latest) and the high watermark of a first fetch: Tansu answers
    the former too low, and a fetch alone says nothing for an empty partition.
    """
    consumer.assign(partitions)
    listed = await consumer.end_offsets(partitions)
    await consumer.seek_to_beginning(*partitions)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        readable_end(consumer, tp) is None for tp in partitions
    ):
        await consumer.getmany(*partitions, timeout_ms=100, max_records=1)
    return {tp: max(listed.get(tp, 0), readable_end(consumer, tp) or 0) for tp in partitions}


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, finished even when aiokafka breaks it off with a cancellation that is
    not ours.

    aiokafka's fetcher (0.13) cancels its fetch tasks on close and awaits them; one that was
    sleeping its retry backoff after a connection error (the broker gone) re-raises that
    cancellation out of `stop()`, which then leaves the client's connections open. A
    cancellation of the calling task itself (a timeout around this call, Ctrl-C) still
    propagates.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        fetcher = getattr(consumer, "_fetcher", None)
        pending = [t for t in getattr(fetcher, "_pending_tasks", ()) if not t.done()]
        for leftover in pending:
            leftover.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        client = getattr(consumer, "_client", None)
        if client is not None:
            await client.close()


async def stop_within(stop: Awaitable[None], timeout: float, what: str) -> None:
    """Stop a client (`what`) within `timeout` seconds; a timeout or a Kafka error is logged,
    not raised: the exit goes on."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (3.11)
            await stop
    except TimeoutError:
        log.warning("service.close_timeout", step=what, timeout_s=timeout)
    except KafkaError as exc:
        log.warning("service.close_failed", step=what, error=repr(exc))


@contextlib.asynccontextmanager
async def reading(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group, for reading topics (replay, outcomes, check…),
    stopped on the way out. `options` are the caller's own aiokafka options (they win)."""
    consumer = AIOKafkaConsumer(
        **common_config(settings),
        **{
            "group_id": None,
            "enable_auto_commit": False,
            "fetch_max_wait_ms": 100,
            "isolation_level": settings.kafka_isolation_level,
            **options,
        },
    )
    await start(consumer, settings)
    try:
        yield consumer
    finally:
        await stop_consumer(consumer)


async def existing_topics(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts of those of `names` that exist.

    Listed before they are described: describing an unknown topic creates it on brokers that
    auto-create topics (Tansu always does), listing does not.
    """
    async with admin_client(settings) as admin:
        listed = set(await admin.list_topics())
        wanted = [name for name in names if name in listed]
        described = await admin.describe_topics(wanted) if wanted else []
    return {
        entry["topic"]: len(entry["partitions"])
        for entry in described
        if entry.get("error_code") == 0
    }


async def topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    """Each existing topic's configuration (name -> value), from the admin API; topics that
    do not exist (or whose configs cannot be read) are left out. Names are listed first, so
    no broker auto-creates a topic for being asked about."""
    present = await existing_topics(settings, names)
    if not present:
        return {}
    async with admin_client(settings) as admin:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        )
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _, _, name, entries = resource[:5]
            if error_code == 0:
                found[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return found


async def group_members(settings: Settings, group: str) -> int | None:
    """How many members the consumer group has now; None when the broker does not say."""
    try:
        async with admin_client(settings) as admin:
            responses = await admin.describe_consumer_groups([group])
    except Exception:  # noqa: BLE001 - a hint, never a failure
        return None
    for response in responses:
        for described in response.groups:
            if described[1] == group and described[0] == 0:
                return len(described[5])
    return None


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The partitions of a topic (empty when it does not exist), from the admin API; listed
    first, so that no broker creates the topic for being asked (`existing_topics`).

    Not `consumer.topics()`: on Tansu a consumer that listed every topic stalls in `stop()`.
    """
    count = (await existing_topics(settings, [topic])).get(topic, 0)
    return [TopicPartition(topic, p) for p in range(count)]


async def required_partitions(
    settings: Settings, topic: str, variable: str
) -> list[TopicPartition]:
    """The partitions of a topic a command needs; `TopicMissing` (one line naming the topic
    and `variable`) when it does not exist. Never creates it."""
    partitions = await topic_partitions(settings, topic)
    if not partitions:
        raise TopicMissing(topic, variable)
    return partitions


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord]], bool],
    timeout: float,
) -> list[ConsumerRecord]:
    """Read a topic from the beginning, without a group, until `until(records)` or the timeout.

    Reading until a condition rather than to the end offsets: Tansu's ListOffsets(latest) is
    wrong, and callers know what they wait for.
    """
    deadline = time.monotonic() + timeout
    partitions: list[TopicPartition] = []
    while True:
        try:
            partitions = await topic_partitions(settings, topic)
        except KafkaError:  # a broker not ready yet (one just restarted): asked again
            if time.monotonic() >= deadline:
                raise
        if partitions or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    records: list[ConsumerRecord] = []
    if not partitions:
        return records  # no such topic (brokers that do not auto-create topics)
    async with reading(settings, auto_offset_reset="earliest") as consumer:
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        while not until(records) and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            for batch in fetched.values():
                records.extend(batch)
    return records


async def records_to(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
) -> AsyncIterator[ConsumerRecord]:
    """The records before `ends` (each partition's end offset when the read began), in order
    per partition: a read that stops at what was there, however much is written meanwhile."""
    open_ = {tp for tp in partitions if ends[tp] > 0}
    for tp in list(open_):
        if await consumer.position(tp) >= ends[tp]:
            open_.discard(tp)
    while open_:
        fetched = await consumer.getmany(*open_, timeout_ms=500, max_records=2_000)
        for tp, records in fetched.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                yield record
        for tp in list(open_):
            if await consumer.position(tp) >= ends[tp]:
                open_.discard(tp)
