"""The console script `ld-targeting-consumer` as a subprocess: what an operator types."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import TOKEN

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
