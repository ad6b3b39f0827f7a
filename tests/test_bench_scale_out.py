"""The scale-out benchmark, run as its users run it (a subprocess), with tiny numbers.

It starts a signaling node on SQLite, then a PostgreSQL server, a Redis server and one and
three signaling nodes on them; the test checks the JSON it prints and that it left no
process and no temporary directory behind.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = ("sqlite_1node", "pg_redis_1node", "pg_redis_3nodes")
RATIOS = (
    "ratio_p99_pg_vs_sqlite",
    "ratio_p99_3nodes_vs_sqlite",
    "ratio_matches_per_s_pg_vs_sqlite",
    "ratio_matches_per_s_3nodes_vs_sqlite",
)

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("initdb", "pg_ctl", "psql", "redis-server")),
    reason="needs the PostgreSQL server programs and redis-server",
)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent (the PostgreSQL
    server is not the benchmark's child: init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_scale_out_benchmark_small_run() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale_out",
            "--booths=20",
            "--staff=5",
            "--rate=10",
            "--duration=2",
            "--hold=0.2",
            "--drain=5",
            "--timeout=110",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=115,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    result = json.loads(lines[0])

    assert result["scenario"] == "scale_out"
    assert (result["booths"], result["staff"]) == (20, 5)
    configs = result["configurations"]
    assert sorted(configs) == sorted(CONFIGURATIONS)
    assert [configs[c]["nodes"] for c in CONFIGURATIONS] == [1, 1, 3]
    assert [configs[c]["database"] for c in CONFIGURATIONS] == ["sqlite", *["postgresql"] * 2]
    assert [configs[c]["redis"] for c in CONFIGURATIONS] == [False, True, True]
    for name in CONFIGURATIONS:
        config = configs[name]
        # 10 requests/s for 2 s; 20 booths are enough that none is ever skipped.
        assert config["requests"] == 20, name
        assert config["matches"] == config["requests"], name
        assert config["unmatched"] == 0, name
        assert config["stored_sessions"] == config["matches"], name
        assert config["double_assignments"] == 0, config["double_assignment_examples"]
        assert config["errors"] == {}, name
        p50, p99 = config["request_to_offer_p50_ms"], config["request_to_offer_p99_ms"]
        assert 0 < p50 <= p99 <= config["request_to_offer_max_ms"] < 2000, name
        assert 8 <= config["matches_per_s"] <= 10.0, name
    for key in RATIOS:
        assert isinstance(result[key], float | int) and result[key] > 0, key
    sqlite_p99 = configs["sqlite_1node"]["request_to_offer_p99_ms"]
    three_p99 = configs["pg_redis_3nodes"]["request_to_offer_p99_ms"]
    assert math.isclose(
        result["ratio_p99_3nodes_vs_sqlite"], three_p99 / sqlite_p99, rel_tol=0.01, abs_tol=0.002
    )
    assert result["double_assignments"] == 0
    assert result["meets_target"] is True

    # Everything it started is gone: 5 signaling nodes, PostgreSQL, Redis, the directory.
    pids = [int(p) for p in re.findall(r"started .+? \(pid (\d+)\)", proc.stderr)]
    assert len(pids) == 7, proc.stderr[-4000:]
    for pid in pids:
        assert not _running(pid), f"process {pid} outlived the benchmark"
    workdir = re.search(r"working directory (\S+)", proc.stderr)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
