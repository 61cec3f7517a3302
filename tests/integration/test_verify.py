"""`verify` against a run: no drift after it, exactly the drift made behind its back after."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from consumer.commands.filters import Filter
from consumer.commands.verify import Verifier
from consumer.contract.events import record_key
from consumer.contract.outcomes import Status
from consumer.simulator import RunningSimulator
from consumer.simulator.admin_client import SimulatorAdmin
from tests.factories import encode, event_dict
from tests.integration.commands import command
from tests.integration.harness import (
    ENV,
    PROJECT,
    VARIATION,
    create_topics,
    environment,
    make_settings,
    outcomes,
    produce,
    running,
    seed,
)


def _event(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return event_dict(*args, project=PROJECT, env=ENV, **kwargs)


async def test_verify_is_clean_after_a_run_and_precise_after_a_change_behind_its_back(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(
        {
            "projects": [{"key": PROJECT, "environments": [ENV]}],
            "segments": [
                {
                    "projectKey": PROJECT,
                    "environmentKey": ENV,
                    "key": "beta",
                    "included": {"user": ["u1"]},
                },
                {
                    "projectKey": PROJECT,
                    "environmentKey": ENV,
                    "key": "vip",
                    "unbounded": True,
                    "unboundedContextKind": "account",
                },
            ],
            "flags": [
                {
                    "projectKey": PROJECT,
                    "key": "checkout",
                    "variations": [{"_id": VARIATION, "value": True}],
                    "targets": {ENV: [{"variationId": VARIATION, "values": ["u1"]}]},
                }
            ],
        }
    )
    settings = make_settings(kafka_bootstrap, simulator.base_url, on_tansu=on_tansu)
    await create_topics(settings)
    events = [
        _event(values=["o1", "o2", "o3"]),  # beta: org targets
        _event("segment", "removeIncludedTargets", values=["o3"]),
        _event("segment", "updateName"),
        _event("segment", "addExpiringTarget"),  # u1 in beta, expiring
        _event("segment", "updateExpiringTarget", value=1_900_000_000_000),
        _event("flag", "addExpiringTarget", key="checkout"),
        *[_event(key="vip", contextKind="account", values=[f"a{i}", f"b{i}"]) for i in range(6)],
        _event("segment", "removeIncludedTargets", key="vip", contextKind="account", values=["b0"]),
        _event("segment", "addExcludedTargets", key="vip", contextKind="account", values=["a5"]),
        _event("segment", "addIncludedTargets", key="nope", values=["x"]),  # 404: no claim
    ]
    await produce(settings, [(record_key(e), encode(e), []) for e in events])
    async with running(settings):
        results = await outcomes(settings, len(events))
    assert sum(o.status is Status.SUCCEEDED for o in results) == len(events) - 1

    report = await Verifier(settings, Filter()).run()
    assert report.clean, (report.drifted, report.unread)
    assert report.outcomes_used == len(events) - 1 and report.events_missing == 0
    # 3 org targets + name + 1 expiring on beta, 1 flag expiry, 13 big-segment targets.
    assert report.targets == 3 + 1 + 1 + 1 + 12 + 1
    big_reads = [r for r in await admin.requests() if "/vip/contexts/" in r["path"]]
    assert len(big_reads) == 12  # a0-a5, b0-b5: one read per context

    # Behind its back: one big-segment member and one standard member taken out.
    await admin.segment_targets(
        PROJECT,
        ENV,
        "vip",
        target_type="included",
        values=["a2"],
        context_kind="account",
        remove=True,
    )
    await admin.segment_targets(
        PROJECT, ENV, "beta", target_type="included", values=["o1"], context_kind="org", remove=True
    )
    report = await Verifier(settings, Filter()).run()
    assert not report.unread
    assert sorted(
        (d.target.resource, d.target.label(), d.expected, d.found) for d in report.drifted
    ) == [
        (f"{PROJECT}/{ENV}/segment/beta", "included org:o1", True, False),
        (f"{PROJECT}/{ENV}/segment/vip", "included account:a2", True, False),
    ]
    setters = {d.target.key: d.set_by.event_id for d in report.drifted}
    assert setters == {"o1": events[0]["eventId"], "a2": events[8]["eventId"]}

    # The command: a table, --json, exit 1 on drift; a selection that misses it is clean.
    async def command(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "verify",
            *args,
            env=environment(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    code, out = await command("--json")
    assert code == 1
    found = json.loads(out)["drift"]
    assert set(found) == {f"{PROJECT}/{ENV}/segment/beta", f"{PROJECT}/{ENV}/segment/vip"}
    assert found[f"{PROJECT}/{ENV}/segment/vip"][0]["setBy"]["eventId"] == events[8]["eventId"]
    code, out = await command("--resource", f"{PROJECT}/{ENV}/flag/*")
    assert code == 0 and "no drift" in out
    code, out = await command("--event-id", events[0]["eventId"])
    assert code == 1 and "included org:o1" in out and "a2" not in out


async def test_an_unreachable_api_or_a_wrong_token_is_one_line_and_nothing_matched_says_so(
    kafka_bootstrap: str, on_tansu: bool, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    await admin.seed(seed(segments={"s0": {}}))
    settings = make_settings(
        kafka_bootstrap, simulator.base_url, on_tansu=on_tansu, log_level="info"
    )
    await create_topics(settings)
    await produce(settings, [(record_key(e), encode(e), []) for e in [_event(key="s0")]])
    async with running(settings):
        await outcomes(settings, 1)
    env = environment(settings)

    started = time.monotonic()
    down = await command("verify", env={**env, "LD_BASE_URL": "http://127.0.0.1:9"})
    down.failed_with(1, "cannot reach LaunchDarkly at http://127.0.0.1:9", "LD_BASE_URL")
    assert time.monotonic() - started < 20 and down.out == ""
    refused = await command("verify", env={**env, "LD_API_TOKEN": "api-not-the-right-token-0000"})
    refused.failed_with(1, "refuses the token (HTTP 401)", "LD_API_TOKEN")
    assert refused.out == ""

    nothing = await command("verify", "--resource", "other/*", env=env)
    assert nothing.code == 0, nothing.err
    assert "nothing to verify" in nothing.out and "no drift" not in nothing.out
    clean = await command("verify", env=env)
    assert clean.code == 0 and "no drift" in clean.out
    assert "1 succeeded outcome of 1 read; 2 targets on 1 resource checked with 1 read" in clean.out
