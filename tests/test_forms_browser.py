"""書かない窓口 end to end in Debian's Chromium: the console's form panel and the booth's
kiosk page, against real signaling, the real console (SQLite through migrations) and the
real booth agent with its simulated card reader.

The staff member takes the call, reads the card, fills the form from the card's facts and
the interview (inline checks, 和暦 and 西暦), shows it at the booth; the resident asks for
a correction by touch, the staff member corrects and shows it again; the resident signs
with strokes on the signature pad and presses 確定; the console shows the signature and
申請を確定 stores the application PDF, whose text layer carries the name."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
from playwright.async_api import Page, Playwright, expect
from sqlalchemy import select

from booth.call import CallState
from hq_console.app import STATIC_DIR
from shared.store.db import session_factory
from shared.store.models import Application, AuditRecord, FormDraft
from tests.signaling_support import open_engine
from tests.test_console_browser import (
    SentFrames,
    System,
    _answer_ringing_offer,
    _chromium,
    _resident_asks_for_help,
    _sign_in_hq,
    _start_taking_calls,
    eventually,
    pytestmark,
    system,
)
from tests.test_console_browser import playwright as playwright

__all__ = ["playwright", "pytestmark", "system"]

CARD_NAME = "髙橋 𠮷子"  # the simulated card reader's resident
CARD_ADDRESS = "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号"


async def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "application.pdf"
    path.write_bytes(pdf)
    process = await asyncio.create_subprocess_exec(
        "pdftotext", "-raw", "-enc", "UTF-8", str(path), "-", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return re.sub(r"\s+", "", out.decode())


async def _read_card(page: Page, kiosk: Page) -> None:
    read = page.get_by_role("button", name="カード読み取り")
    await expect(read).to_be_enabled(timeout=10_000)
    await read.click()
    await expect(kiosk.locator("body")).to_have_attribute("data-card", "waiting_for_pin")
    for digit in "1234":
        await kiosk.locator(f'.pin-key[data-digit="{digit}"]').click()
    await kiosk.get_by_role("button", name="確定").click()
    await expect(page.locator("#card-name")).to_have_text(CARD_NAME, timeout=10_000)
    await kiosk.get_by_role("button", name="閉じる").click()


async def _sign(kiosk: Page) -> None:
    """Two finger strokes on the signature pad: a wave and a short line."""
    box = await kiosk.locator("#sign-pad").bounding_box()
    assert box is not None and box["width"] > 600
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    await kiosk.mouse.move(x0 + 0.1 * w, y0 + 0.5 * h)
    await kiosk.mouse.down()
    for i in range(1, 41):
        x = x0 + (0.1 + 0.45 * i / 40) * w
        y = y0 + (0.5 + 0.25 * ((-1) ** (i // 5)) * (i % 5) / 5) * h
        await kiosk.mouse.move(x, y)
    await kiosk.mouse.up()
    await kiosk.mouse.move(x0 + 0.62 * w, y0 + 0.3 * h)
    await kiosk.mouse.down()
    for i in range(1, 16):
        await kiosk.mouse.move(x0 + (0.62 + 0.2 * i / 15) * w, y0 + (0.3 + 0.4 * i / 15) * h)
    await kiosk.mouse.up()


async def test_form_filled_from_the_card_corrected_signed_at_the_kiosk_and_submitted(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    booth = system.booth
    context = await _chromium(playwright, tmp_path / "forms-profile", fake_media=True)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: call.state is CallState.IN_CALL, 15, "the booth in the call")
        session_id = call.session_id
        assert session_id is not None

        kiosk = await context.new_page()
        kiosk_sent = SentFrames()
        kiosk_sent.attach(kiosk)
        await kiosk.goto(system.kiosk_url)
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")
        await _read_card(page, kiosk)

        # ------------------------------------------------ pick the form, fill from the card
        forms = page.locator("#forms-panel")
        await expect(forms).to_be_visible()
        select_form = page.locator("#forms-select")
        # The call's department (市民課) comes first.
        await expect(select_form.locator("option").nth(1)).to_have_attribute(
            "data-call-department", "yes"
        )
        await select_form.select_option("juminhyo-request")
        await expect(page.locator("#form-field-applicant_name")).to_be_visible()
        await page.get_by_role("button", name="カードから入力").click()
        await expect(page.locator("#form-field-applicant_name")).to_have_value(CARD_NAME)
        await expect(page.locator("#form-field-applicant_address")).to_have_value(CARD_ADDRESS)
        await expect(page.locator('[data-display="applicant_birth_date"]')).to_have_text(
            "→ 昭和60年4月1日（1985年4月1日）"
        )

        # Inline checks as the staff member types.
        await page.locator("#form-field-applicant_kana").fill("髙橋")
        await expect(page.locator('[data-error="applicant_kana"]')).to_contain_text(
            "フリガナはカタカナで入力してください"
        )
        await page.locator("#form-field-applicant_kana").fill("たかはし　よしこ")
        await expect(page.locator('[data-error="applicant_kana"]')).to_have_text("")
        await expect(page.locator('[data-display="applicant_kana"]')).to_have_text(
            "→ タカハシ　ヨシコ"
        )
        await page.locator("#form-field-applicant_phone").fill("12345")
        await expect(page.locator('[data-error="applicant_phone"]')).to_contain_text(
            "電話番号は0から始まる"
        )
        await page.locator("#form-field-applicant_phone").fill("042-375-8111")
        await page.locator("#form-field-relationship").select_option("self")
        await page.locator("#form-field-scope").select_option("person")
        await page.locator("#form-field-copies").fill("1")
        await page.locator("#form-field-purpose").select_option("employment")
        await page.locator("#form-field-confirmed").check()
        await page.evaluate("window.ekichikaForms.saved()")
        async with open_engine(system.database_url) as engine, session_factory(engine)() as db:
            drafts = (await db.scalars(select(FormDraft))).all()
        assert len(drafts) == 1 and drafts[0].session_id == session_id
        assert CARD_NAME in drafts[0].values

        # ------------------------------------------------ 利用者に表示 → the kiosk
        await page.get_by_role("button", name="利用者に表示").click()
        await expect(page.locator("#forms-status")).to_have_text("利用者に表示中（第1版）")
        await expect(kiosk.locator("body")).to_have_attribute("data-form", "review")
        await expect(kiosk.locator("#form-title")).to_have_text("住民票の写し等交付請求書")
        name_row = kiosk.locator('.form-row[data-field="applicant_name"]')
        await expect(name_row.locator("dd")).to_have_text(CARD_NAME)
        await expect(kiosk.locator('.form-row[data-field="applicant_birth_date"] dd')).to_have_text(
            "昭和60年4月1日（1985年4月1日）"
        )
        await expect(kiosk.locator("#staff-video")).to_be_visible()  # the call, in the corner
        await kiosk.screenshot(path=str(artifacts / "kiosk-form-review.png"))

        # ------------------------------------------------ a correction, by touch
        await kiosk.locator('.form-row[data-field="applicant_kana"]').click()
        await kiosk.get_by_role("button", name="訂正をお願いする").click()
        await kiosk.get_by_role("button", name="選んだ項目が違う").click()
        await expect(kiosk.locator("#form-lead")).to_contain_text("職員に訂正をお願いしました")
        await expect(page.locator('[data-correction="applicant_kana"]')).to_have_text(
            "利用者から訂正の依頼：この項目が違う"
        )
        await kiosk.screenshot(path=str(artifacts / "kiosk-form-correction.png"))
        await page.locator("#form-field-applicant_kana").fill("タカハシ　ヨシコ")
        await expect(page.get_by_role("button", name="署名を依頼")).to_be_disabled()
        await page.get_by_role("button", name="利用者に表示").click()
        await expect(page.locator("#forms-status")).to_have_text("利用者に表示中（第2版）")
        await expect(kiosk.locator('.form-row[data-field="applicant_kana"] dd')).to_have_text(
            "タカハシ　ヨシコ"
        )

        # ------------------------------------------------ the signature
        await page.get_by_role("button", name="署名を依頼").click()
        await expect(kiosk.locator("body")).to_have_attribute("data-form", "signing")
        await expect(kiosk.get_by_role("button", name="確定")).to_be_disabled()
        await _sign(kiosk)
        await expect(kiosk.get_by_role("button", name="確定")).to_be_enabled()
        await eventually(lambda: len(booth.forms.strokes) == 2, 5, "both strokes at the agent")
        await kiosk.screenshot(path=str(artifacts / "kiosk-form-signature.png"))
        await kiosk.get_by_role("button", name="確定").click()
        await expect(kiosk.locator("body")).to_have_attribute("data-form", "signed")
        await expect(kiosk.get_by_text("職員が確認しています")).to_be_visible()
        await expect(page.locator("#forms-signature")).to_be_visible()
        await expect(page.locator("#forms-signature-revision")).to_have_text("第2版")
        # The preview has ink on it.
        ink = await page.evaluate(
            """() => {
              const c = document.getElementById("forms-signature-preview");
              const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) if (d[i] < 100) n++;
              return n;
            }"""
        )
        assert ink > 200
        await page.locator("#forms-panel").screenshot(path=str(artifacts / "console-forms.png"))

        # ------------------------------------------------ 申請を確定
        await page.get_by_role("button", name="申請を確定").click()
        await expect(page.locator("#forms-result")).to_be_visible(timeout=20_000)
        application_id = await page.evaluate("window.ekichikaForms.applicationId")
        assert isinstance(application_id, str)
        receipt = await page.locator("#forms-receipt").inner_text()
        assert receipt.replace("-", "") == application_id[:12].upper()
        await expect(kiosk.locator("body")).to_have_attribute("data-form", "submitted")
        await expect(kiosk.get_by_text("受け付けました")).to_be_visible()
        assert await page.locator("#form-field-applicant_name").count() == 0  # values gone
        href = await page.locator("#forms-pdf").get_attribute("href")
        assert href == f"/api/applications/{application_id}/pdf"
        response = await page.request.get(system.console_url + href)
        assert response.status == 200 and response.headers["content-type"] == "application/pdf"
        pdf = await response.body()

        async with open_engine(system.database_url) as engine, session_factory(engine)() as db:
            row = await db.get(Application, application_id)
            drafts = (await db.scalars(select(FormDraft))).all()
            audit = (
                await db.scalars(
                    select(AuditRecord).where(AuditRecord.action == "application_submitted")
                )
            ).all()
        assert row is not None and row.pdf == pdf
        assert (row.session_id, row.booth_id, row.staff_id) == (session_id, "seiseki-1", "sato")
        assert drafts == []
        assert len(audit) == 1 and audit[0].object_id == application_id
        text = await _pdf_text(pdf, tmp_path)
        assert "髙橋𠮷子" in text and "タカハシヨシコ" in text and "昭和60年4月1日" in text

        # Everything the two pages sent follows the protocol's schema.
        schema = json.loads((STATIC_DIR / "protocol.schema.json").read_text(encoding="utf-8"))
        peer = jsonschema.Draft202012Validator(schema["channels"]["peer_data"])
        peer_sent = [json.loads(f) for f in await page.evaluate("window.ekichika.peerDataSent")]
        assert [m["type"] for m in peer_sent if m["type"].startswith("form_")] == [
            "form_show",
            "form_show",
            "form_sign_request",
            "form_close",
        ]
        for message in peer_sent:
            assert not list(peer.iter_errors(message)), message
        kiosk_schema = jsonschema.Draft202012Validator(schema["channels"]["kiosk_page_to_agent"])
        kiosk_messages = kiosk_sent.messages()
        assert [m["type"] for m in kiosk_messages if m["type"].startswith("form_")] == [
            "form_correction",
            "form_stroke",
            "form_stroke",
            "form_sign_confirm",
        ]
        for message in kiosk_messages:
            assert not list(kiosk_schema.iter_errors(message)), message
        strokes = [m for m in kiosk_messages if m["type"] == "form_stroke"]
        assert len(strokes[0]["points"]) > 20
        assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for s in strokes for p in s["points"])
        await kiosk.close()
    finally:
        await context.close()
