"""保存 of a document still: POST /api/sessions/{id}/stills on a real console server with a
migrated, seeded SQLite file. Only the staff member of the session may store a still, and
only bytes that match the announced SHA-256 are kept."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.store.models import AuditRecord, CallSession, DocumentStill, HelpRequest
from shared.store.seed import upsert_booth
from tests.test_console_auth import Console, _login, _start


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in _start(tmp_path):
        yield c


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("L", (640, 452), 200).save(out, "JPEG", quality=90)
    return out.getvalue()


async def _sato_session(console: Console) -> str:
    await upsert_booth(console.sessions, "seiseki-1", "seiseki", "聖蹟桜ヶ丘 1番ブース", "x" * 32)
    async with console.sessions() as db, db.begin():
        db.add(HelpRequest(id="req-1", booth_id="seiseki-1", department="shimin", language="ja"))
        await db.flush()
        db.add(
            CallSession(
                id="sess-sato",
                request_id="req-1",
                booth_id="seiseki-1",
                staff_id="sato",
                department="shimin",
                language="ja",
            )
        )
    return "sess-sato"


async def _counts(console: Console) -> tuple[int, int]:
    async with console.sessions() as db:
        stills = await db.scalar(select(func.count()).select_from(DocumentStill))
        audits = await db.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "still_saved")
        )
    return int(stills or 0), int(audits or 0)


async def _post(
    http: aiohttp.ClientSession, console: Console, session_id: str, body: bytes, sha: str
) -> tuple[int, dict[str, object]]:
    async with http.post(
        f"{console.base}/api/sessions/{session_id}/stills",
        data=body,
        headers={
            "Origin": console.origin,
            "Content-Type": "image/jpeg",
            "X-Still-SHA256": sha,
        },
    ) as resp:
        return resp.status, await resp.json()


async def test_only_the_sessions_staff_member_stores_a_matching_still(console: Console) -> None:
    session_id = await _sato_session(console)
    jpeg = _jpeg()
    sha = hashlib.sha256(jpeg).hexdigest()
    jar = aiohttp.CookieJar(unsafe=True)

    # Not signed in: 401.
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        status, _ = await _post(http, console, session_id, jpeg, sha)
        assert status == 401

    # Another HQ staff member (suzuki) cannot store into sato's session.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await _login(http, console, "suzuki")).status == 303
        status, body = await _post(http, console, session_id, jpeg, sha)
        assert (status, body["error"]) == (403, "not_your_session")
        status, body = await _post(http, console, "no-such-session", jpeg, sha)
        assert status == 403
    assert await _counts(console) == (0, 0)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await _login(http, console, "sato")).status == 303
        # Bytes that do not match the SHA-256 (one byte changed): 400, nothing stored.
        corrupted = bytearray(jpeg)
        corrupted[len(corrupted) // 2] ^= 0xFF
        status, body = await _post(http, console, session_id, bytes(corrupted), sha)
        assert (status, body["error"]) == (400, "sha256_mismatch")
        status, body = await _post(http, console, session_id, jpeg, "0" * 64)
        assert (status, body["error"]) == (400, "sha256_mismatch")
        status, body = await _post(http, console, session_id, jpeg, "not-a-digest")
        assert (status, body["error"]) == (400, "bad_sha256")
        assert await _counts(console) == (0, 0)

        # The staff member of the session, matching bytes: one still, one audit record.
        status, body = await _post(http, console, session_id, jpeg, sha)
        assert status == 201, body
        still_id = body["id"]
    async with console.sessions() as db:
        stored = (await db.scalars(select(DocumentStill))).all()
        audit = (
            await db.scalars(select(AuditRecord).where(AuditRecord.action == "still_saved"))
        ).all()
    assert len(stored) == 1 and len(audit) == 1
    assert stored[0].id == still_id and stored[0].session_id == session_id
    assert stored[0].staff_id == "sato" and stored[0].mime == "image/jpeg"
    assert stored[0].data == jpeg and stored[0].size == len(jpeg) and stored[0].sha256 == sha
    record = audit[0]
    assert (record.staff_id, record.action, record.session_id, record.object_id) == (
        "sato",
        "still_saved",
        session_id,
        still_id,
    )
    assert record.booth_id == "seiseki-1"
    assert json.loads(record.detail) == {"sha256": sha, "size": len(jpeg)}
