"""A booth and an automated staff member in separate processes, for the call benchmarks.

:func:`running_booth` writes the configs (:func:`prepare_configs`), starts
``python -m signaling`` and ``python -m booth``, waits until the booth is signed in,
connects to the booth's kiosk WebSocket the way the kiosk page does, and signs in an
:class:`~bench.staff_peer.AutoStaff` who is available. Everything is stopped by PID on
the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import ChildProcess, free_port
from bench.staff_peer import AutoStaff, CallRecord
from shared import wire
from shared.kiosk_protocol import ChooseLanguage, KioskScreen, RequestHelpTouched, ScreenState
from shared.protocol import StaffRole
from shared.security import issue_staff_token, new_booth_credential
from shared.store import create_engine, migrate, session_factory
from shared.store.seed import seed_demo

BOOTH_ID = "seiseki-1"


@dataclass
class Params:
    calls: int = 20
    width: int = 640
    height: int = 480
    fps: int = 30
    floor_runs: int = 20
    hold_s: float = 0.5
    warmup: int = 1


@dataclass
class KioskDriver:
    """Plays the kiosk page: touches, and the screen snapshots the agent sends back."""

    ws: aiohttp.ClientWebSocketResponse
    screens: list[tuple[float, ScreenState]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                message = wire.decode(wire.CHANNELS["kiosk_agent_to_page"], msg.data)
                if isinstance(message, ScreenState):
                    self.screens.append((time.monotonic(), message))
                    self.changed.set()

    async def wait_screen(self, screen: KioskScreen, after: float, limit_s: float = 20) -> float:
        async with asyncio.timeout(limit_s):
            while True:
                for at, state in self.screens:
                    if at >= after and state.screen is screen:
                        return at
                self.changed.clear()
                await self.changed.wait()


async def prepare_configs(
    workdir: Path, params: Params, devices: dict[str, str] | None = None
) -> tuple[str, str, dict[str, int]]:
    db_url = f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    token_secret = secrets.token_urlsafe(32)
    credential = new_booth_credential()
    await migrate(db_url)
    engine = create_engine(db_url)
    try:
        await seed_demo(session_factory(engine), {BOOTH_ID: credential}, "bench-password")
    finally:
        await engine.dispose()
    ports = {"signaling": free_port(), "kiosk": free_port()}
    (workdir / "signaling.toml").write_text(
        f'host = "127.0.0.1"\nport = {ports["signaling"]}\n'
        f"database_url = {json.dumps(db_url)}\ntoken_secret = {json.dumps(token_secret)}\n"
        "auto_migrate = false\n",
        encoding="utf-8",
    )
    (workdir / "booth.toml").write_text(
        f"booth_id = {json.dumps(BOOTH_ID)}\ncredential = {json.dumps(credential)}\n"
        f'server_url = "ws://127.0.0.1:{ports["signaling"]}/ws/booth"\n'
        f'kiosk_host = "127.0.0.1"\nkiosk_port = {ports["kiosk"]}\n'
        'ice_host_addresses = ["127.0.0.1"]\nended_screen_s = 0.2\n'
        f"[devices]\nvideo_width = {params.width}\nvideo_height = {params.height}\n"
        f"video_fps = {params.fps}\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in (devices or {}).items()),
        encoding="utf-8",
    )
    return db_url, token_secret, ports


@dataclass
class BenchBooth:
    http: aiohttp.ClientSession
    health_url: str
    kiosk: KioskDriver
    staff: AutoStaff

    async def status(self) -> dict[str, Any]:
        """The booth agent's ``/healthz``."""
        async with self.http.get(self.health_url) as resp:
            result: dict[str, Any] = await resp.json()
            return result

    async def start_call(self, department: str = "shimin", limit_s: float = 20) -> CallRecord:
        """The resident asks for ``department``; staff accept; returns once WebRTC and
        the data channel are up and the kiosk shows the call."""
        asked = asyncio.get_running_loop().time()
        await self.kiosk.ws.send_str(wire.encode(ChooseLanguage(language="ja")))
        await self.kiosk.ws.send_str(wire.encode(RequestHelpTouched(department=department)))
        async with asyncio.timeout(limit_s):
            record = await self.staff.call_started.get()
            await record.connected.wait()
            await record.channel_open.wait()
        await self.kiosk.wait_screen(KioskScreen.IN_CALL, after=asked, limit_s=limit_s)
        return record


@contextlib.asynccontextmanager
async def running_booth(
    workdir: Path,
    params: Params,
    devices: dict[str, str] | None = None,
    booth_env: dict[str, str] | None = None,
) -> AsyncIterator[BenchBooth]:
    _, token_secret, ports = await prepare_configs(workdir, params, devices)
    signaling = ChildProcess(
        "signaling",
        [sys.executable, "-m", "signaling", "--config", str(workdir / "signaling.toml")],
        workdir / "signaling.log",
    )
    booth = ChildProcess(
        "booth",
        [sys.executable, "-m", "booth", "--config", str(workdir / "booth.toml")],
        workdir / "booth.log",
    )
    try:
        await signaling.start()
        await signaling.wait_listening("127.0.0.1", ports["signaling"], 30)
        await booth.start(env=booth_env)
        await booth.wait_listening("127.0.0.1", ports["kiosk"], 30)
        async with aiohttp.ClientSession() as http:
            health = f"http://127.0.0.1:{ports['kiosk']}/healthz"
            async with asyncio.timeout(20):
                while True:
                    async with http.get(health) as resp:
                        if (await resp.json()).get("signaling") == "connected":
                            break
                    await asyncio.sleep(0.05)
            ws = await http.ws_connect(f"http://127.0.0.1:{ports['kiosk']}/ws")
            kiosk = KioskDriver(ws)
            reader = asyncio.create_task(kiosk.read())
            staff = AutoStaff(
                f"ws://127.0.0.1:{ports['signaling']}/ws/staff",
                lambda: issue_staff_token(token_secret, "sato", StaffRole.HQ, 600),
                video_size=(params.width, params.height),
                fps=params.fps,
            )
            try:
                await staff.connect()
                await staff.set_available()
                yield BenchBooth(http, health, kiosk, staff)
            finally:
                await staff.aclose()
                reader.cancel()
                await ws.close()
    finally:
        await booth.aclose()
        await signaling.aclose()


def run_benchmark(run: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]]) -> int:
    """The common main of the call benchmarks: calm logs on stderr, WebRTC host candidates
    on loopback only (for the peers in this process), a temporary directory, and the
    result as one JSON object on stdout."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from booth.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="ekichika-bench-") as tmp:
        result = asyncio.run(run(Path(tmp)))
    print(json.dumps(result, ensure_ascii=False))
    return 0
