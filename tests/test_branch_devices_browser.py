"""The branch board in Debian's Chromium shows the devices of a real booth agent.

Signaling, the console and a booth agent with simulated devices run in this process on
loopback. The booth's simulated receipt printer runs out of paper and its document camera
is unplugged; the branch staff page shows the booth's card with a warning stripe, the
printer as 用紙切れ and the document camera (書画カメラ) as 接続なし, each with the reason,
and the card calms down again when paper is loaded and the camera is back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import async_playwright, expect

from booth.agent import BoothAgent
from booth.devices.base import DeviceState
from booth.devices.printing import SimulatedReceiptPrinter
from booth.document_camera import SimulatedDocumentCamera
from hq_console.app import create_app
from shared.config import ConsoleConfig
from tests.call_support import booth_config
from tests.signaling_support import (
    DEMO_PASSWORD,
    TOKEN_SECRET,
    eventually,
    running_signaling,
    sqlite_url,
)
from tests.test_console_browser import BASE_FLAGS, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium"),
]

PAPER_OUT_REASON = "the receipt printer is out of paper; load a new roll"
UNPLUGGED_REASON = "書画カメラ（/dev/video2）が見つかりません。USBケーブルを確認してください"


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[tuple[str, BoothAgent]]:
    console_port = free_port()
    console_url = f"http://127.0.0.1:{console_port}"
    async with running_signaling(tmp_path, allowed_origins=[console_url]) as sig:
        console = web.AppRunner(
            create_app(
                ConsoleConfig(
                    host="127.0.0.1",
                    port=console_port,
                    database_url=sqlite_url(tmp_path / "signaling.sqlite3"),
                    token_secret=TOKEN_SECRET,
                    signaling_url=f"{sig.ws_url}/ws/staff",
                    token_ttl_s=60,
                )
            ),
            shutdown_timeout=1.0,
        )
        await console.setup()
        agent = BoothAgent(
            booth_config(sig, tmp_path, document_width=320, document_height=240, document_fps=10)
        )
        try:
            await web.TCPSite(console, "127.0.0.1", console_port).start()
            await agent.start()
            await eventually(lambda: agent.signaling.connected, within=10)
            yield console_url, agent
        finally:
            await agent.aclose()
            await console.cleanup()


async def test_branch_board_shows_a_printer_out_of_paper(
    board: tuple[str, BoothAgent], tmp_path: Path, artifacts: Path
) -> None:
    console_url, agent = board
    receipt = agent.devices.receipt
    assert receipt is not None and isinstance(receipt.driver, SimulatedReceiptPrinter)
    receipt.driver.simulate(DeviceState.PAPER_OUT, PAPER_OUT_REASON)
    await agent.devices.check_printers()
    document_camera = agent.devices.document_camera
    assert document_camera is not None
    assert isinstance(document_camera.driver, SimulatedDocumentCamera)
    document_camera.driver.simulate(DeviceState.OFFLINE, UNPLUGGED_REASON)
    await agent.devices.check_document_camera()

    async with async_playwright() as p:
        browser = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=BASE_FLAGS,
            viewport={"width": 1280, "height": 860},
            locale="ja-JP",
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{console_url}/login")
            await page.fill("#login", "takahashi")
            await page.fill("#password", DEMO_PASSWORD)
            await page.get_by_role("button", name="ログイン").click()
            await page.wait_for_url(f"{console_url}/branch")

            card = page.locator('.booth-card[data-booth-id="seiseki-1"]')
            await expect(card).to_have_attribute("data-state", "idle")
            await expect(card).to_have_class("booth-card st-idle devices-failed")
            await expect(card.locator(".device-alert")).to_contain_text(
                "機器の確認が必要です（2台）"
            )

            printer = card.locator('.device[data-kind="receipt_printer"]')
            await expect(printer.locator(".device-kind")).to_have_text("レシートプリンター")
            await expect(printer.locator(".device-state")).to_have_text("用紙切れ")
            await expect(printer.locator(".device-reason")).to_have_text(PAPER_OUT_REASON)
            await expect(printer.locator(".device-since")).to_have_text("たった今から")
            colour = await printer.locator(".device-state").evaluate(
                "n => getComputedStyle(n).backgroundColor"
            )
            assert colour == "rgb(199, 119, 0)"  # amber

            camera = card.locator('.device[data-kind="document_camera"]')
            await expect(camera.locator(".device-kind")).to_have_text("書画カメラ")
            await expect(camera.locator(".device-state")).to_have_text("接続なし")
            await expect(camera.locator(".device-reason")).to_have_text(UNPLUGGED_REASON)
            await expect(camera).to_have_attribute(
                "title", "simulated document camera 320x240@10, stills 3508x2480"
            )

            rows = card.locator(".device")
            assert await rows.evaluate_all("rs => rs.map(r => r.dataset.kind)") == [
                "card_reader",
                "document_camera",
                "receipt_printer",
                "a4_printer",
                "camera",
                "microphone",
                "speaker",
            ]
            labels = await card.locator(".device-kind").all_text_contents()
            assert labels == [
                "カード読取機",
                "書画カメラ",
                "レシートプリンター",
                "A4プリンター",
                "カメラ",
                "マイク",
                "スピーカー",
            ]
            states = await card.locator(".device-state").all_text_contents()
            assert states == ["カードあり", "接続なし", "用紙切れ", "正常", "正常", "正常", "正常"]
            await page.screenshot(path=str(artifacts / "branch-devices.png"))

            # Paper loaded and the camera plugged in: the stripe goes away without a reload.
            receipt.driver.simulate(DeviceState.READY)
            await agent.devices.check_printers()
            await expect(printer.locator(".device-state")).to_have_text("正常")
            await expect(card.locator(".device-alert")).to_contain_text(
                "機器の確認が必要です（1台）"
            )
            document_camera.driver.simulate(DeviceState.READY)
            await agent.devices.check_document_camera()
            await expect(camera.locator(".device-state")).to_have_text("正常")
            await expect(camera.locator(".device-reason")).to_have_count(0)
            await expect(card.locator(".device-alert")).to_have_count(0)
            await expect(card).to_have_class("booth-card st-idle")
        finally:
            await browser.close()
