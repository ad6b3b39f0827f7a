"""The link emulation harness, proven by measurement.

Each test builds a booth namespace and an HQ namespace joined by an emulated link and
measures what crosses it: round-trip time, loss over thousands of datagrams, TCP
throughput. Also: nothing outside the two namespaces is reachable, code runs on the side
it was sent to, and tearing down leaves no process, thread or namespace behind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from tests.netlink import PROFILES, EmulatedLink, emulated_link
from tests.netlink.fixtures import link_fixture, require_root
from tests.netlink.measure import measure_loss, measure_rtt, measure_throughput

REPO_ROOT = Path(__file__).resolve().parent.parent

station_link = link_fixture("station")


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


@pytest.mark.parametrize("name", ["station", "closed", "lan"])
async def test_round_trip_time_is_twice_the_delay(name: str) -> None:
    profile = PROFILES[name]
    async with emulated_link(profile) as link:
        result = await measure_rtt(link, probes=40, interval_s=0.02)
    # Probes are lost with the profile's loss each way; nearly all must come back.
    assert len(result.samples_ms) >= 0.85 * result.sent
    # Never faster than the propagation delay; the median within 10 % (or 3 ms) above it.
    assert result.min_ms >= profile.rtt_ms - 0.2
    assert result.median_ms <= profile.rtt_ms + max(3.0, 0.1 * profile.rtt_ms), result


@pytest.mark.parametrize("name", ["station", "closed", "lan"])
async def test_loss_matches_the_profile(name: str) -> None:
    profile = PROFILES[name]
    async with emulated_link(profile) as link:
        per_direction = await measure_loss(link, packets=2500, duration_s=1.0)
    for direction, result in per_direction.items():
        assert result.sent == 2500
        if profile.loss_percent == 0:
            assert result.lost == 0, direction
        else:
            # 2,500 draws: the binomial spread at 1-2 % is about 0.2-0.3 points.
            low, high = 0.3 * profile.loss_percent, 2.0 * profile.loss_percent
            assert low <= result.loss_percent <= high, (direction, result)


@pytest.mark.parametrize("name", ["station", "closed"])
async def test_tcp_throughput_matches_the_rate(name: str) -> None:
    profile = PROFILES[name]
    async with emulated_link(profile) as link:
        result = await measure_throughput(link, duration_s=2.0, warmup_s=1.0, congestion="bbr")
    if result.congestion_control != "bbr":
        pytest.skip("tcp_bbr not available: loss-based TCP cannot fill a lossy link")
    for direction, mbit_s in result.mbit_s.items():
        # Goodput: the rate less Ethernet/IP/TCP headers (about 4 %), within ±30 %.
        assert 0.7 * profile.rate_mbit <= mbit_s <= 1.3 * profile.rate_mbit, (direction, mbit_s)


async def test_lan_is_far_faster_than_the_station_link() -> None:
    # One direction only: at 1 Gbit/s the wire process, not the link, sets the limit.
    async with emulated_link("lan") as link:
        result = await measure_throughput(link, duration_s=1.5, warmup_s=0.5, both_ways=False)
    assert result.mbit_s["booth_to_hq"] >= 150, result


async def test_nothing_outside_the_two_namespaces_is_reachable(
    station_link: EmulatedLink,
) -> None:
    link = station_link
    loop = asyncio.get_running_loop()

    # Each namespace holds exactly its loopback and the link, and one route: the link's.
    for end in (link.booth, link.hq):
        links = (await end.run_command(["ip", "-o", "link"])).stdout.splitlines()
        assert sorted(line.split(":")[1].strip() for line in links) == ["link0", "lo"]
        routes = (await end.run_command(["ip", "-4", "route"])).stdout.splitlines()
        assert len(routes) == 1 and routes[0].startswith("198.18.0.0/30 dev link0"), routes
        addrs = (await end.run_command(["ip", "-o", "-4", "addr"])).stdout
        assert f"inet {end.address}/30" in addrs

    # A server on the outer namespace's loopback: the booth's 127.0.0.1 is its own.
    outer = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    outer_port = outer.sockets[0].getsockname()[1]
    try:
        with link.booth.socket() as sock:
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", outer_port)), 5)
    finally:
        outer.close()
        await outer.wait_closed()

    # Beyond the link there is no route at all: connect fails before any packet leaves.
    for sock_type in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with link.booth.socket(socket.AF_INET, sock_type) as sock:
            with pytest.raises(OSError) as excinfo:
                await asyncio.wait_for(loop.sock_connect(sock, ("198.51.100.1", 9)), 5)
        assert excinfo.value.errno == errno.ENETUNREACH

    # The link's addresses exist only inside the namespaces.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError) as excinfo:
            sock.bind((link.hq.address, 0))
    assert excinfo.value.errno == errno.EADDRNOTAVAIL
    assert "link0" not in [name for _, name in socket.if_nameindex()]

    # ...and between them, the link works.
    listener = link.hq.bound_socket(socket.SOCK_STREAM)
    with listener, link.booth.socket() as client:
        await loop.sock_connect(client, listener.getsockname())
        accepted, peer = await loop.sock_accept(listener)
        with accepted:
            await loop.sock_sendall(client, b"booth calling")
            assert await asyncio.wait_for(loop.sock_recv(accepted, 100), 5) == b"booth calling"
        assert peer[0] == link.booth.address


async def test_code_runs_on_the_side_it_is_sent_to(station_link: EmulatedLink) -> None:
    link = station_link
    rtt_s = link.profile.rtt_ms / 1000

    # An aiohttp server on HQ's own event loop, bound to HQ's address.
    async def start_hq_server() -> tuple[web.AppRunner, int]:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=f"hq saw {request.remote}")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, link.hq.address, 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        return runner, server.sockets[0].getsockname()[1]

    # An aiohttp client on the booth's event loop.
    async def fetch(url: str) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with ClientSession() as session:
            started = loop.time()
            async with session.get(url) as response:
                text = await response.text()
            return text, loop.time() - started

    runner, port = await link.hq.run(start_hq_server)
    try:
        text, elapsed_s = await link.booth.run(fetch, f"http://{link.hq.address}:{port}/")
    finally:
        await link.hq.run(runner.cleanup)
    assert text == f"hq saw {link.booth.address}"
    # TCP handshake plus request/response: at least two round trips of the link.
    assert elapsed_s >= 2 * rtt_s - 0.002

    # A program run on a side lives in that side's namespace.
    inodes = {}
    for end in (link.booth, link.hq):
        seen = (await end.run_command(["readlink", "/proc/self/ns/net"])).stdout.strip()
        assert seen == f"net:[{os.stat(end.net_path).st_ino}]"
        inodes[end.side] = seen
    assert len({*inodes.values(), f"net:[{os.stat('/proc/self/ns/net').st_ino}]"}) == 3

    # A one-shot command's output comes back; its exit status is checked.
    script = "import socket; s = socket.socket(); s.bind(('198.18.0.2', 0)); print('bound')"
    result = await link.hq.run_command([sys.executable, "-c", script])
    assert result.stdout.strip() == "bound"
    with pytest.raises(subprocess.CalledProcessError):
        await link.booth.run_command([sys.executable, "-c", script])


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


async def test_teardown_leaves_nothing_behind_even_on_failure() -> None:
    pids: list[int] = []
    paths: list[str] = []
    with pytest.raises(RuntimeError, match="test body failed"):
        async with emulated_link("station") as link:
            proc = await link.booth.start_process(["sleep", "60"])
            assert link.wire_pid is not None
            pids += [proc.pid, link.wire_pid]
            paths += [link.booth.net_path, link.hq.net_path]
            assert _existing(paths) == paths
            raise RuntimeError("test body failed")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _existing(paths) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("netns-")]
    with pytest.raises(RuntimeError, match="closed"):
        await link.start_process("booth", ["true"])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_command_line_up_run_down(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bench.netlink", f"--state-dir={tmp_path}", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    up = cli("up", "station")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        assert state["booth"]["address"] == "198.18.0.1"
        assert state["profile"]["delay_ms"] == 30
        assert cli("up", "station").returncode == 1  # one link per profile
        assert json.loads(cli("status").stdout).keys() == {"station"}
        booth = cli("run", "station", "--", "ip", "-o", "-4", "addr", "show", "link0")
        assert "inet 198.18.0.1/30" in booth.stdout
        hq = cli(
            "run", "station", "--side", "hq", "--", "sh", "-c", "readlink /proc/self/ns/net; exit 3"
        )
        assert hq.returncode == 3
        assert hq.stdout.strip() == f"net:[{os.stat(state['hq']['netns']).st_ino}]"
    finally:
        down = cli("down", "station")
    assert down.returncode == 0, down.stderr
    assert json.loads(cli("status").stdout) == {}
    for pid in (state["pid"], state["wire_pid"]):
        assert b"netlink" not in _cmdline(pid)
    assert cli("run", "station", "--", "true").returncode == 1
