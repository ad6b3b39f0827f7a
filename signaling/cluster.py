"""Several signaling nodes on PostgreSQL and Redis (``redis_url`` set).

Every node serves booths and staff as in a single process (authentication, limits,
decoding, heartbeats), but the matching core runs on one node at a time, the leader:

* **Leadership.** Each node tries ``pg_try_advisory_lock`` on a fixed key every
  ``leader_retry_s`` on a connection of its own. The holder leads until that connection
  fails (PostgreSQL frees the lock when the process dies, even on SIGKILL, and when the
  connection stays idle for ``node_timeout_s``: a paused or cut-off leader loses it).
  Each term has an *epoch*: the transaction id PostgreSQL assigns when the lock is taken,
  which only grows.
* **Fencing.** A new leader claims its epoch in PostgreSQL (``signaling_leader``) and in
  Redis (``:epoch``) before it loads anything. Every batch of records a leader writes
  checks the PostgreSQL epoch in its own transaction, and its frames and stream cursor
  are published by a script that checks the Redis one, so a leader whose term ended
  without its noticing (it was paused, or cut off from PostgreSQL) writes and sends
  nothing more: it stops at its next write. Frames also carry the epoch, and a node
  ignores frames from an epoch older than the newest it has seen.
* **Events.** A node appends every event of its connections (connected, disconnected,
  each message as the text it came in) to one Redis stream (XADD, trimmed to about
  ``cluster_stream_max_events``). Only the leader reads it (XREAD), in order, and feeds
  the :class:`~signaling.matching.Dispatcher`: matching is serialised cluster-wide.
* **Actions.** The leader knows from the events which node holds each connection; it
  appends frames for them to that node's stream, and writes the Persist records itself
  (the node's batched store, on PostgreSQL). Relays pass the leader too (it checks the
  session) and are forwarded as their text. Each node reads its stream from its own
  cursor, so frames appended while its read was failing (Redis restarting, a dropped
  connection) are read once it is back.
* **Take-over.** A new leader loads the directory and the waiting requests (in their
  order) from PostgreSQL, resumes the sessions left open (same ids; both parties count as
  lost until they are back), reads the stream from where the last leader stopped (the
  cursor it kept in Redis) and announces its epoch; every node then announces the
  connections it holds. Nodes renew a presence key every second; the leader treats the
  connections of a node whose key expired (``node_timeout_s``) as lost.

Keys (prefix ``cluster_key_prefix``): ``:events`` (stream), ``:cursor`` (last event the
leader handled), ``:leader`` (epoch and node), ``:epoch`` (the newest epoch: the fence),
``:node:<id>`` (presence); streams ``:to:<node id>`` (frames for a node) and
``:leaders`` (each new epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Final, cast

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from shared.config import SignalingConfig
from shared.errors import ConfigError, ProtocolError
from shared.protocol import (
    AcceptOffer,
    BoothInfo,
    CancelRequest,
    DeclineOffer,
    DeviceStatusReport,
    ErrorCode,
    HangUp,
    MediaConnected,
    MediaFailed,
    Offer,
    Relay,
    RequestHelp,
    ServiceNotice,
    SetState,
    StaffInfo,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WrapUpDone,
)
from shared.wire import booth_to_server, decode_frame, encode, staff_to_server
from signaling.matching import (
    Action,
    Dispatcher,
    Persist,
    RequestStatusChanged,
    SessionClosed,
    SessionOpened,
    Side,
    ToBooth,
)
from signaling.server import (
    _COALESCED,
    CLOSE_DUPLICATE,
    Connection,
    NodeLog,
    SignalingServer,
    _error_message,
)
from signaling.store import BoothAccount, Fenced, StaffAccount

log = logging.getLogger(__name__)

LEADER_LOCK_KEY: Final = 0x456B_6963_6869_6B61  # "Ekichika": the advisory lock of the leader
READ_BATCH: Final = 500  # events per XREAD
PRESENCE_EVERY_S: Final = 1.0
STOP_TASK_WAIT_S: Final = 3.0  # on stop, for each of the node's tasks to end
# Relays to a peer whose connection the leader does not know (yet: a new leader before the
# nodes' announcements, a client moving to another node) are kept this long, so many per
# peer, and passed on when the connection is known.
HELD_RELAY_S: Final = 10.0
HELD_RELAYS_MAX: Final = 32
DEGRADED_AFTER_S: Final = 1.0  # Redis away this long: staff are told (ServiceNotice)
# The streams a node reads: frames for it (trimmed to about so many batches, and gone once
# nobody has written to them for so long: a node id no longer used), and the new epochs.
NODE_STREAM_MAX: Final = 10_000
NODE_STREAM_TTL_S: Final = 600.0
LEADERS_STREAM_MAX: Final = 100
# Records that change what a new leader resumes: committed before the frames of their round.
_DURABLE: Final = (SessionOpened, SessionClosed, RequestStatusChanged)
# The leadership term in PostgreSQL: claimed by a new leader, checked by every write.
_CLAIM_TERM: Final = """
INSERT INTO signaling_leader (id, epoch, node_id, since) VALUES (1, $1, $2, now())
ON CONFLICT (id) DO UPDATE
    SET epoch = EXCLUDED.epoch, node_id = EXCLUDED.node_id, since = EXCLUDED.since
    WHERE signaling_leader.epoch < EXCLUDED.epoch
RETURNING epoch
"""
# The same in Redis, and the announcement. KEYS: epoch, leader, leaders stream; ARGV:
# epoch, LeaderChanged, the stream's length. 1 if claimed.
_CLAIM_EPOCH: Final = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2])
return 1
"""
# A leader's round: frames to nodes, then the cursor, unless a newer term has started.
# KEYS: epoch, cursor; ARGV: epoch, cursor, stream length, stream ttl (ms), then node
# stream and message pairs. 1 if sent.
_PUBLISH_ROUND: Final = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > tonumber(ARGV[1]) then return 0 end
for i = 5, #ARGV, 2 do
    redis.call('XADD', ARGV[i], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[i + 1])
    redis.call('PEXPIRE', ARGV[i], ARGV[4])
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class EventKind(StrEnum):
    CONNECTED = "connected"
    ANNOUNCED = "announced"  # a connection held when a new leader took over
    DISCONNECTED = "disconnected"
    MESSAGE = "message"
    ALIVE = "alive"  # every second: the leader knows when it last heard from each node


class Joined(BaseModel):
    # When the node accepted the connection (its clock): of two connections of one peer
    # the later one is kept, whatever order their events reach the leader in. 0: unknown
    # (a node of an earlier release), the later event is kept.
    connected_at: float = 0.0


class BoothJoined(Joined):
    booth: BoothInfo


class StaffJoined(Joined):
    staff: StaffInfo
    role: StaffRole
    site_id: str | None
    skills: list[tuple[str, str]]
    state: StaffState | None = None  # announced: the state the connection last had


class Delivery(BaseModel):
    """A frame for one connection, then optionally its close."""

    conn: str
    frame: str | None = None
    coalesce: str | None = None
    state: StaffState | None = None  # the staff member's state the frame tells
    close_code: int | None = None
    close_reason: str = ""


class Deliveries(BaseModel):
    epoch: int
    leader: str
    items: list[Delivery]


class LeaderChanged(BaseModel):
    epoch: int
    leader: str


def asyncpg_dsn(database_url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy PostgreSQL URL; ConfigError for other databases."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        raise ConfigError("several signaling nodes (redis_url) need a PostgreSQL database_url")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where a suspended task waits: each coroutine of its await chain, outermost first."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(chain) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain or [repr(task)]


async def _redis(call: Awaitable[Any] | Any) -> Any:
    """Await a redis-py call (its stubs type results as ``Awaitable[Any] | Any``)."""
    return await cast(Awaitable[Any], call)


class Outage:
    """One warning when a loop's Redis calls start failing, one line when they work
    again: a Redis away for minutes does not fill the log."""

    def __init__(self, log: NodeLog, what: str) -> None:
        self.log = log
        self.what = what
        self.since: float | None = None

    def failed(self, err: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s failed (%s); retrying", self.what, err)

    def ok(self, detail: str = "") -> None:
        if self.since is not None:
            took = time.monotonic() - self.since
            self.since = None
            self.log.info("%s works again after %.1f s%s", self.what, took, detail)


class Keys:
    def __init__(self, prefix: str) -> None:
        self.events = f"{prefix}:events"
        self.cursor = f"{prefix}:cursor"
        self.leader = f"{prefix}:leader"
        self.epoch = f"{prefix}:epoch"
        self.leaders = f"{prefix}:leaders"
        self._prefix = prefix

    def node(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    def to(self, node_id: str) -> str:
        return f"{self._prefix}:to:{node_id}"


class ClusterNode:
    """This node's part of the cluster: forwards its connections' events, delivers the
    leader's frames, renews its presence and takes the leadership when it is free.

    It is the :class:`~signaling.server.ClusterLink` of the node's SignalingServer."""

    def __init__(
        self,
        config: SignalingConfig,
        server: SignalingServer,
        load_dispatcher: Callable[[float], Awaitable[Dispatcher]],
    ) -> None:
        self.config = config
        self.server = server
        self.node_id = config.node_id
        self.keys = Keys(config.cluster_key_prefix)
        self.log = NodeLog(log, {"node_id": config.node_id})
        self._dsn = asyncpg_dsn(config.database_url)
        self._load_dispatcher = load_dispatcher
        self._redis: Redis = Redis.from_url(config.redis_url, decode_responses=True)
        self._boot = uuid.uuid4().hex[:8]
        self._conn_seq = itertools.count(1)
        # connection id -> (side, peer id, connection, what it announces)
        self._conns: dict[str, tuple[Side, str, Connection, str]] = {}
        self._staff_states: dict[str, StaffState] = {}  # connection id -> last state sent
        self._outbox: deque[dict[str, str]] = deque()
        self._outbox_ready = asyncio.Event()
        self.epoch = 0  # the newest leadership term seen
        self.leader: Leader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._sending = Outage(self.log, "sending events to Redis")
        self._reading = Outage(self.log, "reading from Redis")
        self._presence = Outage(self.log, "renewing the presence")
        self._told_degraded = False  # staff connections were told Redis is away
        server.store.on_fenced = self._fenced

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # What is already in the node's streams is of an earlier run: read what comes next.
        cursors: dict[str, str] = {}
        for stream in (self.keys.leaders, self.keys.to(self.node_id)):
            last = await _redis(self._redis.xrevrange(stream, count=1))
            cursors[stream] = last[0][0] if last else "0-0"
        await self._renew_presence()
        current = await _redis(self._redis.get(self.keys.leader))
        if current:
            with contextlib.suppress(ValidationError):
                self.epoch = LeaderChanged.model_validate_json(current).epoch
        self._tasks = [
            asyncio.create_task(self._listen(cursors), name="cluster-listen"),
            asyncio.create_task(self._send_loop(), name="cluster-send"),
            asyncio.create_task(self._presence_loop(), name="cluster-presence"),
            asyncio.create_task(self._elect_loop(), name="cluster-elect"),
        ]

    async def aclose(self) -> None:
        """Give up the leadership, send the events still queued, disconnect (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # The leader's term and the stream reader end by themselves at their next read;
        # cancelling a blocked Redis read does not always end it.
        natural = [t for t in self._tasks if t.get_name() == "cluster-listen"]
        if self.leader is not None:
            self.leader.stopping = True
            if self.leader.task is not None:
                natural.append(self.leader.task)
        if natural:
            await asyncio.wait(natural, timeout=STOP_TASK_WAIT_S)
        for task in reversed(self._tasks):
            if task.get_name() != "cluster-send":
                await self._stop_task(task)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._send_pending()
        for task in self._tasks:
            await self._stop_task(task)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await _redis(self._redis.delete(self.keys.node(self.node_id)))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._redis.aclose()

    async def _stop_task(self, task: asyncio.Task[None]) -> None:
        """Cancel one of the node's tasks and wait for it, but not for ever: a task still
        running after STOP_TASK_WAIT_S is logged with where it waits, and left behind (the
        process is exiting), so that a stop never hangs."""
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_TASK_WAIT_S)
        if not done:
            waiting = [
                f"{t.get_name()} at {' → '.join(await_chain(t))}"
                for t in asyncio.all_tasks()
                if t.get_name().startswith("cluster-")
            ]
            self.log.warning(
                "task %s did not stop within %.0f s; leaving it (%s)",
                task.get_name(),
                STOP_TASK_WAIT_S,
                "; ".join(waiting),
            )
            return
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("task %s ended with %r", task.get_name(), task.exception())

    def _fenced(self, epoch: int) -> None:
        """Records of the term ``epoch`` were refused: a newer leader has taken over."""
        leader = self.leader
        if leader is not None and leader.epoch == epoch:
            leader.fence(f"the database holds a newer leadership term than epoch {epoch}")

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: the node, the leadership, and whether Redis answers (while it
        does not, the node keeps its connections' events: ``events_queued``)."""
        failing = [o.since for o in (self._sending, self._reading, self._presence) if o.since]
        return {
            "node": self.node_id,
            "leader": self.leader is not None,
            "epoch": self.epoch,
            "redis": "unreachable" if failing else "ok",
            "redis_unreachable_s": round(time.monotonic() - min(failing), 1) if failing else 0,
            "events_queued": len(self._outbox),
        }

    # ------------------------------------------------------------------ ClusterLink

    def connected(
        self, side: Side, peer_id: str, conn: Connection, account: BoothAccount | StaffAccount
    ) -> str:
        conn_id = f"{self._boot}-{next(self._conn_seq)}"
        now = time.time()
        if isinstance(account, BoothAccount):
            joined = BoothJoined(booth=account.info, connected_at=now).model_dump_json()
        else:
            joined = StaffJoined(
                staff=account.info,
                role=account.role,
                site_id=account.site_id,
                skills=list(account.skills),
                connected_at=now,
            ).model_dump_json()
        self._conns[conn_id] = (side, peer_id, conn, joined)
        self._emit(EventKind.CONNECTED, side, peer_id, conn_id, joined)
        if side is Side.STAFF and self._told_degraded:  # its welcome waits for Redis
            conn.send(encode(ServiceNotice(state="degraded")))
        return conn_id

    def disconnected(self, side: Side, peer_id: str, conn_id: str) -> None:
        self._conns.pop(conn_id, None)
        self._staff_states.pop(conn_id, None)
        self._emit(EventKind.DISCONNECTED, side, peer_id, conn_id, "")

    async def forward(
        self, side: Side, peer_id: str, conn_id: str, message: BaseModel, frame: str | None
    ) -> None:
        if message.type == "hello":  # type: ignore[attr-defined]
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, "already authenticated", ref="hello")
        self._emit(EventKind.MESSAGE, side, peer_id, conn_id, frame or encode(message))

    # ------------------------------------------------------------------ events out

    def _emit(self, kind: EventKind, side: Side, peer_id: str, conn_id: str, body: str) -> None:
        self._outbox.append(
            {"n": self.node_id, "c": conn_id, "s": side.value, "p": peer_id, "k": kind, "b": body}
        )
        self._outbox_ready.set()

    async def _send_pending(self) -> None:
        while self._outbox:
            batch = [self._outbox[i] for i in range(min(READ_BATCH, len(self._outbox)))]
            async with self._redis.pipeline(transaction=False) as pipe:
                for fields in batch:
                    pipe.xadd(
                        self.keys.events,
                        cast(Any, fields),
                        maxlen=self.config.cluster_stream_max_events,
                        approximate=True,
                    )
                await pipe.execute()
            for _ in batch:
                self._outbox.popleft()

    async def _send_loop(self) -> None:
        outage = self._sending
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            queued = len(self._outbox)
            try:
                await self._send_pending()
            except Exception as err:
                outage.failed(err)
                await asyncio.sleep(self.config.leader_retry_s)
                self._outbox_ready.set()
            else:
                if outage.since is not None:  # not on every send: only after an outage
                    outage.ok(f" ({queued} queued events sent)")

    # ------------------------------------------------------------------ frames in

    async def _listen(self, cursors: dict[str, str]) -> None:
        """Read the node's streams (the new epochs, then the frames for it) from their
        cursors; after a failed read, from the same cursors again."""
        reader: Redis = Redis.from_url(self.config.redis_url, decode_responses=True)
        outage = self._reading
        try:
            while not self._closed:  # ends within the read's block time once closed
                try:
                    reply = await _redis(
                        reader.xread(cast(Any, cursors), count=READ_BATCH, block=1000)
                    )
                except Exception as err:
                    outage.failed(err)
                    await asyncio.sleep(self.config.leader_retry_s)
                    continue
                if outage.since is not None:
                    outage.ok()
                    # A leader that took over meanwhile may have been announced before the
                    # stream it went to existed again (Redis restarted empty).
                    with contextlib.suppress(Exception):
                        await self._check_leader()
                for stream, entries in reply or ():
                    for entry_id, fields in entries:
                        cursors[stream] = entry_id
                        self._read(stream, fields.get("m", ""))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await reader.aclose()

    def _read(self, stream: str, data: str) -> None:
        try:
            if stream == self.keys.leaders:
                self._leader_changed(LeaderChanged.model_validate_json(data))
            else:
                self._deliver(Deliveries.model_validate_json(data))
        except ValidationError as err:
            self.log.warning("unreadable cluster message: %s", err)

    def _leader_changed(self, change: LeaderChanged) -> None:
        if change.epoch <= self.epoch:
            return
        self.epoch = change.epoch
        self.log.info(
            "leader is node %s (epoch %d); announcing %d connections",
            change.leader,
            change.epoch,
            len(self._conns),
        )
        for conn_id, (side, peer_id, conn, joined) in list(self._conns.items()):
            if conn.closing:
                continue
            state = self._staff_states.get(conn_id)
            if side is Side.STAFF and state is not None:
                staff = StaffJoined.model_validate_json(joined)
                joined = staff.model_copy(update={"state": state}).model_dump_json()
            self._emit(EventKind.ANNOUNCED, side, peer_id, conn_id, joined)

    def _deliver(self, batch: Deliveries) -> None:
        if batch.epoch < self.epoch:
            self.log.warning(
                "frames from node %s of an old epoch %d ignored", batch.leader, batch.epoch
            )
            return
        if batch.epoch > self.epoch:
            self._leader_changed(LeaderChanged(epoch=batch.epoch, leader=batch.leader))
        for item in batch.items:
            entry = self._conns.get(item.conn)
            if entry is None:
                continue
            conn = entry[2]
            if item.state is not None:
                self._staff_states[item.conn] = item.state
            if item.frame is not None:
                conn.send(item.frame, coalesce=item.coalesce)
            if item.close_code is not None:
                conn.close(item.close_code, item.close_reason)

    # ------------------------------------------------------------------ presence

    async def _check_leader(self) -> None:
        """Follow the leader stored in Redis, in case its announcement was missed."""
        current = await _redis(self._redis.get(self.keys.leader))
        if current:
            with contextlib.suppress(ValidationError):
                self._leader_changed(LeaderChanged.model_validate_json(current))

    async def _redis_reachable(self) -> bool:
        try:
            async with asyncio.timeout(self.config.node_timeout_s):
                await _redis(self._redis.ping())
        except Exception:
            return False
        return True

    async def _renew_presence(self) -> None:
        ttl_ms = max(1, round(self.config.node_timeout_s * 1000))
        await _redis(self._redis.set(self.keys.node(self.node_id), self._boot, px=ttl_ms))

    async def _presence_loop(self) -> None:
        outage = self._presence
        while True:
            await asyncio.sleep(PRESENCE_EVERY_S)
            if not self._outbox:  # events still queued tell the leader the node lives
                self._emit(EventKind.ALIVE, Side.BOOTH, "", "", "")
            try:
                await self._renew_presence()
                await self._check_leader()
            except Exception as err:
                outage.failed(err)
            else:
                outage.ok()
            self._tell_service()

    def _tell_service(self) -> None:
        """Tell this node's staff connections when Redis has been away for a second (what
        they send waits for it) and when it is back."""
        now = time.monotonic()
        degraded = any(
            o.since is not None and now - o.since >= DEGRADED_AFTER_S
            for o in (self._sending, self._reading)
        )
        if degraded == self._told_degraded:
            return
        self._told_degraded = degraded
        frame = encode(ServiceNotice(state="degraded" if degraded else "ok"))
        staff = [c for side, _, c, _ in self._conns.values() if side is Side.STAFF]
        (self.log.warning if degraded else self.log.info)(
            "telling %d staff connections that Redis is %s",
            len(staff),
            "away" if degraded else "back",
        )
        for conn in staff:
            if not conn.closing:
                conn.send(frame)

    # ------------------------------------------------------------------ leadership

    async def _elect_loop(self) -> None:
        while not self._closed:
            try:
                lock_conn = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings=self._lock_settings()
                )
            except Exception as err:
                self.log.warning("no PostgreSQL connection for the leadership (%s)", err)
                await asyncio.sleep(self.config.leader_retry_s)
                continue
            try:
                while True:
                    # Without Redis a leader could not hear or tell anyone: not trying then
                    # keeps the nodes from taking the lead in turn while Redis is away.
                    if not await self._redis_reachable():
                        await lock_conn.fetchval("SELECT 1")  # the connection stays in use
                    elif await lock_conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY
                    ):
                        break
                    await asyncio.sleep(self.config.leader_retry_s)
                epoch = int(await lock_conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))
                if await lock_conn.fetchval(_CLAIM_TERM, epoch, self.node_id) is None:
                    self.log.warning("epoch %d is older than the one stored; not leading", epoch)
                else:
                    await self._lead(lock_conn, epoch)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.log.warning("leadership lost or not taken (%s)", err)
            finally:
                # Closing the connection releases the lock.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(lock_conn.close(), 2.0)
                if not lock_conn.is_closed():
                    lock_conn.terminate()
            await asyncio.sleep(self.config.leader_retry_s)

    def _lock_settings(self) -> dict[str, str]:
        """Of the leadership's connection: PostgreSQL ends it (freeing the lock) when it
        stays idle or its peer stays silent for about ``node_timeout_s``, so that a leader
        paused or cut off does not keep the lock for ever; the leader uses it every
        ``leader_retry_s``."""
        timeout_s = max(self.config.node_timeout_s, 4 * self.config.leader_retry_s)
        keepalive_s = max(1, round(timeout_s / 3))
        return {
            "application_name": f"ekichika-signaling leader {self.node_id}",
            "idle_session_timeout": str(max(1000, round(timeout_s * 1000))),
            "tcp_keepalives_idle": str(keepalive_s),
            "tcp_keepalives_interval": str(keepalive_s),
            "tcp_keepalives_count": "2",
        }

    async def _hold(self, lock_conn: asyncpg.Connection, task: asyncio.Task[None]) -> None:
        """Wait for ``task`` while using the leadership's connection every
        ``leader_retry_s``: the lock lives as long as the connection does."""
        while not task.done():
            await asyncio.wait({task}, timeout=self.config.leader_retry_s)
            if not task.done():
                await asyncio.wait_for(lock_conn.fetchval("SELECT 1"), self.config.node_timeout_s)

    async def _lead(self, lock_conn: asyncpg.Connection, epoch: int) -> None:
        started = time.monotonic()
        leader = Leader(self, epoch)
        self.leader = leader
        try:
            taking = asyncio.create_task(leader.take_over(), name="cluster-take-over")
            try:
                await self._hold(lock_conn, taking)
            finally:
                if not taking.done():
                    taking.cancel()
                    await asyncio.wait({taking}, timeout=STOP_TASK_WAIT_S)
            taking.result()
            self.log.info(
                "leading from epoch %d (took over in %.2f s)", epoch, time.monotonic() - started
            )
            run = leader.task = asyncio.create_task(leader.run(), name="cluster-leader")
            try:
                await self._hold(lock_conn, run)
            finally:
                leader.stopping = True
                if not (await asyncio.wait({run}, timeout=STOP_TASK_WAIT_S / 2))[0]:
                    run.cancel()
                    await asyncio.wait({run}, timeout=STOP_TASK_WAIT_S / 2)
            if run.done() and not run.cancelled():
                run.result()  # the leader's error, if any
        finally:
            await leader.aclose()
            self.leader = None
            self.log.info("no longer leading (epoch %d)", epoch)


class Leader:
    """One leadership term: the Dispatcher, where each connection is, the stream cursor."""

    def __init__(self, node: ClusterNode, epoch: int) -> None:
        self.node = node
        self.epoch = epoch
        self.config = node.config
        self.server = node.server
        self.log = node.log
        self._redis = node._redis
        # The event stream is read on a connection of this term's own, which ending the
        # term closes (a read blocked in XREAD then ends with it).
        self._stream: Redis = Redis.from_url(self.config.redis_url, decode_responses=True)
        # Set to end the term: run() returns after the read in progress (one push interval
        # at most). Cancelling a read blocked in XREAD does not always end it (redis-py).
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self._keys = node.keys
        self.dispatcher: Dispatcher | None = None
        self.cursor = "0-0"
        self._saved_cursor = ""
        # (side, peer id) -> (node id, connection id) of the current connection
        self.where: dict[tuple[Side, str], tuple[str, str]] = {}
        self._superseded: set[tuple[str, str]] = set()  # closed for a newer connection
        self._opened: dict[tuple[Side, str], float] = {}  # connected_at of the current one
        self._out: dict[str, list[Delivery]] = defaultdict(list)
        self._held: dict[tuple[Side, str], deque[tuple[float, str]]] = {}
        self._heard: dict[str, float] = {}  # node id -> when its last event was read
        self._durable = False  # records of this round must be stored before its frames
        self.fenced = False  # a newer term has started: nothing more is written or sent
        self._publish_round = self._redis.register_script(_PUBLISH_ROUND)

    def fence(self, why: str) -> None:
        """End this term at once: a newer leader has taken over."""
        if not self.fenced:
            self.log.error("leadership of epoch %d has ended: %s; stopping", self.epoch, why)
        self.fenced = True
        self.stopping = True

    @property
    def d(self) -> Dispatcher:
        assert self.dispatcher is not None
        return self.dispatcher

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._stream.aclose()

    async def take_over(self) -> None:
        """Load the state from PostgreSQL and announce the epoch. The waiting requests
        keep their places; the sessions the previous leader left open are resumed (their
        parties count as lost until a node announces them or they connect again)."""
        change = LeaderChanged(epoch=self.epoch, leader=self.node.node_id)
        self.node._leader_changed(change)  # this node's own connections are announced too
        store = self.server.store
        now = time.time()
        await store.flush()
        self.dispatcher = await self.node._load_dispatcher(now)
        resumed = 0
        for row in await store.open_sessions():
            connected_at = row.connected_at.timestamp() if row.connected_at else None
            actions = self.d.restore_session(
                row.session_id, row.request_id, row.booth_id, row.staff_id, row.department,
                row.language, row.accepted_at.timestamp(), connected_at, now,
            )  # fmt: skip
            if actions:
                resumed += 1
                self._route(actions)
        if resumed:
            self.log.info("%d sessions of the previous leader resumed", resumed)
        cursor = await _redis(self._redis.get(self._keys.cursor))
        self.cursor = cursor or "0-0"
        claim = self._redis.register_script(_CLAIM_EPOCH)
        keys = [self._keys.epoch, self._keys.leader, self._keys.leaders]
        args: list[Any] = [self.epoch, change.model_dump_json(), LEADERS_STREAM_MAX]
        if not await claim(keys=keys, args=args):
            raise Fenced(f"Redis holds a newer leadership term than epoch {self.epoch}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        push_every = max(0.01, self.config.queue_push_interval_s)
        next_push = loop.time() + push_every
        next_presence = loop.time() + PRESENCE_EVERY_S
        while not self.stopping:
            wait = next_push - loop.time()
            deadline = self.d.next_deadline()
            if deadline is not None:
                wait = min(wait, deadline - time.time())
            block_ms = max(1, round(wait * 1000))
            streams: dict[Any, Any] = {self._keys.events: self.cursor}
            reply = await _redis(self._stream.xread(streams, count=READ_BATCH, block=block_ms))
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self.cursor = entry_id
                    self._handle(fields)
            deadline = self.d.next_deadline()
            if deadline is not None and deadline <= time.time():
                self._route(self.d.tick(time.time()))
            if loop.time() >= next_push:
                next_push = loop.time() + push_every
                self._route(self.d.collect_pushes())
            if loop.time() >= next_presence:
                next_presence = loop.time() + PRESENCE_EVERY_S
                await self._drop_lost_nodes()
            await self._flush()

    # ------------------------------------------------------------------ events

    def _handle(self, fields: dict[str, str]) -> None:
        try:
            side = Side(fields["s"])
            origin = (fields["n"], fields["c"])
            peer_id, kind, body = fields["p"], EventKind(fields["k"]), fields["b"]
        except (KeyError, ValueError):
            self.log.warning("malformed cluster event ignored")
            return
        self._heard[origin[0]] = time.time()
        if kind is EventKind.ALIVE:
            return
        try:
            if kind is EventKind.CONNECTED or (
                kind is EventKind.ANNOUNCED and origin not in self._superseded
            ):
                self._connected(side, peer_id, origin, body)
            elif kind is EventKind.DISCONNECTED:
                self._superseded.discard(origin)
                if self.where.get((side, peer_id)) == origin:
                    self._disconnected(side, peer_id)
            elif self.where.get((side, peer_id), origin) == origin:
                # Messages of an older connection of the same peer are not acted on.
                self._message(side, peer_id, body)
        except ProtocolError as err:
            self._to(origin, Delivery(conn=origin[1], frame=encode(_error_message(err))))
        except Exception:
            self.log.exception("%s %s: event handling failed", side.value, peer_id)
            error = ProtocolError(ErrorCode.INTERNAL, "internal error")
            self._to(origin, Delivery(conn=origin[1], frame=encode(_error_message(error))))

    def _connected(self, side: Side, peer_id: str, origin: tuple[str, str], body: str) -> None:
        key = (side, peer_id)
        current = self.where.get(key)
        if current == origin:
            return  # already known (an announcement after a replayed connect)
        joined: BoothJoined | StaffJoined = (
            BoothJoined.model_validate_json(body)
            if side is Side.BOOTH
            else StaffJoined.model_validate_json(body)
        )
        if current is not None and 0 < joined.connected_at < self._opened.get(key, 0.0):
            # An older connection than the one known (its announcement came late, or the
            # peer has moved on and this one is a leftover): it is the one to close.
            self._close_duplicate(side, origin)
            return
        now = time.time()
        # A connection replacing one held by another node: that node died or the client
        # lost it; the gap started when the old node was last heard from.
        lost_at = (
            min(now, self._heard.get(current[0], now))
            if current is not None and current[0] != origin[0]
            else None
        )
        if current is not None:
            self._close_duplicate(side, current)
        self.where[key] = origin
        self._opened[key] = joined.connected_at
        if isinstance(joined, BoothJoined):
            self.d.upsert_booth(joined.booth)
            self._route(self.d.booth_connected(peer_id, now, lost_at=lost_at))
        else:
            self.d.upsert_staff(joined.staff, joined.role, joined.site_id, joined.skills)
            last_state = joined.state
            member = self.d.staff[peer_id]
            if lost_at is not None and member.connected:
                last_state = member.state  # moved to another node: as they were
            self._route(
                self.d.staff_connected(peer_id, now, lost_at=lost_at, last_state=last_state)
            )
        self._pass_held(key)

    def _close_duplicate(self, side: Side, origin: tuple[str, str]) -> None:
        why = (
            "this booth connected again elsewhere"
            if side is Side.BOOTH
            else "signed in again in another window"
        )
        error = ProtocolError(ErrorCode.DUPLICATE_CONNECTION, why, fatal=True)
        self._superseded.add(origin)
        self._to(
            origin,
            Delivery(
                conn=origin[1],
                frame=encode(_error_message(error)),
                close_code=CLOSE_DUPLICATE,
                close_reason="duplicate connection",
            ),
        )

    def _disconnected(self, side: Side, peer_id: str, at: float | None = None) -> None:
        del self.where[(side, peer_id)]
        self._opened.pop((side, peer_id), None)
        now = time.time() if at is None else at
        if side is Side.BOOTH:
            self._route(self.d.booth_disconnected(peer_id, now))
        else:
            self._route(self.d.staff_disconnected(peer_id, now))

    async def _drop_lost_nodes(self) -> None:
        """Connections of nodes whose presence key expired are lost, and so are those of
        an earlier run of a node restarted since (its presence names its current run, the
        prefix of its connection ids)."""
        nodes = sorted({node_id for node_id, _ in self.where.values()})
        if not nodes:
            return
        values = await _redis(self._redis.mget([self._keys.node(n) for n in nodes]))
        boots = dict(zip(nodes, values, strict=True))
        lost = [
            key
            for key, (node_id, conn_id) in self.where.items()
            if boots[node_id] is None or not conn_id.startswith(f"{boots[node_id]}-")
        ]
        if not lost:
            return
        gone = sorted({self.where[key][0] for key in lost})
        self.log.warning(
            "nodes %s are gone or restarted; %d of their connections lost",
            ", ".join(gone),
            len(lost),
        )
        now = time.time()
        for side, peer_id in lost:
            node_id = self.where[(side, peer_id)][0]
            self._disconnected(side, peer_id, min(now, self._heard.get(node_id, now)))

    def _message(self, side: Side, peer_id: str, text: str) -> None:
        d = self.d
        now = time.time()
        limit = self.config.max_message_bytes
        if side is Side.BOOTH:
            booth = decode_frame(booth_to_server, text, max_bytes=limit).message
            if isinstance(booth, RequestHelp):
                self._request_help(peer_id, booth, now)
            elif isinstance(booth, CancelRequest):
                self._route(d.cancel_request(peer_id, booth.request_id, now))
            elif isinstance(booth, Relay):
                self._route(d.relay(side, peer_id, booth), relay_text=text)
            elif isinstance(booth, HangUp):
                self._route(d.hang_up(side, peer_id, booth.session_id, now))
            elif isinstance(booth, MediaConnected):
                self._route(d.media_connected(side, peer_id, booth.session_id, now))
            elif isinstance(booth, MediaFailed):
                self._route(d.media_failed(side, peer_id, booth.session_id, now))
            elif isinstance(booth, DeviceStatusReport):
                changes = d.report_devices(peer_id, booth.devices)
                for device in changes.failed:
                    self.log.warning(
                        "booth %s: %s %s %s", peer_id, device.kind, device.name, device.state
                    )
            return
        staff = decode_frame(staff_to_server, text, max_bytes=limit).message
        if isinstance(staff, SetState):
            self._route(d.set_state(peer_id, StaffState(staff.state), now))
        elif isinstance(staff, AcceptOffer):
            self._route(d.accept(peer_id, staff.offer_id, now))
        elif isinstance(staff, DeclineOffer):
            self._route(d.decline(peer_id, staff.offer_id, now))
        elif isinstance(staff, WrapUpDone):
            self._route(d.wrap_up_done(peer_id, staff.session_id, staff.note, now))
        elif isinstance(staff, Relay):
            self._route(d.relay(side, peer_id, staff), relay_text=text)
        elif isinstance(staff, HangUp):
            self._route(d.hang_up(side, peer_id, staff.session_id, now))
        elif isinstance(staff, MediaConnected):
            self._route(d.media_connected(side, peer_id, staff.session_id, now))
        elif isinstance(staff, MediaFailed):
            self._route(d.media_failed(side, peer_id, staff.session_id, now))

    def _request_help(self, booth_id: str, message: RequestHelp, now: float) -> None:
        d = self.d
        args = (message.request_id, message.department, message.language)
        if d.check_request(booth_id, *args):  # the same request again: idempotent
            self._route(d.request_help(booth_id, *args, now))
            return
        actions = d.request_help(booth_id, *args, now)
        record = d.new_request_record(booth_id, *args, now)
        stored = self.server.store.insert_request(record, self.epoch)
        self._durable = True
        stored.add_done_callback(
            lambda done: self._request_stored(booth_id, message.request_id, done)
        )
        self.log.info(
            "booth %s requested help (request %s, %s)",
            booth_id,
            message.request_id,
            message.department,
        )
        self._route(actions)

    def _request_stored(self, booth_id: str, request_id: str, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is None or isinstance(done.exception(), Fenced):
            return
        self.log.error("booth %s: request %s could not be stored", booth_id, request_id)
        try:
            actions = self.d.cancel_request(booth_id, request_id, time.time())
        except ProtocolError:
            return
        self._route(actions)
        where = self.where.get((Side.BOOTH, booth_id))
        if where is not None:
            error = ProtocolError(
                ErrorCode.OUT_OF_ORDER, "request id already used", ref="request_help"
            )
            self._to(where, Delivery(conn=where[1], frame=encode(_error_message(error))))

    # ------------------------------------------------------------------ actions

    def _route(self, actions: list[Action], *, relay_text: str | None = None) -> None:
        """Persist records here; frames to the node holding each target connection."""
        encoded: dict[int, str] = {}
        for action in actions:
            if isinstance(action, Persist):
                self.server.store.record(action.record, self.epoch)
                self.server._observe(action.record)
                if isinstance(action.record, _DURABLE):
                    self._durable = True
                continue
            message = action.message
            if isinstance(message, Offer):
                self.server._offer_observed(message)
            state = None
            if isinstance(message, StaffStateChanged | StaffWelcome):
                state = message.state
            key = (
                (Side.BOOTH, action.booth_id)
                if isinstance(action, ToBooth)
                else (Side.STAFF, action.staff_id)
            )
            where = self.where.get(key)
            if where is None:
                if isinstance(message, Relay):
                    self._hold(key, relay_text or encode(message))
                continue
            frame = relay_text if isinstance(message, Relay) else None
            if frame is None:
                frame = encoded.get(id(message)) or encode(message)
                encoded[id(message)] = frame
            self._to(
                where,
                Delivery(
                    conn=where[1], frame=frame, coalesce=_COALESCED.get(type(message)), state=state
                ),
            )

    def _hold(self, key: tuple[Side, str], frame: str) -> None:
        if key not in self._held and len(self._held) >= 1024:
            now = time.monotonic()  # peers that never came back: forget what expired
            for stale in [k for k, v in self._held.items() if v[-1][0] < now]:
                del self._held[stale]
        held = self._held.setdefault(key, deque(maxlen=HELD_RELAYS_MAX))
        held.append((time.monotonic() + HELD_RELAY_S, frame))

    def _pass_held(self, key: tuple[Side, str]) -> None:
        """The relays kept for this peer, to its connection now known."""
        held = self._held.pop(key, None)
        where = self.where.get(key)
        if not held or where is None:
            return
        now = time.monotonic()
        for until, frame in held:
            if until >= now:
                self._to(where, Delivery(conn=where[1], frame=frame))

    def _to(self, where: tuple[str, str], delivery: Delivery) -> None:
        self._out[where[0]].append(delivery)

    async def _flush(self) -> None:
        """Publish the frames of this round to their nodes and keep the cursor."""
        if self._durable:
            # A match, a new request, an end: stored before anyone hears of it, so that
            # a leader taking over after this one resumes what the clients were told.
            self._durable = False
            await self.server.store.flush()
        out, self._out = self._out, defaultdict(list)
        if self.fenced or (not out and self.cursor == self._saved_cursor):
            return
        ttl_ms = round(NODE_STREAM_TTL_S * 1000)
        args: list[Any] = [self.epoch, self.cursor, NODE_STREAM_MAX, ttl_ms]
        for node_id, items in out.items():
            batch = Deliveries(epoch=self.epoch, leader=self.node.node_id, items=items)
            args += [self._keys.to(node_id), batch.model_dump_json()]
        if not await self._publish_round(keys=[self._keys.epoch, self._keys.cursor], args=args):
            self.fence(f"Redis holds a newer leadership term than epoch {self.epoch}")
            return
        self._saved_cursor = self.cursor
