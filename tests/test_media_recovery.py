"""Recovery from drops: the real booth agent in its own network namespace, signaling and an
automated staff member on the other side of an emulated link, stamped booth video flowing.
The line goes down completely (nftables drops every packet arriving over the link, at both
ends) and comes back: the booth renegotiates a fresh peer connection in the same session,
or ends the session with ``media_failed`` when the outage outlasts its limit."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bench.media_recovery import (
    HqSide,
    ask_for_help,
    booth_config,
    call_state,
    line_down,
    line_up,
    next_call,
    start_booth,
    start_hq,
    stop_hq,
    wait_new_frames,
)
from booth.agent import BoothAgent
from booth.call import CallState
from booth.ice import restrict_host_addresses
from shared.kiosk_protocol import KioskScreen, ScreenState
from shared.protocol import (
    EndReason,
    PrintJobStatus,
    ReceiptDocument,
    ReceiptRule,
    ReceiptText,
)
from tests.netlink import BOOTH_ADDRESS, HQ_ADDRESS, EmulatedLink
from tests.netlink.fixtures import link_fixture

lan_link = link_fixture("lan")

RECEIPT = ReceiptDocument(
    title="受付票",
    blocks=[ReceiptText(text="受付票", size=44, bold=True, align="center"), ReceiptRule()],
)


@pytest.fixture
async def hq(lan_link: EmulatedLink, tmp_path: Path) -> AsyncIterator[HqSide]:
    restrict_host_addresses([BOOTH_ADDRESS, HQ_ADDRESS])
    # The kernel's default SYN retransmissions: the booth's own connect timeout
    # (connect_timeout_s) brings signaling back soon after the line returns.
    side = await lan_link.hq.run(start_hq, tmp_path)
    try:
        yield side
    finally:
        await lan_link.hq.run(stop_hq, side)
        restrict_host_addresses([])


async def _booth(link: EmulatedLink, hq: HqSide, tmp_path: Path, **config: float) -> BoothAgent:
    return await link.booth.run(start_booth, booth_config(hq.booth_url, tmp_path, **config))


def _screen(agent: BoothAgent) -> ScreenState:
    return agent.screen()


async def _eventually(check: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _outcome(database: Path, session_id: str) -> str | None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT outcome FROM call_sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else row[0]


async def test_ten_seconds_without_a_line_renegotiate_the_same_session(
    lan_link: EmulatedLink, hq: HqSide, tmp_path: Path
) -> None:
    link = lan_link
    agent = await _booth(link, hq, tmp_path)
    try:
        await link.booth.run(ask_for_help, agent)
        record = await link.hq.run(next_call, hq)
        session_id = record.session_id
        await _eventually(lambda: call_state(agent) is CallState.IN_CALL, 10, "in call")

        # The line goes down for 10 s: the kiosk says it is restoring the connection.
        await line_down(link, tmp_path)
        down_at = time.monotonic()
        screens: list[KioskScreen] = []
        while time.monotonic() - down_at < 10:
            screens.append((await link.booth.call(_screen, agent)).screen)
            await asyncio.sleep(0.2)
        assert KioskScreen.RECONNECTING in screens
        assert screens[-1] is KioskScreen.RECONNECTING
        assert call_state(agent) is CallState.RECONNECTING
        frames_before = record.frames

        # The line comes back: stamped booth frames of a fresh connection within 5 s.
        await line_up(link)
        up_at = time.monotonic()
        first = await link.hq.run(wait_new_frames, record, 0, up_at, 5.0)
        assert first - up_at <= 5.0
        assert record.frames > frames_before
        assert record.generation >= 1 and record.generation in record.connected_at_by_generation

        # Same session on both sides; the kiosk is back in the call.
        await _eventually(lambda: call_state(agent) is CallState.IN_CALL, 5, "in call again")
        call = agent.call
        assert call is not None and call.session_id == session_id
        assert call.generation == record.generation
        (outage,) = call.outages
        assert outage.restored_at is not None and outage.attempts >= 1
        screen = await link.booth.call(_screen, agent)
        assert screen.screen is KioskScreen.IN_CALL

        # The data channel came back with it: a print job round trip.
        await link.hq.run(hq.staff.print_receipt, session_id, "job-after-drop", RECEIPT)
        done = await link.hq.run(hq.staff.print_status, session_id, "job-after-drop", "printed")
        assert isinstance(done, PrintJobStatus) and done.state.value == "printed"

        # Booth video keeps flowing, frame numbers only ever growing.
        seen = record.frames
        await asyncio.sleep(1.0)
        assert record.frames >= seen + 5
        assert record.stamps == sorted(record.stamps)
        assert _outcome(hq.database_path, session_id) is None  # the session is still live
    finally:
        await link.booth.run(agent.aclose)


async def test_an_outage_past_the_limit_ends_the_session_as_media_failed(
    lan_link: EmulatedLink, hq: HqSide, tmp_path: Path
) -> None:
    link = lan_link
    agent = await _booth(link, hq, tmp_path, media_outage_limit_s=3.0)
    try:
        await link.booth.run(ask_for_help, agent)
        record = await link.hq.run(next_call, hq)
        session_id = record.session_id
        await _eventually(lambda: call_state(agent) is CallState.IN_CALL, 10, "in call")

        await line_down(link, tmp_path)
        # lost after the grace (2 s), given up 3 s later
        await _eventually(lambda: call_state(agent) is CallState.FAILED, 9, "the call to fail")
        call = agent.call
        assert call is not None and call.media_lost
        assert call.end_reason is EndReason.MEDIA_FAILED
        screen = await link.booth.call(_screen, agent)
        assert screen.screen is KioskScreen.ENDED
        assert screen.error is not None and "通信が途切れた" in screen.error
        await asyncio.sleep(2.0)
        await line_up(link)

        # Once the line is back the server learns why, and the session row records it.
        await _eventually(
            lambda: _outcome(hq.database_path, session_id) == EndReason.MEDIA_FAILED.value,
            20,
            "the media_failed outcome in the database",
        )
        await _eventually(lambda: record.ended is not None, 5, "staff told the call ended")
        assert record.ended is not None and record.ended.reason is EndReason.MEDIA_FAILED
    finally:
        await link.booth.run(agent.aclose)
