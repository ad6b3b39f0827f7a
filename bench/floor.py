"""The floor for call set-up: two aiortc peers in one process, offer/answer handed over
directly (no signaling, no processes, no kiosk). Both peers send what a real call sends
(a stamped picture and a tone each way; from the booth side also the document camera's
picture and the data channel); the figure is createOffer → the first decoded, stamped
frame on each side (the later of the two, like the call benchmark's ``both``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from booth.ice import rtc_configuration
from booth.media import StampedVideoTrack, ToneAudioTrack, read_stamp


async def direct_first_frame_s(
    width: int,
    height: int,
    fps: int,
    *,
    both_ways: bool = True,
    document: tuple[int, int, int] | None = None,
    timeout_s: float = 10,
) -> float:
    """Seconds from createOffer to the first decoded, stamped frame at both peers (or at
    the answerer only, with ``both_ways=False``)."""
    offerer = RTCPeerConnection(rtc_configuration([]))
    answerer = RTCPeerConnection(rtc_configuration([]))
    loop = asyncio.get_running_loop()
    firsts: list[asyncio.Future[float]] = []
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack, first: asyncio.Future[float]) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind != "video" or first.done():
                    continue
                stamp = read_stamp(frame)
                if stamp is not None and stamp.frame_no < 50_000_000:  # not the document
                    first.set_result(time.perf_counter())

    def watch(pc: RTCPeerConnection) -> None:
        first: asyncio.Future[float] = loop.create_future()
        firsts.append(first)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            tasks.append(asyncio.create_task(consume(track, first)))

    try:
        watch(answerer)
        offerer.addTrack(StampedVideoTrack(width=width, height=height, fps=fps))
        offerer.addTrack(ToneAudioTrack(hz=1000.0))
        if both_ways and document is not None:
            offerer.addTrack(StampedVideoTrack(*document, first_frame=50_000_000))
            offerer.createDataChannel("ekichika", ordered=True)
        if both_ways:
            watch(offerer)
        start = time.perf_counter()
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        if both_ways:
            answerer.addTrack(StampedVideoTrack(width=width, height=height, fps=fps))
            answerer.addTrack(ToneAudioTrack(hz=660.0))
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(timeout_s):
            ends = await asyncio.gather(*firsts)
        return max(ends) - start
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await offerer.close()
        await answerer.close()


if __name__ == "__main__":
    import statistics
    import sys

    from booth.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    w, h, f, n = (int(a) for a in sys.argv[1:5])

    async def _main() -> None:
        for both in (False, True):
            runs = [1000 * await direct_first_frame_s(w, h, f, both_ways=both) for _ in range(n)]
            print(both, [round(r) for r in runs], statistics.median(runs))

    asyncio.run(_main())
