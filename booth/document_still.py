"""Document camera stills during a call, sent to the staff member of the call.

Staff ask with ``still_request``; the resident asks with the kiosk's 書類を撮影 button. Each
still is announced with ``still_offer`` (size, SHA-256, picture size) on the call's data
channel, then its bytes go one of two ways (see ``shared.protocol``):

* relay, when the booth knows the console (``console_url``): the JPEG sealed with a fresh
  AES-256-GCM key (:func:`shared.security.seal_still`), whose key and one-time token travel
  only in the offer, is uploaded over HTTPS to the console's still relay, which streams it
  to the staff member's page and keeps nothing. TCP keeps its pace on a lossy station link,
  where the data channel's SCTP falls to a fraction of it.
* the data channel: binary frames (:func:`still_frames`), then ``still_done``; also the
  fallback when the relay fails (the offer is sent again without ``relay``).

Only the staff member in this call can open the still. Stills are sent one at a time, in
the order asked for; the booth keeps nothing after sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from aiortc import RTCDataChannel

from booth.console_client import ConsoleClient, ConsoleUnavailable
from booth.document_camera import DocumentCamera, DocumentStill
from shared.errors import DeviceError
from shared.protocol import (
    STILL_ID_BYTES,
    Model,
    StillDone,
    StillFailed,
    StillOffer,
    StillRelayTicket,
    StillRequest,
)
from shared.security import seal_still

logger = logging.getLogger(__name__)

# Data per binary frame. Chromium accepts messages up to 256 KiB, aiortc announces 64 KiB.
STILL_CHUNK_BYTES: Final = 65536 - 20
# Pause sending while this much is queued on the channel. Keep it small: a long queue in
# aiortc's SCTP stalls the call's video at the far end (measured: 1 MiB froze it for good).
_HIGH_WATER: Final = 64 * 1024


class StillChannel(Protocol):
    """The call's data channel as this flow uses it."""

    @property
    def session_id(self) -> str | None: ...

    def send_peer_data(self, message: Model) -> bool: ...

    def send_peer_bytes(self, data: bytes) -> bool: ...

    async def drain_peer_data(self, below: int) -> bool: ...


class StillState(enum.Enum):
    IDLE = "idle"
    CAPTURING = "capturing"
    SENDING = "sending"


async def drain_channel(channel: RTCDataChannel | None, below: int, timeout_s: float) -> bool:
    """Wait until ``channel`` has at most ``below`` bytes queued (False: closed, or not
    drained within ``timeout_s``)."""
    if channel is None or channel.readyState != "open":
        return False
    if channel.bufferedAmount <= below:
        return True
    low = asyncio.Event()
    channel.bufferedAmountLowThreshold = below
    channel.on("bufferedamountlow", low.set)
    channel.on("close", low.set)
    try:
        async with asyncio.timeout(timeout_s):
            await low.wait()
    except TimeoutError:
        return False
    finally:
        channel.remove_listener("bufferedamountlow", low.set)
        channel.remove_listener("close", low.set)
    return channel.readyState == "open"


def still_frames(still_id: str, data: bytes, chunk: int = STILL_CHUNK_BYTES) -> Iterator[bytes]:
    """The binary frames of one still: id (16 bytes), offset (4 bytes, big-endian), data."""
    head = bytes.fromhex(still_id)
    assert len(head) == STILL_ID_BYTES
    for offset in range(0, len(data), chunk):
        yield head + offset.to_bytes(4, "big") + data[offset : offset + chunk]


def offer_for(
    still: DocumentStill, *, request_id: str | None, origin: str, still_id: str | None = None
) -> StillOffer:
    return StillOffer.model_validate(
        {
            "still_id": still_id or secrets.token_hex(STILL_ID_BYTES),
            "request_id": request_id,
            "origin": origin,
            "size": len(still.jpeg),
            "sha256": hashlib.sha256(still.jpeg).hexdigest(),
            "width": still.width,
            "height": still.height,
        }
    )


class DocumentStillFlow:
    """Takes and sends stills for the booth's current call, one at a time."""

    def __init__(
        self,
        camera: Callable[[], DocumentCamera | None],
        *,
        console: ConsoleClient | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._camera = camera
        self._console = console
        self._on_change = on_change
        self.state = StillState.IDLE
        self.sent = 0  # stills sent in this run
        self.relayed = 0  # of them, through the console's still relay
        self._channel: StillChannel | None = None
        self._queue: asyncio.Queue[tuple[str | None, str]] = asyncio.Queue(maxsize=8)
        self._task: asyncio.Task[None] | None = None

    def attach(self, channel: StillChannel) -> None:
        self.detach()
        self._channel = channel

    def detach(self) -> None:
        """The call ended: drop what is queued and stop sending."""
        self._channel = None
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._set(StillState.IDLE)

    async def aclose(self) -> None:
        task = self._task
        self.detach()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def busy(self) -> bool:
        return self.state is not StillState.IDLE or not self._queue.empty()

    async def on_peer_data(self, message: Model) -> None:
        if isinstance(message, StillRequest):
            self.request(message.request_id, "staff")

    def resident_request(self) -> None:
        """The resident touched 書類を撮影."""
        self.request(None, "resident")

    def request(self, request_id: str | None, origin: str) -> None:
        if self._channel is None:
            return
        try:
            self._queue.put_nowait((request_id, origin))
        except asyncio.QueueFull:
            logger.warning("still request dropped: too many waiting")
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _set(self, state: StillState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_change is not None:
            self._on_change()

    async def _run(self) -> None:
        try:
            while not self._queue.empty():
                request_id, origin = self._queue.get_nowait()
                await self._one(request_id, origin)
        finally:
            self._set(StillState.IDLE)

    async def _one(self, request_id: str | None, origin: str) -> None:
        channel = self._channel
        camera = self._camera()
        if channel is None:
            return
        if camera is None:
            channel.send_peer_data(
                StillFailed(request_id=request_id, message="このブースには書画カメラがありません。")
            )
            return
        self._set(StillState.CAPTURING)
        try:
            still = await camera.still()
        except DeviceError as err:
            logger.warning("document still failed: %s", err)
            channel.send_peer_data(
                StillFailed(request_id=request_id, message="書画カメラで撮影できませんでした。")
            )
            return
        self._set(StillState.SENDING)
        offer = offer_for(still, request_id=request_id, origin=origin)
        session_id = channel.session_id
        how = "data channel"
        if (
            self._console is not None
            and session_id is not None
            and await relay_still(channel, self._console, session_id, offer, still.jpeg)
        ):
            how = "relay"
            self.relayed += 1
        if how != "relay" and not await send_still(channel, offer, still.jpeg):
            logger.warning("still %s not sent: the data channel closed", offer.still_id[:8])
            return
        self.sent += 1
        logger.info(
            "still %s sent by %s (%d bytes, %s)", offer.still_id[:8], how, offer.size, origin
        )


async def send_still(channel: StillChannel, offer: StillOffer, data: bytes) -> bool:
    """Send ``still_offer``, the binary frames and ``still_done``; False if the channel
    closed on the way (the receiver then never sees ``still_done``)."""
    if not channel.send_peer_data(offer):
        return False
    for frame in still_frames(offer.still_id, data):
        if not await channel.drain_peer_data(_HIGH_WATER):
            return False
        if not channel.send_peer_bytes(frame):
            return False
    return channel.send_peer_data(StillDone(still_id=offer.still_id))


async def relay_still(
    channel: StillChannel, console: ConsoleClient, session_id: str, offer: StillOffer, data: bytes
) -> bool:
    """Send the still through the console's still relay (see the module docstring); False
    when that failed and the data channel should carry it instead."""
    sealed = await asyncio.to_thread(seal_still, data)
    ticket = StillRelayTicket(
        token=secrets.token_hex(32), key=sealed.key_b64, nonce=sealed.nonce_b64
    )
    if not channel.send_peer_data(offer.model_copy(update={"relay": ticket})):
        return False
    try:
        await console.upload_still(session_id, ticket.token, sealed.ciphertext)
    except ConsoleUnavailable as err:
        logger.warning(
            "still %s: relay failed (%s), sending on the data channel", offer.still_id[:8], err
        )
        return False
    return True
