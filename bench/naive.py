"""The baseline users would otherwise write: one request per event, awaited in order.

For each record: parse it, send its one instruction as a semantic patch, wait for the answer,
publish an outcome and wait for the broker; offsets auto-committed. Run by bench.py as a child
process:

    python bench/naive.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC GROUP RECORDS BASE_URL TOKEN

It stops after RECORDS inputs and prints one JSON line (records, seconds).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HEADERS = {
    "Content-Type": "application/json; domain-model=launchdarkly.semanticpatch",
    "LD-API-Version": "20240415",
}


def path_of(event: dict[str, object]) -> tuple[str, dict[str, object]]:
    resource = event["resource"]
    assert isinstance(resource, dict)
    project, env, key = event["projectKey"], event["environmentKey"], resource["key"]
    body: dict[str, object] = {"instructions": [event["instruction"]]}
    if resource["kind"] == "segment":
        body["environmentKey"] = env
        return f"/api/v2/segments/{project}/{env}/{key}", body
    return f"/api/v2/flags/{project}/{key}/expiring-targets/{env}", body


async def main(
    bootstrap: str, source: str, target: str, group: str, records: int, base: str, token: str
) -> None:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=2_000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await consumer.start()
    done = 0
    started: float | None = None
    try:
        async with aiohttp.ClientSession(headers={**HEADERS, "Authorization": token}) as http:
            async for record in consumer:
                started = started or time.monotonic()
                event = json.loads(record.value)
                path, body = path_of(event)
                async with http.patch(base + path, json=body) as response:
                    await response.read()
                    status = response.status
                outcome = {"eventId": event["eventId"], "httpStatus": status}
                await producer.send_and_wait(target, json.dumps(outcome).encode(), key=record.key)
                done += 1
                if done >= records:
                    break
    finally:
        await consumer.stop()
        await producer.stop()
    elapsed = time.monotonic() - (started or time.monotonic())
    print(json.dumps({"records": done, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    bootstrap, source, target, group, count, base, token = sys.argv[1:8]
    asyncio.run(main(bootstrap, source, target, group, int(count), base, token))
