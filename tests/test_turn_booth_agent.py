"""The booth agent's TURN settings in a real call: signaling hands out TURN credentials for
a coturn on loopback, the booth is configured relay-only over TCP (``ice_relay_only``,
``ice_turn_transport``), and the call's media goes booth → coturn over TCP → staff."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.staff_peer import AutoStaff
from booth.agent import BoothAgent
from booth.ice import selected_candidate_path
from tests.call_support import booth_config, start_call
from tests.signaling_support import RunningSignaling, running_signaling
from tests.turn_support import CoturnServer
from tests.turn_support import loopback_coturn as loopback_coturn


@pytest.fixture
async def signaling(
    tmp_path: Path, loopback_coturn: CoturnServer
) -> AsyncIterator[RunningSignaling]:
    async with running_signaling(
        tmp_path, turn_urls=loopback_coturn.urls, turn_secret=loopback_coturn.secret
    ) as running:
        yield running


async def test_a_relay_only_booth_reaches_staff_through_turn_over_tcp(
    signaling: RunningSignaling, loopback_coturn: CoturnServer, tmp_path: Path
) -> None:
    config = booth_config(signaling, tmp_path).model_copy(
        update={"ice_relay_only": True, "ice_turn_transport": "tcp"}
    )
    agent = BoothAgent(config)
    await agent.start()
    try:
        async with AutoStaff(
            f"{signaling.ws_url}/ws/staff", signaling.staff_token("sato"), fps=10
        ) as staff:
            record = await start_call(agent, staff)
            call = agent.call
            assert call is not None and call._pc is not None
            path = selected_candidate_path(call._pc)
            assert path is not None
            assert (path.local_type, path.relay_protocol) == ("relay", "tcp")
            assert path.local_address[0] == loopback_coturn.address
            # Media flowed along it: stamped booth frames decoded at staff.
            async with asyncio.timeout(15):
                await record.first_frame.wait()
            before = len(record.stamps)
            await asyncio.sleep(1.0)
            assert len(record.stamps) >= before + 5, "booth video stalled on the relayed path"
            assert record.stamps == sorted(record.stamps)
            # coturn allocated for the session's credential (username <expiry>:<session>).
            assert call.session_id is not None
            user = rf"<\d+:{re.escape(call.session_id)}>"
            await loopback_coturn.wait_for_log(
                rf"user {user}: incoming packet ALLOCATE processed, success"
            )
    finally:
        await agent.aclose()
