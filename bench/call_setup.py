"""Call set-up benchmark: repeated calls between a simulated booth and an automated staff
peer through the real signaling server, in separate processes on loopback.

Processes: ``python -m signaling`` and ``python -m booth`` (simulated camera and
microphone) are started by this script; the script itself is the automated staff peer
(:class:`bench.staff_peer.AutoStaff`) and drives the booth the way the kiosk page does,
over the kiosk WebSocket (``/ws``: choose a language, ask for 市民課). All times are taken
with one clock, in this process.

Per call it measures
* request → offer: the kiosk's ``request_help`` sent → the ``offer`` received by staff;
* accept → connected: staff send ``accept`` → both peers report WebRTC connected (staff:
  its RTCPeerConnection; booth: the kiosk screen turns to ``in_call``);
* accept → first frame: staff send ``accept`` → the first decoded, stamped frame on each
  side (staff: from the booth; booth: from staff, seen through the booth's ``/healthz``
  frame counter, polled every 5 ms).

The floor, in the same run: two aiortc peers in this process exchanging offer/answer
directly, createOffer → first decoded stamped frame, same picture size, sending the same
media as the call (video and audio both ways, the document camera's picture and the data
channel from the booth side; the later side's first frame counts).
``ratio_first_frame_p95_vs_floor`` compares the p95 of the later of the two sides' first
frames in the call with that floor's p95 (target ≤ 1.5). For reference the one-way floor
(video from offerer to answerer only) and the ratio to it are reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._call import KioskDriver, Params, run_benchmark, running_booth
from bench._load import percentile, rounded
from bench.floor import direct_first_frame_s
from bench.staff_peer import AutoStaff
from shared import wire
from shared.kiosk_protocol import ChooseLanguage, KioskScreen, RequestHelpTouched

log = logging.getLogger("bench.call_setup")

BOOTH_ID = "seiseki-1"
TARGET_RATIO = 1.5


@dataclass
class CallTimes:
    request_to_offer: float
    accept_to_connected: float
    accept_to_first_frame_staff: float
    accept_to_first_frame_booth: float


async def _booth_first_frame(http: aiohttp.ClientSession, url: str, before: int) -> float:
    """Poll the booth's health endpoint until its staff-frame counter moves past ``before``."""
    async with asyncio.timeout(20):
        while True:
            async with http.get(url) as resp:
                status: dict[str, Any] = await resp.json()
            frames = status.get("staff_frames")
            if isinstance(frames, int) and frames > before:
                return time.monotonic()
            await asyncio.sleep(0.005)


async def _staff_frames(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        status: dict[str, Any] = await resp.json()
    frames = status.get("staff_frames")
    return frames if isinstance(frames, int) else 0


async def _one_call(
    staff: AutoStaff, kiosk: KioskDriver, http: aiohttp.ClientSession, health: str
) -> CallTimes:
    frames_before = await _staff_frames(http, health)
    await kiosk.ws.send_str(wire.encode(ChooseLanguage(language="ja")))
    sent = time.monotonic()
    await kiosk.ws.send_str(wire.encode(RequestHelpTouched(department="shimin")))
    async with asyncio.timeout(20):
        offer_at, _offer = await staff.offers.get()
        record = await staff.call_started.get()
        booth_frame = asyncio.create_task(_booth_first_frame(http, health, frames_before))
        await record.connected.wait()
        await record.first_frame.wait()
        booth_connected = await kiosk.wait_screen(KioskScreen.IN_CALL, after=sent)
        booth_first = await booth_frame
    assert record.connected_at is not None and record.first_frame_at is not None
    times = CallTimes(
        request_to_offer=offer_at - sent,
        accept_to_connected=max(record.connected_at, booth_connected) - record.accepted_at,
        accept_to_first_frame_staff=record.first_frame_at - record.accepted_at,
        accept_to_first_frame_booth=booth_first - record.accepted_at,
    )
    log.info(
        "breakdown ms: accept→call_started %.1f, →offer sdp %.1f, →answer sent %.1f, "
        "→connected %.1f, →first frame %.1f",
        *(
            1000 * (t - record.accepted_at) if t else -1
            for t in (
                record.call_started_at,
                record.offer_sdp_at,
                record.answer_sent_at,
                record.connected_at,
                record.first_frame_at,
            )
        ),
    )
    return times


async def _finish_call(staff: AutoStaff, kiosk: KioskDriver, session_id: str) -> None:
    record = staff.calls[session_id]
    ended_after = time.monotonic()
    await staff.hang_up(session_id)
    async with asyncio.timeout(20):
        await record.finished.wait()
        await staff.wait_state("wrap_up")
        await staff.wrap_up(session_id, "")
        await staff.wait_state("available")
        await kiosk.wait_screen(KioskScreen.START, after=ended_after)


def _stats(prefix: str, values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {
        f"{prefix}_p50_ms": rounded(percentile(ms, 50), 1),
        f"{prefix}_p95_ms": rounded(percentile(ms, 95), 1),
    }


async def run(params: Params, workdir: Path) -> dict[str, Any]:
    calls: list[CallTimes] = []
    async with running_booth(workdir, params) as booth:
        for i in range(params.warmup + params.calls):
            times = await _one_call(booth.staff, booth.kiosk, booth.http, booth.health_url)
            if i >= params.warmup:
                calls.append(times)
            session_id = list(booth.staff.calls)[-1]
            await asyncio.sleep(params.hold_s)
            await _finish_call(booth.staff, booth.kiosk, session_id)
            log.info("call %d (warm-up %d): %s", i + 1, params.warmup, times)

    # The floor, with the booth and server stopped so that they do not compete for CPU.
    document = (1280, 720, 15)  # DeviceConfig's document camera defaults
    floor = [
        await direct_first_frame_s(params.width, params.height, params.fps, document=document)
        for _ in range(params.warmup + params.floor_runs)
    ][params.warmup :]
    one_way = [
        await direct_first_frame_s(params.width, params.height, params.fps, both_ways=False)
        for _ in range(params.floor_runs)
    ]
    first_frame_both = [
        max(c.accept_to_first_frame_staff, c.accept_to_first_frame_booth) for c in calls
    ]
    result: dict[str, Any] = {
        "scenario": "call_setup",
        "calls": len(calls),
        "warmup_calls": params.warmup,
        "video": f"{params.width}x{params.height}@{params.fps}",
        **_stats("request_to_offer", [c.request_to_offer for c in calls]),
        **_stats("accept_to_connected", [c.accept_to_connected for c in calls]),
        **_stats("accept_to_first_frame_staff", [c.accept_to_first_frame_staff for c in calls]),
        **_stats("accept_to_first_frame_booth", [c.accept_to_first_frame_booth for c in calls]),
        **_stats("accept_to_first_frame_both", first_frame_both),
        **_stats("floor_offer_to_first_frame", floor),
        **_stats("floor_one_way_offer_to_first_frame", one_way),
    }
    floor_p95 = percentile(floor, 95)
    ratio = percentile(first_frame_both, 95) / floor_p95 if floor_p95 > 0 else None
    result["ratio_first_frame_p95_vs_floor"] = rounded(ratio, 2) if ratio else None
    one_way_p95 = percentile(one_way, 95)
    result["ratio_first_frame_p95_vs_one_way_floor"] = (
        rounded(percentile(first_frame_both, 95) / one_way_p95, 2) if one_way_p95 > 0 else None
    )
    result["target_ratio"] = TARGET_RATIO
    result["meets_target"] = ratio is not None and ratio <= TARGET_RATIO
    return result


def parse_args(argv: list[str] | None) -> Params:
    p = argparse.ArgumentParser(prog="python -m bench.call_setup", description=__doc__)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--floor-runs", type=int, default=20)
    p.add_argument("--hold", type=float, default=0.5, help="seconds each call stays up")
    p.add_argument("--warmup", type=int, default=1, help="calls (and floor runs) not counted")
    a = p.parse_args(argv)
    return Params(a.calls, a.width, a.height, a.fps, a.floor_runs, a.hold, a.warmup)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    return run_benchmark(lambda workdir: run(params, workdir))


if __name__ == "__main__":
    sys.exit(main())
