"""A dropped media path in Debian's Chromium: the console says 再接続中 and the call comes back.

The same system as :mod:`tests.test_console_browser` (signaling, console and booth agent
in this process, Chromium for the staff member). Once the call runs, every UDP packet on
loopback is dropped by an nftables rule in the test's network namespace: media (ICE over
UDP) stops, signaling (TCP) stays. The booth notices, offers a fresh peer connection of
the next generation, and the page shows that it is reconnecting; the kiosk tells the
resident the same. When the rule goes, the fresh connection carries the booth's video to
the page again — in the same session, which hang-up still ends.

Needs root (nftables; the test suite runs in its own network namespace as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, Playwright, expect

from booth.call import CallState
from shared.protocol import EndReason
from tests.test_console_browser import (
    System,
    _answer_ringing_offer,
    _chromium,
    _frames_decoded,
    _resident_asks_for_help,
    _session_row,
    _sign_in_hq,
    _start_taking_calls,
    eventually,
    pytestmark,
    system,
)
from tests.test_console_browser import playwright as playwright

__all__ = ["playwright", "pytestmark", "system"]

RECONNECTING_TEXT = "再接続中… ブースとの映像・音声を回復しています"
KIOSK_RECONNECTING = "接続を回復しています…"
TABLE = "ekichika_udp_outage"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables"
)


class UdpOutage:
    """Drops every UDP packet arriving on loopback while active (TCP is untouched)."""

    def __init__(self) -> None:
        self.active = False

    def start(self) -> None:
        rules = (
            f"table inet {TABLE} {{ chain input {{ type filter hook input priority -10;"
            ' iifname "lo" meta l4proto udp drop; }; }'
        )
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        self.active = True

    def stop(self) -> None:
        if self.active:
            subprocess.run(["nft", "delete", "table", "inet", TABLE], check=True)
            self.active = False


@pytest.fixture
def udp_outage() -> Iterator[UdpOutage]:
    outage = UdpOutage()
    try:
        yield outage
    finally:
        outage.stop()


@needs_root
async def test_console_shows_reconnecting_and_the_call_comes_back_after_a_media_drop(
    system: System,
    playwright: Playwright,
    tmp_path: Path,
    artifacts: Path,
    udp_outage: UdpOutage,
) -> None:
    booth = system.booth
    context = await _chromium(playwright, tmp_path / "hq-profile", fake_media=True)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, system.console_url)
        await _start_taking_calls(page)
        call = await _resident_asks_for_help(booth)
        await _answer_ringing_offer(page)
        await eventually(lambda: _frames_decoded(page), 20, "booth frames decoded in the page")
        await eventually(lambda: call.state is CallState.IN_CALL, 10, "the booth in the call")
        await expect(page.locator("body")).to_have_attribute("data-call", "connected")
        session_id = call.session_id
        assert session_id is not None
        assert await page.evaluate("window.ekichika.generation") == 0
        kiosk = await context.new_page()
        await kiosk.goto(system.kiosk_url)
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")

        udp_outage.start()
        await eventually(
            lambda: call.state is CallState.RECONNECTING, 15, "the booth to notice the drop"
        )
        status = page.locator("#remote-status")
        await expect(status).to_be_visible(timeout=15_000)
        await expect(status).to_have_text(RECONNECTING_TEXT, timeout=15_000)
        assert await page.locator("body").get_attribute("data-call") != "connected"
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "reconnecting")
        await expect(kiosk.locator("#screen-reconnecting h1")).to_have_text(KIOSK_RECONNECTING)
        # The booth offered a fresh connection; the page answers it on a new peer connection.
        await eventually(
            lambda: page.evaluate("window.ekichika.generation >= 1"),
            20,
            "the page to take the booth's fresh offer",
        )
        await kiosk.bring_to_front()
        await kiosk.screenshot(path=str(artifacts / "kiosk-reconnecting.png"))
        await page.bring_to_front()
        await page.screenshot(path=str(artifacts / "console-reconnecting.png"))

        udp_outage.stop()
        await eventually(lambda: call.state is CallState.IN_CALL, 30, "media back at the booth")
        await expect(page.locator("body")).to_have_attribute(
            "data-call", "connected", timeout=15_000
        )
        await expect(status).to_be_hidden()
        # The fresh peer connection decodes the booth's video (its counters start at 0).
        await eventually(lambda: _frames_decoded(page), 15, "booth frames on the fresh connection")
        first = await _frames_decoded(page)
        await eventually(
            lambda: _more_frames(page, first), 10, "the booth's video to keep arriving"
        )
        await expect(kiosk.locator("body")).to_have_attribute("data-screen", "in_call")
        await page.screenshot(path=str(artifacts / "console-reconnected.png"))
        assert call.session_id == session_id
        assert len(call.outages) == 1 and call.outages[0].restored_at is not None

        # The same session goes on: hang-up from the console ends it.
        await page.get_by_role("button", name="終了").click()
        await eventually(lambda: call.end_reason is not None, 10, "SessionEnded at the booth")
        assert call.end_reason is EndReason.HANGUP_STAFF
        row = await _session_row(system.database_url, session_id)
        assert row is not None and row.outcome == EndReason.HANGUP_STAFF.value
        assert await page.evaluate("window.ekichika.lastError") is None
        await kiosk.close()
    finally:
        await context.close()


async def _more_frames(page: Page, than: int) -> bool:
    return await _frames_decoded(page) > than
