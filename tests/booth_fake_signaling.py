"""A small signaling server for booth tests: the real booth protocol, scripted by the test.

It authenticates one booth, answers requests with a queue status, and lets the test start a
call, relay SDP/ICE between the booth and a test-side staff peer, and restart the server on
the same port. It speaks :mod:`shared.protocol` through :mod:`shared.wire` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from booth.ice import rtc_configuration
from booth.media import StampedVideoTrack, ToneAudioTrack, read_stamp
from shared import wire
from shared.protocol import (
    BoothHello,
    BoothInfo,
    BoothToServer,
    BoothWelcome,
    CallStarted,
    CancelRequest,
    Department,
    EndReason,
    ErrorCode,
    ErrorMessage,
    HangUp,
    QueueStatus,
    Relay,
    RequestClosed,
    RequestHelp,
    SdpPayload,
    ServerToBooth,
    SessionEnded,
    StaffInfo,
)

BOOTH = BoothInfo(
    booth_id="seiseki-1", name="聖蹟桜ヶ丘 1番ブース", site_id="seiseki", site_name="聖蹟桜ヶ丘"
)
CREDENTIAL = "booth-credential-0001"
DEPARTMENTS = [
    Department(code="shimin", name_ja="市民課", name_en="Citizens Division"),
    Department(code="hoken", name_ja="保険年金課", name_en="Insurance and Pension Division"),
    Department(code="kosodate", name_ja="子育て支援課", name_en="Child-Rearing Support Division"),
    Department(code="kazei", name_ja="課税課", name_en="Taxation Division"),
]
STAFF = StaffInfo(staff_id="sato", display_name="佐藤")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeSignaling:
    """Start with ``await server.start()``; ``url`` is the booth WebSocket URL."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.queue_position = 3
        self.estimated_wait_s: int | None = 240
        self.staff_online = 2
        self.refuse_with: ErrorCode | None = None
        self.report_pending: str | None = None  # pending_request_id for the next welcome
        self.report_session: str | None = None  # session_id for the next welcome
        self.received: list[BoothToServer] = []
        self.hellos = 0
        self.relays: asyncio.Queue[Relay] = asyncio.Queue()
        self.on_message: Callable[[BoothToServer], None] | None = None
        self._ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self._sessions = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/booth"

    @property
    def booth_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws/booth", self._booth_socket)
        app.on_shutdown.append(self._close_sockets)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._ws = None

    async def _close_sockets(self, app: web.Application) -> None:
        if self._ws is not None:
            await self._ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"restart")

    # ---------------------------------------------------------------- test controls

    def messages(self, kind: type[BoothToServer]) -> list[BoothToServer]:
        return [m for m in self.received if isinstance(m, kind)]

    async def wait_for(
        self, kind: type[BoothToServer], count: int = 1, timeout_s: float = 10.0
    ) -> BoothToServer:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.messages(kind)) >= count)
        return self.messages(kind)[count - 1]

    async def wait_booth(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.booth_connected)

    async def send(self, message: ServerToBooth) -> None:
        assert self._ws is not None, "no booth connected"
        await self._ws.send_str(wire.encode(message))

    async def start_call(self, request_id: str, session_id: str | None = None) -> CallStarted:
        self._sessions += 1
        started = CallStarted(
            session_id=session_id or f"s{self._sessions}",
            request_id=request_id,
            role="offerer",
            booth=BOOTH,
            staff=STAFF,
            department="shimin",
            language="ja",
            ice_servers=[],
        )
        await self.send(started)
        return started

    # ---------------------------------------------------------------- the booth channel

    async def _booth_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=5.0)
        await ws.prepare(request)
        first = await ws.receive(timeout=5)
        hello = wire.decode(wire.booth_to_server, first.data)
        self.hellos += 1
        assert isinstance(hello, BoothHello)
        if self.refuse_with is not None or hello.credential != CREDENTIAL:
            code = self.refuse_with or ErrorCode.AUTH_FAILED
            await ws.send_str(
                wire.encode(ErrorMessage(code=code, message="refused", ref="hello", fatal=True))
            )
            await ws.close()
            return ws
        welcome = BoothWelcome(
            booth=BOOTH,
            departments=DEPARTMENTS,
            languages=["ja", "en"],
            heartbeat_s=5.0,
            pending_request_id=self.report_pending,
            session_id=self.report_session,
        )
        await ws.send_str(wire.encode(welcome))
        async with self._changed:
            self._ws = ws
            self._changed.notify_all()
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            message = wire.decode(wire.booth_to_server, frame.data)
            async with self._changed:
                self.received.append(message)
                self._changed.notify_all()
            if self.on_message is not None:
                self.on_message(message)
            await self._answer(message)
        async with self._changed:
            if self._ws is ws:
                self._ws = None
            self._changed.notify_all()
        return ws

    async def _answer(self, message: BoothToServer) -> None:
        match message:
            case RequestHelp():
                await self.send(
                    QueueStatus(
                        request_id=message.request_id,
                        position=self.queue_position,
                        estimated_wait_s=self.estimated_wait_s,
                        staff_online=self.staff_online,
                    )
                )
            case CancelRequest():
                await self.send(RequestClosed(request_id=message.request_id, reason="cancelled"))
            case Relay():
                self.relays.put_nowait(message)
            case HangUp():
                await self.send(
                    SessionEnded(session_id=message.session_id, reason=EndReason.HANGUP_BOOTH)
                )
            case _:
                pass

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()


class AnsweringStaff:
    """The staff side of a call, in the test process: answers the booth's offer, sends a
    stamped 320x240 picture and a 660 Hz tone, and records what arrives from the booth."""

    def __init__(self, server: FakeSignaling, *, fps: int = 15, tone_hz: float = 660.0) -> None:
        self.server = server
        self.fps = fps
        self.tone_hz = tone_hz
        self.pc: RTCPeerConnection | None = None
        self.stamps: list[int] = []
        self.latencies_ms: list[int] = []
        self.audio: list[AudioFrame] = []
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, session_id: str) -> None:
        relay = await asyncio.wait_for(self.server.relays.get(), 10)
        assert relay.session_id == session_id
        offer = relay.payload
        assert isinstance(offer, SdpPayload) and offer.sdp_type == "offer"
        pc = RTCPeerConnection(rtc_configuration([]))
        self.pc = pc

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            videos = [t for t in pc.getTransceivers() if t.kind == "video"]
            if any(t.receiver.track is track for t in videos[1:]):
                return  # the booth's document camera (its second video track)
            task = asyncio.get_running_loop().create_task(self._consume(track))
            self._tasks.add(task)

        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        pc.addTrack(StampedVideoTrack(320, 240, self.fps, caption="STAFF"))
        pc.addTrack(ToneAudioTrack(hz=self.tone_hz))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.server.send(
            Relay(
                session_id=session_id,
                payload=SdpPayload(
                    sdp_type="answer", sdp=pc.localDescription.sdp, generation=offer.generation
                ),
            )
        )

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, VideoFrame):
                    stamp = read_stamp(frame)
                    if stamp is not None:
                        self.stamps.append(stamp.frame_no)
                        self.latencies_ms.append(stamp.latency_ms())
                elif isinstance(frame, AudioFrame):
                    self.audio = [*self.audio[-99:], frame]

    async def aclose(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
