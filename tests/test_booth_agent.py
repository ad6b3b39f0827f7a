"""The booth agent against a signaling server speaking the real booth protocol, with a real
aiortc staff peer on loopback: the call connects, stamped video and tones go both ways, and
the agent survives the server going away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bench.staff_peer import AutoStaff
from booth.agent import BoothAgent
from booth.call import CallState
from booth.media import audio_samples, dominant_frequency, read_stamp, tone_level
from shared.config import BoothConfig, DeviceConfig
from shared.kiosk_protocol import (
    CancelTouched,
    ChooseLanguage,
    HangUpTouched,
    KeepWaitingTouched,
    KioskScreen,
    RequestHelpTouched,
    ScreenState,
)
from shared.protocol import (
    CancelRequest,
    EndReason,
    ErrorCode,
    HangUp,
    MediaConnected,
    MediaFailed,
    QueueStatus,
    RequestHelp,
    SdpPayload,
)
from tests.booth_fake_signaling import CREDENTIAL, AnsweringStaff, FakeSignaling
from tests.signaling_support import running_signaling


def booth_config(server: FakeSignaling, **overrides: Any) -> BoothConfig:
    values: dict[str, Any] = {
        "booth_id": "seiseki-1",
        "credential": CREDENTIAL,
        "server_url": server.url,
        "devices": DeviceConfig(video_width=320, video_height=240, video_fps=15),
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.4,
        "heartbeat_s": 2.0,
        "call_connect_timeout_s": 10.0,
        "ended_screen_s": 30.0,
    }
    values.update(overrides)
    return BoothConfig(**values)


@pytest.fixture
async def server() -> AsyncIterator[FakeSignaling]:
    fake = FakeSignaling()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.aclose()


@pytest.fixture
async def agent(server: FakeSignaling) -> AsyncIterator[BoothAgent]:
    booth = BoothAgent(booth_config(server))
    await booth.start()
    try:
        await booth.signaling.wait_connected()
        yield booth
    finally:
        await booth.aclose()
        await booth.aclose()  # idempotent


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def ask_for_help(agent: BoothAgent, server: FakeSignaling) -> RequestHelp:
    await agent.handle_touch(ChooseLanguage(language="ja"))
    assert agent.screen().screen is KioskScreen.DEPARTMENT
    await agent.handle_touch(RequestHelpTouched(department="shimin"))
    request = await server.wait_for(RequestHelp)
    assert isinstance(request, RequestHelp)
    assert (request.department, request.language) == ("shimin", "ja")
    await eventually(lambda: agent.screen().queue_position is not None)
    assert agent.screen().screen is KioskScreen.WAITING
    return request


async def test_call_media_both_ways(agent: BoothAgent, server: FakeSignaling) -> None:
    screens: list[ScreenState] = []
    agent.add_listener(screens.append)
    assert screens[-1].screen is KioskScreen.START
    assert [d.name_ja for d in screens[-1].departments] == [
        "市民課",
        "保険年金課",
        "子育て支援課",
        "課税課",
    ]

    request = await ask_for_help(agent, server)
    waiting = agent.screen()
    assert (waiting.queue_position, waiting.estimated_wait_s, waiting.staff_online) == (3, 240, 2)

    staff = AnsweringStaff(server)
    try:
        started = await server.start_call(request.request_id)
        await staff.answer(started.session_id)
        connected = await server.wait_for(MediaConnected)
        assert isinstance(connected, MediaConnected)
        assert connected.session_id == started.session_id
        await eventually(lambda: agent.screen().screen is KioskScreen.IN_CALL)
        assert agent.screen().staff_name == "佐藤"

        call = agent.call
        assert call is not None
        # the staff peer sees the booth's stamped picture, frames in increasing order
        await eventually(lambda: len(staff.stamps) >= 15 and len(staff.audio) >= 40)
        assert staff.stamps == sorted(staff.stamps) and len(set(staff.stamps)) == len(staff.stamps)
        assert max(staff.latencies_ms) < 3000
        booth_audio = audio_samples(staff.audio[-25:])
        assert abs(dominant_frequency(booth_audio, 48000) - 1000.0) <= 20.0
        assert tone_level(booth_audio, 48000, 1000.0) > 0.5

        # the booth receives the staff picture and the 660 Hz tone
        await eventually(lambda: call.video_frames >= 15 and call.audio_frames >= 40)
        first = call.last_stamp
        assert first is not None
        await eventually(lambda: call.last_stamp is not None and call.last_stamp != first)
        assert call.last_stamp is not None and call.last_stamp.frame_no > first.frame_no
        assert call.tone_level(660.0) > 0.5 and call.tone_level(1000.0) < 0.2
        assert abs(agent.media.speaker.meter.dominant_frequency() - 660.0) <= 20.0  # type: ignore[union-attr]
        assert call.audio_level() > 0.05
        # the kiosk's frame buffers: the staff picture, and the booth's own camera
        latest = agent.staff_video.latest
        assert latest is not None and read_stamp(latest) is not None
        assert agent.staff_video.jpeg() is not None
        own = agent.self_video.latest
        assert own is not None and read_stamp(own) is not None

        await agent.handle_touch(HangUpTouched())
        hang_up = await server.wait_for(HangUp)
        assert isinstance(hang_up, HangUp) and hang_up.session_id == started.session_id
        assert agent.screen().screen is KioskScreen.ENDED
        elapsed = agent.screen().call_elapsed_s
        assert elapsed is not None and elapsed > 0.5
    finally:
        await staff.aclose()

    sequence = [t.new for t in call.transitions if t.old is not t.new]
    assert sequence == [
        CallState.REQUESTING,
        CallState.WAITING,
        CallState.CONNECTING,
        CallState.IN_CALL,
        CallState.ENDED,
    ]
    names = [s.screen.value for s in screens]
    for expected in ("start", "department", "waiting", "connecting", "in_call", "ended"):
        assert expected in names
    assert names.index("waiting") < names.index("in_call") < names.index("ended")


async def test_reconnects_and_resends_pending_request(
    agent: BoothAgent, server: FakeSignaling
) -> None:
    request = await ask_for_help(agent, server)

    await server.stop()
    await eventually(lambda: agent.screen().screen is KioskScreen.CONNECTION_LOST)
    lost = agent.screen()
    assert lost.request_kept is True and lost.queue_position == 3

    server.queue_position = 1
    await server.start()  # a restarted server that lost its queue
    resent = await server.wait_for(RequestHelp, count=2)
    assert resent == request  # same request id: recognised, not duplicated
    await eventually(lambda: agent.screen().queue_position == 1)
    assert agent.screen().screen is KioskScreen.WAITING
    assert agent.signaling.connections == 2

    # a server that still holds the request gets no second copy
    await server.stop()
    server.report_pending = request.request_id
    await server.start()
    await server.wait_booth()
    await eventually(lambda: agent.signaling.connections == 3)
    await asyncio.sleep(0.3)
    assert len(server.messages(RequestHelp)) == 2
    assert agent.screen().screen is KioskScreen.WAITING


async def test_a_session_named_by_the_welcome_and_a_repeated_call_started(
    agent: BoothAgent, server: FakeSignaling
) -> None:
    """Matched while the booth was reconnecting (a signaling node died between storing
    the match and telling anyone): the welcome names a session the booth has not heard of
    yet, and call_started follows. It is then repeated (another reconnect before the media
    connected): the booth offers a fresh connection, and that one is answered."""
    request = await ask_for_help(agent, server)
    await server.stop()
    server.report_session = "s-late"
    await server.start()
    await server.wait_booth()
    await eventually(lambda: agent.signaling.connections == 2)
    await asyncio.sleep(0.3)
    assert server.messages(HangUp) == []  # the session is not refused
    assert len(server.messages(RequestHelp)) == 1  # nor the request sent again
    assert agent.screen().screen is KioskScreen.WAITING

    started = await server.start_call(request.request_id, session_id="s-late")
    first = await asyncio.wait_for(server.relays.get(), 10)
    assert isinstance(first.payload, SdpPayload) and first.payload.generation == 0
    await server.send(started)  # repeated; the first offer stays unanswered
    staff = AnsweringStaff(server)
    try:
        await staff.answer("s-late")
        connected = await server.wait_for(MediaConnected)
        assert isinstance(connected, MediaConnected) and connected.session_id == "s-late"
        call = agent.call
        assert call is not None and call.generation == 1
        await eventually(lambda: len(staff.stamps) >= 5)
        await eventually(lambda: agent.screen().screen is KioskScreen.IN_CALL)
        # once answered, a repeated call_started changes nothing
        await server.send(started)
        await asyncio.sleep(0.5)
        assert call.generation == 1 and call.state is CallState.IN_CALL
        assert server.relays.empty()
    finally:
        await staff.aclose()
    sequence = [t.new for t in call.transitions if t.old is not t.new]
    assert sequence == [
        CallState.REQUESTING,
        CallState.WAITING,
        CallState.CONNECTING,
        CallState.IN_CALL,
    ]
    assert server.messages(HangUp) == [] and server.messages(MediaFailed) == []


async def test_no_staff_then_keep_waiting_then_cancel(
    agent: BoothAgent, server: FakeSignaling
) -> None:
    server.staff_online = 0
    server.estimated_wait_s = None
    request = await ask_for_help_no_staff(agent, server)
    screen = agent.screen()
    assert screen.screen is KioskScreen.NO_STAFF and screen.estimated_wait_s is None
    await agent.handle_touch(KeepWaitingTouched())
    assert agent.screen().screen is KioskScreen.WAITING
    await server.send(
        QueueStatus(request_id=request.request_id, position=1, estimated_wait_s=60, staff_online=1)
    )
    await eventually(lambda: agent.screen().estimated_wait_s == 60)
    await agent.handle_touch(CancelTouched())
    cancel = await server.wait_for(CancelRequest)
    assert isinstance(cancel, CancelRequest) and cancel.request_id == request.request_id
    assert agent.screen().screen is KioskScreen.START
    assert agent.signaling.pending_request is None


async def ask_for_help_no_staff(agent: BoothAgent, server: FakeSignaling) -> RequestHelp:
    await agent.handle_touch(ChooseLanguage(language="en"))
    await agent.handle_touch(RequestHelpTouched(department="kazei"))
    request = await server.wait_for(RequestHelp)
    assert isinstance(request, RequestHelp) and request.language == "en"
    await eventually(lambda: agent.screen().screen is KioskScreen.NO_STAFF)
    return request


async def test_media_that_never_connects_is_reported(server: FakeSignaling) -> None:
    booth = BoothAgent(booth_config(server, call_connect_timeout_s=0.5))
    await booth.start()
    try:
        await booth.signaling.wait_connected()
        request = await ask_for_help(booth, server)
        started = await server.start_call(request.request_id)
        await server.relays.get()  # the offer arrives; nobody answers it
        failed = await server.wait_for(MediaFailed)
        assert isinstance(failed, MediaFailed) and failed.session_id == started.session_id
        assert "within 0.5 s" in failed.detail
        screen = booth.screen()
        assert screen.screen is KioskScreen.ENDED
        assert screen.error is not None and "つながりませんでした" in screen.error
        assert booth.call is not None and booth.call.state is CallState.FAILED
    finally:
        await booth.aclose()


async def test_refused_booth_does_not_hammer(server: FakeSignaling) -> None:
    server.refuse_with = ErrorCode.AUTH_FAILED
    booth = BoothAgent(booth_config(server, reconnect_min_s=0.01, reconnect_max_s=1.0))
    await booth.start()
    try:
        await eventually(lambda: server.hellos >= 1)
        await asyncio.sleep(1.0)
        # with the fast backoff (10 ms) it would have tried dozens of times
        assert server.hellos <= 2
        assert booth.signaling.last_error is not None
        assert "auth_failed" in booth.signaling.last_error
        assert booth.screen().screen is KioskScreen.CONNECTION_LOST
        server.refuse_with = None
        await booth.signaling.wait_connected(timeout_s=5)
        assert booth.screen().screen is KioskScreen.START
    finally:
        await booth.aclose()


async def test_call_through_the_real_signaling_server(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as signaling:
        config = BoothConfig(
            booth_id="seiseki-1",
            credential=signaling.booth_credentials["seiseki-1"],
            server_url=f"{signaling.ws_url}/ws/booth",
            devices=DeviceConfig(video_width=320, video_height=240, video_fps=15),
            reconnect_min_s=0.05,
            reconnect_max_s=0.4,
            heartbeat_s=2.0,
        )
        booth = BoothAgent(config)
        staff = AutoStaff(f"{signaling.ws_url}/ws/staff", lambda: signaling.staff_token("sato"))
        await booth.start()
        try:
            welcome = await booth.signaling.wait_connected()
            assert [d.code for d in welcome.departments] == ["shimin", "hoken", "kosodate", "kazei"]
            await staff.connect()
            await staff.set_available()
            await booth.handle_touch(ChooseLanguage(language="ja"))
            await booth.handle_touch(RequestHelpTouched(department="shimin"))
            record = await asyncio.wait_for(staff.call_started.get(), 15)
            await asyncio.wait_for(record.connected.wait(), 15)
            await eventually(lambda: booth.screen().screen is KioskScreen.IN_CALL)
            assert booth.screen().staff_name == "佐藤 花子"
            call = booth.call
            assert call is not None and call.session_id == record.session_id
            await eventually(lambda: len(record.stamps) >= 10 and call.video_frames >= 10)
            await eventually(lambda: call.audio_frames >= 40 and len(record.audio_samples) >= 40)
            assert record.stamps == sorted(record.stamps)
            assert record.booth_tone_level() > 0.5
            assert call.tone_level(660.0) > 0.5
            await booth.handle_touch(HangUpTouched())
            await asyncio.wait_for(record.finished.wait(), 10)
            assert record.ended is not None and record.ended.reason is EndReason.HANGUP_BOOTH
            assert booth.screen().screen is KioskScreen.ENDED
        finally:
            await staff.aclose()
            await booth.aclose()
