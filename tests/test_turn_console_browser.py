"""The staff browser's media through TURN: Chromium with the console's ``ice_relay_only``.

Signaling hands out credentials for a real coturn on loopback with each call; the console
tells the page to gather relayed candidates only (``iceTransportPolicy: "relay"``), as a
staff PC on a network that lets only the TURN server through would be set up. Proven by
content: the answer the page sent offers relayed candidates and nothing else (no address
of the staff PC reaches the booth), the pair the page selected is relayed through
coturn, and video flows both ways along it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Playwright

from booth.call import CallState
from tests.test_console_browser import (
    SentFrames,
    _answer_ringing_offer,
    _chromium,
    _frames_decoded,
    _resident_asks_for_help,
    _sign_in_hq,
    _start_taking_calls,
    browser_marks,
    eventually,
    running_system,
)
from tests.test_console_browser import playwright as playwright
from tests.turn_support import CoturnServer
from tests.turn_support import loopback_coturn as loopback_coturn

pytestmark = browser_marks  # a browser test, skipped without Debian's chromium

_SELECTED_LOCAL = """async () => {
    const pc = window.ekichika.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let pairId = null;
    stats.forEach((r) => {
        if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    const pair = pairId && stats.get(pairId);
    if (!pair || pair.state !== "succeeded") return null;
    const local = stats.get(pair.localCandidateId);
    return {
        type: local.candidateType,
        address: local.address || local.ip,
        protocol: local.protocol,
        relayProtocol: local.relayProtocol || null,
        url: local.url || null,
    };
}"""


async def test_the_staff_browser_sends_its_media_through_turn(
    tmp_path: Path, playwright: Playwright, loopback_coturn: CoturnServer, artifacts: Path
) -> None:
    async with running_system(
        tmp_path,
        console={"ice_relay_only": True},
        turn_urls=loopback_coturn.urls,
        turn_secret=loopback_coturn.secret,
    ) as system:
        context = await _chromium(playwright, tmp_path / "hq-profile", fake_media=True)
        try:
            page = await context.new_page()
            sent = SentFrames()
            sent.attach(page)
            await _sign_in_hq(page, system.console_url)
            await _start_taking_calls(page)
            call = await _resident_asks_for_help(system.booth)
            await _answer_ringing_offer(page)

            await eventually(lambda: _frames_decoded(page), 20, "booth frames decoded")
            await eventually(lambda: call.state is CallState.IN_CALL, 10, "the booth in the call")
            await eventually(
                lambda: system.booth.staff_video.frames > 5, 15, "staff video at the booth"
            )
            local: dict[str, Any] = await eventually(
                lambda: page.evaluate(_SELECTED_LOCAL), 10, "a selected candidate pair"
            )
            assert local["type"] == "relay", local
            assert local["address"] == loopback_coturn.address
            assert local["url"] is None or loopback_coturn.address in local["url"]

            # The answer offered relayed candidates only: the staff PC's own addresses
            # never reached the booth.
            answers = [
                m["payload"]["sdp"]
                for m in sent.messages()
                if m["type"] == "relay" and m["payload"]["type"] == "sdp"
            ]
            ice = [
                m["payload"]["candidate"]
                for m in sent.messages()
                if m["type"] == "relay" and m["payload"]["type"] == "ice"
            ]
            candidates = [
                line for sdp in answers for line in sdp.splitlines() if "candidate:" in line
            ] + [c for c in ice if c]
            assert candidates, "the page offered no candidate"
            kinds = {re.search(r" typ (\w+)", c).group(1) for c in candidates}  # type: ignore[union-attr]
            assert kinds == {"relay"}, candidates

            # coturn allocated for this call's credential (username <expiry>:<session>).
            assert call.session_id is not None
            user = rf"<\d+:{re.escape(call.session_id)}>"
            await loopback_coturn.wait_for_log(
                rf"user {user}: incoming packet ALLOCATE processed, success"
            )
            first = await _frames_decoded(page)
            await asyncio.sleep(1.0)
            await page.screenshot(path=str(artifacts / "console-in-call-through-turn.png"))
            assert await _frames_decoded(page) > first, "the booth's video keeps arriving"
            sent.validate()
        finally:
            await context.close()
