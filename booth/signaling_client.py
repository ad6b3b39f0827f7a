"""The booth's connection to the signaling server.

One long-lived WebSocket on the booth channel: hello with the booth id and credential,
typed messages in and out through :mod:`shared.wire`, WebSocket heartbeats, and a
reconnect loop with exponential backoff and jitter (``reconnect_min_s`` …
``reconnect_max_s``). A refused hello (wrong credential, unsupported protocol, the booth
already connected elsewhere) is reported once and retried slowly, never in a tight loop.
With several signaling nodes (``server_urls``) each retry goes to the next one, so a booth
whose node died is connected to another within about ``reconnect_min_s``; the server
resumes its session there (the welcome carries the session id).

The client remembers the resident's pending :class:`~shared.protocol.RequestHelp` and sends
it again after a reconnect, unless the server's welcome says it still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from typing import Final, Protocol

import aiohttp

from shared import wire
from shared.config import BoothConfig
from shared.errors import ProtocolError
from shared.protocol import (
    BoothHello,
    BoothToServer,
    BoothWelcome,
    CallStarted,
    CancelRequest,
    ErrorCode,
    ErrorMessage,
    RequestClosed,
    RequestHelp,
    ServerToBooth,
)

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 10.0
# Refusals that will not fix themselves within seconds: retry at the slowest pace.
_SLOW_RETRY_CODES: Final = frozenset(
    {
        ErrorCode.AUTH_FAILED,
        ErrorCode.UNSUPPORTED_PROTOCOL,
        ErrorCode.DUPLICATE_CONNECTION,
        ErrorCode.FORBIDDEN,
    }
)


class SignalingState(enum.Enum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"  # welcome received
    WAITING_TO_RETRY = "waiting_to_retry"
    CLOSED = "closed"


class BoothSignalingHandler(Protocol):
    """What the client reports to its owner (the agent)."""

    async def on_welcome(self, welcome: BoothWelcome) -> None: ...

    async def on_message(self, message: ServerToBooth) -> None: ...

    async def on_disconnected(self, reason: str) -> None: ...


class _Refused(Exception):
    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(error.message)
        self.error = error


def backoff_delay(attempt: int, minimum_s: float, maximum_s: float) -> float:
    """Exponential backoff with ±25 % jitter, never above ``maximum_s``."""
    base = min(maximum_s, minimum_s * (2 ** min(attempt, 30)))
    jittered: float = base * random.uniform(0.75, 1.25)
    return min(maximum_s, jittered)


class BoothSignalingClient:
    def __init__(self, config: BoothConfig, handler: BoothSignalingHandler) -> None:
        self._config = config
        self._handler = handler
        self.state = SignalingState.STOPPED
        self.welcome: BoothWelcome | None = None
        self.last_error: str | None = None  # why the last connection ended or was refused
        self.connections = 0  # welcomes received so far
        self.pending_request: RequestHelp | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._urls = config.signaling_urls
        self._url_index = 0

    @property
    def server_url(self) -> str:
        """The signaling server this client is connected (or connecting) to."""
        return self._urls[self._url_index]

    @property
    def connected(self) -> bool:
        return self.state is SignalingState.CONNECTED

    async def start(self) -> None:
        if self._task is not None or self.state is SignalingState.CLOSED:
            return
        # A connection attempt that gets no answer is given up after connect_timeout_s and
        # retried: a SYN sent while the line was down would otherwise wait for the kernel's
        # next retransmission (seconds apart after the first few).
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._config.connect_timeout_s)
        )
        self._task = asyncio.create_task(self._run(), name="booth-signaling")

    async def aclose(self) -> None:
        if self.state is SignalingState.CLOSED:
            return
        await self._set_state(SignalingState.CLOSED)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def wait_connected(self, timeout_s: float = 10.0) -> BoothWelcome:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.connected)
        assert self.welcome is not None
        return self.welcome

    # ---------------------------------------------------------------- sending

    async def send(self, message: BoothToServer) -> bool:
        """Send one message; False (and nothing sent) while disconnected."""
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            logger.info("signaling down: %s not sent", message.type)
            return False
        try:
            await ws.send_str(wire.encode(message))
        except (aiohttp.ClientError, ConnectionError) as err:
            logger.info("signaling send of %s failed: %s", message.type, err)
            return False
        return True

    async def request_help(self, request: RequestHelp) -> bool:
        """Ask for a remote counter; the request is kept and re-sent after a reconnect."""
        self.pending_request = request
        return await self.send(request)

    async def cancel_request(self, request_id: str) -> bool:
        self.clear_pending(request_id)
        return await self.send(CancelRequest(request_id=request_id))

    def clear_pending(self, request_id: str) -> None:
        if self.pending_request is not None and self.pending_request.request_id == request_id:
            self.pending_request = None

    # ---------------------------------------------------------------- connection loop

    async def _set_state(self, state: SignalingState) -> None:
        async with self._changed:
            self.state = state
            self._changed.notify_all()

    def _closing(self) -> bool:
        return self.state is SignalingState.CLOSED

    async def _run(self) -> None:
        attempt = 0
        cfg = self._config
        while not self._closing():
            slow = False
            await self._set_state(SignalingState.CONNECTING)
            try:
                await self._connect_once()
                reason = "the server closed the connection"
            except _Refused as err:
                slow = err.error.code in _SLOW_RETRY_CODES
                reason = f"refused: {err.error.code.value}: {err.error.message}"
            except ProtocolError as err:
                reason = f"protocol error: {err.message}"
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if self._closing():
                return
            was_connected = self._ws is not None
            self._ws = None
            if was_connected:
                attempt = 0
            if reason != self.last_error or len(self._urls) > 1:
                logger.warning("signaling connection to %s lost: %s", self.server_url, reason)
            self.last_error = reason
            self._url_index = (self._url_index + 1) % len(self._urls)
            await self._set_state(SignalingState.WAITING_TO_RETRY)
            with contextlib.suppress(Exception):
                await self._handler.on_disconnected(reason)
            if slow:
                delay = cfg.reconnect_max_s * random.uniform(1.0, 1.25)
            else:
                delay = backoff_delay(attempt, cfg.reconnect_min_s, cfg.reconnect_max_s)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        assert self._http is not None
        cfg = self._config
        async with self._http.ws_connect(
            self.server_url, heartbeat=cfg.heartbeat_s, max_msg_size=wire.MAX_MESSAGE_BYTES
        ) as ws:
            await ws.send_str(
                wire.encode(BoothHello(booth_id=cfg.booth_id, credential=cfg.credential))
            )
            first = await asyncio.wait_for(ws.receive(), max(HELLO_TIMEOUT_S, cfg.heartbeat_s))
            if first.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError("the server closed the connection before welcome")
            message = wire.decode(wire.server_to_booth, first.data)
            if isinstance(message, ErrorMessage):
                raise _Refused(message)
            if not isinstance(message, BoothWelcome):
                raise ProtocolError(ErrorCode.OUT_OF_ORDER, f"expected welcome, got {message.type}")
            self._ws = ws
            self.welcome = message
            self.connections += 1
            if self.last_error is not None:
                logger.info("signaling connected again (%s)", message.booth.booth_id)
            else:
                logger.info("signaling connected (%s)", message.booth.booth_id)
            self.last_error = None
            await self._set_state(SignalingState.CONNECTED)
            await self._dispatch_welcome(message)
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    incoming = wire.decode(wire.server_to_booth, frame.data)
                except ProtocolError as err:
                    logger.warning("ignored a bad message from signaling: %s", err.message)
                    continue
                await self._dispatch(incoming)

    async def _dispatch_welcome(self, welcome: BoothWelcome) -> None:
        try:
            await self._handler.on_welcome(welcome)
        except Exception:
            logger.exception("handling the welcome failed")
        pending = self.pending_request
        if (
            pending is not None
            and welcome.pending_request_id != pending.request_id
            and welcome.session_id is None
        ):
            logger.info("re-sending pending request %s", pending.request_id)
            await self.send(pending)

    async def _dispatch(self, message: ServerToBooth) -> None:
        if isinstance(message, CallStarted | RequestClosed):
            self.clear_pending(message.request_id)
        if isinstance(message, ErrorMessage):
            logger.warning(
                "signaling error %s: %s (ref %s)", message.code.value, message.message, message.ref
            )
        try:
            await self._handler.on_message(message)
        except Exception:
            logger.exception("handling %s failed", message.type)
