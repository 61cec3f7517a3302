"""`outcomes` through the console script, after a real run: by id, status and time; --follow;
--limit gives the newest."""

from __future__ import annotations

import asyncio
import json

from consumer.contract.events import record_key
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.commands import SCRIPT, command
from tests.integration.harness import (
    ENV,
    PROJECT,
    create_topics,
    environment,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
)


def message(key: str, event_id: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    event = event_dict(key=key, project=PROJECT, env=ENV, event_id=event_id)
    return record_key(event), encode(event), []


async def test_outcomes_by_id_status_and_time_and_follow(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, log_level="info"
    )
    await create_topics(settings)
    env = environment(settings)
    await produce(settings, [message("s0", "ok-1"), message("gone", "nf-1"), message("s0", "ok-2")])
    async with running(settings):
        await outcomes(settings, 3)

        by_id = await command("outcomes", "--event-id", "nf-1", "--json", env=env)
        assert by_id.code == 0, by_id.err
        [found] = [json.loads(line) for line in by_id.out.splitlines()]
        assert found["status"] == "rejected" and found["error"]["code"] == "not_found"

        table = await command("outcomes", "--status", "succeeded", env=env)
        rows = table.out.splitlines()[1:]
        assert sorted(row.split()[0] for row in rows) == ["ok-1", "ok-2"]
        assert all("succeeded" in row and "addIncludedTargets" in row for row in rows)

        recent = await command("outcomes", "--since", "10m", "--json", env=env)
        assert len(recent.out.splitlines()) == 3
        old = await command("outcomes", "--until", "1h", "--json", env=env)
        assert old.out == "" and old.code == 0

        absent = await command("outcomes", "--event-id", "never-sent", env=env)
        assert absent.code == 1 and "no outcome for: never-sent" in absent.err

        follower = await asyncio.create_subprocess_exec(
            SCRIPT,
            "outcomes",
            "--follow",
            "--json",
            "--event-id",
            "late",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await produce(settings, [message("s0", "late")])
            assert follower.stdout is not None
            line = await asyncio.wait_for(follower.stdout.readline(), 30)
            assert json.loads(line)["eventId"] == "late"
            assert await asyncio.wait_for(follower.wait(), 30) == 0  # every id found: it stops
        finally:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()

        # --limit: the newest, in time order (not the first ones in partition order).
        newest = await command("outcomes", "--limit", "1", "--json", env=env)
        assert [json.loads(line)["eventId"] for line in newest.out.splitlines()] == ["late"]
        assert newest.err.strip() == "1 outcome"
        two = await command("outcomes", "--limit", "2", "--json", env=env)
        found = [json.loads(line) for line in two.out.splitlines()]
        assert len(found) == 2 and found[-1]["eventId"] == "late"
        assert found[0]["completedAt"] <= found[1]["completedAt"]
        ok = await command("outcomes", "--limit", "5", "--status", "succeeded", env=env)
        assert [row.split()[0] for row in ok.out.splitlines()[1:]][-1] == "late"
