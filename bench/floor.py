"""The floor for call set-up: two aiortc peers in one process, offer/answer handed over
directly (no signaling, no processes), offer → first decoded frame with a valid stamp."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from booth.ice import rtc_configuration
from booth.media import StampedVideoTrack, read_stamp


async def direct_first_frame_s(width: int, height: int, fps: int, timeout_s: float = 10) -> float:
    """Seconds from createOffer to the first decoded, stamped frame at the answerer."""
    offerer = RTCPeerConnection(rtc_configuration([]))
    answerer = RTCPeerConnection(rtc_configuration([]))
    first = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while not first.done():
                frame = await track.recv()
                if read_stamp(frame) is not None:
                    first.set_result(time.perf_counter())

    @answerer.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            tasks.append(asyncio.create_task(consume(track)))

    try:
        offerer.addTrack(StampedVideoTrack(width=width, height=height, fps=fps))
        start = time.perf_counter()
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(timeout_s):
            end: float = await first
        return end - start
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await offerer.close()
        await answerer.close()
