"""End to end with two real aiortc peers through the real signaling server.

The booth agent (simulated camera with stamped frames, 1 kHz tone) calls; an automated
staff peer (stamped frames, 660 Hz tone) accepts. What arrived is proven by content:
the frame stamps increase on both sides and each side detects the other's tone. Hang-up
from either side ends the session on both peers and in the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.staff_peer import STAFF_TONE_HZ, AutoStaff, CallRecord
from booth.agent import BoothAgent
from booth.call import CallState
from shared.config import BoothConfig, DeviceConfig
from shared.kiosk_protocol import ChooseLanguage, HangUpTouched, RequestHelpTouched
from shared.protocol import EndReason, QueueStatus, RequestHelp
from shared.store import CallSession, HelpRequest, SessionEvent, session_factory
from tests.signaling_support import (
    RunningSignaling,
    connect_booth,
    open_engine,
    running_signaling,
)


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def signaling(tmp_path: Path) -> AsyncIterator[RunningSignaling]:
    async with running_signaling(tmp_path) as running:
        yield running


def booth_config(signaling: RunningSignaling) -> BoothConfig:
    return BoothConfig(
        booth_id="seiseki-1",
        credential=signaling.booth_credentials["seiseki-1"],
        server_url=f"{signaling.ws_url}/ws/booth",
        kiosk_port=0,
        devices=DeviceConfig(video_width=320, video_height=240, video_fps=15),
        ice_host_addresses=["127.0.0.1"],
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        ended_screen_s=0.5,
    )


@pytest.fixture
async def booth(signaling: RunningSignaling) -> AsyncIterator[BoothAgent]:
    agent = BoothAgent(booth_config(signaling))
    await agent.start()
    try:
        await eventually(lambda: agent.signaling.state.value == "connected", 10, "booth online")
        yield agent
    finally:
        await agent.aclose()


async def _call(
    booth: BoothAgent, staff: AutoStaff
) -> tuple[CallRecord, Callable[[], Awaitable[None]]]:
    await staff.set_available()
    await booth.handle_touch(ChooseLanguage(language="ja"))
    await booth.handle_touch(RequestHelpTouched(department="shimin"))
    async with asyncio.timeout(15):
        record = await staff.call_started.get()
        await record.connected.wait()
        await record.first_frame.wait()
    call = booth.call
    assert call is not None

    async def hang_up_from_booth() -> None:
        await booth.handle_touch(HangUpTouched())

    return record, hang_up_from_booth


async def _assert_media_both_ways(booth: BoothAgent, record: CallRecord) -> None:
    call = booth.call
    assert call is not None
    # Booth → staff: stamped frames keep arriving with increasing frame numbers.
    await eventually(lambda: record.frames >= 15, 15, "15 booth frames at staff")
    assert record.stamps == sorted(record.stamps)
    assert record.stamps[-1] > record.stamps[0]
    assert all(0 <= ms < 2000 for ms in record.latencies_ms[-5:])
    # Booth → staff audio: the 1 kHz tone.
    await eventually(lambda: record.booth_tone_level() > 0.3, 10, "booth tone at staff")
    # Staff → booth: stamped frames decoded at the booth, increasing.
    await eventually(lambda: call.video_frames >= 15, 15, "15 staff frames at booth")
    first = call.last_stamp
    assert first is not None
    await eventually(
        lambda: call.last_stamp is not None and call.last_stamp.frame_no > first.frame_no,
        5,
        "staff frame counter increases",
    )
    # Staff → booth audio: the 660 Hz tone, and not the booth's own 1 kHz.
    await eventually(lambda: call.tone_level(STAFF_TONE_HZ) > 0.3, 10, "staff tone at booth")
    assert call.tone_level(1000.0) < 0.1


async def _stored(signaling: RunningSignaling, session_id: str) -> tuple[CallSession, list[str]]:
    async with open_engine(signaling.config.database_url) as engine:
        async with session_factory(engine)() as db:
            session = await db.get_one(CallSession, session_id)
            events = (
                await db.scalars(
                    select(SessionEvent.kind)
                    .where(SessionEvent.request_id == session.request_id)
                    .order_by(SessionEvent.id)
                )
            ).all()
    return session, list(events)


async def test_call_media_both_ways_and_booth_hangs_up(
    signaling: RunningSignaling, booth: BoothAgent
) -> None:
    async with AutoStaff(f"{signaling.ws_url}/ws/staff", signaling.staff_token("sato")) as staff:
        record, hang_up = await _call(booth, staff)
        await _assert_media_both_ways(booth, record)
        await hang_up()
        async with asyncio.timeout(5):
            await record.finished.wait()
        assert record.ended is not None
        assert record.ended.reason is EndReason.HANGUP_BOOTH
        call = booth.call
        assert call is None or call.state is CallState.ENDED
        await staff.wait_state("wrap_up")
        await staff.wrap_up(record.session_id, "住民票の写しについて案内")
        await staff.wait_state("available")

    async def ended_in_db() -> tuple[CallSession, list[str]]:
        deadline = time.monotonic() + 5
        while True:
            session, events = await _stored(signaling, record.session_id)
            if session.note is not None or time.monotonic() > deadline:
                return session, events
            await asyncio.sleep(0.1)

    session, events = await ended_in_db()
    assert session.outcome == EndReason.HANGUP_BOOTH.value
    assert session.ended_at is not None and session.connected_at is not None
    assert session.accepted_at <= session.connected_at <= session.ended_at
    assert session.note == "住民票の写しについて案内"
    for kind in ("requested", "offered", "accepted", "connected", "ended"):
        assert kind in events, events
    assert events.index("requested") < events.index("offered") < events.index("accepted")
    assert events.index("accepted") < events.index("connected") < events.index("ended")


async def test_staff_hangs_up_and_booth_returns_to_start(
    signaling: RunningSignaling, booth: BoothAgent
) -> None:
    async with AutoStaff(f"{signaling.ws_url}/ws/staff", signaling.staff_token("sato")) as staff:
        record, _ = await _call(booth, staff)
        call = booth.call
        assert call is not None
        await eventually(lambda: call.video_frames >= 3, 10, "staff frames at booth")
        await staff.hang_up(record.session_id)
        async with asyncio.timeout(5):
            await record.finished.wait()
        assert record.ended is not None and record.ended.reason is EndReason.HANGUP_STAFF
        await call.wait_for_state(CallState.ENDED, timeout_s=5)
        assert call.end_reason is EndReason.HANGUP_STAFF
        # The thank-you screen, then the start screen again.
        await eventually(lambda: booth.screen().screen.value == "ended", 5, "ended screen")
        await eventually(lambda: booth.screen().screen.value == "start", 5, "start screen")

    session, _ = await _stored(signaling, record.session_id)
    assert session.outcome == EndReason.HANGUP_STAFF.value
    assert session.ended_at is not None


async def test_booth_restart_cancels_the_request_nobody_waits_for(
    signaling: RunningSignaling,
) -> None:
    """A booth agent that restarts while its request waits must not leave that request in
    the queue (nobody at the booth waits for it) nor be refused when the next resident
    asks; staff get an offer only for the new request."""
    async with connect_booth(
        signaling.ws_url, "seiseki-1", signaling.booth_credentials["seiseki-1"]
    ) as old_agent:
        await old_agent.send(
            RequestHelp(request_id="before-restart", department="shimin", language="ja")
        )
        await old_agent.expect(QueueStatus)
    agent = BoothAgent(booth_config(signaling))
    await agent.start()
    try:
        async with AutoStaff(
            f"{signaling.ws_url}/ws/staff", signaling.staff_token("sato")
        ) as staff:
            await eventually(lambda: agent.signaling.state.value == "connected", 10, "online")
            await agent.handle_touch(ChooseLanguage(language="ja"))
            await agent.handle_touch(RequestHelpTouched(department="shimin"))
            call = agent.call
            assert call is not None
            await call.wait_for_state(CallState.WAITING, timeout_s=5)
            await staff.set_available()
            async with asyncio.timeout(10):
                _, offer = await staff.offers.get()
                record = await staff.call_started.get()
                await record.first_frame.wait()
            assert offer.request_id == call.request_id != "before-restart"
            assert staff.offers.empty()
    finally:
        await agent.aclose()
    async with open_engine(signaling.config.database_url) as engine:
        async with session_factory(engine)() as db:
            old = await db.get_one(HelpRequest, "before-restart")
    assert old.status == "cancelled"
