"""A booth agent and an automated staff member in one call, for the tests of what
happens inside a call (card read, printing, document stills).

Import the fixtures into a test module by name::

    from tests.call_support import signaling as signaling, staff as staff
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.staff_peer import AutoStaff, CallRecord
from booth.agent import BoothAgent
from shared.config import BoothConfig, DeviceConfig
from shared.kiosk_protocol import ChooseLanguage, RequestHelpTouched
from tests.signaling_support import RunningSignaling, running_signaling


def booth_config(signaling: RunningSignaling, tmp_path: Path, **devices: Any) -> BoothConfig:
    """Booth ``seiseki-1`` on loopback with small video, quick reconnects, its spool in
    ``tmp_path``; ``devices`` are DeviceConfig fields."""
    return BoothConfig(
        booth_id="seiseki-1",
        credential=signaling.booth_credentials["seiseki-1"],
        server_url=f"{signaling.ws_url}/ws/booth",
        kiosk_port=0,
        devices=DeviceConfig(
            video_width=320,
            video_height=240,
            video_fps=10,
            spool_path=str(tmp_path / "spool.sqlite3"),
            **devices,
        ),
        ice_host_addresses=["127.0.0.1"],
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        ended_screen_s=0.5,
    )


async def start_call(agent: BoothAgent, staff: AutoStaff) -> CallRecord:
    """The resident asks for 市民課 and staff accept; returns once WebRTC and the data
    channel are up."""
    await staff.set_available()
    await agent.handle_touch(ChooseLanguage(language="ja"))
    await agent.handle_touch(RequestHelpTouched(department="shimin"))
    async with asyncio.timeout(15):
        record = await staff.call_started.get()
        await record.connected.wait()
        await record.channel_open.wait()
    return record


@pytest.fixture
async def signaling(tmp_path: Path) -> AsyncIterator[RunningSignaling]:
    async with running_signaling(tmp_path) as running:
        yield running


@pytest.fixture
async def staff(signaling: RunningSignaling) -> AsyncIterator[AutoStaff]:
    async with AutoStaff(
        f"{signaling.ws_url}/ws/staff", signaling.staff_token("sato"), fps=10
    ) as peer:
        yield peer
