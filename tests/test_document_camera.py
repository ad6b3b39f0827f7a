"""The document camera (書画カメラ) in a real call: real signaling, the booth agent with the
simulated document camera, and the automated staff peer.

The document camera is the second video track of the booth's offer, and its frame stamps
prove frames arrive at staff. Stills (3508x2480 JPEG) asked for by staff on the data
channel, or by the resident on the kiosk, arrive complete with the exact bytes the camera
took and a matching SHA-256; a corrupted or short transfer is rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiortc import MediaStreamTrack
from PIL import Image

from bench.staff_peer import AutoStaff, CallRecord
from booth.agent import BoothAgent
from booth.document_camera import DocumentCamera, DocumentStill
from booth.document_still import offer_for, send_still
from shared.kiosk_protocol import StillTouched
from shared.protocol import StillOffer
from tests.call_support import booth_config, start_call
from tests.call_support import signaling as signaling
from tests.call_support import staff as staff
from tests.signaling_support import RunningSignaling


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingCamera:
    """The booth's real (simulated) document camera, keeping each still it took."""

    def __init__(self, inner: DocumentCamera) -> None:
        self.inner = inner
        self.description = inner.description
        self.taken: list[DocumentStill] = []

    def track(self) -> MediaStreamTrack:
        return self.inner.track()

    async def still(self) -> DocumentStill:
        still = await self.inner.still()
        self.taken.append(still)
        return still

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def agent(signaling: RunningSignaling, tmp_path: Path) -> AsyncIterator[BoothAgent]:
    agent = BoothAgent(
        booth_config(
            signaling,
            tmp_path,
            document_width=320,
            document_height=240,
            document_fps=10,
        )
    )
    await agent.start()
    assert agent.document_camera is not None
    agent.document_camera = RecordingCamera(agent.document_camera)
    try:
        await eventually(lambda: agent.signaling.connected, 10, "booth online")
        yield agent
    finally:
        await agent.aclose()


async def _call(agent: BoothAgent, staff: AutoStaff) -> CallRecord:
    return await start_call(agent, staff)


def _camera(agent: BoothAgent) -> RecordingCamera:
    camera = agent.document_camera
    assert isinstance(camera, RecordingCamera)
    return camera


async def test_document_video_arrives_as_second_track_and_staff_get_a_still(
    agent: BoothAgent, staff: AutoStaff
) -> None:
    record = await _call(agent, staff)
    # The second video track carries the document camera's stamps, the first the face's.
    await eventually(lambda: record.document_frames >= 10, 10, "document frames at staff")
    await eventually(lambda: record.frames >= 10, 10, "face frames at staff")
    doc = record.document_stamps
    assert all(b > a for a, b in itertools.pairwise(doc)), "document frames in order"
    assert min(doc) >= 50_000_000, "document stamps come from the document camera"
    assert max(record.stamps) < 50_000_000, "face stamps come from the face camera"

    await staff.request_still(record.session_id, "still-1")
    still = await staff.next_still(record.session_id)

    taken = _camera(agent).taken
    assert len(taken) == 1
    assert still.ok, still.rejected
    assert still.data == taken[0].jpeg
    assert still.offer.request_id == "still-1" and still.offer.origin == "staff"
    assert still.offer.sha256 == hashlib.sha256(taken[0].jpeg).hexdigest()
    assert still.offer.size > 1_000_000
    picture = Image.open(io.BytesIO(still.data))
    assert picture.format == "JPEG"
    assert picture.size == (3508, 2480) == (still.offer.width, still.offer.height)


async def test_resident_takes_a_still_from_the_kiosk(agent: BoothAgent, staff: AutoStaff) -> None:
    record = await _call(agent, staff)
    await eventually(lambda: agent.screen().screen.value == "in_call", 5, "in-call screen")
    await agent.handle_touch(StillTouched())
    assert agent.screen().still_busy
    still = await staff.next_still(record.session_id)
    assert still.ok, still.rejected
    assert still.offer.origin == "resident" and still.offer.request_id is None
    assert still.data == _camera(agent).taken[0].jpeg
    await eventually(lambda: not agent.screen().still_busy, 5, "the kiosk button free again")


async def test_corrupted_or_short_still_is_rejected(agent: BoothAgent, staff: AutoStaff) -> None:
    record = await _call(agent, staff)
    call = agent.call
    assert call is not None
    still = await _camera(agent).still()
    good = offer_for(still, request_id="x", origin="staff")
    corrupted = bytearray(still.jpeg)
    corrupted[len(corrupted) // 2] ^= 0xFF
    assert await send_still(call, good, bytes(corrupted))
    got = await staff.next_still(record.session_id)
    assert not got.ok and got.rejected == "SHA-256 does not match"

    short: StillOffer = offer_for(still, request_id="y", origin="staff")
    assert await send_still(call, short, still.jpeg[:-5000])
    got = await staff.next_still(record.session_id)
    assert not got.ok and got.rejected is not None and "announced" in got.rejected

    # and an intact still right after is accepted
    assert await send_still(call, offer_for(still, request_id="z", origin="staff"), still.jpeg)
    got = await staff.next_still(record.session_id)
    assert got.ok and got.data == still.jpeg
