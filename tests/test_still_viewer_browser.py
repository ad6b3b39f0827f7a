"""The console's document still viewer in Debian's Chromium against a real booth.

Same set-up as test_console_browser.py (signaling, console and booth agent in this process,
one seeded SQLite file). Staff press 書類を撮影; the booth's simulated document camera takes
a 3508x2480 JPEG that reaches the page sealed through the console's still relay; the page
opens it, checks size and SHA-256, shows it, zooms, pans and rotates it, and 保存 stores
exactly the booth's bytes with one audit record. The booth's video keeps playing
throughout. The resident's kiosk button and a corrupted transfer on the data channel are
covered too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
from playwright.async_api import Page, Playwright, expect
from sqlalchemy import select

from booth.call import CallState
from booth.document_still import offer_for, send_still
from hq_console.app import STATIC_DIR
from shared.store.db import session_factory
from shared.store.models import AuditRecord, DocumentStill
from tests.signaling_support import open_engine
from tests.test_console_browser import (
    System,
    _answer_ringing_offer,
    _chromium,
    _resident_asks_for_help,
    _sign_in_hq,
    _start_taking_calls,
    eventually,
    playwright,
    pytestmark,
    system,
)
from tests.test_document_camera import RecordingCamera

__all__ = ["playwright", "pytestmark", "system"]  # the fixtures and marks of the set-up

CORRUPT = "画像が壊れています。もう一度撮影してください"


async def _stored(database_url: str) -> tuple[list[DocumentStill], list[AuditRecord]]:
    async with open_engine(database_url) as engine, session_factory(engine)() as s:
        stills = list((await s.scalars(select(DocumentStill))).all())
        audit = list(
            (await s.scalars(select(AuditRecord).where(AuditRecord.action == "still_saved"))).all()
        )
    return stills, audit


async def _video_keeps_playing(page: Page) -> None:
    """The booth's video at staff decodes new frames (more than 5 in a second)."""
    frames = "document.getElementById('remote-video').getVideoPlaybackQuality().totalVideoFrames"
    before = await page.evaluate(frames)
    await page.wait_for_timeout(1000)
    after = await page.evaluate(frames)
    assert after - before > 5, f"the booth's video stalled: {before} → {after} frames"


async def test_staff_take_view_and_save_a_document_still(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    booth = system.booth
    assert booth.document_camera is not None
    camera = RecordingCamera(booth.document_camera)
    booth.document_camera = camera
    context = await _chromium(playwright, tmp_path / "still-profile", fake_media=True)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: call.state is CallState.IN_CALL, 15, "the booth in the call")

        take = page.locator("#still-take")
        await expect(take).to_be_enabled(timeout=10_000)
        await expect(take).to_contain_text("書類を撮影")
        await take.click()
        viewer = page.locator("#still-viewer")
        await expect(viewer).to_be_visible(timeout=20_000)
        await expect(page.locator("#still-status")).to_have_text("撮影しました")
        shown = await page.evaluate("window.ekichikaStill.still")
        assert len(camera.taken) == 1
        jpeg = camera.taken[0].jpeg
        assert shown["naturalWidth"] == 3508 and shown["naturalHeight"] == 2480
        assert shown["sha256"] == hashlib.sha256(jpeg).hexdigest()
        assert shown["size"] == len(jpeg) and shown["origin"] == "staff"
        assert shown["relayed"] is True
        # The booth's face video did not stall while the still travelled.
        await _video_keeps_playing(page)
        image = page.locator("#still-image")
        assert (await image.get_attribute("src") or "").startswith("blob:")

        # Rotate and zoom change the picture's transform; the wheel zooms, a drag pans.
        await page.get_by_role("button", name="回転").click()
        await expect(image).to_have_attribute("data-rotation", "90")
        assert "rotate(90deg)" in (await image.evaluate("el => el.style.transform"))
        await page.get_by_role("button", name="拡大").click()
        await expect(image).to_have_attribute("data-zoom", "1.25")
        stage = await page.locator("#still-stage").bounding_box()
        assert stage is not None
        cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
        await page.mouse.move(cx, cy)
        await page.mouse.wheel(0, -120)
        await expect(image).to_have_attribute("data-zoom", "1.5625")
        await page.mouse.down()
        await page.mouse.move(cx + 60, cy + 30, steps=5)
        await page.mouse.up()
        view = await page.evaluate("window.ekichikaStill.view")
        assert (view["x"], view["y"]) == (60, 30) and view["rotation"] == 90
        assert "translate(60px, 30px)" in (await image.evaluate("el => el.style.transform"))
        # 全体表示 keeps the quarter turn: the form stands upright.
        await page.get_by_role("button", name="全体表示").click()
        await expect(image).to_have_attribute("data-zoom", "1")
        await expect(image).to_have_attribute("data-rotation", "90")
        await page.locator("#still-panel").scroll_into_view_if_needed()
        await page.screenshot(path=str(artifacts / "console-still-viewer.png"), full_page=True)

        # 保存: exactly the booth's bytes, once, with one audit record.
        assert await _stored(system.database_url) == ([], [])
        await page.get_by_role("button", name="保存").click()
        await expect(page.locator("#still-status")).to_have_text("保存しました")
        await expect(page.get_by_role("button", name="保存")).to_be_disabled()
        stills, audit = await _stored(system.database_url)
        assert len(stills) == 1 and len(audit) == 1
        row = stills[0]
        assert row.sha256 == hashlib.sha256(jpeg).hexdigest() and row.data == jpeg
        assert (row.session_id, row.staff_id, row.mime) == (call.session_id, "sato", "image/jpeg")
        assert (audit[0].action, audit[0].staff_id, audit[0].session_id, audit[0].object_id) == (
            "still_saved",
            "sato",
            call.session_id,
            row.id,
        )

        # The resident's 書類を撮影 on the kiosk: 撮影中… while the booth is busy.
        kiosk = await context.new_page()
        await kiosk.goto(system.kiosk_url)
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")
        kiosk_take = kiosk.locator("#still-take")
        await expect(kiosk_take).to_have_text("書類を撮影")
        await kiosk_take.click()
        await expect(kiosk_take).to_have_text("撮影中…")
        await expect(kiosk_take).to_be_disabled()
        await expect(page.locator("#still-status")).to_have_text(
            "利用者が書類を撮影しました", timeout=20_000
        )
        await expect(kiosk_take).to_have_text("書類を撮影", timeout=10_000)
        await expect(kiosk_take).to_be_enabled()
        shown = await page.evaluate("window.ekichikaStill.still")
        assert shown["origin"] == "resident" and shown["savedId"] is None
        assert shown["sha256"] == hashlib.sha256(camera.taken[1].jpeg).hexdigest()
        assert shown["relayed"] is True
        await kiosk.close()

        # A corrupted transfer is not shown.
        await page.get_by_role("button", name="破棄").click()
        await expect(viewer).to_be_hidden()
        assert await page.evaluate("window.ekichikaStill.still") is None
        still = camera.taken[0]
        corrupted = bytearray(still.jpeg)
        corrupted[len(corrupted) // 2] ^= 0xFF
        offer = offer_for(still, request_id=None, origin="resident")
        assert await send_still(call, offer, bytes(corrupted))
        await expect(page.locator("#still-status")).to_have_text(CORRUPT, timeout=20_000)
        await expect(viewer).to_be_hidden()
        await _video_keeps_playing(page)  # also after 2.6 MB on the data channel
        assert len((await _stored(system.database_url))[0]) == 1

        # What the page sent on the data channel follows the schema (channel peer_data).
        schema = json.loads((STATIC_DIR / "protocol.schema.json").read_text(encoding="utf-8"))
        peer = jsonschema.Draft202012Validator(schema["channels"]["peer_data"])
        peer_sent = [json.loads(f) for f in await page.evaluate("window.ekichika.peerDataSent")]
        assert [m["type"] for m in peer_sent] == ["still_request"]
        for message in peer_sent:
            assert not list(peer.iter_errors(message)), message
    finally:
        await context.close()
