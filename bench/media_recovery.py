"""Recovery from drops: how long after a booth's line comes back media flows again.

    unshare --net -- bash -c 'ip link set lo up; ip addr add 127.0.0.2/8 dev lo; \\
        .venv/bin/python -m bench.media_recovery --outages 10 --outage-s 10'

Builds the booth–HQ link (:func:`tests.netlink.emulated_link`, default ``station``). The
signaling server and an :class:`~bench.staff_peer.AutoStaff` run in the HQ namespace, the
real :class:`~booth.agent.BoothAgent` (simulated camera: stamped frames) in the booth
namespace, and one call is set up between them. Then, ``--outages`` times: the line goes
down completely for ``--outage-s`` seconds (an nftables rule dropping every packet that
arrives over the link, at both ends: nothing crosses in either direction, and neither side
is told), comes back, and the clock runs from that moment to the first stamped booth frame
of the renegotiated peer connection decoded at staff. The call and its session stay the
same throughout; between outages the media runs for ``--settle-s`` seconds.

The result is one JSON object (like the other benchmarks): ``recovery_p50_s``,
``recovery_p95_s`` (target ≤ 5 s) and every sample, the booth's detection time (line down →
RECONNECTING) and the attempts it made per outage. The default ``--outage-s`` is 10 s
(the issue's case); use e.g. ``--outages 3 --outage-s 4`` for a quick run.
``--syn-linear N`` sets the booth host's ``net.ipv4.tcp_syn_linear_timeouts`` (see
:func:`linear_syn_retries`); without it the kernel's default applies. Needs root.

The helpers here (:func:`start_hq`, :func:`start_booth`, :func:`line_down`,
:func:`line_up`, :func:`wait_new_frames`) are what ``tests/test_media_recovery.py`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp.web

from bench.staff_peer import AutoStaff, CallRecord
from booth.agent import BoothAgent
from booth.call import CallState
from booth.ice import restrict_host_addresses
from shared.config import BoothConfig, DeviceConfig, SignalingConfig
from shared.kiosk_protocol import ChooseLanguage, RequestHelpTouched
from signaling.app import create_app
from tests.netlink import BOOTH_ADDRESS, HQ_ADDRESS, EmulatedLink, emulated_link
from tests.netlink.link import INTERFACE
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    TEST_TIMINGS,
    TOKEN_SECRET,
    StaffTokenFactory,
    prepare_database,
    sqlite_url,
)

BOOTH_ID: Final = "seiseki-1"
TARGET_P95_S: Final = 5.0
OUTAGE_TABLE: Final = "ekichika_outage"


# --------------------------------------------------------------------------------------
# HQ side: signaling and the automated staff member (run on the HQ namespace's loop)
# --------------------------------------------------------------------------------------


@dataclass
class HqSide:
    runner: aiohttp.web.AppRunner
    config: SignalingConfig
    staff: AutoStaff
    database_path: Path

    @property
    def booth_url(self) -> str:
        return f"ws://{self.config.host}:{self.config.port}/ws/booth"


async def start_hq(directory: Path, **signaling: Any) -> HqSide:
    """Signaling on the HQ address (a fresh seeded SQLite file in ``directory``) and sato,
    signed in and available. A booth drop survives the call for a minute unless
    ``signaling`` (SignalingConfig fields) says otherwise."""
    database_path = directory / "signaling.sqlite3"
    url = sqlite_url(database_path)
    await prepare_database(url)
    settings: dict[str, Any] = {
        **TEST_TIMINGS,
        "booth_reconnect_grace_s": 60.0,
        "staff_reconnect_grace_s": 60.0,
        **signaling,
    }
    config = SignalingConfig(
        host=HQ_ADDRESS, port=0, database_url=url, token_secret=TOKEN_SECRET, **settings
    )
    runner = aiohttp.web.AppRunner(create_app(config), shutdown_timeout=5.0)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, HQ_ADDRESS, 0)
    await site.start()
    config = config.model_copy(update={"port": int(runner.addresses[0][1])})
    token = StaffTokenFactory(TOKEN_SECRET)("sato")
    staff = AutoStaff(f"ws://{HQ_ADDRESS}:{config.port}/ws/staff", token, fps=10)
    try:
        await staff.connect()
        await staff.set_available()
    except BaseException:
        await staff.aclose()
        await runner.cleanup()
        raise
    return HqSide(runner, config, staff, database_path)


async def stop_hq(hq: HqSide) -> None:
    await hq.staff.aclose()
    await hq.runner.cleanup()


async def next_call(hq: HqSide, timeout_s: float = 20.0) -> CallRecord:
    """The next call staff take, once its media and data channel are up."""
    async with asyncio.timeout(timeout_s):
        record = await hq.staff.call_started.get()
        await record.connected.wait()
        await record.channel_open.wait()
        await record.first_frame.wait()
    return record


async def wait_new_frames(
    record: CallRecord, generation: int, after: float, timeout_s: float
) -> float:
    """Wait for a stamped booth frame of a generation newer than ``generation``, decoded
    after ``after`` (time.monotonic); returns when the first such frame arrived."""
    async with asyncio.timeout(timeout_s):
        while True:
            newer = [
                t
                for g, t in record.first_frame_by_generation.items()
                if g > generation and t >= after
            ]
            if newer:
                return min(newer)
            await asyncio.sleep(0.01)


# --------------------------------------------------------------------------------------
# Booth side (run on the booth namespace's loop)
# --------------------------------------------------------------------------------------


def booth_config(booth_url: str, directory: Path, **overrides: Any) -> BoothConfig:
    """Booth seiseki-1 with small video and quick signaling reconnects."""
    settings: dict[str, Any] = {
        "booth_id": BOOTH_ID,
        "credential": BOOTH_CREDENTIALS[BOOTH_ID],
        "server_url": booth_url,
        "kiosk_port": 0,
        "devices": DeviceConfig(
            video_width=320,
            video_height=240,
            video_fps=10,
            spool_path=str(directory / "spool.sqlite3"),
        ),
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "heartbeat_s": 2.0,
        "ended_screen_s": 0.5,
        **overrides,
    }
    return BoothConfig(**settings)


async def start_booth(config: BoothConfig) -> BoothAgent:
    agent = BoothAgent(config)
    await agent.start()
    try:
        await agent.signaling.wait_connected(10)
    except BaseException:
        await agent.aclose()
        raise
    return agent


async def ask_for_help(agent: BoothAgent) -> None:
    await agent.handle_touch(ChooseLanguage(language="ja"))
    await agent.handle_touch(RequestHelpTouched(department="shimin"))


def call_state(agent: BoothAgent) -> CallState | None:
    return agent.call.state if agent.call is not None else None


# --------------------------------------------------------------------------------------
# The line
# --------------------------------------------------------------------------------------


async def line_down(link: EmulatedLink, directory: Path) -> None:
    """Every packet arriving over the link is dropped, at both ends (nothing crosses)."""
    ruleset = directory / "outage.nft"
    ruleset.write_text(
        f"table netdev {OUTAGE_TABLE} {{\n"
        f"  chain drop_all {{ type filter hook ingress device {INTERFACE} priority -10;\n"
        "    drop\n"
        "  }\n"
        "}\n"
    )
    await asyncio.gather(
        link.run_command("booth", ["nft", "-f", str(ruleset)]),
        link.run_command("hq", ["nft", "-f", str(ruleset)]),
    )


async def linear_syn_retries(link: EmulatedLink, count: int) -> None:
    """The booth host's setting for quick signaling reconnects: the first ``count`` SYN
    retransmissions of a connection attempt 1 s apart instead of doubling (Linux
    ``net.ipv4.tcp_syn_linear_timeouts``, per network namespace). An attempt started
    during an outage then reaches the server at most about a second after the line is
    back; with doubling gaps it can wait several seconds for its next SYN."""
    await link.run_command(
        "booth", ["sysctl", "-q", "-w", f"net.ipv4.tcp_syn_linear_timeouts={count}"]
    )


async def line_up(link: EmulatedLink) -> None:
    await asyncio.gather(
        link.run_command("booth", ["nft", "delete", "table", "netdev", OUTAGE_TABLE]),
        link.run_command("hq", ["nft", "delete", "table", "netdev", OUTAGE_TABLE]),
    )


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


@dataclass
class Params:
    outages: int = 10
    outage_s: float = 10.0
    settle_s: float = 3.0
    profile: str = "station"
    syn_linear: int = 0  # 0: the kernel's default


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _wait_booth(link: EmulatedLink, agent: BoothAgent, state: CallState, s: float) -> None:
    deadline = time.monotonic() + s
    while await link.booth.call(call_state, agent) is not state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the booth's call did not reach {state.value}")
        await asyncio.sleep(0.05)


async def run(params: Params, directory: Path) -> dict[str, Any]:
    samples: list[float] = []
    detections: list[float] = []
    attempts: list[int] = []
    async with emulated_link(params.profile) as link:
        restrict_host_addresses([BOOTH_ADDRESS, HQ_ADDRESS])
        if params.syn_linear > 0:
            await linear_syn_retries(link, params.syn_linear)
        hq = await link.hq.run(start_hq, directory)
        try:
            agent = await link.booth.run(start_booth, booth_config(hq.booth_url, directory))
            try:
                await link.booth.run(ask_for_help, agent)
                record = await link.hq.run(next_call, hq)
                await _wait_booth(link, agent, CallState.IN_CALL, 10)
                for number in range(params.outages):
                    await asyncio.sleep(params.settle_s)
                    generation = record.generation
                    down_at = time.monotonic()
                    await line_down(link, directory)
                    await asyncio.sleep(params.outage_s)
                    await line_up(link)
                    up_at = time.monotonic()
                    first = await link.hq.run(
                        wait_new_frames, record, generation, up_at, params.outage_s + 60
                    )
                    samples.append(first - up_at)
                    await _wait_booth(link, agent, CallState.IN_CALL, 10)
                    assert agent.call is not None
                    outage = agent.call.outages[-1]
                    detections.append(outage.lost_at - down_at)
                    attempts.append(outage.attempts)
                    logging.info(
                        "outage %d: media again %.2f s after the line came back",
                        number + 1,
                        first - up_at,
                    )
                session_id = agent.call.session_id if agent.call is not None else None
                same_session = session_id == record.session_id
            finally:
                await link.booth.run(agent.aclose)
        finally:
            await link.hq.run(stop_hq, hq)
            restrict_host_addresses([])
    p95 = _percentile(samples, 0.95)
    return {
        "benchmark": "media_recovery",
        "profile": params.profile,
        "outages": params.outages,
        "outage_s": params.outage_s,
        "booth_tcp_syn_linear_timeouts": params.syn_linear or "kernel default",
        "recovery_p50_s": round(statistics.median(samples), 3),
        "recovery_p95_s": round(p95, 3),
        "recovery_max_s": round(max(samples), 3),
        "recovery_samples_s": [round(s, 3) for s in samples],
        "detection_p50_s": round(statistics.median(detections), 3),
        "attempts": attempts,
        "same_session": same_session,
        "target_p95_s": TARGET_P95_S,
        "meets_target": p95 <= TARGET_P95_S and same_session,
    }


def parse_args(argv: list[str] | None) -> Params:
    p = argparse.ArgumentParser(prog="python -m bench.media_recovery", description=__doc__)
    p.add_argument("--outages", type=int, default=10)
    p.add_argument("--outage-s", type=float, default=10.0, help="length of each outage")
    p.add_argument("--settle-s", type=float, default=3.0, help="media time between outages")
    p.add_argument("--profile", default="station", help="link profile (station)")
    p.add_argument(
        "--syn-linear",
        type=int,
        default=0,
        help="net.ipv4.tcp_syn_linear_timeouts in the booth namespace (0: kernel default)",
    )
    a = p.parse_args(argv)
    return Params(a.outages, a.outage_s, a.settle_s, a.profile, a.syn_linear)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ekichika-bench-") as tmp:
        result = asyncio.run(run(params, Path(tmp)))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
