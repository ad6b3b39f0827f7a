"""The HQ console in Debian's Chromium against the real signaling server and a real booth.

Signaling, the console and the booth agent (aiortc, simulated 320x240 camera) run in this
process on loopback and share one seeded SQLite file. A staff member signs in through the
form, takes the booth's call and the test proves by content that video flowed both ways
(frames decoded in the page, staff frames at the booth), that hang-up and wrap-up reached
the database, and that every WebSocket frame the page sent is valid under the protocol's
JSON Schema (channel ``staff_to_server``) — the check that keeps the browser code and
``shared/protocol.py`` in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright, expect
from sqlalchemy import select

from booth.agent import BoothAgent
from booth.call import CallState, RemoteCounterCall
from booth.devices.printing import SimulatedA4Printer, SimulatedReceiptPrinter
from booth.kiosk import create_kiosk_app
from hq_console.app import STATIC_DIR, create_app
from shared.config import BoothConfig, ConsoleConfig, DeviceConfig
from shared.kiosk_protocol import (
    CancelTouched,
    ChooseLanguage,
    HangUpTouched,
    RequestHelpTouched,
)
from shared.protocol import EndReason
from shared.store.db import session_factory
from shared.store.models import AuditRecord, CallSession
from tests import signaling_support
from tests.signaling_support import (
    DEMO_PASSWORD,
    TOKEN_SECRET,
    RunningSignaling,
    open_engine,
    running_signaling,
    sqlite_url,
)

browser_marks = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium"),
]
pytestmark = browser_marks

BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
FAKE_MEDIA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

BOOTH_NAME = "聖蹟桜ヶ丘 1番ブース"
RECEIVE_ONLY_NOTICE = "カメラ・マイクが使えないため、受信のみで通話しています"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def eventually(
    probe: Callable[[], Any] | Callable[[], Awaitable[Any]], within: float, what: str
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class System:
    signaling: RunningSignaling
    database_url: str
    console_url: str  # http://127.0.0.1:PORT
    booth: BoothAgent
    kiosk_url: str


@contextlib.asynccontextmanager
async def running_system(
    tmp_path: Path, *, console: Mapping[str, Any] = {}, **signaling_settings: Any
) -> AsyncIterator[System]:
    """Signaling, the console (``console``: more ConsoleConfig settings) and the booth
    agent with its kiosk page, on loopback."""
    console_port = free_port()
    console_url = f"http://127.0.0.1:{console_port}"
    async with running_signaling(
        tmp_path, ring_timeout_s=20.0, allowed_origins=[console_url], **signaling_settings
    ) as signaling:
        database_url = sqlite_url(tmp_path / "signaling.sqlite3")
        console_config = ConsoleConfig(
            host="127.0.0.1",
            port=console_port,
            database_url=database_url,
            token_secret=TOKEN_SECRET,
            signaling_url=f"{signaling.ws_url}/ws/staff",
            token_ttl_s=60,
            **console,
        )
        runner = web.AppRunner(create_app(console_config), shutdown_timeout=1.0)
        await runner.setup()
        kiosk_port = free_port()
        booth = BoothAgent(
            BoothConfig(
                booth_id="seiseki-1",
                credential=signaling.booth_credentials["seiseki-1"],
                server_url=f"{signaling.ws_url}/ws/booth",
                console_url=console_url,  # document stills through the still relay
                kiosk_port=kiosk_port,
                devices=DeviceConfig(video_width=320, video_height=240, video_fps=15),
                ice_host_addresses=["127.0.0.1"],
                reconnect_min_s=0.1,
                reconnect_max_s=0.5,
                ended_screen_s=30.0,
            )
        )
        kiosk = web.AppRunner(create_kiosk_app(booth), shutdown_timeout=1.0)
        try:
            await web.TCPSite(runner, "127.0.0.1", console_port).start()
            await booth.start()
            await kiosk.setup()
            await web.TCPSite(kiosk, "127.0.0.1", kiosk_port).start()
            await eventually(lambda: booth.signaling.connected, 10, "the booth to sign in")
            yield System(
                signaling,
                database_url,
                console_url,
                booth,
                f"http://127.0.0.1:{kiosk_port}/",
            )
        finally:
            await kiosk.cleanup()
            await booth.aclose()
            await runner.cleanup()


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    async with running_system(tmp_path) as running:
        yield running


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


async def _chromium(playwright: Playwright, profile: Path, *, fake_media: bool) -> BrowserContext:
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path="/usr/bin/chromium",
        headless=True,
        args=BASE_FLAGS + (FAKE_MEDIA_FLAGS if fake_media else []),
        viewport={"width": 1280, "height": 860},
        locale="ja-JP",
    )


@dataclass
class SentFrames:
    """Every WebSocket frame the page sent to signaling, checked against the schema."""

    frames: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def on_websocket(ws: Any) -> None:
            ws.on("framesent", lambda payload: self.frames.append(payload))

        page.on("websocket", on_websocket)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.frames]

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages()]

    def validate(self) -> None:
        schema = json.loads((STATIC_DIR / "protocol.schema.json").read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(schema["channels"]["staff_to_server"])
        assert self.frames, "the page sent nothing"
        for frame in self.frames:
            assert isinstance(frame, str), "staff frames are text"
            errors = sorted(validator.iter_errors(json.loads(frame)), key=str)
            assert not errors, f"frame {frame[:200]!r} breaks the schema: {errors[0].message}"


async def _sign_in(page: Page, base_url: str, login: str) -> None:
    await page.goto(f"{base_url}/login")
    await expect(page.locator("h1")).to_contain_text("職員ログイン")
    await page.fill("#login", login)
    await page.fill("#password", DEMO_PASSWORD)
    await page.get_by_role("button", name="ログイン").click()


async def _sign_in_hq(page: Page, base_url: str) -> None:
    await _sign_in(page, base_url, "sato")
    await page.wait_for_url(f"{base_url}/console")
    await expect(page.locator("body")).to_have_attribute("data-connection", "connected")
    await expect(page.locator("#me-name")).to_have_text("佐藤 花子")
    await expect(page.locator("body")).to_have_attribute("data-state", "away")


async def _start_taking_calls(page: Page) -> None:
    toggle = page.locator("#toggle-available")
    await expect(toggle).to_have_text("受付開始")
    await toggle.click()
    await expect(page.locator("body")).to_have_attribute("data-state", "available")
    await expect(page.locator("#state-label")).to_have_text("受付中")
    await expect(toggle).to_have_text("離席")


async def _resident_asks_for_help(booth: BoothAgent) -> RemoteCounterCall:
    await booth.handle_touch(ChooseLanguage(language="ja"))
    await booth.handle_touch(RequestHelpTouched(department="shimin"))
    call = booth.call
    assert call is not None
    return call


async def _answer_ringing_offer(page: Page) -> None:
    ring = page.locator("#ring-panel")
    await expect(ring).to_be_visible(timeout=10_000)
    await expect(page.locator("body")).to_have_attribute("data-state", "ringing")
    await expect(page.locator("#ring-booth")).to_have_text(BOOTH_NAME)
    await expect(page.locator("#ring-site")).to_have_text("聖蹟桜ヶ丘駅サービスポイント")
    await expect(page.locator("#ring-department")).to_have_text("市民課")
    await expect(page.locator("#ring-language")).to_have_text("日本語")
    # The waiting queue lists the request, with its waiting time counting up.
    row = page.locator("#queue-body tr").filter(has_text=BOOTH_NAME)
    await expect(row).to_contain_text("市民課")
    await expect(row.locator("td.waiting")).to_contain_text("秒")
    seconds = int(await page.locator("#ring-countdown").inner_text())
    assert 1 <= seconds <= 20
    await page.get_by_role("button", name="応答").click()
    await expect(ring).to_be_hidden()
    await expect(page.locator("body")).to_have_attribute("data-state", "in_call")


async def _frames_decoded(page: Page) -> int:
    """Decoded frames of the booth's video, from the page's RTCPeerConnection stats."""
    return int(
        await page.evaluate(
            """async () => {
                const pc = window.ekichika.pc;
                if (!pc) return 0;
                let frames = 0;
                (await pc.getStats()).forEach((r) => {
                    if (r.type === "inbound-rtp" && r.kind === "video") {
                        frames = Math.max(frames, r.framesDecoded || 0);
                    }
                });
                return frames;
            }"""
        )
    )


async def _session_row(database_url: str, session_id: str) -> CallSession | None:
    async with open_engine(database_url) as engine, session_factory(engine)() as s:
        return await s.get(CallSession, session_id)


async def _audit_records(database_url: str, action: str) -> list[AuditRecord]:
    async with open_engine(database_url) as engine, session_factory(engine)() as db:
        rows = await db.scalars(select(AuditRecord).where(AuditRecord.action == action))
        return list(rows.all())


async def test_staff_takes_a_call_with_video_both_ways(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    booth = system.booth
    context = await _chromium(playwright, tmp_path / "hq-profile", fake_media=True)
    try:
        page = await context.new_page()
        sent = SentFrames()
        sent.attach(page)
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)

        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)

        # Video both ways, proven by content: frames decoded in the page, and the staff
        # camera's frames received by the booth.
        await eventually(lambda: _frames_decoded(page), 20, "booth frames decoded in the page")
        await eventually(lambda: call.state is CallState.IN_CALL, 10, "the booth in the call")
        await eventually(lambda: booth.staff_video.frames > 5, 15, "staff video at the booth")
        assert call.video_frames > 5
        first = await _frames_decoded(page)
        await asyncio.sleep(1.0)
        assert await _frames_decoded(page) > first, "the booth's video keeps arriving"
        assert call.remote_media is not None
        assert (call.remote_media.audio, call.remote_media.video) == ("on", "on")
        assert await page.evaluate("window.ekichika.mediaMode") == "full"
        await expect(page.locator("#media-notice")).to_be_hidden()
        await expect(page.locator("#call-booth")).to_have_text(BOOTH_NAME)
        await expect(page.locator("#call-department")).to_have_text("市民課")
        await eventually(
            lambda: page.evaluate("document.getElementById('remote-video').videoWidth === 320"),
            10,
            "the booth video at 320x240 in the page",
        )
        await expect(page.locator("body")).to_have_attribute("data-call", "connected")
        await page.screenshot(path=str(artifacts / "console-in-call.png"))

        # The resident's side of the same call (the booth's kiosk page).
        kiosk = await context.new_page()
        await kiosk.goto(system.kiosk_url)
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")
        await asyncio.sleep(1.0)  # a few staff frames on the kiosk screen
        await kiosk.screenshot(path=str(artifacts / "kiosk-in-call.png"))
        await kiosk.close()

        # Branch staff on site see the booth in the call (their own browser).
        branch_browser = await _chromium(playwright, tmp_path / "branch-profile", fake_media=False)
        try:
            branch = await branch_browser.new_page()
            await _sign_in(branch, system.console_url, "takahashi")
            await branch.wait_for_url(f"{system.console_url}/branch")
            card = branch.locator('.booth-card[data-booth-id="seiseki-1"]')
            await expect(card).to_have_attribute("data-state", "in_call")
            await expect(card.locator(".booth-state")).to_contain_text("通話中")
            await expect(card.locator(".booth-staff")).to_contain_text("佐藤 花子")
            await expect(card.locator(".booth-since")).to_contain_text("秒前から")
            await branch.screenshot(path=str(artifacts / "branch.png"))
        finally:
            await branch_browser.close()

        # Mute: the booth is told.
        await page.get_by_role("button", name="マイクをミュート").click()
        await eventually(
            lambda: call.remote_media is not None and call.remote_media.audio == "muted",
            5,
            "the booth to learn that staff muted",
        )

        # Hang up from the console.
        session_id = call.session_id
        assert session_id is not None
        await page.get_by_role("button", name="終了").click()
        await eventually(lambda: call.end_reason is not None, 10, "SessionEnded at the booth")
        assert call.end_reason is EndReason.HANGUP_STAFF
        assert call.state is CallState.ENDED
        wrap_up = page.locator("#wrapup-panel")
        await expect(wrap_up).to_be_visible()
        await expect(page.locator("body")).to_have_attribute("data-state", "wrap_up")
        await expect(page.locator("#wrapup-reason")).to_have_text("通話を終了しました。")
        row = await _session_row(system.database_url, session_id)
        assert row is not None
        assert row.ended_at is not None
        assert row.outcome == EndReason.HANGUP_STAFF.value
        assert row.staff_id == "sato" and row.booth_id == "seiseki-1"

        note = "住民票の写しについて案内済み。次回マイナンバーカード持参。"
        await page.fill("#wrapup-note", note)
        await page.get_by_role("button", name="後処理完了").click()
        await expect(page.locator("body")).to_have_attribute("data-state", "available")
        await expect(wrap_up).to_be_hidden()

        async def note_stored() -> bool:
            stored = await _session_row(system.database_url, session_id)
            return stored is not None and stored.note == note

        await eventually(note_stored, 5, "the wrap-up note in call_sessions")

        types = sent.types()
        for expected in ("hello", "set_state", "accept", "relay", "media_connected"):
            assert expected in types
        assert types[0] == "hello"
        assert types[-2:] == ["hang_up", "wrap_up_done"]
        answers = [
            m for m in sent.messages() if m["type"] == "relay" and m["payload"]["type"] == "sdp"
        ]
        assert len(answers) == 1 and answers[0]["payload"]["sdp_type"] == "answer"
        assert "a=candidate" in answers[0]["payload"]["sdp"]
        sent.validate()
        assert await page.evaluate("window.ekichika.lastError") is None
    finally:
        await context.close()


async def test_staff_without_camera_takes_the_call_receive_only(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    booth = system.booth
    # No fake devices, no auto-accepted permission prompt: getUserMedia fails.
    context = await _chromium(playwright, tmp_path / "no-camera-profile", fake_media=False)
    try:
        page = await context.new_page()
        sent = SentFrames()
        sent.attach(page)
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)

        # A request that the resident cancels while it rings: the offer disappears.
        await _resident_asks_for_help(booth)
        await expect(page.locator("#ring-panel")).to_be_visible(timeout=10_000)
        await booth.handle_touch(CancelTouched())
        await expect(page.locator("#ring-panel")).to_be_hidden()
        await expect(page.locator("#notice")).to_have_text("利用者が呼び出しを取り消しました。")
        await expect(page.locator("body")).to_have_attribute("data-state", "available")
        await expect(page.locator("#queue-empty")).to_be_visible()

        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)

        notice = page.locator("#media-notice")
        await expect(notice).to_have_text(RECEIVE_ONLY_NOTICE, timeout=25_000)
        assert await page.evaluate("window.ekichika.mediaMode") == "receive-only"
        await eventually(lambda: _frames_decoded(page), 20, "booth frames decoded in the page")
        await eventually(lambda: call.state is CallState.IN_CALL, 10, "the booth in the call")
        await eventually(lambda: call.remote_media is not None, 5, "the staff media state")
        assert call.remote_media is not None
        assert (call.remote_media.audio, call.remote_media.video) == ("none", "none")
        assert booth.staff_video.frames == 0
        await expect(page.locator("#local-none")).to_be_visible()
        await expect(page.get_by_role("button", name="マイクをミュート")).to_be_disabled()
        await page.screenshot(path=str(artifacts / "console-receive-only.png"))

        # This time the resident hangs up.
        session_id = call.session_id
        assert session_id is not None
        await booth.handle_touch(HangUpTouched())
        await expect(page.locator("#wrapup-panel")).to_be_visible()
        await expect(page.locator("#wrapup-reason")).to_have_text("利用者が通話を終了しました。")
        await page.get_by_role("button", name="後処理完了").click()
        await expect(page.locator("body")).to_have_attribute("data-state", "available")
        row = await _session_row(system.database_url, session_id)
        assert row is not None and row.outcome == EndReason.HANGUP_BOOTH.value
        assert row.ended_at is not None

        types = sent.types()
        assert "media_connected" in types and "wrap_up_done" in types
        sent.validate()
    finally:
        await context.close()


async def test_staff_reads_the_card_after_the_resident_types_the_pin_on_the_kiosk(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    """カード読み取り in the console → the PIN pad on the kiosk page (its own buttons) →
    the 4 basic facts in the console's card panel, over the data channel only."""
    booth = system.booth
    context = await _chromium(playwright, tmp_path / "card-profile", fake_media=True)
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=system.console_url
    )
    try:
        page = await context.new_page()
        sent = SentFrames()
        sent.attach(page)
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: call.state is CallState.IN_CALL, 15, "the booth in the call")

        kiosk = await context.new_page()
        kiosk_sent = SentFrames()
        kiosk_sent.attach(kiosk)
        await kiosk.goto(system.kiosk_url)
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")

        read = page.get_by_role("button", name="カード読み取り")
        await expect(read).to_be_enabled(timeout=10_000)
        await expect(page.locator("#card-reader")).to_have_text("カードリーダー：カードあり")
        await read.click()

        # The kiosk shows the tries left before any digit is typed.
        await expect(kiosk.locator("body")).to_have_attribute("data-card", "waiting_for_pin")
        await expect(kiosk.locator("#pin-tries")).to_have_text("残り 3 回")
        await expect(kiosk.get_by_text("暗証番号（数字4桁）を入力してください")).to_be_visible()
        await expect(page.locator("#card-progress")).to_contain_text("残り 3 回")
        for digit in "12":
            await kiosk.locator(f'.pin-key[data-digit="{digit}"]').click()
        await expect(kiosk.locator("#pin-display span.filled")).to_have_count(2)
        await expect(kiosk.get_by_role("button", name="確定")).to_be_disabled()
        await kiosk.screenshot(path=str(artifacts / "kiosk-pin-pad.png"))
        for digit in "34":
            await kiosk.locator(f'.pin-key[data-digit="{digit}"]').click()
        assert await kiosk.locator("#pin-display").inner_text() == "●\n●\n●\n●"
        await kiosk.get_by_role("button", name="確定").click()

        facts = page.locator("#card-facts")
        await expect(facts).to_be_visible(timeout=10_000)
        await expect(page.locator("#card-name")).to_have_text("髙橋 𠮷子")
        await expect(page.locator("#card-address")).to_have_text(
            "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号"
        )
        await expect(page.locator("#card-birth")).to_have_text("1985年4月1日（昭和60年）")
        await expect(page.locator("#card-sex")).to_have_text("女")
        await expect(kiosk.locator("body")).to_have_attribute("data-card", "done")
        await expect(kiosk.get_by_text("カードをお取りください。")).to_be_visible()
        # One click copies one field.
        await page.locator(".card-fact").filter(has_text="氏名").get_by_role("button").click()
        assert await page.evaluate("navigator.clipboard.readText()") == "髙橋 𠮷子"
        await page.locator(".card-fact").filter(has_text="生年月日").get_by_role("button").click()
        assert await page.evaluate("navigator.clipboard.readText()") == "1985年4月1日"
        await page.screenshot(path=str(artifacts / "console-card-panel.png"), full_page=True)
        # The call's video kept running.
        first = await _frames_decoded(page)
        await asyncio.sleep(0.5)
        assert await _frames_decoded(page) > first

        # What the page sent on the data channel follows the schema (channel peer_data).
        schema = json.loads((STATIC_DIR / "protocol.schema.json").read_text(encoding="utf-8"))
        peer = jsonschema.Draft202012Validator(schema["channels"]["peer_data"])
        peer_sent = await page.evaluate("window.ekichika.peerDataSent")
        assert [json.loads(f)["type"] for f in peer_sent] == ["card_read_request"]
        for frame in peer_sent:
            assert not list(peer.iter_errors(json.loads(frame))), frame
        kiosk_schema = jsonschema.Draft202012Validator(schema["channels"]["kiosk_page_to_agent"])
        kiosk_messages = kiosk_sent.messages()
        assert {"type": "pin_entered", "pin": "1234"} in kiosk_messages
        for message in kiosk_messages:
            assert not list(kiosk_schema.iter_errors(message)), message
        # The booth recorded the read in the console's audit log: identifiers only.
        read_request = json.loads(peer_sent[0])["request_id"]
        records = await signaling_support.eventually(
            lambda: _audit_records(system.database_url, "card_data_read"), within=10
        )
        assert [(r.staff_id, r.booth_id, r.session_id, r.object_id) for r in records] == [
            ("sato", "seiseki-1", call.session_id, read_request)
        ]
        assert "髙橋" not in repr([vars(r) for r in records])
        # Neither the facts nor the PIN crossed signaling from the console.
        sent.validate()
        for frame in sent.frames:
            assert "髙橋" not in frame and "関戸" not in frame and '"1234"' not in frame

        # The call ends: the panel is cleared, nothing is kept in the page.
        await page.get_by_role("button", name="終了").click()
        await expect(page.locator("#wrapup-panel")).to_be_visible()
        await expect(page.locator("#card-panel")).to_be_hidden()
        assert await page.locator("#card-name").inner_text() == ""
        assert "髙橋" not in await page.content()
        await kiosk.close()
    finally:
        await context.close()


async def test_staff_print_a_receipt_and_an_a4_document_at_the_booth(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    """受付票を印刷 and A4 テスト文書を印刷 in the console's print panel → the booth's
    spool prints them (simulated printers) → the job list shows 印刷済み; 再印刷 asks
    first and prints again."""
    booth = system.booth
    receipt_owner, a4_owner = booth.devices.receipt, booth.devices.a4
    assert receipt_owner is not None and a4_owner is not None
    receipt_printer, a4_printer = receipt_owner.driver, a4_owner.driver
    assert isinstance(receipt_printer, SimulatedReceiptPrinter)
    assert isinstance(a4_printer, SimulatedA4Printer)
    context = await _chromium(playwright, tmp_path / "print-profile", fake_media=True)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: call.state is CallState.IN_CALL, 15, "the booth in the call")

        print_receipt = page.get_by_role("button", name="受付票を印刷")
        await expect(print_receipt).to_be_enabled(timeout=10_000)
        await expect(page.locator("#print-empty")).to_be_visible()
        await print_receipt.click()
        rows = page.locator("#print-jobs-body tr")
        await expect(rows).to_have_count(1)
        await expect(rows.nth(0).locator(".print-state")).to_have_text("印刷済み", timeout=10_000)
        await eventually(lambda: len(receipt_printer.printed) == 1, 5, "the receipt printed")
        # What the booth printed is the receipt the page built: ink in the QR code area and
        # the session id in the job's owner.
        printed = receipt_printer.printed[0]
        assert printed.image.height > 400
        record = await booth.devices.spool.job(printed.job_id)  # type: ignore[union-attr]
        assert record is not None and record.owner == call.session_id
        assert record.title == "受付票"

        await page.get_by_role("button", name="A4 テスト文書を印刷").click()
        await expect(rows).to_have_count(2)
        await expect(rows.nth(1).locator(".print-state")).to_have_text("印刷済み", timeout=10_000)
        assert len(a4_printer.printed) == 1
        pdf = tmp_path / "a4.pdf"
        pdf.write_bytes(a4_printer.printed[0][1])
        info = await asyncio.to_thread(
            subprocess.run, ["pdfinfo", str(pdf)], capture_output=True, text=True, check=True
        )
        assert re.search(r"^Pages:\s+2$", info.stdout, re.M), info.stdout
        assert "(A4)" in info.stdout

        # 再印刷 asks for confirmation first: dismissed, nothing is printed again.
        dialogs: list[str] = []

        async def answer(dialog: Any, accept: bool) -> None:
            dialogs.append(dialog.message)
            await (dialog.accept() if accept else dialog.dismiss())

        page.once("dialog", lambda d: asyncio.ensure_future(answer(d, False)))
        await rows.nth(0).get_by_role("button", name="再印刷").click()
        await eventually(lambda: len(dialogs) == 1, 5, "the confirmation")
        assert dialogs[0] == "既に印刷されている可能性があります。再印刷しますか？"
        await asyncio.sleep(0.5)
        assert len(receipt_printer.printed) == 1
        page.once("dialog", lambda d: asyncio.ensure_future(answer(d, True)))
        await rows.nth(0).get_by_role("button", name="再印刷").click()
        await expect(rows.nth(0).locator(".print-state")).to_have_text(
            "印刷済み（再印刷 1 回）", timeout=10_000
        )
        assert len(receipt_printer.printed) == 2
        await page.locator("#print-panel").scroll_into_view_if_needed()
        await page.screenshot(path=str(artifacts / "console-print-panel.png"), full_page=True)

        # What the page sent on the data channel follows the schema (channel peer_data).
        schema = json.loads((STATIC_DIR / "protocol.schema.json").read_text(encoding="utf-8"))
        peer = jsonschema.Draft202012Validator(schema["channels"]["peer_data"])
        peer_sent = [json.loads(f) for f in await page.evaluate("window.ekichika.peerDataSent")]
        assert [m["type"] for m in peer_sent] == [
            "print_job",
            "print_job",
            "print_job_chunk",
            "print_job_command",
        ]
        for message in peer_sent:
            assert not list(peer.iter_errors(message)), str(message)[:200]
        receipt_job = peer_sent[0]
        texts = [b.get("text") for b in receipt_job["receipt"]["blocks"]]
        assert "本日はご利用ありがとうございました" in texts
        assert f"ekichika:session:{call.session_id}" in [
            b.get("data") for b in receipt_job["receipt"]["blocks"]
        ]

        # The call ends: the jobs stay listed with the last state seen, buttons disabled.
        await page.get_by_role("button", name="終了").click()
        await expect(page.locator("#wrapup-panel")).to_be_visible()
        await expect(page.locator("#print-panel")).to_be_visible()
        await expect(rows.nth(1).locator(".print-state")).to_have_text("印刷済み")
        await expect(page.get_by_role("button", name="受付票を印刷")).to_be_disabled()
    finally:
        await context.close()
