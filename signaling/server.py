"""The WebSocket front of the signaling server.

One :class:`SignalingServer` per app. It authenticates booths and staff, turns every frame
into a model (through :mod:`shared.wire`), hands the event to the pure
:class:`~signaling.matching.Dispatcher` and performs the actions it returns: frames to the
connected peers, records to the :class:`~signaling.store.SignalingStore`.

* Each connection has its own outgoing queue and writer task, so a slow peer never delays
  the others and a frame is never written by two tasks at once.
* One loop timer fires at the dispatcher's next deadline (ring timeouts, reconnect grace,
  decline cool-downs).
* Queue fan-out (QueueStatus, QueueSnapshot, BoothsSnapshot) is collected every
  ``queue_push_interval_s``; offers, call set-up and relays are sent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiohttp import WSMsgType, web
from pydantic import BaseModel, TypeAdapter

from shared.config import SignalingConfig
from shared.errors import AuthError, ProtocolError
from shared.protocol import (
    PROTOCOL_VERSION,
    AcceptOffer,
    BoothHello,
    BoothToServer,
    CancelRequest,
    DeclineOffer,
    DeviceStatusReport,
    ErrorCode,
    ErrorMessage,
    HangUp,
    MediaConnected,
    MediaFailed,
    Relay,
    RequestHelp,
    SetState,
    StaffHello,
    StaffState,
    StaffToServer,
    WrapUpDone,
)
from shared.security import check_booth_credential, verify_staff_token
from shared.wire import booth_to_server, decode, encode, staff_to_server
from signaling.matching import (
    Action,
    Dispatcher,
    Persist,
    Side,
    ToBooth,
)
from signaling.store import SignalingStore

log = logging.getLogger(__name__)

# WebSocket close codes used by the server (4000-4999 are free for applications).
CLOSE_BAD_PROTOCOL: Final = 4400  # unsupported_protocol
CLOSE_AUTH: Final = 4401  # auth_required, auth_failed, token_expired
CLOSE_FORBIDDEN: Final = 4403
CLOSE_DUPLICATE: Final = 4409  # replaced by a newer connection of the same booth/staff
CLOSE_SLOW: Final = 4408  # the peer did not read its frames
CLOSE_GOING_AWAY: Final = 1001

MAX_PENDING_FRAMES: Final = 2000
PUSH_SLICE: Final = 100  # fan-out frames sent per event-loop turn

H = TypeVar("H", BoothHello, StaffHello)


def hard_frame_limit(config: SignalingConfig) -> int:
    """Frames up to this size are read and answered with ``too_large`` when they exceed
    ``max_message_bytes``; larger ones make aiohttp close the connection (1009)."""
    return max(4 * config.max_message_bytes, config.max_message_bytes + 65536)


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Connection:
    """One authenticated WebSocket: an outgoing queue drained by its own writer task."""

    def __init__(self, ws: web.WebSocketResponse, label: str) -> None:
        self.ws = ws
        self.label = label
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue()
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer {label}")

    @property
    def closing(self) -> bool:
        return self._closing

    def send(self, frame: str) -> None:
        if self._closing:
            return
        if self._queue.qsize() >= MAX_PENDING_FRAMES:
            log.warning("%s does not read its frames; closing it", self.label)
            self.close(CLOSE_SLOW, "too many unread frames")
            return
        self._queue.put_nowait(frame)

    def send_error(self, error: ProtocolError) -> None:
        self.send(encode(_error_message(error)))

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (idempotent)."""
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_Close(code, reason))

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def aclose(self) -> None:
        self._closing = True
        if not self._writer.done():
            self._writer.cancel()
        await self.wait_closed()

    async def _write_loop(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    await self.ws.close(code=item.code, message=item.reason.encode()[:120])
                    return
                await self.ws.send_str(item)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the peer went away mid-write
            log.debug("%s: write failed: %s", self.label, err)
            self._closing = True


def _error_message(error: ProtocolError) -> ErrorMessage:
    return ErrorMessage(
        code=error.code,
        message=error.message[:200],
        ref=error.ref[:200] if error.ref else None,
        fatal=error.fatal,
    )


def _close_code(error: ProtocolError) -> int:
    if error.code is ErrorCode.UNSUPPORTED_PROTOCOL:
        return CLOSE_BAD_PROTOCOL
    if error.code is ErrorCode.FORBIDDEN:
        return CLOSE_FORBIDDEN
    return CLOSE_AUTH


class SignalingServer:
    """Connections, the dispatcher, its timer and the fan-out loop."""

    def __init__(
        self,
        config: SignalingConfig,
        store: SignalingStore,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self._clock = clock
        self.booths: dict[str, Connection] = {}
        self.staff: dict[str, Connection] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._pusher = asyncio.create_task(self._push_loop(), name="signaling-queue-push")
        self._reschedule()

    async def shutdown(self) -> None:
        """Close every WebSocket (1001) so that the handlers finish (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for conn in [*self.booths.values(), *self.staff.values()]:
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")

    async def aclose(self) -> None:
        await self.shutdown()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None

    def health(self) -> dict[str, Any]:
        return {
            "ok": not self._closed,
            "booths": len(self.booths),
            "staff": len(self.staff),
            "waiting": len(self.dispatcher.waiting),
            "sessions": sum(1 for s in self.dispatcher.sessions.values() if s.active),
        }

    # ------------------------------------------------------------------ actions

    def perform(self, actions: list[Action]) -> None:
        """Send frames to connected peers and queue records, in order."""
        encoded: dict[int, str] = {}
        for action in actions:
            if isinstance(action, Persist):
                self.store.record(action.record)
                continue
            conn = (
                self.booths.get(action.booth_id)
                if isinstance(action, ToBooth)
                else self.staff.get(action.staff_id)
            )
            if conn is None:
                continue
            frame = encoded.get(id(action.message))
            if frame is None:
                frame = encoded[id(action.message)] = encode(action.message)
            conn.send(frame)
        self._reschedule()

    def _reschedule(self) -> None:
        deadline = self.dispatcher.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if deadline is None or self._closed:
            return
        delay = max(0.0, deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)
        self._timer_at = deadline

    def _on_deadline(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.perform(self.dispatcher.tick(self._clock()))
        except Exception:
            log.exception("deadline processing failed")

    async def _push_loop(self) -> None:
        interval = max(0.01, self.config.queue_push_interval_s)
        while True:
            await asyncio.sleep(interval)
            try:
                actions = self.dispatcher.collect_pushes()
                # Large fan-outs go out in slices so that offers and relays are not held
                # up behind them.
                for start in range(0, len(actions), PUSH_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    self.perform(actions[start : start + PUSH_SLICE])
            except Exception:
                log.exception("queue fan-out failed")

    # ------------------------------------------------------------------ HTTP

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def handle_booth(self, request: web.Request) -> web.StreamResponse:
        ws = await self._prepare(request)
        try:
            await self._serve_booth(ws)
        finally:
            self._sockets.discard(ws)
        return ws

    async def handle_staff(self, request: web.Request) -> web.StreamResponse:
        origins = self.config.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            log.info("staff connection refused: origin not allowed")
            raise web.HTTPForbidden(text="origin not allowed")
        ws = await self._prepare(request)
        try:
            await self._serve_staff(ws)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _prepare(self, request: web.Request) -> web.WebSocketResponse:
        if self._closed:
            raise web.HTTPServiceUnavailable(text="shutting down")
        ws = web.WebSocketResponse(
            heartbeat=self.config.heartbeat_s, max_msg_size=hard_frame_limit(self.config)
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        return ws

    # ------------------------------------------------------------------ hello

    async def _receive_hello(
        self, ws: web.WebSocketResponse, adapter: TypeAdapter[Any], hello_type: type[H]
    ) -> H | None:
        """Wait for the hello frame. Non-fatal errors (bad JSON …) are answered and the
        wait goes on until ``hello_timeout_s``; anything else fails the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.hello_timeout_s
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                await self._fail(ws, AuthError(ErrorCode.AUTH_REQUIRED, "hello expected"))
                return None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None
            if msg.type is WSMsgType.ERROR:
                return None
            try:
                message = self._decode(msg.type, msg.data, adapter)
            except ProtocolError as err:
                await ws.send_str(encode(_error_message(err)))
                continue
            if not isinstance(message, hello_type):
                await self._fail(
                    ws, AuthError(ErrorCode.AUTH_REQUIRED, "the first message must be hello")
                )
                return None
            if message.protocol != PROTOCOL_VERSION:
                await self._fail(
                    ws,
                    ProtocolError(
                        ErrorCode.UNSUPPORTED_PROTOCOL,
                        f"protocol {message.protocol} is not supported; "
                        f"this server speaks {PROTOCOL_VERSION}",
                        ref="hello",
                        fatal=True,
                    ),
                )
                return None
            return message

    async def _fail(self, ws: web.WebSocketResponse, error: ProtocolError) -> None:
        with contextlib.suppress(Exception):
            await ws.send_str(encode(_error_message(error)))
            await ws.close(code=_close_code(error), message=error.code.value.encode())

    def _decode(self, kind: WSMsgType, data: Any, adapter: TypeAdapter[Any]) -> BaseModel:
        if kind is not WSMsgType.TEXT:
            raise ProtocolError(ErrorCode.BAD_JSON, "only text frames are accepted")
        message: BaseModel = decode(adapter, data, max_bytes=self.config.max_message_bytes)
        return message

    # ------------------------------------------------------------------ booths

    async def _serve_booth(self, ws: web.WebSocketResponse) -> None:
        hello = await self._receive_hello(ws, booth_to_server, BoothHello)
        if hello is None:
            return
        account = await self.store.booth_account(hello.booth_id)
        if account is None or not check_booth_credential(hello.credential, account.credential_hash):
            log.info("booth %s refused: wrong credential", hello.booth_id)
            await self._fail(ws, AuthError(ErrorCode.AUTH_FAILED, "unknown booth or credential"))
            return
        booth_id = hello.booth_id
        conn = Connection(ws, f"booth {booth_id}")
        _take_over(self.booths, booth_id, conn, "this booth connected again elsewhere")
        self.dispatcher.upsert_booth(account.info)
        log.info("booth %s connected", booth_id)
        try:
            self.perform(self.dispatcher.booth_connected(booth_id, self._clock()))
            await self._read_loop(ws, conn, booth_to_server, lambda m: self._on_booth(booth_id, m))
        finally:
            if self.booths.get(booth_id) is conn:
                del self.booths[booth_id]
                self.perform(self.dispatcher.booth_disconnected(booth_id, self._clock()))
                log.info("booth %s disconnected", booth_id)
            await conn.aclose()

    async def _on_booth(self, booth_id: str, message: BoothToServer) -> None:
        d = self.dispatcher
        now = self._clock()
        if isinstance(message, RequestHelp):
            await self._request_help(booth_id, message)
        elif isinstance(message, CancelRequest):
            self.perform(d.cancel_request(booth_id, message.request_id, now))
        elif isinstance(message, Relay):
            self.perform(d.relay(Side.BOOTH, booth_id, message))
        elif isinstance(message, HangUp):
            self.perform(d.hang_up(Side.BOOTH, booth_id, message.session_id, now))
        elif isinstance(message, MediaConnected):
            self.perform(d.media_connected(Side.BOOTH, booth_id, message.session_id, now))
        elif isinstance(message, MediaFailed):
            self.perform(d.media_failed(Side.BOOTH, booth_id, message.session_id, now))
        elif isinstance(message, DeviceStatusReport):
            self._device_status(booth_id, message)
        else:  # BoothHello
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, "already authenticated", ref="hello")

    def _device_status(self, booth_id: str, message: DeviceStatusReport) -> None:
        changes = self.dispatcher.report_devices(booth_id, message.devices)
        for device in changes.failed:
            log.warning(
                "booth %s: %s %s %s (%s)",
                booth_id,
                device.kind,
                device.name,
                device.state,
                device.reason or "no reason given",
            )
        for device in changes.recovered:
            log.info(
                "booth %s: %s %s recovered (%s)", booth_id, device.kind, device.name, device.state
            )

    async def _request_help(self, booth_id: str, message: RequestHelp) -> None:
        d = self.dispatcher
        args = (message.request_id, message.department, message.language)
        now = self._clock()
        if d.check_request(booth_id, *args):  # the same request again: idempotent
            self.perform(d.request_help(booth_id, *args, now))
            return
        actions = d.request_help(booth_id, *args, now)
        # Queued before the actions' own records, so the row precedes its timeline.
        stored = self.store.insert_request(d.new_request_record(booth_id, *args, now))
        stored.add_done_callback(
            lambda done: self._request_stored(booth_id, message.request_id, done)
        )
        log.info("booth %s requested help (%s)", booth_id, message.department)
        self.perform(actions)

    def _request_stored(self, booth_id: str, request_id: str, done: asyncio.Future[None]) -> None:
        """The database refused a request that is already queued (its id was used
        before): take it out of the queue again and tell the booth."""
        if done.cancelled() or done.exception() is None:
            return
        log.error(
            "booth %s: request %s could not be stored: %s", booth_id, request_id, done.exception()
        )
        try:
            actions = self.dispatcher.cancel_request(booth_id, request_id, self._clock())
        except ProtocolError:
            return  # already matched or closed; its records are dropped by the store
        self.perform(actions)
        conn = self.booths.get(booth_id)
        if conn is not None:
            conn.send_error(
                ProtocolError(ErrorCode.OUT_OF_ORDER, "request id already used", ref="request_help")
            )

    # ------------------------------------------------------------------ staff

    async def _serve_staff(self, ws: web.WebSocketResponse) -> None:
        hello = await self._receive_hello(ws, staff_to_server, StaffHello)
        if hello is None:
            return
        try:
            claims = verify_staff_token(self.config.token_secret, hello.token)
        except AuthError as err:
            log.info("staff connection refused: %s", err.code.value)
            await self._fail(ws, err)
            return
        account = await self.store.staff_account(claims.staff_id)
        if account is None or not account.active:
            log.info("staff %s refused: no active account", claims.staff_id)
            await self._fail(ws, AuthError(ErrorCode.AUTH_FAILED, "no active staff account"))
            return
        staff_id = claims.staff_id
        conn = Connection(ws, f"staff {staff_id}")
        _take_over(self.staff, staff_id, conn, "signed in again in another window")
        self.dispatcher.upsert_staff(account.info, account.role, account.site_id, account.skills)
        log.info("staff %s connected (%s)", staff_id, account.role.value)
        try:
            self.perform(self.dispatcher.staff_connected(staff_id, self._clock()))
            await self._read_loop(ws, conn, staff_to_server, lambda m: self._on_staff(staff_id, m))
        finally:
            if self.staff.get(staff_id) is conn:
                del self.staff[staff_id]
                self.perform(self.dispatcher.staff_disconnected(staff_id, self._clock()))
                log.info("staff %s disconnected", staff_id)
            await conn.aclose()

    async def _on_staff(self, staff_id: str, message: StaffToServer) -> None:
        d = self.dispatcher
        now = self._clock()
        if isinstance(message, SetState):
            self.perform(d.set_state(staff_id, StaffState(message.state), now))
        elif isinstance(message, AcceptOffer):
            self.perform(d.accept(staff_id, message.offer_id, now))
        elif isinstance(message, DeclineOffer):
            self.perform(d.decline(staff_id, message.offer_id, now))
        elif isinstance(message, WrapUpDone):
            self.perform(d.wrap_up_done(staff_id, message.session_id, message.note, now))
        elif isinstance(message, Relay):
            self.perform(d.relay(Side.STAFF, staff_id, message))
        elif isinstance(message, HangUp):
            self.perform(d.hang_up(Side.STAFF, staff_id, message.session_id, now))
        elif isinstance(message, MediaConnected):
            self.perform(d.media_connected(Side.STAFF, staff_id, message.session_id, now))
        elif isinstance(message, MediaFailed):
            self.perform(d.media_failed(Side.STAFF, staff_id, message.session_id, now))
        else:  # StaffHello
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, "already authenticated", ref="hello")

    # ------------------------------------------------------------------ reading

    async def _read_loop(
        self,
        ws: web.WebSocketResponse,
        conn: Connection,
        adapter: TypeAdapter[Any],
        handle: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Read frames until the socket closes; every error is answered, none is fatal."""
        async for msg in ws:
            if conn.closing:
                break
            if msg.type is WSMsgType.ERROR:
                log.info("%s: connection error: %s", conn.label, ws.exception())
                break
            try:
                message = self._decode(msg.type, msg.data, adapter)
                await handle(message)
            except ProtocolError as err:
                conn.send_error(err)
            except Exception:
                log.exception("%s: message handling failed", conn.label)
                conn.send_error(ProtocolError(ErrorCode.INTERNAL, "internal error"))


def _take_over(registry: dict[str, Connection], key: str, conn: Connection, why: str) -> None:
    """Register ``conn`` for ``key``; an older connection of the same booth or staff member
    is told why (fatal ``duplicate_connection``) and closed."""
    previous = registry.get(key)
    if previous is not None:
        log.info("%s connected again; closing the older connection", conn.label)
        previous.send_error(ProtocolError(ErrorCode.DUPLICATE_CONNECTION, why, fatal=True))
        previous.close(CLOSE_DUPLICATE, "duplicate connection")
    registry[key] = conn
