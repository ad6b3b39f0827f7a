"""The still relay: a booth's document still streamed to the staff member's browser.

A still is several megabytes; the call's data channel (SCTP in the WebRTC library the booth
uses) halves its window at every loss and crawls on a station's lossy link. The relay moves
the bytes over HTTPS (TCP) instead, without giving the server the picture:

* the booth encrypts the JPEG with a fresh AES-256-GCM key and announces the still on the
  data channel with a one-time relay token, the key and the nonce (``still_offer.relay``);
* the booth uploads the ciphertext (``POST /api/booth/sessions/{session}/stills/relay/{token}``,
  booth credentials) and the staff member's page downloads it (``GET
  /api/sessions/{session}/stills/relay/{token}``, staff login), whichever comes first waiting
  for the other up to ``wait_s``;
* the relay pairs the two by token and copies the upload into the download as it arrives,
  a chunk at a time: nothing is stored, and memory per transfer is one chunk plus socket
  buffers. The upload answers only when the download has taken every byte.

Both ends must belong to the same live call session (checked by the handlers against the
database before they reach the relay). A token pairs once; a used or unknown token that
finds no partner is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CHUNK_BYTES: Final = 64 * 1024
MAX_STILL_CIPHERTEXT: Final = 64 * 1024 * 1024 + 16  # shared.protocol.StillOffer.size + tag


class RelayRefusal(enum.Enum):
    """Why the relay turned an end away (the handler maps it to an HTTP status)."""

    BUSY = "busy"  # too many transfers waiting
    TAKEN = "taken"  # this end of the token is already connected, or the token was used
    SESSION_MISMATCH = "session_mismatch"  # the other end named another session
    NO_PARTNER = "no_partner"  # the other end did not come within wait_s
    PARTNER_GONE = "partner_gone"  # the other end left mid-transfer
    TOO_LARGE = "too_large"


class RelayRefused(Exception):
    def __init__(self, refusal: RelayRefusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(eq=False)
class _Slot:
    session_id: str
    created: float
    size: asyncio.Future[int] = field(default_factory=asyncio.Future)
    sink: asyncio.Future[Callable[[bytes], Awaitable[None]]] = field(default_factory=asyncio.Future)
    done: asyncio.Future[int] = field(default_factory=asyncio.Future)
    uploading: bool = False
    downloading: bool = False


class StillRelay:
    """Pairs still uploads with downloads by one-time token. One per console process."""

    def __init__(self, *, wait_s: float = 20.0, max_slots: int = 256) -> None:
        self.wait_s = wait_s
        self._max_slots = max_slots
        self._slots: dict[str, _Slot] = {}
        self._used: OrderedDict[str, float] = OrderedDict()  # token → when used
        self.relayed = 0  # stills relayed completely
        self.bytes_relayed = 0

    @property
    def waiting(self) -> int:
        return len(self._slots)

    def _slot(self, token: str, session_id: str) -> _Slot:
        self._forget_used()
        if token in self._used:
            raise RelayRefused(RelayRefusal.TAKEN, "this relay token was already used")
        slot = self._slots.get(token)
        if slot is None:
            if len(self._slots) >= self._max_slots:
                raise RelayRefused(RelayRefusal.BUSY, "too many stills waiting; try again")
            slot = _Slot(session_id, time.monotonic())
            self._slots[token] = slot
        elif slot.session_id != session_id:
            raise RelayRefused(RelayRefusal.SESSION_MISMATCH, "the token is of another session")
        return slot

    def _forget_used(self) -> None:
        horizon = time.monotonic() - 3600
        while self._used and next(iter(self._used.values())) < horizon:
            self._used.popitem(last=False)
        while len(self._used) > 100_000:
            self._used.popitem(last=False)

    def _retire(self, token: str, slot: _Slot) -> None:
        if self._slots.get(token) is slot:
            del self._slots[token]
            self._used[token] = time.monotonic()

    async def claim_upload(self, token: str, session_id: str, size: int) -> RelayUpload:
        """Announce an upload of ``size`` bytes and wait for the staff download of ``token``;
        then :meth:`RelayUpload.copy` the body. (The booth sends ``Expect: 100-continue``:
        its body starts only once the download is there, so a refusal is a clean answer.)"""
        if size > MAX_STILL_CIPHERTEXT:
            raise RelayRefused(RelayRefusal.TOO_LARGE, "the still is too large")
        slot = self._slot(token, session_id)
        if slot.uploading:
            raise RelayRefused(RelayRefusal.TAKEN, "this still is already being uploaded")
        slot.uploading = True
        slot.size.set_result(size)
        try:
            sink = await self._partner(slot.sink, "staff did not fetch the still in time")
        except BaseException:
            _settle(slot.done, slot.downloading, None, "the booth stopped sending")
            self._retire(token, slot)
            raise
        return RelayUpload(self, token, slot, size, sink)

    async def upload(
        self, token: str, session_id: str, size: int, body: AsyncIterator[bytes]
    ) -> int:
        """:meth:`claim_upload` and copy ``body``; the bytes copied."""
        claimed = await self.claim_upload(token, session_id, size)
        return await claimed.copy(body)

    def _copied(self, token: str, slot: _Slot, copied: int | None) -> None:
        self._retire(token, slot)
        if copied is None:
            _settle(slot.done, slot.downloading, None, "the booth stopped sending")
            return
        _settle(slot.done, True, copied, "")
        self.relayed += 1
        self.bytes_relayed += copied

    async def _partner(self, future: asyncio.Future[_T], why: str) -> _T:
        try:
            async with asyncio.timeout(self.wait_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise RelayRefused(RelayRefusal.NO_PARTNER, why) from None

    @contextlib.asynccontextmanager
    async def download(self, token: str, session_id: str) -> AsyncIterator[_Download]:
        """Wait for the upload of ``token``; yields its size and a way to take the bytes."""
        slot = self._slot(token, session_id)
        if slot.downloading:
            raise RelayRefused(RelayRefusal.TAKEN, "this still is already being fetched")
        slot.downloading = True
        try:
            size = await self._partner(slot.size, "the booth did not send the still in time")
            yield _Download(slot, size)
        finally:
            _settle(slot.sink, slot.uploading, None, "staff stopped reading")
            if not slot.uploading:
                self._retire(token, slot)


def _settle(future: asyncio.Future[_T], awaited: bool, result: _T | None, why: str) -> None:
    """Resolve ``future`` once: with ``result``, or as PARTNER_GONE when someone awaits it
    (else cancelled, so that no exception is left unretrieved)."""
    if future.done():
        return
    if result is not None:
        future.set_result(result)
    elif awaited:
        future.set_exception(RelayRefused(RelayRefusal.PARTNER_GONE, why))
    else:
        future.cancel()


async def _copy(
    body: AsyncIterator[bytes], size: int, sink: Callable[[bytes], Awaitable[None]]
) -> int:
    copied = 0
    try:
        async for chunk in body:
            copied += len(chunk)
            if copied > size:
                raise RelayRefused(RelayRefusal.TOO_LARGE, "more bytes than announced")
            await sink(chunk)
    except ConnectionError as err:
        raise RelayRefused(RelayRefusal.PARTNER_GONE, "staff stopped reading") from err
    if copied != size:
        raise RelayRefused(RelayRefusal.PARTNER_GONE, "the upload ended early")
    return copied


@dataclass
class RelayUpload:
    """The booth end of a paired transfer."""

    _relay: StillRelay
    _token: str
    _slot: _Slot
    size: int
    _sink: Callable[[bytes], Awaitable[None]]

    async def copy(self, body: AsyncIterator[bytes]) -> int:
        """Copy ``body`` (exactly ``size`` bytes) to the download; RelayRefused otherwise."""
        copied: int | None = None
        try:
            copied = await _copy(body, self.size, self._sink)
            return copied
        finally:
            self._relay._copied(self._token, self._slot, copied)


@dataclass
class _Download:
    """The staff end of a paired transfer."""

    _slot: _Slot
    size: int

    async def run(self, sink: Callable[[bytes], Awaitable[None]]) -> int:
        """Receive every byte through ``sink``; the count, or RelayRefused(PARTNER_GONE)."""
        self._slot.sink.set_result(sink)
        return await self._slot.done
