"""The matching benchmark, run as its users run it (a subprocess), with tiny numbers.

It starts the real signaling server and the echo server as processes of its own; the test
checks the JSON it prints and that it left no process and no temporary directory behind.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

REQUIRED_KEYS = {
    "scenario",
    "booths",
    "staff",
    "requests",
    "matches",
    "matches_per_s",
    "request_to_offer_p50_ms",
    "request_to_offer_p99_ms",
    "echo_p50_ms",
    "echo_p99_ms",
    "ratio_p99_vs_echo",
    "server_rss_mb",
    "server_cpu_percent",
    "target_p99_ms",
    "meets_target",
}


def test_matching_benchmark_small_run() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.matching",
            "--booths=20",
            "--staff=5",
            "--rate=10",
            "--duration=2",
            "--hold=0.2",
            "--drain=5",
            "--timeout=50",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    result = json.loads(lines[0])

    assert result.keys() >= REQUIRED_KEYS
    assert result["scenario"] == "matching"
    assert (result["booths"], result["staff"]) == (20, 5)
    # 10 requests/s for 2 s; 20 booths are enough that none is ever skipped.
    assert result["requests"] == 20
    assert result["skipped_no_idle_booth"] == 0
    assert result["matches"] == result["requests"]
    # Throughput counts until the last match, which may come a little after the 2 s.
    assert 8 <= result["matches_per_s"] <= 10.0
    assert result["errors"] == {}
    assert result["frames_to_staff"]["offer"] >= result["matches"]
    # The run ends when staff have seen every call_started; the booth's copy of the last
    # one may still be on its way.
    assert result["matches"] - 2 <= result["frames_to_booths"]["call_started"] <= result["matches"]
    offers_by_second = result["request_to_offer_p50_ms_by_second"]
    assert len(offers_by_second) == 2
    assert all(v is not None and v > 0 for v in offers_by_second)
    assert result["server_stop_s"] is not None and result["server_stop_s"] < 15

    p50, p99 = result["request_to_offer_p50_ms"], result["request_to_offer_p99_ms"]
    assert 0 < p50 <= p99 < 2000
    e50, e99 = result["echo_p50_ms"], result["echo_p99_ms"]
    assert 0 < e50 <= e99 < 2000
    assert math.isclose(result["ratio_p99_vs_echo"], p99 / e99, rel_tol=0.02, abs_tol=0.01)
    assert result["echo_answered"] == result["echo_messages"] == 20
    assert result["echo_connections"] == 25

    assert 10 < result["server_rss_mb"] < 2000
    assert 0 <= result["server_cpu_percent"] < 250
    assert result["target_p99_ms"] == 20
    assert result["meets_target"] is (p99 <= 20)

    # Everything it started is gone: the two server processes and the working directory.
    pids = [int(p) for p in re.findall(r"started .+? \(pid (\d+)\)", proc.stderr)]
    assert len(pids) == 2, proc.stderr[-4000:]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the benchmark"
    workdir = re.search(r"working directory (\S+)", proc.stderr)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()


RELAY_REQUIRED_KEYS = {
    "scenario",
    "pairs",
    "idle_connections",
    "payload_bytes",
    "signaling_message_rate_per_s",
    "peerjs_available",
    "ours_connect_p50_ms",
    "ours_connect_p99_ms",
    "ours_relay_p50_ms",
    "ours_relay_p99_ms",
    "ours_msgs_per_s",
    "ours_rss_mb_per_1000_idle",
    "ours_cpu_s_per_10k_msgs",
    "ours_loadgen_cpu_percent",
    "ratio_msgs_per_s_vs_peerjs",
    "ratio_relay_p99_vs_peerjs",
    "ratio_rss_per_idle_vs_peerjs",
    "meets_target",
}


def test_relay_benchmark_small_run() -> None:
    """A few pairs for half a second, against signaling and the bare aiohttp relay (which
    speaks PeerJS's client protocol, so both clients of the benchmark run); the PeerJS
    server itself is left out (it needs Node.js and bench/peerjs installed)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.relay_load",
            "--pairs=3",
            "--idle=20",
            "--duration=0.5",
            "--warmup=0.2",
            "--no-peerjs",
            "--timeout=40",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])

    assert result.keys() >= RELAY_REQUIRED_KEYS
    assert result["scenario"] == "relay_load"
    assert (result["pairs"], result["idle_connections"]) == (3, 20)
    assert result["signaling_message_rate_per_s"] >= 100_000  # the limiter is not measured
    assert result["peerjs_available"] is False
    sides = ["ours", "floor"]
    for side in sides:
        assert result[f"{side}_idle_connected"] == 20
        assert result[f"{side}_errors"] == {}
        assert result[f"{side}_relayed"] > 10  # messages bounced through the server
        # Each pair keeps one message in flight; the last ones may still be on their way.
        sent, received = result[f"{side}_sent_total"], result[f"{side}_received_total"]
        assert sent - 3 <= received <= sent
        p50, p99 = result[f"{side}_relay_p50_ms"], result[f"{side}_relay_p99_ms"]
        assert 0 < p50 <= p99 < 2000
        assert 0 < result[f"{side}_connect_p50_ms"] <= result[f"{side}_connect_p99_ms"]
        assert result[f"{side}_msgs_per_s"] > 10
        assert result[f"{side}_cpu_s_per_10k_msgs"] >= 0
    assert result["ours_idle_held_by_server"] == 20  # the server's own count
    assert result["ours_permessage_deflate"] is False
    ratio = result["ours_msgs_per_s"] / result["floor_msgs_per_s"]
    assert math.isclose(result["ratio_msgs_per_s_vs_floor"], ratio, rel_tol=0.01)
    assert result["ratio_msgs_per_s_vs_peerjs"] is None
    assert result["meets_target"] is None

    pids = [int(p) for p in re.findall(r"started .+? \(pid (\d+)\)", proc.stderr)]
    assert len(pids) == len(sides), proc.stderr[-4000:]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the benchmark"
    workdir = re.search(r"working directory (\S+)", proc.stderr)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
