"""The benchmark script still runs end to end and its figures hang together (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_runs_every_scenario_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench.py"),
            *("--records", "3000", "--segments", "10", "--flags", "2", "--repeat", "2"),
            *("--rate", "200", "--latency-seconds", "2"),
            *("--route-limit", "5", "--window-ms", "1000", "--windows", "2"),
            *("--steady-rate", "40", "--steady-segments", "10"),
            *("--warmup-windows", "2", "--steady-windows", "2"),
            *("--naive-records", "10", "--memory-records", "3000"),
            *("--big-events", "400", "--big-segments", "2"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.exists(), result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {
        "ceiling",
        "ceiling-keyless",
        "backlog",
        "scale-out",
        "latency-0ms",
        "latency-50ms",
        "latency-200ms",
        "big-segments",
        "rate-limit",
        "steady-limit-1m",
        "steady-limit-2m",
        "naive",
        "memory",
    }
    backlog = figures["backlog"]
    assert backlog["events"] == 3000 and backlog["events_per_s"] > 0
    assert 1 <= backlog["events_per_request"] <= 50
    assert backlog["api_requests"] >= 3000 / 50
    assert figures["ceiling"]["records"] == 3000
    runs = backlog["ratio_to_ceiling_runs"]
    assert len(runs) == 2 and min(runs) <= backlog["ratio_to_ceiling"] <= max(runs)
    scale_out = figures["scale-out"]
    assert scale_out["members"] == 2 and scale_out["events"] == 3000
    assert scale_out["speedup_over_one_member"] > 0
    for members in (1, 2):
        steady = figures[f"steady-limit-{members}m"]
        assert steady["members"] == members and steady["bound_events_per_s"] == 40
        assert steady["api_requests"] > 0 and 0 < steady["events_per_request"] <= 50
        assert 0 < steady["first_minute_share_of_bound"] <= 1.5
        assert steady["first_minute_api_requests"] > 0
    latency = figures["latency-0ms"]
    assert latency["events"] == 400 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert figures["latency-50ms"]["p50_ms"] > 50  # the simulator's added latency shows
    assert figures["latency-200ms"]["p50_ms"] > 200
    big = figures["big-segments"]
    assert big["events"] == 400 and big["sides_not_as_in_order"] == 0
    assert 0 < big["api_requests"] < 400 / 10  # net changes: far fewer requests than events
    assert (
        # sanity only: three short windows can fall into two measured ones
        figures["rate-limit"]["events_per_s"] <= figures["rate-limit"]["bound_events_per_s"] * 2
    )
    assert figures["naive"]["naive_events_per_s"] < figures["naive"]["service_events_per_s"]
    assert figures["memory"]["peak_rss_mib"] > 0
    assert "MISSED" in result.stdout or "ok" in result.stdout  # the table was printed
