"""One remote-counter call, from the resident's request to the end of the video call.

An explicit state machine::

    IDLE ─request()→ REQUESTING ─queue_status→ WAITING ─call_started→ CONNECTING
      CONNECTING ─WebRTC connected→ IN_CALL ─hang up / session_ended→ ENDED
      IN_CALL ─media lost→ RECONNECTING ─a fresh connection connected→ IN_CALL
      any waiting state ─cancel / request_closed→ ENDED (or FAILED if abandoned)
      CONNECTING ─WebRTC failed or timed out→ FAILED
      RECONNECTING ─lost longer than the outage limit→ FAILED (session ends: media_failed)

The booth is the WebRTC offerer: on ``call_started`` it creates an RTCPeerConnection with
the ICE servers the server sent (never aiortc's default STUN), adds the camera and the
microphone, and relays its offer; the staff peer's answer and trickled candidates come back
as relays (the document camera, when the booth has one, is the offer's second video
track). Staff video goes to a :class:`~booth.media.FrameBuffer` that the kiosk screen
shows; staff audio goes to the speaker.

Before the offer the booth also creates the call's data channel (``ekichika``: reliable,
ordered). Its messages (:data:`shared.protocol.PeerData`, decoded by :mod:`shared.wire`)
go to ``on_peer_data``; card data travels only there, never through signaling.

Recovery from drops (aiortc has no ICE restart): when nothing has arrived from staff for
``media_loss_grace_s`` (every packet counts: media, RTCP, the data channel) or the
connection fails, the call goes to RECONNECTING and negotiates a fresh RTCPeerConnection
through signaling in the same session: the old one is closed, the offer carries the next
``generation`` and staff answer it with a fresh peer connection of their own; answers and
candidates of another generation are ignored. An attempt waits ``restart_attempt_s`` for
the connection, then the next one starts (at once when signaling comes back, see
:meth:`RemoteCounterCall.on_signaling_back`). The data channel comes back with the new
connection (``on_channel_open`` is called again). After ``outage_limit_s`` without media
the call fails and the session ends with ``media_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

from booth.document_camera import DocumentCamera
from booth.document_still import drain_channel
from booth.ice import rtc_configuration
from booth.media import BoothMedia, FrameBuffer, SelfViewTrack, Stamp
from shared import wire
from shared.errors import ProtocolError
from shared.protocol import (
    DATA_CHANNEL_LABEL,
    BoothToServer,
    CallStarted,
    EndReason,
    ErrorMessage,
    HangUp,
    IcePayload,
    MediaConnected,
    MediaFailed,
    MediaStatePayload,
    Model,
    QueueStatus,
    Relay,
    RequestClosed,
    RequestHelp,
    SdpPayload,
    SessionEnded,
)
from shared.security import TurnTransport

logger = logging.getLogger(__name__)


class CallState(enum.Enum):
    IDLE = "idle"
    REQUESTING = "requesting"  # request sent, not yet in the queue
    WAITING = "waiting"  # in the queue
    CONNECTING = "connecting"  # staff accepted; WebRTC being set up
    IN_CALL = "in_call"  # media connected
    RECONNECTING = "reconnecting"  # media lost; a fresh connection is being negotiated
    ENDED = "ended"
    FAILED = "failed"


FINAL_STATES: Final = frozenset({CallState.ENDED, CallState.FAILED})
WAITING_STATES: Final = frozenset({CallState.REQUESTING, CallState.WAITING})
MEDIA_STATES: Final = frozenset({CallState.CONNECTING, CallState.IN_CALL, CallState.RECONNECTING})
# how often a connected call checks that something still arrives from staff
MEDIA_WATCH_INTERVAL_S: Final = 0.25

_ALLOWED: Final[dict[CallState, frozenset[CallState]]] = {
    CallState.IDLE: frozenset({CallState.REQUESTING, CallState.ENDED}),
    CallState.REQUESTING: frozenset(
        {CallState.WAITING, CallState.CONNECTING, CallState.ENDED, CallState.FAILED}
    ),
    CallState.WAITING: frozenset(
        {CallState.WAITING, CallState.CONNECTING, CallState.ENDED, CallState.FAILED}
    ),
    CallState.CONNECTING: frozenset({CallState.IN_CALL, CallState.ENDED, CallState.FAILED}),
    CallState.IN_CALL: frozenset({CallState.RECONNECTING, CallState.ENDED, CallState.FAILED}),
    CallState.RECONNECTING: frozenset({CallState.IN_CALL, CallState.ENDED, CallState.FAILED}),
    CallState.ENDED: frozenset(),
    CallState.FAILED: frozenset(),
}


class CallSignaling(Protocol):
    """The part of the signaling client a call uses."""

    async def request_help(self, request: RequestHelp) -> bool: ...

    async def cancel_request(self, request_id: str) -> bool: ...

    async def send(self, message: BoothToServer) -> bool: ...

    @property
    def connected(self) -> bool: ...


@dataclass
class MediaOutage:
    """One loss of the media path during the call (times from ``time.monotonic()``)."""

    lost_at: float
    why: str
    attempts: int = 0  # fresh connections offered
    restored_at: float | None = None


@dataclass(frozen=True)
class CallTransition:
    old: CallState
    new: CallState
    why: str
    at: float  # time.monotonic()


class RemoteCounterCall:
    def __init__(
        self,
        *,
        request_id: str,
        department: str,
        language: str,
        signaling: CallSignaling,
        media: BoothMedia,
        staff_video: FrameBuffer,
        self_video: FrameBuffer,
        connect_timeout_s: float,
        on_change: Callable[[RemoteCounterCall], None] | None = None,
        document_camera: DocumentCamera | None = None,
        relay_only: bool = False,
        turn_transport: TurnTransport | None = None,
        media_loss_grace_s: float = 2.0,
        restart_attempt_s: float = 4.0,
        outage_limit_s: float = 60.0,
    ) -> None:
        self.request_id = request_id
        self._relay_only = relay_only  # see booth.ice.rtc_configuration
        self._turn_transport = turn_transport
        self.department = department
        self.language = language
        self._signaling = signaling
        self._media = media
        self.staff_video = staff_video
        self.self_video = self_video
        self._connect_timeout_s = connect_timeout_s
        self._media_loss_grace_s = media_loss_grace_s
        self._restart_attempt_s = restart_attempt_s
        self._outage_limit_s = outage_limit_s
        self._on_change = on_change
        self._document_camera = document_camera
        self.state = CallState.IDLE
        self.transitions: list[CallTransition] = []
        self.queue: QueueStatus | None = None
        self.started: CallStarted | None = None
        self.end_reason: EndReason | None = None
        self.closed_reason: str | None = None  # request_closed reason
        self.failure: str | None = None
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        # what arrived from staff
        self.video_frames = 0
        self.last_stamp: Stamp | None = None
        self.remote_media: MediaStatePayload | None = None
        self._pc: RTCPeerConnection | None = None
        self._negotiation: asyncio.Future[None] | None = None
        self._pc_closing: asyncio.Future[None] | None = None
        # recovery from drops
        self.generation = 0  # of the current peer connection (see SdpPayload.generation)
        self.outages: list[MediaOutage] = []
        self.media_lost = False  # the call ended because the media path did not come back
        self._retiring: set[asyncio.Future[None]] = set()  # old peer connections closing
        self._recovery_wake = asyncio.Event()
        self._attempt_answered = False  # the answer to the current renegotiation came
        self._reading_peer_data = False
        self._local_tracks: list[MediaStreamTrack] = []
        self._pending_candidates: list[IcePayload] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        # the data channel: messages from staff go to on_peer_data, in order
        self.on_peer_data: Callable[[Model], Awaitable[None]] | None = None
        self.on_channel_open: Callable[[], None] | None = None
        self._channel: RTCDataChannel | None = None
        self._peer_inbox: asyncio.Queue[str] = asyncio.Queue(maxsize=100)

    # ---------------------------------------------------------------- state

    @property
    def session_id(self) -> str | None:
        return self.started.session_id if self.started is not None else None

    @property
    def staff_name(self) -> str | None:
        return self.started.staff.display_name if self.started is not None else None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def elapsed_s(self) -> float | None:
        """Seconds since media connected (frozen at the end), None before."""
        if self.connected_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return max(0.0, end - self.connected_at)

    @property
    def audio_frames(self) -> int:
        return self._media.speaker.meter.frames

    def audio_level(self) -> float:
        return self._media.speaker.meter.level()

    def tone_level(self, hz: float) -> float:
        return self._media.speaker.meter.tone_level(hz)

    def _set(self, new: CallState, why: str) -> bool:
        old = self.state
        if new not in _ALLOWED[old]:
            logger.debug("call %s: ignored %s -> %s (%s)", self.request_id, old, new, why)
            return False
        self.state = new
        self.transitions.append(CallTransition(old, new, why, time.monotonic()))
        if new in FINAL_STATES:
            self.ended_at = time.monotonic()
        if old is not new:
            logger.info(
                "call %s%s: %s -> %s (%s)",
                self.request_id,
                f" session {self.session_id}" if self.session_id else "",
                old.value,
                new.value,
                why,
            )
        self._notify()
        return True

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._wake())
        if self._on_change is not None:
            try:
                self._on_change(self)
            except Exception:
                logger.exception("call state listener failed")

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_state(self, *states: CallState, timeout_s: float = 10.0) -> CallState:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.state in states)
        return self.state

    # ---------------------------------------------------------------- the request

    async def request(self) -> None:
        """Send the request for a remote counter (kept by the client across reconnects)."""
        if self.state is not CallState.IDLE:
            return
        self._set(CallState.REQUESTING, "resident asked for help")
        await self._signaling.request_help(
            RequestHelp(
                request_id=self.request_id, department=self.department, language=self.language
            )
        )

    def on_queue_status(self, status: QueueStatus) -> None:
        if status.request_id != self.request_id:
            return
        self.queue = status
        if self.state in WAITING_STATES:
            self._set(CallState.WAITING, f"position {status.position}")

    def on_request_closed(self, closed: RequestClosed) -> None:
        if closed.request_id != self.request_id or self.state not in WAITING_STATES:
            return
        self.closed_reason = closed.reason
        if closed.reason == "abandoned":
            self.failure = "request abandoned by the server"
            self._set(CallState.FAILED, "request abandoned")
        else:
            self._set(CallState.ENDED, "request cancelled")

    def on_request_refused(self, error: ErrorMessage) -> None:
        """The server refused the request itself (e.g. an unknown department)."""
        if self.state is not CallState.REQUESTING:
            return
        self.closed_reason = "refused"
        self.failure = f"request refused: {error.code.value}"
        self._set(CallState.FAILED, f"request refused ({error.code.value})")

    async def cancel(self) -> None:
        if self.state not in WAITING_STATES and self.state is not CallState.IDLE:
            return
        await self._signaling.cancel_request(self.request_id)
        self.closed_reason = "cancelled"
        self._set(CallState.ENDED, "resident cancelled")

    # ---------------------------------------------------------------- the video call

    async def on_call_started(self, started: CallStarted) -> None:
        if started.request_id != self.request_id:
            return
        if self.state is CallState.CONNECTING and self.started is not None:
            await self._offer_again(started)
            return
        if self.state not in WAITING_STATES:
            return
        self.started = started
        self._set(CallState.CONNECTING, f"staff {started.staff.staff_id} accepted")
        self._spawn(self._connect_timeout())
        try:
            await self._open_peer(started, generation=0)
        except Exception as err:
            logger.exception("call %s: could not create the WebRTC offer", self.request_id)
            await self._media_failed(f"offer failed: {type(err).__name__}")

    async def _offer_again(self, started: CallStarted) -> None:
        """``call_started`` once more for the session being set up: the server sends it
        after a reconnect while the media has never connected, and the offer (or the
        answer) may have been lost with the old signaling connection, or the staff page
        may only now know the session. Unless an answer came, a fresh peer connection is
        offered (the next generation) with the fresh ICE servers."""
        assert self.started is not None
        if started.session_id != self.started.session_id or started.role != "offerer":
            return
        pc = self._pc
        if pc is not None and pc.remoteDescription is not None:
            return  # answered: ICE goes on
        self.started = started
        logger.info("call %s: offering again after call_started was repeated", self.request_id)
        try:
            await self._retire_peer()
            await self._open_peer(started, self.generation + 1)
        except Exception as err:
            logger.exception("call %s: could not create the WebRTC offer", self.request_id)
            await self._media_failed(f"offer failed: {type(err).__name__}")

    async def _open_peer(self, started: CallStarted, generation: int) -> bool:
        """Create the peer connection of ``generation`` with fresh local tracks and, as the
        offerer, relay its offer. False when the offer could not be sent (signaling down)
        or the call moved on meanwhile."""
        pc = RTCPeerConnection(
            rtc_configuration(
                started.ice_servers,
                relay_only=self._relay_only,
                turn_transport=self._turn_transport,
            )
        )
        self._pc = pc
        self.generation = generation
        self._pending_candidates = []

        async def state_changed() -> None:
            await self._on_connection_state(pc)

        pc.on("connectionstatechange", state_changed)
        pc.on("track", self._on_track)
        video = SelfViewTrack(self._media.camera.track(), self.self_video)
        audio = self._media.microphone.track()
        self._local_tracks = [video, audio]
        pc.addTrack(video)
        pc.addTrack(audio)
        if self._document_camera is not None:
            # the second video track of the offer is always the document camera
            document = self._document_camera.track()
            self._local_tracks.append(document)
            pc.addTrack(document)
        pc.on("datachannel", self._use_channel)
        if started.role != "offerer":
            return True
        self._use_channel(pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True))
        # Closing a peer connection while it gathers candidates leaks its sockets,
        # so a close waits for this task (see _close_media).
        negotiation = asyncio.ensure_future(pc.setLocalDescription(await pc.createOffer()))
        self._negotiation = negotiation
        await negotiation
        if self._pc is not pc:
            return False  # the call ended (or restarted) while the offer was made
        offer = SdpPayload(sdp_type="offer", sdp=pc.localDescription.sdp, generation=generation)
        return await self._relay(offer)

    async def on_relay(self, relay: Relay) -> None:
        if relay.session_id != self.session_id or self.state not in MEDIA_STATES:
            return
        payload = relay.payload
        if isinstance(payload, SdpPayload | IcePayload) and payload.generation != self.generation:
            started = self.started
            if (
                isinstance(payload, SdpPayload)
                and payload.sdp_type == "offer"
                and payload.generation > self.generation
                and started is not None
                and started.role != "offerer"
            ):
                # staff renegotiate (only when the server made the booth the answerer)
                await self._retire_peer()
                await self._open_peer(started, payload.generation)
            else:
                logger.debug(
                    "call %s: ignored %s of generation %d (current %d)",
                    self.request_id,
                    payload.type,
                    payload.generation,
                    self.generation,
                )
                return
        pc = self._pc
        if pc is None:
            return
        try:
            if isinstance(payload, SdpPayload):
                await self._on_sdp(pc, payload)
            elif isinstance(payload, IcePayload):
                if pc.remoteDescription is None:
                    self._pending_candidates.append(payload)
                else:
                    await self._add_candidate(pc, payload)
            else:
                self.remote_media = payload
                self._notify()
        except Exception as err:
            logger.warning("call %s: bad %s from staff: %s", self.request_id, payload.type, err)
            if isinstance(payload, SdpPayload) and self.state is CallState.CONNECTING:
                await self._media_failed(f"bad {payload.sdp_type}")
            # while reconnecting, the next attempt follows

    async def _on_sdp(self, pc: RTCPeerConnection, payload: SdpPayload) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(payload.sdp, payload.sdp_type))
        self._attempt_answered = True
        if payload.sdp_type == "offer":  # only when the server made the booth the answerer
            await pc.setLocalDescription(await pc.createAnswer())
            answer = SdpPayload(
                sdp_type="answer", sdp=pc.localDescription.sdp, generation=payload.generation
            )
            await self._relay(answer)
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(pc, candidate)

    async def _add_candidate(self, pc: RTCPeerConnection, payload: IcePayload) -> None:
        if payload.candidate is None or not payload.candidate.strip():
            await pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(payload.candidate.removeprefix("candidate:"))
        candidate.sdpMid = payload.sdp_mid
        candidate.sdpMLineIndex = payload.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await pc.addIceCandidate(candidate)

    async def _relay(self, payload: SdpPayload | IcePayload | MediaStatePayload) -> bool:
        session_id = self.session_id
        if session_id is None:
            return False
        return await self._signaling.send(Relay(session_id=session_id, payload=payload))

    async def _on_connection_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self._pc:
            return  # an old peer connection, closing
        state = pc.connectionState
        if state == "connected" and self.state is CallState.CONNECTING:
            self.connected_at = time.monotonic()
            self._set(CallState.IN_CALL, "media connected")
            self._spawn(self._watch_media(pc))
            session_id = self.session_id
            if session_id is not None:
                await self._signaling.send(MediaConnected(session_id=session_id))
        elif state == "connected" and self.state is CallState.RECONNECTING:
            outage = self.outages[-1]
            outage.restored_at = time.monotonic()
            self._set(
                CallState.IN_CALL,
                f"media restored after {outage.restored_at - outage.lost_at:.1f} s"
                f" (generation {self.generation})",
            )
            self._recovery_wake.set()
            self._spawn(self._watch_media(pc))
        elif state == "failed":
            if self.state is CallState.CONNECTING:
                await self._media_failed("WebRTC connection failed")
            elif self.state is CallState.IN_CALL:
                await self._media_lost("WebRTC connection failed")
            elif self.state is CallState.RECONNECTING:
                self._recovery_wake.set()  # this attempt is over: the next one now

    # ---------------------------------------------------------------- recovery from drops

    async def _watch_media(self, pc: RTCPeerConnection) -> None:
        """While connected: anything received from staff (media, RTCP, the data channel)
        counts; nothing for ``media_loss_grace_s`` means the media path is lost."""
        last = -1
        changed_at = time.monotonic()
        while self._pc is pc and self.state is CallState.IN_CALL:
            await asyncio.sleep(MEDIA_WATCH_INTERVAL_S)
            received = await _packets_received(pc)
            now = time.monotonic()
            if received != last:
                last, changed_at = received, now
            elif now - changed_at >= self._media_loss_grace_s and self._pc is pc:
                await self._media_lost(f"nothing from staff for {now - changed_at:.1f} s")
                return

    async def _media_lost(self, why: str) -> None:
        if self.state is not CallState.IN_CALL:
            return
        self.outages.append(MediaOutage(lost_at=time.monotonic(), why=why))
        self._attempt_answered = False
        self._set(CallState.RECONNECTING, why)
        self._spawn(self._recover(self.outages[-1]))

    async def _recover(self, outage: MediaOutage) -> None:
        """Offer fresh peer connections until one connects or the outage limit is reached."""
        started = self.started
        assert started is not None
        backoff_s = 0.25
        while self.state is CallState.RECONNECTING:
            left_s = outage.lost_at + self._outage_limit_s - time.monotonic()
            if left_s <= 0:
                self.media_lost = True
                self.end_reason = EndReason.MEDIA_FAILED
                await self._media_failed(f"media lost for more than {self._outage_limit_s:g} s")
                return
            self._recovery_wake.clear()
            sent = False
            if started.role == "offerer" and self._signaling.connected:
                outage.attempts += 1
                self._attempt_answered = False
                try:
                    await self._retire_peer()
                    sent = await self._open_peer(started, self.generation + 1)
                except Exception:
                    logger.exception("call %s: renegotiation failed", self.request_id)
                logger.info(
                    "call %s: fresh peer connection offered (generation %d, attempt %d%s)",
                    self.request_id,
                    self.generation,
                    outage.attempts,
                    "" if sent else ", signaling down",
                )
            # an offer sent gets its attempt time; without signaling, look again soon (and
            # at once when it is back: on_signaling_back)
            wait_s = self._restart_attempt_s if sent else backoff_s
            backoff_s = min(backoff_s * 2, self._restart_attempt_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait_s, max(left_s, 0.01))):
                    await self._recovery_wake.wait()

    def on_signaling_back(self) -> None:
        """Signaling is connected again and still holds this call's session. An offer sent
        over the old connection may be lost: unless an answer already came, the next
        attempt starts now."""
        if self.state is CallState.RECONNECTING and not self._attempt_answered:
            self._recovery_wake.set()

    async def _retire_peer(self) -> None:
        """Close the current peer connection in the background (the data channel and the
        local tracks with it); the call keeps everything else."""
        negotiation, self._negotiation = self._negotiation, None
        if negotiation is not None and not negotiation.done():
            await asyncio.wait({negotiation}, timeout=10)
        pc, self._pc = self._pc, None
        channel, self._channel = self._channel, None
        tracks, self._local_tracks = self._local_tracks, []
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        for track in tracks:
            track.stop()
        if pc is not None:
            closing = asyncio.ensure_future(pc.close())
            self._retiring.add(closing)
            closing.add_done_callback(self._retiring.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        logger.info("call %s: receiving staff %s", self.request_id, track.kind)
        if track.kind == "video":
            self._spawn(self._receive_video(track))
        elif track.kind == "audio":
            self._media.speaker.attach(track)

    async def _receive_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                self.video_frames += 1
                self.staff_video.put(frame)
                if self.staff_video.last_stamp is not None:
                    self.last_stamp = self.staff_video.last_stamp

    # ---------------------------------------------------------------- the data channel

    def _use_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL or self._channel is not None:
            return
        self._channel = channel

        def opened() -> None:
            logger.info("call %s: data channel open", self.request_id)
            if self.on_channel_open is not None:
                self.on_channel_open()

        def received(data: str | bytes) -> None:
            if not isinstance(data, str):
                return  # the protocol is text only
            try:
                self._peer_inbox.put_nowait(data)
            except asyncio.QueueFull:
                logger.warning("call %s: data channel flooded, message dropped", self.request_id)

        channel.on("open", opened)
        channel.on("message", received)
        if channel.readyState == "open":
            opened()
        if not self._reading_peer_data:
            self._reading_peer_data = True
            self._spawn(self._read_peer_data())

    async def _read_peer_data(self) -> None:
        while True:
            data = await self._peer_inbox.get()
            try:
                message = wire.decode(wire.peer_data, data)
            except ProtocolError as err:
                logger.warning("call %s: bad data channel message: %s", self.request_id, err)
                continue
            if self.on_peer_data is not None:
                try:
                    await self.on_peer_data(message)
                except Exception:
                    logger.exception("call %s: data channel handler failed", self.request_id)

    def send_peer_data(self, message: Model) -> bool:
        """Send one :data:`~shared.protocol.PeerData` message to staff; False when the
        channel is not open (nothing is queued for later)."""
        channel = self._channel
        if channel is None or channel.readyState != "open" or self.state not in MEDIA_STATES:
            return False
        channel.send(wire.encode(message))
        return True

    def send_peer_bytes(self, data: bytes) -> bool:
        """Send one binary frame (a document still chunk); False when the channel is closed."""
        channel = self._channel
        if channel is None or channel.readyState != "open" or self.state not in MEDIA_STATES:
            return False
        channel.send(data)
        return True

    async def drain_peer_data(self, below: int, timeout_s: float = 30.0) -> bool:
        """Wait until at most ``below`` bytes are queued on the data channel; False when
        the channel is gone or does not drain within ``timeout_s``."""
        return await drain_channel(self._channel, below, timeout_s)

    async def _connect_timeout(self) -> None:
        await asyncio.sleep(self._connect_timeout_s)
        if self.state is CallState.CONNECTING:
            await self._media_failed(f"not connected within {self._connect_timeout_s:g} s")

    async def _media_failed(self, detail: str) -> None:
        if self.state not in MEDIA_STATES:
            return
        self.failure = detail
        session_id = self.session_id
        self._set(CallState.FAILED, detail)
        if session_id is not None:
            await self._signaling.send(MediaFailed(session_id=session_id, detail=detail[:200]))
        await self._close_media()

    async def hang_up(self) -> None:
        """The resident ends the call."""
        if self.state not in MEDIA_STATES:
            return
        session_id = self.session_id
        self.end_reason = EndReason.HANGUP_BOOTH
        self._set(CallState.ENDED, "resident hung up")
        if session_id is not None:
            await self._signaling.send(HangUp(session_id=session_id))
        await self._close_media()

    async def on_session_ended(self, ended: SessionEnded) -> None:
        if ended.session_id != self.session_id:
            return
        if self.end_reason is None:
            self.end_reason = ended.reason
        if self.state in MEDIA_STATES:
            self._set(CallState.ENDED, f"session ended: {ended.reason.value}")
        await self._close_media()

    async def lose_session(self, why: str) -> None:
        """Signaling came back without our session: the server has ended it."""
        if self.state in MEDIA_STATES:
            self.end_reason = EndReason.BOOTH_LOST
            self.failure = why
            self._set(CallState.FAILED, why)
        await self._close_media()

    async def _close_media(self) -> None:
        negotiation = self._negotiation
        if negotiation is not None and not negotiation.done():
            await asyncio.wait({negotiation}, timeout=10)
        pc, self._pc = self._pc, None
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        for track in self._local_tracks:
            track.stop()
        self._local_tracks = []
        if pc is not None:
            # The close must finish even if the task that asked for it is cancelled (the
            # call ending from several sides at once): a half-closed peer connection keeps
            # its ICE sockets open.
            self._pc_closing = asyncio.ensure_future(pc.close())
            with contextlib.suppress(Exception):
                await asyncio.shield(self._pc_closing)
        await self._media.speaker.detach()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def aclose(self) -> None:
        """Leave the call without telling anyone (the agent is shutting down)."""
        if not self.finished:
            self._set(CallState.ENDED, "booth shutting down")
        await self._close_media()
        current = asyncio.current_task()
        pending: list[asyncio.Future[None]] = [t for t in self._tasks if t is not current]
        if self._pc_closing is not None:
            pending.append(self._pc_closing)
        pending.extend(self._retiring)
        await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _packets_received(pc: RTCPeerConnection) -> int:
    """Every packet the peer connection's transports received so far."""
    try:
        report = await pc.getStats()
    except Exception:
        return -1
    return sum(
        int(getattr(stats, "packetsReceived", 0) or 0)
        for stats in report.values()
        if stats.type == "transport"
    )
