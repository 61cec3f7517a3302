"""The README's "Run the pieces yourself", run as written.

The section's fenced blocks are found by their first line, `# by-hand: NAME`. "every terminal"
is the preamble of every command; broker, fake-api and run are started in the background (run
with the `export` lines the broker printed, as the README says to paste them); the other
blocks run line by line, each line to completion, with the exit code it states (`# exit N`,
else 0). The one change to what is written: the values of the port variables the preamble sets
(free ports instead of 9092, 8765 and 8080, which may be in use here).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from consumer.kafka.tansu import free_port
from consumer.settings import Settings
from tests.integration.commands import Result, children, gone

ROOT = Path(__file__).parents[2]
SECTION = "## Run the pieces yourself"
MARKER = "# by-hand: "
PORT_VARIABLES = ("BROKER_PORT", "LD_PORT", "CONSUMER_HTTP_PORT")
PREAMBLE = "every terminal"
BACKGROUND = ("broker", "fake-api", "run")
IN_ORDER = ("produce", "replay")


def readme_blocks() -> dict[str, list[str]]:
    """Each marked block of the section: its command lines (comment lines and blank lines
    dropped, continued lines joined)."""
    text = (ROOT / "README.md").read_text()
    assert f"\n{SECTION}\n" in text, f"README.md has no {SECTION!r}"
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for body in re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S):
        first, *rest = body.replace("\\\n", " ").splitlines()
        assert first.startswith(MARKER), f"a block without {MARKER!r}: {first!r}"
        name = first.removeprefix(MARKER)
        assert name not in blocks, f"two blocks named {name!r}"
        blocks[name] = [line for line in rest if line.strip() and not line.startswith("#")]
    assert set(blocks) == {PREAMBLE, *BACKGROUND, *IN_ORDER}, sorted(blocks)
    return blocks


def section_text() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]


def check_the_story(section: str, ran: list[tuple[str, Result]]) -> None:
    """What the section says happens is what happened: the outcomes' summary `produce --wait`
    ends with, the rejected events and their codes (its table), how many records the first
    replay replays (`replayed N`) and why the second replays none (`skipped: ...`)."""

    def runs(*words: str) -> list[Result]:
        return [
            r for line, r in ran if shlex.split(line, comments=True)[: len(words)] == list(words)
        ]

    summary = re.search(r"`(outcomes: [^`]+)`", section)
    assert summary, "the section quotes produce's outcomes summary"
    [produced] = runs("ld-targeting-consumer", "produce")
    assert summary.group(1) in produced.out, (summary.group(1), produced.out[-500:])

    told = set(re.findall(r"^\| `([\w-]+)` \| `([a-z_]+)` \|", section, re.M))
    assert told, "the section lists the rejected events and their codes"
    [rejected] = runs("ld-targeting-consumer", "outcomes", "--status", "rejected")
    shown = {
        (row.split()[0], row.split(maxsplit=5)[5].split(":")[0])
        for row in rejected.out.splitlines()[1:]
    }
    assert shown == told, (sorted(shown), sorted(told))

    first, again = runs("ld-targeting-consumer", "replay")
    count = re.search(r"\(`replayed (\d+)`\)", section)
    assert count, "the section says how many records the replay replays"
    replayed = [line.split()[-1] for line in first.out.splitlines() if line.startswith("replayed")]
    assert replayed == [count.group(1)], first.out
    skipped = re.search(r"\(`(skipped: [^`]+)`\)", section)
    assert skipped, "the section says why replaying again replays nothing"
    assert skipped.group(1) in again.out, again.out
    assert [line.split()[-1] for line in again.out.splitlines() if line.startswith("replayed")] == [
        "0"
    ]


def with_ports(lines: list[str], ports: dict[str, int]) -> str:
    script = "\n".join(lines)
    for name, port in ports.items():
        script, count = re.subn(rf"\b{name}=\d+\b", f"{name}={port}", script)
        assert count == 1, f"{PREAMBLE!r} must set {name} once"
    return script


def expected_code(line: str) -> int:
    found = re.search(r"\s#\s*exit (\d+)\s*$", line)
    return int(found.group(1)) if found else 0


def base_env() -> dict[str, str]:
    """This environment without any of the service's settings (only the README's count), and
    the virtualenv's console scripts first on PATH, as after `. .venv/bin/activate`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


async def start(script: str, log: Path) -> asyncio.subprocess.Process:
    """A long-running command in the background; its output to `log` (a pipe nobody reads
    would fill and stop it). `exec`: the signals sent to it reach the command itself."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=ROOT,
            env=base_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def run_line(script: str, timeout: float = 120) -> Result:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=ROOT,
        env=base_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    process: asyncio.subprocess.Process,
    log: Path,
    timeout: float = 60,
) -> None:
    """Until `condition()` answers true; fails at once when `process` ends meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert process.returncode is None, log.read_text()
        assert asyncio.get_running_loop().time() < deadline, f"{log.name}: not ready in time"
        await asyncio.sleep(0.2)


async def answers_200(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def printed_exports(log: Path) -> list[str] | None:
    """The broker's `export` lines once it has printed them all (None before)."""
    lines = log.read_text().splitlines()
    exports = [line for line in lines if line.startswith("export ")]
    after = lines[lines.index(exports[-1]) + 1 :] if exports else []
    return exports if after else None


async def test_the_readme_by_hand_section_runs_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks()
    ports = {name: free_port() for name in PORT_VARIABLES}
    preamble = with_ports(blocks[PREAMBLE], ports)
    token = re.search(r"\bLD_API_TOKEN=(\S+)", preamble)
    assert token is not None, "the preamble sets LD_API_TOKEN"
    for name in BACKGROUND:
        assert len(blocks[name]) == 1, f"{name!r} is one command"

    logs = {name: tmp_path / f"{name}.log" for name in BACKGROUND}
    started: dict[str, asyncio.subprocess.Process] = {}
    try:
        started["broker"] = await start(f"{preamble}\nexec {blocks['broker'][0]}", logs["broker"])
        exports: list[str] | None = None

        async def broker_ready() -> bool:
            nonlocal exports
            exports = printed_exports(logs["broker"])
            return exports is not None

        await wait_for(broker_ready, started["broker"], logs["broker"])
        assert exports is not None
        address = f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports['BROKER_PORT']}"
        assert address in exports, exports
        [tansu] = children(started["broker"].pid)
        pasted = f"{preamble}\n" + "\n".join(exports)

        started["fake-api"] = await start(
            f"{preamble}\nexec {blocks['fake-api'][0]}", logs["fake-api"]
        )
        await wait_for(
            lambda: answers_200(f"http://127.0.0.1:{ports['LD_PORT']}/admin/health"),
            started["fake-api"],
            logs["fake-api"],
        )
        started["run"] = await start(f"{pasted}\nexec {blocks['run'][0]}", logs["run"])
        await wait_for(
            lambda: answers_200(f"http://127.0.0.1:{ports['CONSUMER_HTTP_PORT']}/readyz"),
            started["run"],
            logs["run"],
        )

        ran: list[tuple[str, Result]] = []
        for name in IN_ORDER:
            for line in blocks[name]:
                result = await run_line(f"{pasted}\n{line}")
                shown = f"{line}\n{result.out}\n{result.err}"
                assert result.code == expected_code(line), shown
                assert "Traceback" not in result.out + result.err, shown
                assert token.group(1) not in result.out + result.err, shown
                ran.append((line, result))

        checks = [
            r for line, r in ran if shlex.split(line)[:2] == ["ld-targeting-consumer", "check"]
        ]
        assert checks and all(r.code == 0 for r in checks), "the section runs check, and it passes"
        found = 0
        for line, result in ran:
            words = shlex.split(line, comments=True)
            if words[:2] != ["ld-targeting-consumer", "outcomes"] or "--event-id" not in words:
                continue
            ids = [words[i + 1] for i, word in enumerate(words) if word == "--event-id"]
            for event_id in ids:
                rows = [row for row in result.out.splitlines() if row.split()[:1] == [event_id]]
                assert rows and all("succeeded" in row for row in rows), (event_id, result.out)
                found += 1
        assert found, "the section looks up events with outcomes --event-id"
        check_the_story(section_text(), ran)
    finally:
        for name in reversed(BACKGROUND):  # the consumer first, the broker last
            process = started.get(name)
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    for name, process in started.items():
        output = logs[name].read_text()
        assert process.returncode == 0, (name, output)
        assert "Traceback" not in output, (name, output)
        assert token.group(1) not in output, (name, output)
    assert await gone(tansu)
