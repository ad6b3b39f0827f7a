"""The console's still relay on a real console server (migrated, seeded SQLite), with the
booth's real HTTP client: a sealed still goes booth → relay → staff and opens only with the
key of the offer; strangers, other sessions, reused tokens and lone ends are refused; a
failed relay falls back to the data channel with the same still. Also the booth API's
card read record for the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from booth.console_client import ConsoleClient, ConsoleUnavailable
from booth.document_camera import DocumentStill
from booth.document_still import DocumentStillFlow
from shared import wire
from shared.errors import AuthError
from shared.protocol import Model, StillDone, StillOffer, StillRequest
from shared.security import open_still, seal_still
from shared.store.models import AuditRecord, CallSession
from shared.store.seed import upsert_booth
from tests.test_console_auth import Console, _login, _start
from tests.test_still_save import _sato_session

BOOTH_CREDENTIAL = "x" * 32  # tests.test_still_save._sato_session


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in _start(tmp_path, still_relay_wait_s=1.5):
        yield c


@pytest.fixture
async def sato(console: Console) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        resp = await _login(http, console, "sato")
        assert resp.status == 303
        yield http


@pytest.fixture
async def booth(console: Console) -> AsyncIterator[ConsoleClient]:
    client = ConsoleClient(console.base, "seiseki-1", BOOTH_CREDENTIAL, timeout_s=20)
    yield client
    await client.aclose()


def _jpeg() -> bytes:
    """A noisy JPEG of about 300 KB (several relay chunks)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (500, 500, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


async def _download(
    http: aiohttp.ClientSession, console: Console, session_id: str, token: str
) -> tuple[int, bytes]:
    url = f"{console.base}/api/sessions/{session_id}/stills/relay/{token}"
    async with http.get(url) as resp:
        return resp.status, await resp.read()


async def test_a_sealed_still_reaches_the_staff_member_and_opens_with_the_offer_key(
    console: Console, sato: aiohttp.ClientSession, booth: ConsoleClient
) -> None:
    session_id = await _sato_session(console)
    jpeg = _jpeg()
    for staff_first in (True, False):
        sealed = seal_still(jpeg)
        token = secrets.token_hex(32)
        download = asyncio.create_task(_download(sato, console, session_id, token))
        if staff_first:
            await asyncio.sleep(0.3)
        relayed = await booth.upload_still(session_id, token, sealed.ciphertext)
        status, body = await download
        assert status == 200
        assert relayed == len(sealed.ciphertext) == len(jpeg) + 16
        # The server carried only ciphertext: the JPEG is not in it, the key opens it.
        assert body == sealed.ciphertext and jpeg[:64] not in body
        opened = open_still(body, sealed.key_b64, sealed.nonce_b64)
        assert hashlib.sha256(opened).digest() == hashlib.sha256(jpeg).digest()
        # A wrong key or one changed byte does not open.
        with pytest.raises(AuthError):
            open_still(body, seal_still(b"other").key_b64, sealed.nonce_b64)
        with pytest.raises(AuthError):
            open_still(body[:-1] + bytes([body[-1] ^ 1]), sealed.key_b64, sealed.nonce_b64)

        # The token is spent: neither end can use it again.
        with pytest.raises(ConsoleUnavailable) as refused:
            await booth.upload_still(session_id, token, sealed.ciphertext)
        assert (refused.value.status, refused.value.code) == (409, "taken")
        assert (await _download(sato, console, session_id, token))[0] == 409


async def test_strangers_other_sessions_and_lone_ends_are_refused(
    console: Console, sato: aiohttp.ClientSession, booth: ConsoleClient
) -> None:
    session_id = await _sato_session(console)
    sealed = seal_still(_jpeg())
    token = secrets.token_hex(32)

    # Wrong booth credential: 401, and the staff member waiting gets nothing.
    impostor = ConsoleClient(console.base, "seiseki-1", "y" * 32, timeout_s=10)
    try:
        download = asyncio.create_task(_download(sato, console, session_id, token))
        with pytest.raises(ConsoleUnavailable) as refused:
            await impostor.upload_still(session_id, token, sealed.ciphertext)
        assert refused.value.status == 401
        status, body = await download
        assert status == 504 and b"no_partner" in body
    finally:
        await impostor.aclose()

    # Another booth, with its own good credential, is not in this session.
    await upsert_booth(console.sessions, "tamacenter-1", "tamacenter", "多摩センター 1", "z" * 32)
    other = ConsoleClient(console.base, "tamacenter-1", "z" * 32, timeout_s=10)
    try:
        with pytest.raises(ConsoleUnavailable) as refused:
            await other.upload_still(session_id, secrets.token_hex(32), sealed.ciphertext)
        assert (refused.value.status, refused.value.code) == (403, "not_your_session")
    finally:
        await other.aclose()

    # Another staff member cannot fetch from sato's session.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as suzuki:
        assert (await _login(suzuki, console, "suzuki")).status == 303
        status, body = await _download(suzuki, console, session_id, secrets.token_hex(32))
        assert status == 403 and b"not_your_session" in body

    # Not signed in at all.
    async with aiohttp.ClientSession() as anonymous:
        assert (await _download(anonymous, console, session_id, secrets.token_hex(32)))[0] == 401

    # The booth alone: nobody fetches within the wait → 504, and the token is spent.
    lone = secrets.token_hex(32)
    with pytest.raises(ConsoleUnavailable) as refused:
        await booth.upload_still(session_id, lone, sealed.ciphertext)
    assert (refused.value.status, refused.value.code) == (504, "no_partner")
    assert (await _download(sato, console, session_id, lone))[0] == 409

    # After the call ended, neither end is accepted.
    async with console.sessions() as db, db.begin():
        await db.execute(
            update(CallSession)
            .where(CallSession.id == session_id)
            .values(ended_at=CallSession.accepted_at)
        )
    with pytest.raises(ConsoleUnavailable) as refused:
        await booth.upload_still(session_id, secrets.token_hex(32), sealed.ciphertext)
    assert refused.value.status == 403
    assert (await _download(sato, console, session_id, secrets.token_hex(32)))[0] == 403


async def test_staff_leaving_mid_transfer_fails_the_upload(
    console: Console, sato: aiohttp.ClientSession, booth: ConsoleClient
) -> None:
    session_id = await _sato_session(console)
    big = secrets.token_bytes(24 * 1024 * 1024)  # more than the sockets buffer
    token = secrets.token_hex(32)
    url = f"{console.base}/api/sessions/{session_id}/stills/relay/{token}"

    async def read_a_little_and_leave() -> int:
        async with sato.get(url) as resp:
            assert resp.status == 200 and resp.content_length == len(big)
            first = await resp.content.readexactly(256 * 1024)
            resp.close()
            return len(first)

    leaving = asyncio.create_task(read_a_little_and_leave())
    with pytest.raises(ConsoleUnavailable) as refused:
        await booth.upload_still(session_id, token, big)
    # The console answers 502 partner_gone and closes at once; the booth, still sending,
    # may see only the closed connection. Either way the upload failed (and falls back).
    assert (refused.value.status, refused.value.code) in ((502, "partner_gone"), (0, "unreachable"))
    assert await leaving == 256 * 1024


class RecordingChannel:
    """The call's data channel as DocumentStillFlow sees it, recording what it sends."""

    def __init__(self, session_id: str) -> None:
        self.session_id: str | None = session_id
        self.messages: list[Model] = []
        self.frames: list[bytes] = []
        self.sent_something = asyncio.Event()

    def send_peer_data(self, message: Model) -> bool:
        self.messages.append(wire.decode(wire.peer_data, wire.encode(message)))
        self.sent_something.set()
        return True

    def send_peer_bytes(self, data: bytes) -> bool:
        self.frames.append(data)
        return True

    async def drain_peer_data(self, below: int) -> bool:
        return True


class OneStillCamera:
    def __init__(self, jpeg: bytes) -> None:
        self.jpeg = jpeg

    async def still(self) -> DocumentStill:
        return DocumentStill(self.jpeg, 500, 500)


async def _take_one(
    camera: OneStillCamera, console: ConsoleClient, channel: RecordingChannel
) -> DocumentStillFlow:
    idle = asyncio.Event()
    flow = DocumentStillFlow(
        lambda: camera,  # type: ignore[arg-type, return-value]
        console=console,
        on_change=lambda: None if flow.busy else idle.set(),
    )
    flow.attach(channel)
    await flow.on_peer_data(StillRequest(request_id="still-1"))
    async with asyncio.timeout(30):
        await idle.wait()
    return flow


async def test_the_booth_relays_a_still_and_falls_back_to_the_data_channel(
    console: Console, sato: aiohttp.ClientSession, booth: ConsoleClient
) -> None:
    session_id = await _sato_session(console)
    jpeg = _jpeg()
    camera = OneStillCamera(jpeg)

    # Relay: one offer with a ticket, no frames; staff fetch and open it.
    channel = RecordingChannel(session_id)
    fetched: list[bytes] = []

    async def staff_fetches() -> None:
        async with asyncio.timeout(10):
            await channel.sent_something.wait()
        offer = channel.messages[0]
        assert isinstance(offer, StillOffer) and offer.relay is not None
        status, body = await _download(sato, console, session_id, offer.relay.token)
        assert status == 200
        fetched.append(open_still(body, offer.relay.key, offer.relay.nonce))

    flow, _ = await asyncio.gather(_take_one(camera, booth, channel), staff_fetches())
    assert fetched == [jpeg] and channel.frames == []
    assert len(channel.messages) == 1
    assert (flow.sent, flow.relayed) == (1, 1)
    await flow.aclose()

    # Nobody fetches (an older console page): the relay gives up, the same still follows on
    # the data channel under the same still id, complete.
    channel = RecordingChannel(session_id)
    flow = await _take_one(camera, booth, channel)
    first, second = channel.messages[0], channel.messages[1]
    assert isinstance(first, StillOffer) and first.relay is not None
    assert isinstance(second, StillOffer) and second.relay is None
    assert second.still_id == first.still_id and second.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert isinstance(channel.messages[-1], StillDone)
    assembled = b"".join(frame[20:] for frame in channel.frames)
    assert assembled == jpeg
    assert (flow.sent, flow.relayed) == (1, 0)
    await flow.aclose()


async def test_the_booth_records_a_card_read_in_the_audit_log(
    console: Console, booth: ConsoleClient
) -> None:
    """card_data_read: the booth of the live session only; the request id, no facts."""
    session_id = await _sato_session(console)
    await booth.record_card_read(session_id, "card-1")
    await upsert_booth(console.sessions, "tamacenter-1", "tamacenter", "多摩センター 1", "z" * 32)
    other = ConsoleClient(console.base, "tamacenter-1", "z" * 32, timeout_s=10)
    try:
        with pytest.raises(ConsoleUnavailable) as refused:
            await other.record_card_read(session_id, "card-2")
        assert (refused.value.status, refused.value.code) == (403, "not_your_session")
    finally:
        await other.aclose()
    async with console.sessions() as db, db.begin():
        await db.execute(
            update(CallSession)
            .where(CallSession.id == session_id)
            .values(ended_at=CallSession.accepted_at)
        )
    with pytest.raises(ConsoleUnavailable) as refused:
        await booth.record_card_read(session_id, "card-3")
    assert refused.value.status == 403
    async with console.sessions() as db:
        rows = (
            await db.scalars(select(AuditRecord).where(AuditRecord.action == "card_data_read"))
        ).all()
    assert [(r.staff_id, r.booth_id, r.session_id, r.object_id) for r in rows] == [
        ("sato", "seiseki-1", session_id, "card-1")
    ]
