"""The ceiling: a bare aiokafka loop that consumes, produces one record per input and commits.

No parsing, no HTTP. Run by bench.py as a child process, on the same topic the service reads:

    python bench/ceiling.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC GROUP RECORDS [keyless]

Each output record carries its input's key (the service keys outcomes like their inputs), so
aiokafka's partitioner hashes every key in Python; `keyless` leaves keys out, which shows what
that hashing costs. It stops after RECORDS inputs and prints one JSON line (records, seconds).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def main(
    bootstrap: str, source: str, target: str, group: str, records: int, keyless: bool
) -> None:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=2_000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    await consumer.start()
    done = 0
    started: float | None = None
    try:
        while done < records:
            batches = await consumer.getmany(timeout_ms=100, max_records=5_000)
            if not batches:
                continue
            if started is None:
                started = time.monotonic()
            futures = []
            for batch in batches.values():
                for record in batch:
                    key = None if keyless else record.key
                    futures.append(await producer.send(target, record.value, key=key))
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()
    elapsed = time.monotonic() - (started or time.monotonic())
    print(json.dumps({"records": done, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    bootstrap, source, target, group, count = sys.argv[1:6]
    keyless = sys.argv[6:7] == ["keyless"]
    asyncio.run(main(bootstrap, source, target, group, int(count), keyless))
