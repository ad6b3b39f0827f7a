"""The kiosk page in Debian's Chromium, served by a real booth agent connected to a
signaling server that speaks the booth protocol. Screenshots of every screen go to
var/test-artifacts/kiosk-<screen>.png."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from booth.agent import BoothAgent
from booth.kiosk import create_kiosk_app
from shared.config import BoothConfig, DeviceConfig
from shared.protocol import HangUp, QueueStatus, RequestHelp
from tests.booth_fake_signaling import CREDENTIAL, AnsweringStaff, FakeSignaling, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium"),
]

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


class Kiosk:
    def __init__(self, agent: BoothAgent, server: FakeSignaling, url: str) -> None:
        self.agent = agent
        self.server = server
        self.url = url


@pytest.fixture
async def kiosk() -> AsyncIterator[Kiosk]:
    server = FakeSignaling()
    await server.start()
    port = free_port()
    config = BoothConfig(
        booth_id="seiseki-1",
        credential=CREDENTIAL,
        server_url=server.url,
        kiosk_port=port,
        devices=DeviceConfig(video_width=320, video_height=240, video_fps=15),
        reconnect_min_s=0.05,
        reconnect_max_s=0.4,
        heartbeat_s=2.0,
        ended_screen_s=60.0,
    )
    agent = BoothAgent(config)
    runner = web.AppRunner(create_kiosk_app(agent), shutdown_timeout=1.0)
    try:
        await agent.start()
        await agent.signaling.wait_connected()
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield Kiosk(agent, server, f"http://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()
        await agent.aclose()
        await server.aclose()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
            locale="ja-JP",
            bypass_csp=True,  # lets the test evaluate expressions in the page
        )
        try:
            yield context
        finally:
            await context.close()


async def on_screen(page: Page, screen: str, artifacts: Path | None = None) -> None:
    await expect(page.locator("body")).to_have_attribute("data-screen", screen, timeout=10_000)
    await expect(page.locator(f"#screen-{screen}")).to_be_visible()
    if artifacts is not None:
        await page.screenshot(path=str(artifacts / f"kiosk-{screen}.png"))


async def test_resident_asks_for_help_in_japanese(
    kiosk: Kiosk, browser: BrowserContext, artifacts: Path
) -> None:
    page = await browser.new_page()
    await page.goto(kiosk.url)
    await on_screen(page, "start", artifacts)
    await expect(page.locator("#booth-name")).to_have_text("聖蹟桜ヶ丘 1番ブース")

    await page.get_by_role("button", name="日本語").click()
    await on_screen(page, "department")
    departments = page.locator("#departments button")
    await expect(departments).to_have_count(4)
    await expect(departments.nth(0)).to_contain_text("市民課")
    await expect(departments.nth(0)).to_contain_text("住民票")
    await page.screenshot(path=str(artifacts / "kiosk-department.png"))
    # every touch target is at least 88 px tall
    for button in await page.locator("#screen-department button").all():
        box = await button.bounding_box()
        assert box is not None and box["height"] >= 88

    await departments.filter(has_text="市民課").click()
    request = await kiosk.server.wait_for(RequestHelp)
    assert isinstance(request, RequestHelp) and request.department == "shimin"
    await on_screen(page, "waiting")
    # the server said: position 3, about 240 s, 2 staff online
    await expect(page.locator("#queue-main")).to_have_text("あと 2 人")
    await expect(page.locator("#queue-sub")).to_have_text("あなたは 3 番目です")
    await expect(page.locator("#queue-wait")).to_have_text("待ち時間 約 4 分")
    await expect(page.locator("#waiting-department")).to_have_text("市民課")
    await page.screenshot(path=str(artifacts / "kiosk-waiting.png"))

    # nobody who could answer is signed in
    await kiosk.server.send(
        QueueStatus(
            request_id=request.request_id, position=1, estimated_wait_s=None, staff_online=0
        )
    )
    await on_screen(page, "no_staff", artifacts)
    await expect(page.locator("#screen-no_staff h1")).to_have_text(
        "ただいま対応できる職員がいません。"
    )
    await page.get_by_role("button", name="このまま待つ").click()
    await on_screen(page, "waiting")
    await expect(page.locator("#queue-main")).to_have_text("次にご案内します")
    await expect(page.locator("#queue-wait")).to_have_text("待ち時間は現在わかりません")

    # staff accept: connecting, then the call with the staff picture on screen
    staff = AnsweringStaff(kiosk.server)
    try:
        started = await kiosk.server.start_call(request.request_id)
        await on_screen(page, "connecting", artifacts)
        await expect(page.locator("#connecting-staff")).to_have_text("担当：佐藤")
        await staff.answer(started.session_id)
        await on_screen(page, "in_call")
        await expect(page.locator("#call-staff")).to_have_text("佐藤")
        await page.wait_for_function(
            "document.getElementById('staff-video').naturalWidth === 320"
            " && document.getElementById('self-video').naturalWidth === 320",
            timeout=10_000,
        )
        await page.wait_for_function(
            "document.getElementById('call-timer').textContent !== '0:00'", timeout=5_000
        )
        await page.screenshot(path=str(artifacts / "kiosk-in_call.png"))
        assert len(staff.stamps) > 0

        end = page.get_by_role("button", name="終了")
        box = await end.bounding_box()
        assert box is not None and box["height"] >= 88
        await end.click()
        hang_up = await kiosk.server.wait_for(HangUp)
        assert isinstance(hang_up, HangUp) and hang_up.session_id == started.session_id
    finally:
        await staff.aclose()
    await on_screen(page, "ended")
    await expect(page.locator("#screen-ended h1")).to_have_text("ご利用ありがとうございました")
    await expect(page.locator("#ended-countdown")).to_contain_text("秒後に最初の画面に戻ります")
    await page.screenshot(path=str(artifacts / "kiosk-ended.png"))
    await page.get_by_role("button", name="最初の画面に戻る").click()
    await on_screen(page, "start")


async def test_connection_lost_keeps_the_request_in_english(
    kiosk: Kiosk, browser: BrowserContext, artifacts: Path
) -> None:
    page = await browser.new_page()
    await page.goto(kiosk.url)
    await on_screen(page, "start")
    await page.get_by_role("button", name="English").click()
    await on_screen(page, "department")
    await expect(page.locator("#screen-department h1")).to_have_text("Which counter do you need?")
    await page.screenshot(path=str(artifacts / "kiosk-department-en.png"))
    await page.locator("#departments button").filter(has_text="Taxation").click()
    await on_screen(page, "waiting")
    await expect(page.locator("#queue-main")).to_have_text("2 people ahead")
    await page.screenshot(path=str(artifacts / "kiosk-waiting-en.png"))

    await kiosk.server.stop()
    await on_screen(page, "connection_lost")
    await expect(page.locator("#lost-lead")).to_have_text(
        "Your request is kept. Please wait a moment."
    )
    await page.screenshot(path=str(artifacts / "kiosk-connection_lost-en.png"))

    await kiosk.server.start()
    resent = await kiosk.server.wait_for(RequestHelp, count=2)
    assert isinstance(resent, RequestHelp) and resent.department == "kazei"
    await on_screen(page, "waiting")

    # the same screen in Japanese
    await page.get_by_role("button", name="Stop waiting").click()
    await on_screen(page, "start")
    await page.get_by_role("button", name="日本語").click()
    await on_screen(page, "department")
    await page.locator("#departments button").first.click()
    await on_screen(page, "waiting")
    await kiosk.server.stop()
    await on_screen(page, "connection_lost", artifacts)
    await expect(page.locator("#screen-connection_lost h1")).to_have_text(
        "接続が切れました。再接続しています…"
    )
    await expect(page.locator("#lost-lead")).to_have_text(
        "受付はそのまま保たれています。このままお待ちください。"
    )
    await kiosk.server.start()
    await on_screen(page, "waiting")
