"""The WebSocket front of the signaling server.

One :class:`SignalingServer` per app. It authenticates booths and staff, turns every frame
into a model (through :mod:`shared.wire`), hands the event to the pure
:class:`~signaling.matching.Dispatcher` and performs the actions it returns: frames to the
connected peers, records to the :class:`~signaling.store.SignalingStore`.

* Each connection has its own outgoing queue and writer task, so a slow peer never delays
  the others and a frame is never written by two tasks at once. The queue is bounded
  (``send_queue_max_frames``/``send_queue_max_bytes``): a peer that does not read is
  closed (4408). Queue and booth snapshots and queue status replace their unsent
  predecessor instead of piling up.
* Relays are the hot path: a ``relay`` frame that validates strictly goes on to the other
  peer as the text it came in (no second serialisation; see :func:`shared.wire.decode_frame`),
  written at once when nothing is queued or buffered for that peer.
* Limits (docs/architecture.md "Limits"): a message budget per connection (token bucket;
  ``rate_limited``, then 1008), frames over ``max_message_bytes`` refused before JSON
  parsing, and authentication failures throttled per source address (HTTP 429 before
  the upgrade, 4429 after it).
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
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol, TypeVar

from aiohttp import WSMsgType, web
from pydantic import BaseModel, TypeAdapter

from shared.config import SignalingConfig
from shared.errors import AuthError, ProtocolError
from shared.protocol import (
    PROTOCOL_VERSION,
    AcceptOffer,
    BoothHello,
    BoothsSnapshot,
    BoothToServer,
    CancelRequest,
    DeclineOffer,
    DeviceStatusReport,
    ErrorCode,
    ErrorMessage,
    HangUp,
    MediaConnected,
    MediaFailed,
    Offer,
    QueueSnapshot,
    QueueStatus,
    Relay,
    RequestHelp,
    SetState,
    StaffHello,
    StaffState,
    StaffToServer,
    WrapUpDone,
)
from shared.security import check_booth_credential, verify_staff_token
from shared.wire import Decoded, booth_to_server, decode_frame, encode, staff_to_server
from signaling.limits import AuthThrottle, MessageBudget
from signaling.matching import (
    Action,
    Dispatcher,
    Persist,
    RequestStatus,
    RequestStatusChanged,
    SessionClosed,
    SessionOpened,
    Side,
    ToBooth,
    ToStaff,
)
from signaling.metrics import PresenceSnapshot, SignalingMetrics
from signaling.store import BoothAccount, SignalingStore, StaffAccount

log = logging.getLogger(__name__)

# WebSocket close codes used by the server (4000-4999 are free for applications).
CLOSE_BAD_PROTOCOL: Final = 4400  # unsupported_protocol
CLOSE_AUTH: Final = 4401  # auth_required, auth_failed, token_expired
CLOSE_FORBIDDEN: Final = 4403
CLOSE_DUPLICATE: Final = 4409  # replaced by a newer connection of the same booth/staff
CLOSE_SLOW: Final = 4408  # the peer did not read its frames (send queue overflow)
CLOSE_THROTTLED: Final = 4429  # too many authentication failures from this address
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008  # went on sending over its message budget

PUSH_SLICE: Final = 100  # fan-out frames sent per event-loop turn
SLOW_CLOSE_GRACE_S: Final = 2.0  # a peer that does not read gets this long for the close
# A frame up to this size is written at once by the task that produced it (a relay) when
# nothing is queued or buffered for its peer: the socket takes it without waiting.
DIRECT_WRITE_MAX_BYTES: Final = 16 * 1024

# Pushes that carry a whole state: a newer one replaces the unsent older one.
_COALESCED: Final[dict[type, str]] = {
    QueueStatus: "queue_status",
    QueueSnapshot: "queue",
    BoothsSnapshot: "booths",
}

H = TypeVar("H", BoothHello, StaffHello)


def hard_frame_limit(config: SignalingConfig) -> int:
    """Frames up to this size are read and answered with ``too_large`` when they exceed
    ``max_message_bytes``; larger ones make aiohttp close the connection (1009)."""
    return max(4 * config.max_message_bytes, config.max_message_bytes + 65536)


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


@dataclass(slots=True)
class _Queued:
    frame: str | None  # None: replaced by a newer push of the same kind
    size: int
    coalesce: str | None


def _frame_size(frame: str) -> int:
    return len(frame) if frame.isascii() else len(frame.encode())


class Connection:
    """One authenticated WebSocket: a bounded outgoing queue drained by its own writer
    task (running only while there is something to write).

    ``send(frame, coalesce=KEY)`` marks a push that carries a whole state (queue status,
    snapshots): it replaces an unsent frame with the same key, so it never piles up. When
    the frames still unsent exceed ``max_frames`` or ``max_bytes`` the peer is not reading:
    the queue is dropped, the connection closed (4408, or cut after
    ``SLOW_CLOSE_GRACE_S``) and ``on_overflow`` called once."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        label: str,
        *,
        max_frames: int = 2000,
        max_bytes: int = 16 * 1024 * 1024,
        transport: asyncio.Transport | None = None,
        on_overflow: Callable[[Connection], None] | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
    ) -> None:
        self.ws = ws
        self.label = label
        self.max_frames = max(1, max_frames)
        self.max_bytes = max(1, max_bytes)
        self._transport = transport
        self._on_overflow = on_overflow
        self._log = logger
        self._queue: deque[_Queued] = deque()
        self._latest: dict[str, _Queued] = {}
        self._frames = 0  # live (not replaced) frames in _queue
        self._bytes = 0
        self._replaced = 0  # replaced entries still in _queue
        self._close_item: _Close | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None
        # Started when there is something to write, ends when the queue is empty: an
        # idle connection holds no task.
        self._writer: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def queued(self) -> tuple[int, int]:
        """Frames and bytes queued but not yet handed to the socket."""
        return self._frames, self._bytes

    def send(self, frame: str, *, coalesce: str | None = None) -> None:
        if self._closing:
            return
        if coalesce is not None:
            older = self._latest.get(coalesce)
            if older is not None and older.frame is not None:
                older.frame = None
                self._frames -= 1
                self._bytes -= older.size
                self._replaced += 1
        item = _Queued(frame, _frame_size(frame), coalesce)
        if coalesce is not None:
            self._latest[coalesce] = item
        self._queue.append(item)
        self._frames += 1
        self._bytes += item.size
        if self._frames > self.max_frames or self._bytes > self.max_bytes:
            self._overflow()
            return
        if self._replaced > 64 and self._replaced > self._frames:
            self._queue = deque(q for q in self._queue if q.frame is not None)
            self._replaced = 0
        self._start_writer()

    def send_error(self, error: ProtocolError) -> None:
        self.send(encode(_error_message(error)))

    def writable_now(self, size: int) -> bool:
        """True when a frame of ``size`` bytes can be written at once without waiting:
        nothing queued before it (so the order is kept), not closing, and the socket's
        buffer empty (so the write cannot make it wait for the peer to read)."""
        transport = self._transport
        return (
            not self._queue
            and not self._closing
            and size <= DIRECT_WRITE_MAX_BYTES
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    async def write_now(self, frame: str) -> None:
        """Write ``frame`` at once, bypassing the queue; only after :meth:`writable_now`
        (then the write completes without waiting for the peer)."""
        try:
            await self.ws.send_str(frame)
        except Exception as err:  # the peer went away mid-write
            self._log.debug("%s: write failed: %s", self.label, err)
            self._closing = True

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (idempotent)."""
        if not self._closing:
            self._closing = True
            self._close_item = _Close(code, reason)
            self._start_writer()

    async def wait_closed(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer

    async def aclose(self) -> None:
        """Stop the writer; after :meth:`close` it first gets ``SLOW_CLOSE_GRACE_S`` to
        send the frames queued before the close, and the close."""
        writer = self._writer
        if self._close_item is not None and writer is not None and not writer.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), SLOW_CLOSE_GRACE_S)
        self._closing = True
        if writer is not None and not writer.done():
            writer.cancel()
        if self._closer is not None and not self._closer.done():
            self._closer.cancel()
        await self.wait_closed()

    def _overflow(self) -> None:
        self._log.warning(
            "%s does not read its frames (%d frames, %d bytes unsent); closing it",
            self.label,
            self._frames,
            self._bytes,
        )
        self._closing = True
        self._queue.clear()
        self._latest.clear()
        self._frames = self._bytes = self._replaced = 0
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._closer = asyncio.create_task(self._close_slow(), name=f"ws-close {self.label}")
        if self._on_overflow is not None:
            self._on_overflow(self)

    async def _close_slow(self) -> None:
        """Try a clean 4408 close; cut the connection when the peer does not take it."""
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        try:
            await asyncio.wait_for(
                self.ws.close(code=CLOSE_SLOW, message=b"too many unread frames"),
                SLOW_CLOSE_GRACE_S,
            )
        except Exception as err:
            self._log.debug("%s: no clean close (%s); cutting the connection", self.label, err)
        finally:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.abort()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer {self.label}")

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._close_item is None:
                        self._writer = None  # started again by the next send() or close()
                        return
                    code, reason = self._close_item.code, self._close_item.reason
                    await self.ws.close(code=code, message=reason.encode()[:120])
                    return
                item = self._queue.popleft()
                frame = item.frame
                if frame is None:
                    self._replaced -= 1
                    continue
                item.frame = None
                if item.coalesce is not None and self._latest.get(item.coalesce) is item:
                    del self._latest[item.coalesce]
                self._frames -= 1
                self._bytes -= item.size
                await self.ws.send_str(frame)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the peer went away mid-write
            self._log.debug("%s: write failed: %s", self.label, err)
            self._closing = True


def _error_message(error: ProtocolError) -> ErrorMessage:
    return ErrorMessage(
        code=error.code,
        message=error.message[:200],
        ref=error.ref[:200] if error.ref else None,
        fatal=error.fatal,
    )


class NodeLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the node id (and passes it as ``extra`` ``node_id``)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        node_id = self.extra["node_id"] if self.extra else "-"
        kwargs.setdefault("extra", {}).setdefault("node_id", node_id)
        return f"[node {node_id}] {msg}", kwargs


def _close_code(error: ProtocolError) -> int:
    if error.code is ErrorCode.UNSUPPORTED_PROTOCOL:
        return CLOSE_BAD_PROTOCOL
    if error.code is ErrorCode.RATE_LIMITED:
        return CLOSE_POLICY
    if error.code is ErrorCode.FORBIDDEN:
        return CLOSE_FORBIDDEN
    return CLOSE_AUTH


class ClusterLink(Protocol):
    """Cluster mode (:mod:`signaling.cluster`): where this node's connections' events go
    instead of the local dispatcher; the leader's frames come back to the connections."""

    def connected(
        self, side: Side, peer_id: str, conn: Connection, account: BoothAccount | StaffAccount
    ) -> str:
        """Returns the connection's id in the cluster."""
        ...

    def disconnected(self, side: Side, peer_id: str, conn_id: str) -> None: ...

    async def forward(
        self, side: Side, peer_id: str, conn_id: str, message: BaseModel, frame: str | None
    ) -> None: ...


class SignalingServer:
    """Connections, the dispatcher, its timer and the fan-out loop."""

    def __init__(
        self,
        config: SignalingConfig,
        store: SignalingStore,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.time,
        metrics: SignalingMetrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self._clock = clock
        self.log = NodeLog(log, {"node_id": config.node_id})
        self.metrics = metrics or SignalingMetrics(config.node_id)
        self.metrics.watch(self._presence)
        self.booths: dict[str, Connection] = {}
        self.staff: dict[str, Connection] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._closed = False
        self.auth_throttle = AuthThrottle(
            config.auth_failure_limit,
            config.auth_failure_window_s,
            config.auth_tracking_max_sources,
        )
        self._seen: set[tuple[Side, str]] = set()  # ids that connected before (reconnects)
        self._offered: set[str] = set()  # waiting requests that had their first offer
        self._relay_counters: dict[str, Any] = {}  # relay_messages by payload kind
        self.cluster: ClusterLink | None = None  # cluster mode: set by signaling.cluster

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

    def _presence(self) -> PresenceSnapshot:
        by_role: dict[str, int] = {}
        for staff_id in self.staff:
            member = self.dispatcher.staff.get(staff_id)
            role = member.role.value if member is not None else "unknown"
            by_role[role] = by_role.get(role, 0) + 1
        return PresenceSnapshot(len(self.booths), by_role, self.dispatcher)

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness: accepting connections and the database answering."""
        checks = {"accepting": "ok" if not self._closed else "shutting down"}
        try:
            async with asyncio.timeout(self.config.readiness_timeout_s):
                await self.store.departments()
        except Exception as err:
            self.log.warning("readiness: database unreachable (%s)", type(err).__name__)
            checks["database"] = "unreachable"
        else:
            checks["database"] = "ok"
        return all(v == "ok" for v in checks.values()), checks

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
                self._observe(action.record)
                continue
            message = action.message
            if isinstance(message, Offer):
                self._offer_observed(message)
            conn = (
                self.booths.get(action.booth_id)
                if isinstance(action, ToBooth)
                else self.staff.get(action.staff_id)
            )
            if conn is None:
                continue
            frame = encoded.get(id(message))
            if frame is None:
                frame = encoded[id(message)] = encode(message)
            conn.send(frame, coalesce=_COALESCED.get(type(message)))
        self._reschedule()

    def _offer_observed(self, offer: Offer) -> None:
        """The match latency: request → its first offer."""
        if offer.request_id in self._offered:
            return
        self._offered.add(offer.request_id)
        waited = max(0.0, self._clock() - offer.requested_at.timestamp())
        self.metrics.match_latency.labels(offer.department).observe(waited)

    def _observe(self, record: object) -> None:
        """Metrics and log lines from the records the dispatcher emits."""
        if isinstance(record, RequestStatusChanged):
            if record.status is not RequestStatus.WAITING:
                self._offered.discard(record.request_id)
                self.metrics.requests_closed.labels(record.status.value).inc()
        elif isinstance(record, SessionOpened):
            self.log.info(
                "session %s opened: booth %s, staff %s, request %s (%s)",
                record.session_id,
                record.booth_id,
                record.staff_id,
                record.request_id,
                record.department,
            )
        elif isinstance(record, SessionClosed):
            self.metrics.sessions.labels(record.outcome.value).inc()
            self.log.info("session %s ended (%s)", record.session_id, record.outcome.value)

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
            self.log.exception("deadline processing failed")

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
                self.log.exception("queue fan-out failed")

    # ------------------------------------------------------------------ HTTP

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def handle_ready(self, request: web.Request) -> web.Response:
        ok, checks = await self.ready()
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    async def handle_booth(self, request: web.Request) -> web.StreamResponse:
        ws = await self._prepare(request, Side.BOOTH)
        try:
            await self._serve_booth(ws, request)
        finally:
            self._sockets.discard(ws)
        return ws

    async def handle_staff(self, request: web.Request) -> web.StreamResponse:
        origins = self.config.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            self.log.info("staff connection refused: origin not allowed")
            raise web.HTTPForbidden(text="origin not allowed")
        ws = await self._prepare(request, Side.STAFF)
        try:
            await self._serve_staff(ws, request)
        finally:
            self._sockets.discard(ws)
        return ws

    def client_address(self, request: web.Request) -> str:
        """The peer's address; behind a proxy in ``trusted_proxies``, the last address
        of its ``X-Forwarded-For`` (the one the proxy saw)."""
        remote = request.remote or "unknown"
        if remote in self.config.trusted_proxies:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return remote

    async def _prepare(self, request: web.Request, side: Side) -> web.WebSocketResponse:
        if self._closed:
            raise web.HTTPServiceUnavailable(text="shutting down")
        wait = self.auth_throttle.retry_after(self.client_address(request), _monotonic())
        if wait is not None:
            self.metrics.auth_throttled.labels(side.value, "http").inc()
            raise web.HTTPTooManyRequests(
                text="too many failed sign-ins from this address; try again later",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        # No permessage-deflate (browsers and aiohttp offer it): its zlib contexts cost
        # about 100 KiB per connection and compressing every relayed SDP costs more CPU
        # than the few kilobytes it saves; frames that mix a peer's data with tokens are
        # also better not compressed together.
        ws = web.WebSocketResponse(
            heartbeat=self.config.heartbeat_s,
            max_msg_size=hard_frame_limit(self.config),
            compress=False,
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        return ws

    # ------------------------------------------------------------------ hello

    async def _receive_hello(
        self,
        ws: web.WebSocketResponse,
        adapter: TypeAdapter[Any],
        hello_type: type[H],
        budget: MessageBudget,
    ) -> H | None:
        """Wait for the hello frame. Non-fatal errors (bad JSON …) are answered and the
        wait goes on until ``hello_timeout_s`` (within the message budget); anything else
        fails the connection."""
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
            if not budget.take(loop.time()):
                await self._fail(
                    ws,
                    ProtocolError(ErrorCode.RATE_LIMITED, "too many messages", fatal=True),
                )
                return None
            try:
                message = self._decode(msg.type, msg.data, adapter).message
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

    def _decode(self, kind: WSMsgType, data: Any, adapter: TypeAdapter[Any]) -> Decoded[BaseModel]:
        if kind is not WSMsgType.TEXT:
            raise ProtocolError(ErrorCode.BAD_JSON, "only text frames are accepted")
        limit = self.config.max_message_bytes
        if len(data) > limit:  # every character is at least one byte: refuse before parsing
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"message of {len(data)}+ bytes exceeds the limit of {limit}"
            )
        decoded: Decoded[BaseModel] = decode_frame(adapter, data, max_bytes=limit)
        return decoded

    def _budget(self, side: Side) -> MessageBudget:
        c = self.config
        if side is Side.BOOTH:
            rate, burst = c.booth_message_rate_per_s, c.booth_message_burst
        else:
            rate, burst = c.staff_message_rate_per_s, c.staff_message_burst
        return MessageBudget(rate, burst, _monotonic())

    async def _throttled_hello(self, ws: web.WebSocketResponse, side: Side, source: str) -> bool:
        """True (and the connection closed 4429) when ``source`` is throttled: checked
        again after the hello, for connections opened before the limit was reached."""
        if self.auth_throttle.retry_after(source, _monotonic()) is None:
            return False
        self.metrics.auth_throttled.labels(side.value, "hello").inc()
        with contextlib.suppress(Exception):
            error = ProtocolError(
                ErrorCode.RATE_LIMITED, "too many failed sign-ins; try again later", fatal=True
            )
            await ws.send_str(encode(_error_message(error)))
            await ws.close(code=CLOSE_THROTTLED, message=b"too many failed sign-ins")
        return True

    def _auth_failed(self, side: Side, source: str, code: ErrorCode) -> None:
        self.metrics.auth_failures.labels(side.value, code.value).inc()
        if self.auth_throttle.record_failure(source, _monotonic()):
            # Logged when the limit is reached, then not again for this window.
            entry_limit = self.config.auth_failure_limit
            if self.auth_throttle.failures(source) == entry_limit:
                self.log.warning(
                    "%s hellos from one address throttled after %d failures (%.0f s)",
                    side.value,
                    entry_limit,
                    self.config.auth_failure_window_s,
                )

    def _connection(
        self, ws: web.WebSocketResponse, request: web.Request, label: str
    ) -> Connection:
        def overflowed(conn: Connection) -> None:
            self.metrics.limit_closes.labels("send_queue").inc()

        return Connection(
            ws,
            label,
            max_frames=self.config.send_queue_max_frames,
            max_bytes=self.config.send_queue_max_bytes,
            transport=request.transport,
            on_overflow=overflowed,
            logger=self.log,
        )

    def _welcomed(self, side: Side, peer_id: str, resumed: bool) -> None:
        self.metrics.connections.labels(side.value).inc()
        if (side, peer_id) in self._seen:
            self.metrics.reconnects.labels(side.value, "true" if resumed else "false").inc()
        else:
            self._seen.add((side, peer_id))

    # ------------------------------------------------------------------ booths

    async def _serve_booth(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        budget = self._budget(Side.BOOTH)
        hello = await self._receive_hello(ws, booth_to_server, BoothHello, budget)
        if hello is None:
            return
        source = self.client_address(request)
        if await self._throttled_hello(ws, Side.BOOTH, source):
            return
        account = await self.store.booth_account(hello.booth_id)
        if account is None or not check_booth_credential(hello.credential, account.credential_hash):
            # The booth id is the claimed one: an identifier, never personal data.
            self.log.info("booth %s refused: wrong credential", hello.booth_id)
            self._auth_failed(Side.BOOTH, source, ErrorCode.AUTH_FAILED)
            await self._fail(ws, AuthError(ErrorCode.AUTH_FAILED, "unknown booth or credential"))
            return
        booth_id = hello.booth_id
        conn = self._connection(ws, request, f"booth {booth_id}")
        self._take_over(self.booths, booth_id, conn, "this booth connected again elsewhere")
        self.dispatcher.upsert_booth(account.info)
        if self.cluster is not None:
            await self._serve_in_cluster(Side.BOOTH, booth_id, account, conn, ws, budget)
            return
        try:
            self.perform(self.dispatcher.booth_connected(booth_id, self._clock()))
            entry = self.dispatcher.booths[booth_id]
            resumed = entry.request_id is not None or entry.session_id is not None
            self._welcomed(Side.BOOTH, booth_id, resumed)
            self.log.info(
                "booth %s connected%s",
                booth_id,
                f" (request {entry.request_id})"
                if entry.request_id
                else f" (session {entry.session_id})"
                if entry.session_id
                else "",
            )
            await self._read_loop(
                ws, conn, Side.BOOTH, budget, booth_to_server, partial(self._on_booth, booth_id)
            )
        finally:
            if self.booths.get(booth_id) is conn:
                del self.booths[booth_id]
                self.perform(self.dispatcher.booth_disconnected(booth_id, self._clock()))
                self.log.info("booth %s disconnected", booth_id)
            await conn.aclose()

    async def _on_booth(self, booth_id: str, message: BoothToServer, frame: str | None) -> None:
        d = self.dispatcher
        now = self._clock()
        if isinstance(message, RequestHelp):
            await self._request_help(booth_id, message)
        elif isinstance(message, CancelRequest):
            self.perform(d.cancel_request(booth_id, message.request_id, now))
        elif isinstance(message, Relay):
            await self._relay(Side.BOOTH, booth_id, message, frame)
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
            self.log.warning(
                "booth %s: %s %s %s (%s)",
                booth_id,
                device.kind,
                device.name,
                device.state,
                device.reason or "no reason given",
            )
        for device in changes.recovered:
            self.log.info(
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
        self.log.info(
            "booth %s requested help (request %s, %s)",
            booth_id,
            message.request_id,
            message.department,
        )
        self.perform(actions)

    def _request_stored(self, booth_id: str, request_id: str, done: asyncio.Future[None]) -> None:
        """The database refused a request that is already queued (its id was used
        before): take it out of the queue again and tell the booth."""
        if done.cancelled() or done.exception() is None:
            return
        self.log.error(
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

    async def _serve_staff(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        budget = self._budget(Side.STAFF)
        hello = await self._receive_hello(ws, staff_to_server, StaffHello, budget)
        if hello is None:
            return
        source = self.client_address(request)
        if await self._throttled_hello(ws, Side.STAFF, source):
            return
        try:
            claims = verify_staff_token(self.config.token_secret, hello.token)
        except AuthError as err:
            self.log.info("staff connection refused: %s", err.code.value)
            self._auth_failed(Side.STAFF, source, err.code)
            await self._fail(ws, err)
            return
        account = await self.store.staff_account(claims.staff_id)
        if account is None or not account.active:
            self.log.info("staff %s refused: no active account", claims.staff_id)
            self._auth_failed(Side.STAFF, source, ErrorCode.AUTH_FAILED)
            await self._fail(ws, AuthError(ErrorCode.AUTH_FAILED, "no active staff account"))
            return
        staff_id = claims.staff_id
        conn = self._connection(ws, request, f"staff {staff_id}")
        self._take_over(self.staff, staff_id, conn, "signed in again in another window")
        self.dispatcher.upsert_staff(account.info, account.role, account.site_id, account.skills)
        if self.cluster is not None:
            await self._serve_in_cluster(Side.STAFF, staff_id, account, conn, ws, budget)
            return
        try:
            self.perform(self.dispatcher.staff_connected(staff_id, self._clock()))
            session_id = self.dispatcher.staff[staff_id].session_id
            self._welcomed(Side.STAFF, staff_id, session_id is not None)
            self.log.info(
                "staff %s connected (%s)%s",
                staff_id,
                account.role.value,
                f" (session {session_id})" if session_id else "",
            )
            await self._read_loop(
                ws, conn, Side.STAFF, budget, staff_to_server, partial(self._on_staff, staff_id)
            )
        finally:
            if self.staff.get(staff_id) is conn:
                del self.staff[staff_id]
                self.perform(self.dispatcher.staff_disconnected(staff_id, self._clock()))
                self.log.info("staff %s disconnected", staff_id)
            await conn.aclose()

    async def _on_staff(self, staff_id: str, message: StaffToServer, frame: str | None) -> None:
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
            await self._relay(Side.STAFF, staff_id, message, frame)
        elif isinstance(message, HangUp):
            self.perform(d.hang_up(Side.STAFF, staff_id, message.session_id, now))
        elif isinstance(message, MediaConnected):
            self.perform(d.media_connected(Side.STAFF, staff_id, message.session_id, now))
        elif isinstance(message, MediaFailed):
            self.perform(d.media_failed(Side.STAFF, staff_id, message.session_id, now))
        else:  # StaffHello
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, "already authenticated", ref="hello")

    # ------------------------------------------------------------------ cluster mode

    async def _serve_in_cluster(
        self,
        side: Side,
        peer_id: str,
        account: BoothAccount | StaffAccount,
        conn: Connection,
        ws: web.WebSocketResponse,
        budget: MessageBudget,
    ) -> None:
        """Cluster mode: the connection's events go to the leader through
        :attr:`cluster`; its frames come back to ``conn`` from there."""
        assert self.cluster is not None
        registry = self.booths if side is Side.BOOTH else self.staff
        adapter = booth_to_server if side is Side.BOOTH else staff_to_server
        conn_id = self.cluster.connected(side, peer_id, conn, account)
        self._welcomed(side, peer_id, False)
        self.log.info("%s %s connected (connection %s)", side.value, peer_id, conn_id)
        try:
            handle = partial(self.cluster.forward, side, peer_id, conn_id)
            await self._read_loop(ws, conn, side, budget, adapter, handle)
        finally:
            if registry.get(peer_id) is conn:
                del registry[peer_id]
            self.cluster.disconnected(side, peer_id, conn_id)
            self.log.info("%s %s disconnected (connection %s)", side.value, peer_id, conn_id)
            await conn.aclose()

    # ------------------------------------------------------------------ relay

    async def _relay(self, side: Side, peer_id: str, message: Relay, frame: str | None) -> None:
        """Forward a relay to the other peer of the sender's session.

        A frame that validated strictly is forwarded as the text it came in (the same
        message: ``relay`` goes on verbatim), so SDP-sized payloads are not serialised
        again; and when nothing is waiting to be sent to that peer, it is written at once
        instead of through the peer's writer task."""
        actions = self.dispatcher.relay(side, peer_id, message)
        text = frame if frame is not None else encode(message)
        for action in actions:
            if isinstance(action, ToBooth):
                conn = self.booths.get(action.booth_id)
            elif isinstance(action, ToStaff):
                conn = self.staff.get(action.staff_id)
            else:
                self.perform([action])
                continue
            if conn is None:
                continue
            if conn.writable_now(_frame_size(text)):
                await conn.write_now(text)
            else:
                conn.send(text)
        kind = message.payload.type
        counter = self._relay_counters.get(kind)
        if counter is None:
            counter = self._relay_counters[kind] = self.metrics.relay_messages.labels(kind)
        counter.inc()

    # ------------------------------------------------------------------ reading

    async def _read_loop(
        self,
        ws: web.WebSocketResponse,
        conn: Connection,
        side: Side,
        budget: MessageBudget,
        adapter: TypeAdapter[Any],
        handle: Callable[[Any, str | None], Awaitable[None]],
    ) -> None:
        """Read frames until the socket closes; every error is answered, none is fatal
        except going on over the message budget (``rate_limited``, then 1008)."""
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if conn.closing:
                break
            if msg.type is WSMsgType.ERROR:
                self.log.info("%s: connection error: %s", conn.label, ws.exception())
                break
            if not budget.take(loop.time()):
                self.metrics.messages_refused.labels(side.value, "rate").inc()
                if budget.strikes == 1:
                    conn.send_error(
                        ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
                    )
                elif budget.strikes > self.config.rate_limit_strikes:
                    self.log.warning(
                        "%s closed: over its message budget (%d messages refused)",
                        conn.label,
                        budget.strikes,
                    )
                    self.metrics.limit_closes.labels("message_rate").inc()
                    conn.send_error(
                        ProtocolError(
                            ErrorCode.RATE_LIMITED, "too many messages; closing", fatal=True
                        )
                    )
                    conn.close(CLOSE_POLICY, "message rate exceeded")
                continue
            try:
                decoded = self._decode(msg.type, msg.data, adapter)
                await handle(decoded.message, decoded.frame)
            except ProtocolError as err:
                if err.code is ErrorCode.TOO_LARGE:
                    self.metrics.messages_refused.labels(side.value, "too_large").inc()
                conn.send_error(err)
            except Exception:
                self.log.exception("%s: message handling failed", conn.label)
                conn.send_error(ProtocolError(ErrorCode.INTERNAL, "internal error"))

    def _take_over(
        self, registry: dict[str, Connection], key: str, conn: Connection, why: str
    ) -> None:
        """Register ``conn`` for ``key``; an older connection of the same booth or staff
        member is told why (fatal ``duplicate_connection``) and closed."""
        previous = registry.get(key)
        if previous is not None:
            self.log.info("%s connected again; closing the older connection", conn.label)
            previous.send_error(ProtocolError(ErrorCode.DUPLICATE_CONNECTION, why, fatal=True))
            previous.close(CLOSE_DUPLICATE, "duplicate connection")
        registry[key] = conn


def _monotonic() -> float:
    return asyncio.get_running_loop().time()
