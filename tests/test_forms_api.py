"""The console's forms API on a real console server with a migrated, seeded SQLite file:
templates by department, drafts only by the session's staff member, validation, revisions
shown at the booth, and the signed application PDF with its audit record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, update

from hq_console.forms_api import DraftState, purge_form_drafts
from shared.store.models import Application, AuditRecord, CallSession, FormDraft, HelpRequest
from shared.store.seed import upsert_booth
from tests.test_console_auth import Console, _login, _start

FORM = "juminhyo-request"
APPLICANT = "𠮷田　花子"
SUBJECT = "髙橋　一郎"
VALUES: dict[str, str | bool] = {
    "applicant_name": APPLICANT,
    "applicant_kana": "よしだ　はなこ",  # hiragana: stored as katakana
    "applicant_birth_date": "S60.4.1",
    "applicant_address": "東京都多摩市関戸六丁目12番地1　聖蹟桜ヶ丘ハイツ305",
    "applicant_phone": "０４２－３７５－８１１１",
    "relationship": "household",
    "subject_name": SUBJECT,
    "scope": "person",
    "copies": "2",
    "purpose": "employment",
    "confirmed": True,
}
SIGNATURE: dict[str, Any] = {
    "strokes": [
        [{"x": 0.1 + i * 0.02, "y": 0.5 + (i % 5) * 0.05, "t": i * 16} for i in range(30)],
        [{"x": 0.7, "y": 0.3, "t": 900}, {"x": 0.75, "y": 0.7, "t": 950}],
    ],
    "pad_aspect_ratio": 3.0,
}


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in _start(tmp_path):
        yield c


async def _call(
    console: Console, session_id: str, staff_id: str = "sato", *, department: str = "shimin"
) -> str:
    await upsert_booth(console.sessions, "seiseki-1", "seiseki", "聖蹟桜ヶ丘 1番ブース", "x" * 32)
    async with console.sessions() as db, db.begin():
        db.add(
            HelpRequest(
                id=f"req-{session_id}", booth_id="seiseki-1", department=department, language="ja"
            )
        )
        await db.flush()
        db.add(
            CallSession(
                id=session_id,
                request_id=f"req-{session_id}",
                booth_id="seiseki-1",
                staff_id=staff_id,
                department=department,
                language="ja",
            )
        )
    return session_id


async def _signed_in(console: Console, login: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    assert (await _login(http, console, login)).status == 303
    return http


async def _send(
    http: aiohttp.ClientSession, console: Console, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with http.request(
        method,
        console.base + path,
        json=body,
        headers={"Origin": console.origin},
    ) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.read()


def _draft_path(session_id: str, form_id: str = FORM) -> str:
    return f"/api/sessions/{session_id}/forms/{form_id}/draft"


async def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    """The PDF's text layer as a reader extracts it, without white space."""
    path = tmp_path / "application.pdf"
    path.write_bytes(pdf)
    process = await asyncio.create_subprocess_exec(
        "pdftotext", "-raw", "-enc", "UTF-8", str(path), "-", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return _squash(out.decode())


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


async def _drafts(console: Console) -> list[FormDraft]:
    async with console.sessions() as db:
        return list((await db.scalars(select(FormDraft))).all())


async def test_forms_of_the_staff_members_departments_call_department_first(
    console: Console,
) -> None:
    session_id = await _call(console, "sess-hoken", department="hoken")
    http = await _signed_in(console, "sato")  # shimin + hoken
    try:
        status, body = await _send(http, console, "GET", "/api/forms")
        assert status == 200
        departments = {f["department"] for f in body["forms"]}
        assert departments == {"shimin", "hoken"}
        assert "jidou-teate" not in {f["id"] for f in body["forms"]}
        status, body = await _send(http, console, "GET", f"/api/forms?session_id={session_id}")
        assert status == 200 and body["department"] == "hoken"
        assert body["forms"][0]["id"] == "kokuho-shikaku"

        status, template = await _send(http, console, "GET", f"/api/forms/{FORM}")
        assert status == 200
        fields = {f["id"]: f for f in template["fields"]}
        assert fields["applicant_name"]["label_ja"] == "氏名"
        assert fields["applicant_name"]["card"] == "name"
        assert fields["applicant_name"]["help_ja"].startswith("マイナンバーカード")
        assert [o["ja"] for o in fields["scope"]["options"]] == [
            "本人のみ",
            "世帯全員",
            "世帯の一部",
        ]
        status, body = await _send(http, console, "GET", "/api/forms/jidou-teate")
        assert (status, body["error"]) == (403, "forbidden")  # 子育て支援課: not sato's
        status, body = await _send(http, console, "GET", "/api/forms/no-such-form")
        assert (status, body["error"]) == (404, "unknown_form")
    finally:
        await http.close()


async def test_drafts_only_by_the_staff_member_of_a_live_session(console: Console) -> None:
    session_id = await _call(console, "sess-sato")
    suzuki = await _signed_in(console, "suzuki")
    sato = await _signed_in(console, "sato")
    try:
        draft = {"values": {"applicant_name": APPLICANT, "applicant_kana": "ヨシダ"}}
        status, body = await _send(suzuki, console, "PUT", _draft_path(session_id), draft)
        assert (status, body["error"]) == (403, "not_your_session")
        assert await _drafts(console) == []

        async with aiohttp.ClientSession() as anonymous:
            status, _ = await _send(anonymous, console, "PUT", _draft_path(session_id), draft)
            assert status == 401

        status, body = await _send(sato, console, "PUT", _draft_path(session_id), draft)
        assert status == 200 and body["saved"] is True
        assert body["errors"] == []  # a draft: missing required values are not errors yet
        draft["values"]["applicant_kana"] = "ヨシダ　ハナコ"
        status, body = await _send(sato, console, "PUT", _draft_path(session_id), draft)
        assert status == 200
        stored = await _drafts(console)
        assert len(stored) == 1 and stored[0].staff_id == "sato"
        assert DraftState.from_json(stored[0].values).values == draft["values"]
        status, body = await _send(sato, console, "GET", _draft_path(session_id))
        assert status == 200 and body["values"] == draft["values"] and body["revision"] == 0
        status, body = await _send(suzuki, console, "GET", _draft_path(session_id))
        assert status == 403

        # The call ends: no more typing into its draft.
        async with console.sessions() as db, db.begin():
            await db.execute(
                update(CallSession)
                .where(CallSession.id == session_id)
                .values(ended_at=datetime.now(UTC))
            )
        status, body = await _send(sato, console, "PUT", _draft_path(session_id), draft)
        assert (status, body["error"]) == (409, "session_ended")
    finally:
        await suzuki.close()
        await sato.close()


async def test_validation_gives_japanese_and_english_errors_and_normal_values(
    console: Console,
) -> None:
    http = await _signed_in(console, "sato")
    try:
        status, body = await _send(
            http,
            console,
            "POST",
            f"/api/forms/{FORM}/validate",
            {
                "values": {
                    "applicant_kana": "山田",
                    "applicant_birth_date": "平成31年5月1日",
                    "applicant_phone": "12345",
                    "copies": "２",
                }
            },
        )
        assert status == 200 and body["ok"] is False
        errors = {e["field_id"]: e for e in body["errors"]}
        assert errors["applicant_kana"]["message_ja"] == (
            "フリガナはカタカナで入力してください（使えない文字: 山田）。"
        )
        assert errors["applicant_kana"]["message_en"].startswith("Furigana must be")
        assert errors["applicant_phone"]["message_ja"].startswith("電話番号は0から始まる")
        assert errors["applicant_name"]["message_ja"] == "「氏名」は必須です。入力してください。"
        # 平成31年5月1日 is 令和元年5月1日; shown in both calendars.
        assert body["values"]["applicant_birth_date"] == "令和元年5月1日"
        assert body["display"]["applicant_birth_date"]["ja"] == "令和元年5月1日（2019年5月1日）"
        assert body["values"]["copies"] == "2"

        status, body = await _send(
            http,
            console,
            "POST",
            f"/api/forms/{FORM}/validate",
            {"values": {"applicant_kana": "ｶﾀｶﾅ"}, "complete": False},
        )
        assert (
            status == 200 and body["ok"] is True and body["values"]["applicant_kana"] == "カタカナ"
        )
        status, body = await _send(
            http, console, "POST", f"/api/forms/{FORM}/validate", {"values": ["x"]}
        )
        assert (status, body["error"]) == (400, "bad_values")
    finally:
        await http.close()


async def test_submit_stores_the_signed_pdf_audits_identifiers_and_deletes_the_draft(
    console: Console, tmp_path: Path
) -> None:
    session_id = await _call(console, "sess-sato")
    sato = await _signed_in(console, "sato")
    suzuki = await _signed_in(console, "suzuki")
    base = f"/api/sessions/{session_id}/forms/{FORM}"
    try:
        # Showing a form with refused values is refused.
        status, body = await _send(
            sato, console, "POST", base + "/show", {"values": {"applicant_kana": "山田"}}
        )
        assert status == 422 and body["errors"][0]["field_id"] == "applicant_kana"

        # Revision 1: incomplete (no purpose); revision 2 after the correction.
        first = {k: v for k, v in VALUES.items() if k != "purpose"}
        status, body = await _send(sato, console, "POST", base + "/show", {"values": first})
        assert status == 200 and body["revision"] == 1 and body["complete"] is False
        assert body["errors"][0]["field_id"] == "purpose"
        message = body["message"]
        assert message["type"] == "form_show" and message["revision"] == 1
        items = {i["field_id"]: i for s in message["sections"] for i in s["items"]}
        assert items["applicant_name"]["value_ja"] == APPLICANT
        assert items["applicant_kana"]["value_ja"] == "ヨシダ　ハナコ"
        assert items["applicant_birth_date"]["value_ja"] == "昭和60年4月1日（1985年4月1日）"
        assert items["applicant_birth_date"]["value_en"] == "1 April 1985 (Showa 60)"

        status, body = await _send(sato, console, "POST", base + "/show", {"values": VALUES})
        assert status == 200 and body["revision"] == 2 and body["complete"] is True

        submit: dict[str, Any] = {"values": VALUES, "revision": 1, "signature": SIGNATURE}
        # A signature made on revision 1 is worth nothing once revision 2 was shown.
        status, body = await _send(sato, console, "POST", base + "/applications", submit)
        assert (status, body["error"]) == (409, "stale_revision")
        # Values that differ from what the resident saw are refused.
        submit["revision"] = 2
        submit["values"] = {**VALUES, "copies": "3"}
        status, body = await _send(sato, console, "POST", base + "/applications", submit)
        assert (status, body["error"]) == (409, "values_changed")
        # Another staff member cannot submit into this session.
        submit["values"] = VALUES
        status, body = await _send(suzuki, console, "POST", base + "/applications", submit)
        assert (status, body["error"]) == (403, "not_your_session")
        # An empty signature is no signature.
        status, body = await _send(
            sato,
            console,
            "POST",
            base + "/applications",
            {**submit, "signature": {"strokes": [], "pad_aspect_ratio": 3}},
        )
        assert (status, body["error"]) == (400, "bad_signature")
        async with console.sessions() as db:
            assert await db.scalar(select(func.count()).select_from(Application)) == 0

        status, body = await _send(sato, console, "POST", base + "/applications", submit)
        assert status == 201, body
        application_id = body["id"]
        assert body["pdf_url"] == f"/api/applications/{application_id}/pdf"
        assert body["receipt_number"].replace("-", "") == application_id[:12].upper()

        # Submitting again: the draft (and its revision) is gone.
        status, again = await _send(sato, console, "POST", base + "/applications", submit)
        assert (status, again["error"]) == (409, "not_shown")
        assert await _drafts(console) == []

        async with console.sessions() as db:
            row = await db.get(Application, application_id)
            audits = (
                await db.scalars(
                    select(AuditRecord).where(AuditRecord.action == "application_submitted")
                )
            ).all()
        assert row is not None
        assert (row.session_id, row.booth_id, row.staff_id, row.form_id) == (
            session_id,
            "seiseki-1",
            "sato",
            FORM,
        )
        assert row.sha256 == body["sha256"] == hashlib.sha256(row.pdf).hexdigest()
        assert row.submitted_at is not None

        text = await _pdf_text(row.pdf, tmp_path)
        for expected in (APPLICANT, SUBJECT, "ヨシダ　ハナコ", "昭和60年4月1日", "042-375-8111"):
            assert _squash(expected) in text, expected
        assert application_id in text

        assert len(audits) == 1
        record = audits[0]
        assert (record.staff_id, record.booth_id, record.session_id, record.object_id) == (
            "sato",
            "seiseki-1",
            session_id,
            application_id,
        )
        detail = json.loads(record.detail)
        assert detail == {
            "form_id": FORM,
            "form_version": 1,
            "revision": 2,
            "sha256": row.sha256,
            "size": len(row.pdf),
        }
        everything = json.dumps(
            [getattr(record, c.key) for c in AuditRecord.__table__.columns], default=str
        )
        for personal in ("𠮷田", "髙橋", "ヨシダ", "関戸", "375"):
            assert personal not in everything

        # The PDF: the session's staff member only.
        status, pdf = await _send(sato, console, "GET", body["pdf_url"])
        assert status == 200 and pdf == row.pdf
        status, _ = await _send(suzuki, console, "GET", body["pdf_url"])
        assert status == 404
    finally:
        await sato.close()
        await suzuki.close()


async def test_drafts_left_behind_are_purged_after_the_retention(console: Console) -> None:
    ended = await _call(console, "sess-ended")
    live = await _call(console, "sess-live")
    http = await _signed_in(console, "sato")
    try:
        for session_id in (ended, live):
            status, _ = await _send(
                http, console, "PUT", _draft_path(session_id), {"values": {"applicant_kana": "ア"}}
            )
            assert status == 200
    finally:
        await http.close()
    now = datetime.now(UTC)
    async with console.sessions() as db, db.begin():
        await db.execute(
            update(CallSession)
            .where(CallSession.id == ended)
            .values(ended_at=now - timedelta(hours=1))
        )
    assert await purge_form_drafts(console.sessions, retention_s=7200, stale_s=86400) == 0
    assert await purge_form_drafts(console.sessions, retention_s=1800, stale_s=86400) == 1
    assert [d.session_id for d in await _drafts(console)] == [live]
    later = now + timedelta(days=2)
    assert await purge_form_drafts(console.sessions, retention_s=1800, stale_s=86400, now=later)
    assert await _drafts(console) == []
