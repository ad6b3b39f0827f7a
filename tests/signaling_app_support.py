"""A real signaling server whose app and :class:`SignalingServer` the test can inspect
(queued frames, metrics registry), and clients that connect from a chosen local address.

The network namespace of the tests has 127.0.0.1 and 127.0.0.2 on ``lo``: a client bound
to 127.0.0.2 is "another source address" for the server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from pydantic import TypeAdapter

from shared.config import SignalingConfig
from shared.protocol import ServerToBooth, ServerToStaff
from signaling.app import METRICS_KEY, SERVER_KEY, create_app
from signaling.metrics import SignalingMetrics
from signaling.server import SignalingServer
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    TEST_TIMINGS,
    TOKEN_SECRET,
    BoothClient,
    ProtocolClient,
    RunningSignaling,
    StaffClient,
    StaffTokenFactory,
    prepare_database,
    sqlite_url,
)


class SignalingApp(NamedTuple):
    running: RunningSignaling
    server: SignalingServer
    metrics: SignalingMetrics
    base_url: str  # http://127.0.0.1:PORT


@contextlib.asynccontextmanager
async def running_signaling_app(
    directory: Path, *, database_path: Path | None = None, **overrides: Any
) -> AsyncIterator[SignalingApp]:
    """Like ``running_signaling``, with the server object and its metrics."""
    db_path = database_path or directory / "signaling.sqlite3"
    url = sqlite_url(db_path)
    await prepare_database(url)
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "database_url": url,
        "token_secret": TOKEN_SECRET,
        "node_id": "test-node",
        **TEST_TIMINGS,
        **overrides,
    }
    config = SignalingConfig(**settings)
    app = create_app(config)
    runner = aiohttp.web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        config = config.model_copy(update={"port": port})
        running = RunningSignaling(
            config,
            f"ws://127.0.0.1:{port}",
            dict(BOOTH_CREDENTIALS),
            StaffTokenFactory(TOKEN_SECRET),
        )
        yield SignalingApp(running, app[SERVER_KEY], app[METRICS_KEY], f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def booth_from(ws_url: str, local_host: str = "127.0.0.1") -> BoothClient:
    """A booth WebSocket (no hello yet) from ``local_host``; raises
    ``aiohttp.WSServerHandshakeError`` when the server refuses the upgrade."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local_host, 0)))
    try:
        ws = await session.ws_connect(ws_url + "/ws/booth")
    except BaseException:
        await session.close()
        raise
    return ProtocolClient(session, ws, TypeAdapter(ServerToBooth))


async def staff_from(ws_url: str, local_host: str = "127.0.0.1") -> StaffClient:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local_host, 0)))
    try:
        ws = await session.ws_connect(ws_url + "/ws/staff")
    except BaseException:
        await session.close()
        raise
    return ProtocolClient(session, ws, TypeAdapter(ServerToStaff))
