"""The console script `ld-targeting-consumer` as a subprocess: what an operator types."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.factories import TOKEN

SCRIPT = str(Path(sys.executable).parent / "ld-targeting-consumer")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def failed_with(self, code: int, *needles: str) -> str:
        """Assert the failure an operator should see: `code`, one line on stderr holding every
        needle, no traceback, no token. Returns that line."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert self.code == code, (self.code, self.out, self.err)
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err + self.out
        assert TOKEN not in self.err + self.out
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]


async def command(
    *argv: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 60
) -> Result:
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        *argv,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while listed
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` ends (or is a zombie) within `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        await asyncio.sleep(0.1)
    return False
