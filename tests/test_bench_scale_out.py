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
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.scale_out import frame_double_assignments, requests_offered_at_once
from shared.protocol import (
    BoothInfo,
    CallStarted,
    EndReason,
    Offer,
    OfferWithdrawn,
    ServerToStaff,
    SessionEnded,
    StaffInfo,
    WithdrawReason,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = ("sqlite_1node", "pg_redis_1node", "pg_redis_3nodes")
RATIOS = (
    "ratio_p99_pg_vs_sqlite",
    "ratio_p99_3nodes_vs_sqlite",
    "ratio_matches_per_s_pg_vs_sqlite",
    "ratio_matches_per_s_3nodes_vs_sqlite",
)

needs_servers = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("initdb", "pg_ctl", "psql", "redis-server")),
    reason="needs the PostgreSQL server programs and redis-server",
)
BOOTH = BoothInfo(booth_id="b1", name="ブース", site_id="seiseki", site_name="聖蹟桜ヶ丘")


def _offer(offer_id: str, request_id: str) -> Offer:
    return Offer(
        offer_id=offer_id,
        request_id=request_id,
        booth=BOOTH,
        department="shimin",
        language="ja",
        requested_at=datetime.now(UTC),
        ring_timeout_s=20,
    )


def _started(session_id: str, request_id: str, staff_id: str) -> CallStarted:
    return CallStarted(
        session_id=session_id,
        request_id=request_id,
        role="answerer",
        booth=BOOTH,
        staff=StaffInfo(staff_id=staff_id, display_name=staff_id),
        department="shimin",
        language="ja",
        ice_servers=[],
    )


def _ended(session_id: str) -> SessionEnded:
    return SessionEnded(session_id=session_id, reason=EndReason.HANGUP_STAFF)


def test_the_frame_checks_count_double_assignments() -> None:
    clean: dict[str, list[tuple[float, ServerToStaff]]] = {
        "s1": [(1.0, _offer("o1", "r1")), (1.1, _started("x1", "r1", "s1")), (2.0, _ended("x1"))],
        # r2 rang at s2 first, was withdrawn, then rang at s1
        "s2": [
            (3.0, _offer("o2", "r2")),
            (3.5, OfferWithdrawn(offer_id="o2", reason=WithdrawReason.TIMEOUT)),
        ],
    }
    clean["s1"] += [(3.6, _offer("o3", "r2")), (3.7, _started("x2", "r2", "s1"))]
    assert requests_offered_at_once(clean) == []
    assert frame_double_assignments(clean)["staff_double_booked_frames"] == 0

    # r3 rings at s1 and s2 at the same time; s2 gets a second offer while one rings and a
    # second call during a session.
    double: dict[str, list[tuple[float, ServerToStaff]]] = {
        "s1": [(1.0, _offer("o1", "r3")), (1.5, _started("x1", "r3", "s1"))],
        "s2": [
            (1.2, _offer("o2", "r3")),
            (1.3, _offer("o3", "r4")),
            (1.4, _started("x2", "r4", "s2")),
            (1.6, _offer("o4", "r5")),
            (1.7, _started("x3", "r5", "s2")),
            (1.8, OfferWithdrawn(offer_id="o2", reason=WithdrawReason.TAKEN)),
        ],
    }
    assert requests_offered_at_once(double) == ["r3"]
    seen = frame_double_assignments(double)
    assert seen["requests_offered_at_once"] == 1
    # o3 while o2 rang; o4 during session x2; x3 during x2; o2 withdrawn after it was
    # replaced
    assert seen["staff_double_booked_frames"] == 4, seen["examples"]


@needs_servers
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
