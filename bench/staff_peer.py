"""An automated HQ staff member: a Python WebRTC peer on the staff channel.

It signs in with a staff token, becomes available, accepts offers, answers the booth's
WebRTC offer with aiortc and sends a stamped test picture and a 660 Hz tone back. It
records when each step happened and proves what arrived from the booth (the booth's frame
stamps and its tone). It also takes the booth's data channel (``ekichika``) and can ask
for the My Number card's 4 basic facts on it (:meth:`AutoStaff.request_card_read`).
Every signaling frame it sends and receives is kept in ``signaling_frames`` so that tests
can show what the server saw. When the booth renegotiates after a drop (an offer of a newer
``generation``, see docs/protocol.md), it closes its old peer connection and answers with a
fresh one, as the console does; the call record keeps when each generation connected and
when its first stamped frame arrived. Used by the end-to-end tests and by ``bench/call_setup.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from booth.ice import rtc_configuration
from booth.media import StampedVideoTrack, ToneAudioTrack, read_stamp, tone_level
from shared import wire
from shared.errors import ProtocolError
from shared.protocol import (
    DATA_CHANNEL_LABEL,
    PRINT_CHUNK_BYTES,
    STILL_CHUNK_HEADER,
    STILL_ID_BYTES,
    AcceptOffer,
    CallStarted,
    CardBasicInfo,
    CardReadFailed,
    CardReadRequest,
    ErrorMessage,
    HangUp,
    IcePayload,
    MediaConnected,
    Model,
    Offer,
    OfferWithdrawn,
    PrintJobChunk,
    PrintJobCommand,
    PrintJobRejected,
    PrintJobRequest,
    PrintJobStatus,
    ReceiptDocument,
    Relay,
    SdpPayload,
    ServerToStaff,
    SessionEnded,
    SetState,
    StaffHello,
    StaffStateChanged,
    StaffToServer,
    StaffWelcome,
    StillDone,
    StillOffer,
    StillRequest,
    WrapUpDone,
)

log = logging.getLogger(__name__)

STAFF_TONE_HZ = 660.0
BOOTH_TONE_HZ = 1000.0


@dataclass
class ReceivedStill:
    """One document still as the staff side assembled it; ``ok`` only when every byte
    arrived and the SHA-256 matches the offer (else ``rejected`` says why)."""

    offer: StillOffer
    data: bytes
    ok: bool
    rejected: str | None
    offer_at: float
    done_at: float


class StillAssembly:
    """Puts the binary frames of the announced stills together, as the console does."""

    def __init__(self) -> None:
        self._open: dict[bytes, tuple[StillOffer, bytearray, float, list[str]]] = {}

    def offer(self, offer: StillOffer) -> None:
        key = bytes.fromhex(offer.still_id)
        self._open[key] = (offer, bytearray(), time.monotonic(), [])

    def chunk(self, frame: bytes) -> None:
        key = frame[:STILL_ID_BYTES]
        entry = self._open.get(key)
        if entry is None:
            return
        _, buffer, _, problems = entry
        offset = int.from_bytes(frame[STILL_ID_BYTES:STILL_CHUNK_HEADER], "big")
        if offset != len(buffer):
            problems.append(f"chunk at {offset}, expected {len(buffer)}")
        buffer += frame[STILL_CHUNK_HEADER:]

    def done(self, done: StillDone) -> ReceivedStill | None:
        entry = self._open.pop(bytes.fromhex(done.still_id), None)
        if entry is None:
            return None
        offer, buffer, offer_at, problems = entry
        data = bytes(buffer)
        if problems:
            rejected: str | None = problems[0]
        elif len(data) != offer.size:
            rejected = f"{len(data)} bytes, announced {offer.size}"
        elif hashlib.sha256(data).hexdigest() != offer.sha256:
            rejected = "SHA-256 does not match"
        else:
            rejected = None
        return ReceivedStill(offer, data, rejected is None, rejected, offer_at, time.monotonic())


@dataclass
class CallRecord:
    """What happened in one call, on the staff side (times from ``time.monotonic``)."""

    session_id: str
    request_id: str
    offer_at: float
    accepted_at: float
    call_started_at: float | None = None
    offer_sdp_at: float | None = None  # the booth's WebRTC offer arrived
    answer_sent_at: float | None = None
    connected_at: float | None = None
    first_frame_at: float | None = None
    frames: int = 0
    stamps: list[int] = field(default_factory=list)  # booth frame numbers, in order seen
    latencies_ms: list[int] = field(default_factory=list)  # stamp time → decoded here
    audio_samples: list[np.ndarray] = field(default_factory=list)
    ended: SessionEnded | None = None
    # the booth's data channel and every PeerData message that came on it, in order
    channel: RTCDataChannel | None = None
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    peer_data: list[Model] = field(default_factory=list)
    peer_inbox: asyncio.Queue[Model] = field(default_factory=asyncio.Queue)
    peer_data_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # the booth's second video (the document camera) and the stills that came on the channel
    document_frames: int = 0
    document_stamps: list[int] = field(default_factory=list)
    document_first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    still_assembly: StillAssembly = field(default_factory=StillAssembly)
    stills: asyncio.Queue[ReceivedStill] = field(default_factory=asyncio.Queue)
    # renegotiations after a drop: the current generation, and per generation when its
    # offer arrived, when it connected and when its first stamped booth frame was decoded
    generation: int = 0
    offers_at: dict[int, float] = field(default_factory=dict)
    connected_at_by_generation: dict[int, float] = field(default_factory=dict)
    first_frame_by_generation: dict[int, float] = field(default_factory=dict)
    last_frame_at: float | None = None
    renegotiated: asyncio.Event = field(default_factory=asyncio.Event)

    def booth_tone_level(self) -> float:
        """Relative level of the booth's 1 kHz tone in the audio received (0 … 1)."""
        if not self.audio_samples:
            return 0.0
        return tone_level(np.concatenate(self.audio_samples[-50:]), 48000, BOOTH_TONE_HZ)


class AutoStaff:
    """One automated staff member. ``async with AutoStaff(...) as staff:`` connects."""

    def __init__(
        self,
        ws_url: str,
        token: str | Callable[[], str],
        *,
        video_size: tuple[int, int] = (320, 240),
        fps: int = 15,
        auto_accept: bool = True,
        send_media: bool = True,
    ) -> None:
        self._ws_url = ws_url
        self._token = token
        self._video_size = video_size
        self._fps = fps
        self.auto_accept = auto_accept
        self._send_media = send_media
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pcs: dict[str, RTCPeerConnection] = {}
        self._started: dict[str, CallStarted] = {}
        self._relay_lock = asyncio.Lock()  # relays are applied one at a time, in order
        self._closing: set[asyncio.Future[None]] = set()
        self.welcome: StaffWelcome | None = None
        self.state: str | None = None
        self.offers: asyncio.Queue[tuple[float, Offer]] = asyncio.Queue()
        self.errors: list[ErrorMessage] = []
        self.withdrawn: list[OfferWithdrawn] = []
        self.calls: dict[str, CallRecord] = {}
        self._pending: dict[str, tuple[float, Offer, float]] = {}  # request id → offer times
        self.call_started: asyncio.Queue[CallRecord] = asyncio.Queue()
        # every signaling frame, as text: ("sent" | "received", frame)
        self.signaling_frames: list[tuple[str, str]] = []
        self._state_changed = asyncio.Condition()

    async def __aenter__(self) -> AutoStaff:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self._ws_url, heartbeat=10)
        token = self._token() if callable(self._token) else self._token
        await self.send(StaffHello(token=token))
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(10):
            async with self._state_changed:
                await self._state_changed.wait_for(lambda: self.welcome is not None)

    async def send(self, message: StaffToServer) -> None:
        assert self._ws is not None
        frame = wire.encode(message)
        self.signaling_frames.append(("sent", frame))
        await self._ws.send_str(frame)

    # ---------------------------------------------------------------- data channel

    def send_peer_data(self, session_id: str, message: Model) -> None:
        """Send one PeerData message on the booth's data channel of ``session_id``."""
        record = self.calls[session_id]
        channel = record.channel
        if channel is None or channel.readyState != "open":
            raise RuntimeError(f"no open data channel in session {session_id}")
        channel.send(wire.encode(message))

    async def request_card_read(self, session_id: str, request_id: str) -> None:
        """Ask the booth for the card's 4 basic facts (waits for the data channel)."""
        record = self.calls[session_id]
        async with asyncio.timeout(10):
            await record.channel_open.wait()
        self.send_peer_data(session_id, CardReadRequest(request_id=request_id))

    async def next_peer_data(self, session_id: str, timeout_s: float = 10) -> Model:
        async with asyncio.timeout(timeout_s):
            return await self.calls[session_id].peer_inbox.get()

    async def card_read_result(
        self, session_id: str, request_id: str, timeout_s: float = 15
    ) -> CardBasicInfo | CardReadFailed:
        """The outcome of ``request_id``: the 4 facts, or why there are none."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.calls[session_id].peer_inbox.get()
                if (
                    isinstance(message, CardBasicInfo | CardReadFailed)
                    and message.request_id == request_id
                ):
                    return message

    # ---------------------------------------------------------------- printing

    async def print_receipt(
        self, session_id: str, job_id: str, receipt: ReceiptDocument, title: str = "receipt"
    ) -> None:
        """Ask the booth to print ``receipt`` (waits for the data channel)."""
        await self._channel_open(session_id)
        self.send_peer_data(
            session_id,
            PrintJobRequest(job_id=job_id, target="receipt", title=title, receipt=receipt),
        )

    async def print_pdf(
        self,
        session_id: str,
        job_id: str,
        pdf: bytes,
        title: str = "document",
        *,
        chunk_bytes: int = PRINT_CHUNK_BYTES,
        corrupt: bool = False,
    ) -> None:
        """Ask the booth to print ``pdf`` on its A4 printer: the request with the size and
        SHA-256, then the document in base64 pieces of ``chunk_bytes``. ``corrupt`` changes
        one byte of the last piece after the SHA-256 was taken (to test the booth's check)."""
        await self._channel_open(session_id)
        digest = hashlib.sha256(pdf).hexdigest()
        self.send_peer_data(
            session_id,
            PrintJobRequest(job_id=job_id, target="a4", title=title, size=len(pdf), sha256=digest),
        )
        pieces = [pdf[i : i + chunk_bytes] for i in range(0, len(pdf), chunk_bytes)]
        if corrupt:
            pieces[-1] = pieces[-1][:-1] + bytes([pieces[-1][-1] ^ 0xFF])
        for seq, piece in enumerate(pieces):
            chunk = PrintJobChunk(
                job_id=job_id,
                seq=seq,
                data_b64=base64.b64encode(piece).decode(),
                last=seq == len(pieces) - 1,
            )
            self.send_peer_data(session_id, chunk)

    def print_command(self, session_id: str, job_id: str, action: str) -> None:
        """``reprint`` or ``cancel`` a job of this call."""
        assert action in ("reprint", "cancel")
        self.send_peer_data(
            session_id,
            PrintJobCommand(job_id=job_id, action="reprint" if action == "reprint" else "cancel"),
        )

    def print_updates(
        self, session_id: str, job_id: str
    ) -> list[PrintJobStatus | PrintJobRejected]:
        """Every status and rejection of ``job_id`` received so far, in order."""
        return [
            m
            for m in self.calls[session_id].peer_data
            if isinstance(m, PrintJobStatus | PrintJobRejected) and m.job_id == job_id
        ]

    async def print_status(
        self,
        session_id: str,
        job_id: str,
        *states: str,
        after: int = 0,
        timeout_s: float = 15,
    ) -> PrintJobStatus | PrintJobRejected:
        """Wait for a status of ``job_id`` in ``states`` (or a rejection), looking at its
        updates from number ``after`` on."""
        record = self.calls[session_id]
        async with asyncio.timeout(timeout_s):
            while True:
                record.peer_data_arrived.clear()
                for update in self.print_updates(session_id, job_id)[after:]:
                    if isinstance(update, PrintJobRejected) or update.state.value in states:
                        return update
                await record.peer_data_arrived.wait()

    async def _channel_open(self, session_id: str) -> None:
        async with asyncio.timeout(10):
            await self.calls[session_id].channel_open.wait()

    async def request_still(self, session_id: str, request_id: str) -> None:
        """Ask the booth for a document camera still (waits for the data channel)."""
        record = self.calls[session_id]
        async with asyncio.timeout(10):
            await record.channel_open.wait()
        self.send_peer_data(session_id, StillRequest(request_id=request_id))

    async def next_still(self, session_id: str, timeout_s: float = 30) -> ReceivedStill:
        """The next still the booth finished sending (complete and checked, or rejected)."""
        async with asyncio.timeout(timeout_s):
            return await self.calls[session_id].stills.get()

    async def set_available(self) -> None:
        """Become available (with requests waiting, an offer may ring at once)."""
        await self.send(SetState(state="available"))
        await self.wait_state("available", "ringing", "in_call")

    async def wait_state(self, *states: str, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            async with self._state_changed:
                await self._state_changed.wait_for(lambda: self.state in states)

    async def accept(self, offer: Offer, offer_at: float) -> None:
        self._pending[offer.request_id] = (offer_at, offer, time.monotonic())
        await self.send(AcceptOffer(offer_id=offer.offer_id))

    async def hang_up(self, session_id: str) -> None:
        await self.send(HangUp(session_id=session_id))

    async def wrap_up(self, session_id: str, note: str = "") -> None:
        await self.send(WrapUpDone(session_id=session_id, note=note))

    async def aclose(self) -> None:
        for pc in list(self._pcs.values()):
            self._close_pc(pc)
        self._pcs.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---------------------------------------------------------------- internals

    def _close_pc(self, pc: RTCPeerConnection) -> asyncio.Future[None]:
        """Close in a task of its own: a close cut short by a cancellation leaves ICE
        sockets open. :meth:`aclose` waits for every close."""
        closing = asyncio.ensure_future(pc.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return closing

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.signaling_frames.append(("received", msg.data))
            message: ServerToStaff = wire.decode(wire.server_to_staff, msg.data)
            await self._handle(message)
        async with self._state_changed:
            self.state = "disconnected"
            self._state_changed.notify_all()

    async def _handle(self, message: ServerToStaff) -> None:
        now = time.monotonic()
        match message:
            case StaffWelcome():
                async with self._state_changed:
                    self.welcome = message
                    self.state = message.state.value
                    self._state_changed.notify_all()
            case StaffStateChanged():
                async with self._state_changed:
                    self.state = message.state.value
                    self._state_changed.notify_all()
            case Offer():
                self.offers.put_nowait((now, message))
                if self.auto_accept:
                    await self.accept(message, now)
            case OfferWithdrawn():
                self.withdrawn.append(message)
            case CallStarted():
                offer_at, _, accepted_at = self._pending.pop(message.request_id, (now, None, now))
                record = CallRecord(
                    session_id=message.session_id,
                    request_id=message.request_id,
                    offer_at=offer_at,
                    accepted_at=accepted_at,
                    call_started_at=now,
                )
                self.calls[message.session_id] = record
                self._started[message.session_id] = message
                self._pcs[message.session_id] = self._new_pc(message, record, 0)
                self.call_started.put_nowait(record)
            case Relay():
                self._spawn(self._on_relay(message))
            case SessionEnded():
                ended = self.calls.get(message.session_id)
                pc = self._pcs.pop(message.session_id, None)
                if pc is not None:
                    await asyncio.shield(self._close_pc(pc))
                if ended is not None:
                    ended.ended = message
                    ended.finished.set()
            case ErrorMessage():
                log.warning("signaling error %s: %s", message.code, message.message)
                self.errors.append(message)
            case _:
                pass

    def _new_pc(
        self, started: CallStarted, record: CallRecord, generation: int
    ) -> RTCPeerConnection:
        pc = RTCPeerConnection(rtc_configuration(started.ice_servers))

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState != "connected" or record.generation != generation:
                return
            now = time.monotonic()
            record.connected_at_by_generation.setdefault(generation, now)
            if record.connected_at is None:
                record.connected_at = now
                record.connected.set()
                await self.send(MediaConnected(session_id=started.session_id))

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if self._is_document_track(pc, track):
                self._spawn(self._consume_document(track, record))
                return
            self._spawn(self._consume(track, record, generation))

        @pc.on("datachannel")
        def _datachannel(channel: RTCDataChannel) -> None:
            if channel.label != DATA_CHANNEL_LABEL or record.generation != generation:
                return
            record.channel = channel

            @channel.on("message")
            def _message(data: str | bytes) -> None:
                if not isinstance(data, str):
                    record.still_assembly.chunk(data)
                    return
                try:
                    message = wire.decode(wire.peer_data, data)
                except ProtocolError as err:
                    log.warning("bad data channel message: %s", err)
                    return
                record.peer_data.append(message)
                record.peer_inbox.put_nowait(message)
                self._still_message(record, message)
                record.peer_data_arrived.set()

            if channel.readyState == "open":
                record.channel_open.set()
            else:
                channel.on("open", record.channel_open.set)

        return pc

    async def _on_relay(self, relay: Relay) -> None:
        async with self._relay_lock:
            await self._apply_relay(relay)

    async def _apply_relay(self, relay: Relay) -> None:
        pc = self._pcs.get(relay.session_id)
        record = self.calls.get(relay.session_id)
        if pc is None or record is None:
            return
        payload = relay.payload
        if isinstance(payload, SdpPayload | IcePayload):
            if payload.generation < record.generation:
                return  # from a peer connection the booth has given up
            if payload.generation > record.generation:
                if not isinstance(payload, SdpPayload) or payload.sdp_type != "offer":
                    return
                pc = self._renegotiate(relay.session_id, record, payload.generation)
        if isinstance(payload, SdpPayload) and payload.sdp_type == "offer":
            record.offer_sdp_at = time.monotonic()
            record.offers_at[payload.generation] = record.offer_sdp_at
            await pc.setRemoteDescription(RTCSessionDescription(payload.sdp, "offer"))
            if self._send_media:
                width, height = self._video_size
                pc.addTrack(StampedVideoTrack(width=width, height=height, fps=self._fps))
                pc.addTrack(ToneAudioTrack(hz=STAFF_TONE_HZ))
            await pc.setLocalDescription(await pc.createAnswer())
            local = pc.localDescription
            await self.send(
                Relay(
                    session_id=relay.session_id,
                    payload=SdpPayload(
                        sdp_type="answer", sdp=local.sdp, generation=payload.generation
                    ),
                )
            )
            record.answer_sent_at = time.monotonic()
        elif isinstance(payload, IcePayload) and payload.candidate:
            candidate = candidate_from_sdp(payload.candidate.removeprefix("candidate:"))
            candidate.sdpMid = payload.sdp_mid
            candidate.sdpMLineIndex = payload.sdp_mline_index
            await pc.addIceCandidate(candidate)

    def _renegotiate(
        self, session_id: str, record: CallRecord, generation: int
    ) -> RTCPeerConnection:
        """The booth offers a fresh connection: close the old one, make the new one."""
        old = self._pcs.pop(session_id, None)
        if old is not None:
            self._close_pc(old)
        record.generation = generation
        record.channel = None
        record.channel_open.clear()
        record.renegotiated.set()
        pc = self._new_pc(self._started[session_id], record, generation)
        self._pcs[session_id] = pc
        return pc

    async def _consume(self, track: MediaStreamTrack, record: CallRecord, generation: int) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    stamp = read_stamp(frame)
                    if stamp is None:
                        continue
                    now = time.monotonic()
                    record.frames += 1
                    record.stamps.append(stamp.frame_no)
                    record.latencies_ms.append(stamp.latency_ms())
                    record.last_frame_at = now
                    record.first_frame_by_generation.setdefault(generation, now)
                    if record.first_frame_at is None:
                        record.first_frame_at = now
                        record.first_frame.set()
                elif isinstance(frame, AudioFrame):
                    samples = frame.to_ndarray().reshape(-1)
                    if frame.layout.name == "stereo":
                        samples = samples[::2]
                    record.audio_samples.append(samples.astype(np.float32))
                    if len(record.audio_samples) > 200:
                        del record.audio_samples[:100]

    # ---------------------------------------------------------------- document camera

    @staticmethod
    def _is_document_track(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
        """The booth's second video track is its document camera."""
        if track.kind != "video":
            return False
        videos = [t for t in pc.getTransceivers() if t.kind == "video"]
        return any(t.receiver.track is track for t in videos[1:])

    @staticmethod
    def _still_message(record: CallRecord, message: Model) -> None:
        if isinstance(message, StillOffer):
            record.still_assembly.offer(message)
        elif isinstance(message, StillDone):
            still = record.still_assembly.done(message)
            if still is not None:
                record.stills.put_nowait(still)

    async def _consume_document(self, track: MediaStreamTrack, record: CallRecord) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                stamp = read_stamp(frame)
                if stamp is None:
                    continue
                record.document_frames += 1
                record.document_stamps.append(stamp.frame_no)
                record.document_first_frame.set()
