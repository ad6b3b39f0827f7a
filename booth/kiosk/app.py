"""The kiosk web app: one page, a local WebSocket of kiosk messages, and MJPEG video.

Served on 127.0.0.1 only (``kiosk_host``/``kiosk_port``) to the booth's own Chromium:

* ``GET /`` — the page (HTML, CSS and JS from ``static/``, no build step, no external
  resources);
* ``GET /ws`` — :data:`~shared.kiosk_protocol.PageToAgent` in,
  :data:`~shared.kiosk_protocol.AgentToPage` out (a full screen snapshot on every change);
* ``GET /media/staff.mjpg`` and ``GET /media/self.mjpg`` — multipart MJPEG of the latest
  staff frames and of the booth's own camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import WSMsgType, web

from booth.agent import BoothAgent
from booth.media import FrameBuffer
from booth.metrics import setup_booth_metrics
from shared import wire
from shared.errors import ProtocolError
from shared.kiosk_protocol import KioskError, ScreenState

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
MJPEG_BOUNDARY: Final = "kioskframe"

AGENT: Final = web.AppKey("agent", BoothAgent)


@dataclass
class _Connections:
    """Open kiosk sockets, closed on shutdown; ``closing`` ends the MJPEG streams."""

    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


CONNECTIONS: Final = web.AppKey("connections", _Connections)

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_kiosk_app(agent: BoothAgent) -> web.Application:
    """The kiosk app for ``agent`` (which the caller starts and closes)."""
    app = web.Application()
    app[AGENT] = agent
    app[CONNECTIONS] = _Connections()
    app.router.add_get("/", _index)
    app.router.add_get("/ws", _kiosk_socket)
    app.router.add_get("/media/staff.mjpg", _staff_video)
    app.router.add_get("/media/self.mjpg", _self_video)
    app.router.add_get("/healthz", _health)
    setup_booth_metrics(app, agent)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.on_response_prepare.append(_add_headers)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _on_shutdown(app: web.Application) -> None:
    app[CONNECTIONS].closing.set()
    for ws in list(app[CONNECTIONS].sockets):
        await ws.close()


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _health(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].status())


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in (f"http://{request.host}", f"https://{request.host}")


async def _kiosk_socket(request: web.Request) -> web.WebSocketResponse:
    if not _same_origin(request):
        raise web.HTTPForbidden(text="the kiosk page is served only to itself")
    agent = request.app[AGENT]
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=16 * 1024)
    await ws.prepare(request)
    sockets = request.app[CONNECTIONS].sockets
    sockets.add(ws)
    latest: list[ScreenState] = []
    changed = asyncio.Event()

    def listener(state: ScreenState) -> None:
        latest[:] = [state]
        changed.set()

    async def send_screens() -> None:
        while not ws.closed:
            await changed.wait()
            changed.clear()
            if latest:
                await ws.send_str(wire.encode(latest[0]))

    agent.add_listener(listener)
    sender = asyncio.create_task(send_screens())
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                touch = wire.decode(wire.kiosk_page_to_agent, message.data)
            except ProtocolError as err:
                await ws.send_str(wire.encode(KioskError(message=err.message)))
                continue
            await agent.handle_touch(touch)
    finally:
        sockets.discard(ws)
        agent.remove_listener(listener)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


async def _mjpeg(request: web.Request, buffer: FrameBuffer, max_fps: float) -> web.StreamResponse:
    closing = request.app[CONNECTIONS].closing
    response = web.StreamResponse(
        headers={"Content-Type": f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"}
    )
    await response.prepare(request)
    seen = 0 if buffer.latest is None else buffer.frames - 1
    try:
        while not closing.is_set():
            count = await buffer.wait_after(seen, 1.0)
            if count == seen:
                continue
            seen = count
            data = buffer.jpeg()
            if data is None:
                continue
            head = (
                f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            await response.write(head + data + b"\r\n")
            await asyncio.sleep(1.0 / max_fps)
    except (ConnectionError, asyncio.CancelledError):
        pass
    return response


async def _staff_video(request: web.Request) -> web.StreamResponse:
    return await _mjpeg(request, request.app[AGENT].staff_video, max_fps=15)


async def _self_video(request: web.Request) -> web.StreamResponse:
    return await _mjpeg(request, request.app[AGENT].self_video, max_fps=10)
