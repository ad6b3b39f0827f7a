"""The issuance panel in Debian's Chromium: 本人確認 from the card, options, fee, 発行 → the
booth fetches, checks and prints → 印刷済み; 再印刷 through the confirmation dialog; the
必要手続き一覧 on the receipt printer.

Signaling, the console (issuing with a local test CA) and the booth agent (simulated card
reader with the demo card, simulated printers, the CA as its trust root) run in this
process on loopback and share one seeded SQLite file, as in tests/test_console_browser.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Playwright, expect
from sqlalchemy import select

from booth.agent import BoothAgent
from booth.call import CallState
from booth.card_read import CardReadState
from booth.devices.printing import SimulatedA4Printer, SimulatedReceiptPrinter
from hq_console.app import create_app
from hq_console.issuance.signing import make_test_ca
from shared.config import BoothConfig, ConsoleConfig, DeviceConfig
from shared.kiosk_protocol import PinEntered
from shared.store.db import create_engine, session_factory
from shared.store.models import AuditRecord, IssuedDocument
from tests.signaling_support import TOKEN_SECRET, running_signaling, sqlite_url
from tests.test_console_browser import (
    System,
    _answer_ringing_offer,
    _chromium,
    _resident_asks_for_help,
    _sign_in_hq,
    _start_taking_calls,
    eventually,
    free_port,
)
from tests.test_console_browser import playwright as playwright

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium"),
]


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """tests/test_console_browser.py's system, with issuing keys and the booth trusting
    their root."""
    ca = make_test_ca(tmp_path / "ca")
    console_port = free_port()
    console_url = f"http://127.0.0.1:{console_port}"
    async with running_signaling(
        tmp_path, ring_timeout_s=20.0, allowed_origins=[console_url]
    ) as signaling:
        database_url = sqlite_url(tmp_path / "signaling.sqlite3")
        console = web.AppRunner(
            create_app(
                ConsoleConfig(
                    host="127.0.0.1",
                    port=console_port,
                    database_url=database_url,
                    token_secret=TOKEN_SECRET,
                    signaling_url=f"{signaling.ws_url}/ws/staff",
                    token_ttl_s=60,
                    issuing_key_path=str(ca.issuing_key),
                    issuing_cert_path=str(ca.issuing_cert),
                    issuing_chain_paths=[str(p) for p in ca.chain],
                    public_base_url=console_url,
                )
            ),
            shutdown_timeout=1.0,
        )
        await console.setup()
        booth = BoothAgent(
            BoothConfig(
                booth_id="seiseki-1",
                credential=signaling.booth_credentials["seiseki-1"],
                server_url=f"{signaling.ws_url}/ws/booth",
                console_url=console_url,
                issuing_ca_paths=[str(ca.root_cert)],
                kiosk_port=0,
                devices=DeviceConfig(
                    video_width=320,
                    video_height=240,
                    video_fps=15,
                    spool_path=str(tmp_path / "spool.sqlite3"),
                ),
                ice_host_addresses=["127.0.0.1"],
                reconnect_min_s=0.1,
                reconnect_max_s=0.5,
                ended_screen_s=30.0,
            )
        )
        try:
            await web.TCPSite(console, "127.0.0.1", console_port).start()
            await booth.start()
            await eventually(lambda: booth.signaling.connected, 10, "the booth to sign in")
            yield System(signaling, database_url, console_url, booth, "")
        finally:
            await booth.aclose()
            await console.cleanup()


async def _rows(database_url: str, model: type[AuditRecord] | type[IssuedDocument]) -> list[object]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as db:
            return list(await db.scalars(select(model)))
    finally:
        await engine.dispose()


async def test_staff_identify_the_resident_issue_and_see_it_printed(
    system: System, playwright: Playwright, tmp_path: Path, artifacts: Path
) -> None:
    booth = system.booth
    assert booth.devices.a4 is not None and booth.devices.receipt is not None
    a4 = booth.devices.a4.driver
    receipt = booth.devices.receipt.driver
    assert isinstance(a4, SimulatedA4Printer) and isinstance(receipt, SimulatedReceiptPrinter)
    context = await _chromium(playwright, tmp_path / "issuance-profile", fake_media=True)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: call.state is CallState.IN_CALL, 15, "the booth in the call")
        panel = page.locator("#issuance-panel")
        await expect(panel).to_be_visible()
        await expect(page.locator("#iss-match")).to_be_disabled()

        # The card (the simulated reader holds the demo card): the resident types the PIN.
        read = page.get_by_role("button", name="カード読み取り")
        await expect(read).to_be_enabled(timeout=10_000)
        await read.click()
        await eventually(
            lambda: booth.card_read.state is CardReadState.WAITING_FOR_PIN, 10, "the PIN pad"
        )
        await booth.handle_touch(PinEntered(pin="1234"))
        await expect(page.locator("#iss-card")).to_have_text(
            "カードの情報: 髙橋 𠮷子（1985年4月1日生）", timeout=10_000
        )

        # 本人確認: 一致.
        await page.get_by_role("button", name="住民記録と照合").click()
        verdict = page.locator("#iss-verdict")
        await expect(verdict).to_have_attribute("data-result", "match")
        await expect(verdict.locator(".iss-badge")).to_have_text("一致")

        # 住民票の写し, part of the household (the resident only), with 続柄, 2 copies.
        await page.get_by_label("住民票の写し").check()
        await page.get_by_label("世帯の一部").check()
        members = page.locator("#iss-members label")
        await expect(members).to_have_count(2)
        await expect(members.nth(0)).to_have_text("髙橋 𠮷子（世帯主）ご本人")
        await expect(members.nth(1)).to_contain_text("髙橋 陽斗（子）")
        await page.get_by_label("世帯主・続柄を記載").check()
        await page.locator("#iss-copies").fill("2")
        await expect(page.locator("#iss-fee")).to_have_text("手数料 300円 × 2通 ＝ 600円")
        await expect(panel).to_contain_text("お支払いは窓口で")

        await page.get_by_role("button", name="発行してブースで印刷").click()
        row = page.locator("#iss-docs-body tr").first
        await expect(row).to_have_attribute("data-state", "printed", timeout=20_000)
        await expect(row.locator(".iss-state strong")).to_have_text("印刷済み")
        await expect(row).to_contain_text("ブースのプリンターから証明書を受け取る")
        (document,) = await _rows(system.database_url, IssuedDocument)
        assert isinstance(document, IssuedDocument)
        await expect(row.locator(".iss-number")).to_have_text(document.document_number)
        assert json.loads(document.options) == {
            "members": 1,
            "scope": "members",
            "show_honseki": False,
            "show_relationship": True,
        }
        assert document.copies == 2 and document.fee_total_yen == 600
        assert [(job, pdf) for job, pdf in a4.printed] == [(document.id, document.pdf)]

        # 再印刷: the dialog first; やめる does nothing, 再印刷する prints once more.
        await row.get_by_role("button", name="再印刷").click()
        dialog = page.locator("#iss-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog).to_contain_text("再印刷として記録されます")
        await page.locator("#issuance-panel").screenshot(
            path=str(artifacts / "console-issuance-reprint-dialog.png")
        )
        await dialog.get_by_role("button", name="やめる").click()
        await expect(dialog).to_be_hidden()
        await row.get_by_role("button", name="再印刷").click()
        await dialog.get_by_role("button", name="再印刷する").click()
        await expect(row.locator(".iss-state")).to_contain_text("再印刷 1 回", timeout=20_000)
        await expect(row).to_have_attribute("data-state", "printed")
        assert [job for job, _ in a4.printed] == [document.id, document.id]
        reprinted = [
            r
            for r in await _rows(system.database_url, AuditRecord)
            if isinstance(r, AuditRecord) and r.action == "certificate_reprinted"
        ]
        assert len(reprinted) == 1 and reprinted[0].object_id == document.id

        # 必要手続き一覧 on the receipt printer (市民課's list, one line edited).
        await page.locator("#iss-checklist-box summary").click()
        first_item = page.locator("#iss-check-body tr").first.get_by_label("手続き")
        await first_item.fill("マイナンバーカードの住所変更")
        await page.get_by_role("button", name="必要手続き一覧を印刷").click()
        await expect(page.locator("#iss-check-state")).to_have_text("印刷済み", timeout=20_000)
        assert len(receipt.printed) == 1
        await page.locator("#issuance-panel").scroll_into_view_if_needed()
        await page.locator("#issuance-panel").screenshot(
            path=str(artifacts / "console-issuance-panel.png")
        )
    finally:
        await context.close()
