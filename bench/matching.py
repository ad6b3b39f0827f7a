"""Matching benchmark: how fast does signaling put a waiting booth in front of a staff member?

Sets up a temporary SQLite database with many booths and HQ staff, starts the signaling
server as its own process on 127.0.0.1, connects every booth and staff WebSocket from this
process, and lets booths ask for help at a steady rate. Each staff member accepts every
offer at once, hangs up after a short hold, finishes wrap-up and is available again; a
booth asks again after its session has ended. Then, as the floor, a minimal aiohttp
WebSocket echo server in its own process gets the same number of connections and the same
message rate.

Prints one JSON object on stdout (keys in bench/README.md); logs go to stderr::

    .venv/bin/python -m bench.matching --booths 1000 --staff 200 --rate 100 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import aiohttp
from sqlalchemy import insert

from bench._load import (
    LOOPBACK,
    ChildProcess,
    ResourceMeter,
    echo_server_argv,
    free_port,
    gather_limited,
    percentile,
    process_peak_rss_mb,
    raise_fd_limit,
    rounded,
    run_echo_load,
    run_load_benchmark,
    steady_ticks,
)
from shared import wire
from shared.protocol import (
    AcceptOffer,
    BoothHello,
    BoothToServer,
    BoothWelcome,
    CallStarted,
    ErrorMessage,
    HangUp,
    Offer,
    OfferWithdrawn,
    RequestClosed,
    RequestHelp,
    ServerToStaff,
    SessionEnded,
    SetState,
    StaffHello,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffToServer,
    StaffWelcome,
    WrapUpDone,
)
from shared.security import hash_booth_credential, hash_password, issue_staff_token
from shared.store import Booth, Staff, StaffSkill, create_engine, migrate, session_factory
from shared.store.seed import DEPARTMENTS, SITES, seed_reference_data

log = logging.getLogger("bench.matching")

SCENARIO: Final = "matching"
TARGET_P99_MS: Final = 20.0
LANGUAGES: Final = ("ja", "en")
# Every frame the server sends is encoded by shared.wire with ``type`` first; peeking at it
# lets the client skip decoding the messages it does not act on (snapshots, queue status).
_TYPE_PREFIX: Final = re.compile(r'^\{\s*"type"\s*:\s*"([a-z_]+)"')
_BOOTH_ACTS_ON: Final = frozenset({"call_started", "session_ended", "request_closed", "error"})
_STAFF_ACTS_ON: Final = frozenset(
    {"offer", "offer_withdrawn", "call_started", "session_ended", "state", "error"}
)


@dataclass(frozen=True)
class Params:
    booths: int
    staff: int
    rate: float
    duration: float
    hold: float
    drain: float
    connect_concurrency: int
    echo: bool
    timeout: float
    seed: int
    profile_server: Path | None = None


# --------------------------------------------------------------------------------------
# The population: booths, staff and their skills, written straight into the store
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoothAccount:
    booth_id: str
    credential: str


@dataclass(frozen=True)
class StaffAccount:
    staff_id: str
    skills: tuple[tuple[str, str], ...]  # (department, language)


@dataclass(frozen=True)
class Population:
    booths: list[BoothAccount]
    staff: list[StaffAccount]
    # (department, language) pairs at least one staff member can serve: what booths ask for
    requestable: list[tuple[str, str]]


def make_population(n_booths: int, n_staff: int) -> Population:
    """Booths spread over the sites; each staff member has two departments, everyone
    speaks Japanese and every other group of four also English."""
    departments = [code for code, *_ in DEPARTMENTS]
    booths = [BoothAccount(f"bench-b{i:05d}", secrets.token_urlsafe(24)) for i in range(n_booths)]
    staff = []
    for i in range(n_staff):
        depts = (departments[i % 4], departments[(i + 1) % 4])
        langs = ("ja", "en") if (i // 4) % 2 == 0 else ("ja",)
        staff.append(
            StaffAccount(f"bench-s{i:04d}", tuple((d, lang) for d in depts for lang in langs))
        )
    served = {skill for s in staff for skill in s.skills}
    requestable = [(d, lang) for d in departments for lang in LANGUAGES if (d, lang) in served]
    return Population(booths, staff, requestable)


async def write_population(database_url: str, population: Population) -> None:
    """Migrate, seed the reference data and bulk-insert the booths, staff and skills."""
    await migrate(database_url)
    engine = create_engine(database_url)
    try:
        sessions = session_factory(engine)
        await seed_reference_data(sessions)
        sites = [site_id for site_id, *_ in SITES]
        password_hash = hash_password(secrets.token_urlsafe(16))  # nobody signs in with it
        async with sessions.begin() as s:
            await s.execute(
                insert(Booth),
                [
                    {
                        "id": b.booth_id,
                        "site_id": sites[i % len(sites)],
                        "name": f"ベンチ {i + 1}番ブース",
                        "credential_hash": hash_booth_credential(b.credential),
                    }
                    for i, b in enumerate(population.booths)
                ],
            )
            await s.execute(
                insert(Staff),
                [
                    {
                        "id": st.staff_id,
                        "login": st.staff_id,
                        "display_name": f"職員 {i + 1}",
                        "password_hash": password_hash,
                        "role": StaffRole.HQ.value,
                        "site_id": None,
                        "active": True,
                    }
                    for i, st in enumerate(population.staff)
                ],
            )
            await s.execute(
                insert(StaffSkill),
                [
                    {"staff_id": st.staff_id, "department": d, "language": lang}
                    for st in population.staff
                    for d, lang in st.skills
                ],
            )
    finally:
        await engine.dispose()


def signaling_config_toml(port: int, database_url: str, token_secret: str) -> str:
    values: dict[str, Any] = {
        "host": LOOPBACK,
        "port": port,
        "database_url": database_url,
        "token_secret": token_secret,
        "auto_migrate": False,
    }
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


# --------------------------------------------------------------------------------------
# The load: booth and staff clients
# --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Everything measured on the client side (times from ``time.perf_counter``)."""

    sent_at: dict[str, float] = field(default_factory=dict)  # request id → RequestHelp sent
    started_at: float = 0.0  # when the first request was sent
    last_match_at: float = 0.0  # when the last CallStarted arrived
    offer_ms: dict[str, float] = field(default_factory=dict)  # request id → first Offer
    call_ms: dict[str, float] = field(default_factory=dict)  # request id → CallStarted (staff)
    to_booths: Counter[str] = field(default_factory=Counter)  # frames received, by type
    to_staff: Counter[str] = field(default_factory=Counter)
    bytes_to_booths: int = 0
    bytes_to_staff: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # error code (ref)
    withdrawn: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    set_away: int = 0
    skipped_no_idle_booth: int = 0
    all_matched: asyncio.Event = field(default_factory=asyncio.Event)
    sending_done: bool = False
    # When not None: every offer, offer_withdrawn, call_started and session_ended each staff
    # client received, with the time it was read (for double-booking checks).
    staff_frames: dict[str, list[tuple[float, ServerToStaff]]] | None = None

    def check_done(self) -> None:
        if self.sending_done and len(self.call_ms) >= len(self.sent_at):
            self.all_matched.set()

    def error(self, side: str, err: ErrorMessage) -> None:
        key = f"{side}:{err.code.value}:{err.ref or '-'}"
        if self.errors[key] < 3:
            log.warning("%s got error %s (ref %s): %s", side, err.code, err.ref, err.message)
        self.errors[key] += 1


def _peek_type(text: str) -> str | None:
    match = _TYPE_PREFIX.match(text)
    return match.group(1) if match else None


class BoothClient:
    """One booth: hello, then request_help whenever the ticker picks it."""

    def __init__(self, account: BoothAccount, tally: Tally, idle: deque[BoothClient]) -> None:
        self.account = account
        self._tally = tally
        self._idle = idle
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self.request_id: str | None = None

    async def connect(self, http: aiohttp.ClientSession, url: str) -> None:
        self._ws = await http.ws_connect(url, max_msg_size=wire.MAX_MESSAGE_BYTES)
        await self._send(
            BoothHello(booth_id=self.account.booth_id, credential=self.account.credential)
        )
        msg = await self._ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"booth {self.account.booth_id}: no welcome ({msg.type!r})")
        welcome = wire.decode(wire.server_to_booth, msg.data)
        if not isinstance(welcome, BoothWelcome):
            raise RuntimeError(f"booth {self.account.booth_id}: expected welcome, got {welcome}")

    async def _send(self, message: BoothToServer) -> None:
        assert self._ws is not None
        await self._ws.send_str(wire.encode(message))

    async def request_help(self, department: str, language: str) -> None:
        self._seq += 1
        rid = f"{self.account.booth_id}.{self._seq}"
        self.request_id = rid
        frame = wire.encode(RequestHelp(request_id=rid, department=department, language=language))
        assert self._ws is not None
        self._tally.sent_at[rid] = time.perf_counter()
        await self._ws.send_str(frame)

    def _become_idle(self) -> None:
        if self.request_id is not None:
            self.request_id = None
            self._idle.append(self)

    async def run(self) -> None:
        assert self._ws is not None
        tally = self._tally
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            text: str = msg.data
            kind = _peek_type(text)
            tally.to_booths[kind or "?"] += 1
            tally.bytes_to_booths += len(text)
            if kind is not None and kind not in _BOOTH_ACTS_ON:
                continue
            message = wire.decode(wire.server_to_booth, text)
            if isinstance(message, SessionEnded):
                self._become_idle()
            elif isinstance(message, RequestClosed):
                tally.closed[message.reason] += 1
                self._become_idle()
            elif isinstance(message, ErrorMessage):
                tally.error("booth", message)
            elif isinstance(message, CallStarted):
                pass

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()


class StaffClient:
    """One HQ staff member: available, accepts every offer at once, hangs up after
    ``hold`` seconds, finishes wrap-up and is available again."""

    def __init__(self, account: StaffAccount, token: str, tally: Tally, hold: float) -> None:
        self.account = account
        self._token = token
        self._tally = tally
        self._hold = hold
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wrapped: set[str] = set()
        self._session_id: str | None = None
        self._hangups: set[asyncio.Task[None]] = set()
        self.state: StaffState | None = None
        self._available = asyncio.Event()

    async def connect(self, http: aiohttp.ClientSession, url: str) -> None:
        self._ws = await http.ws_connect(url, max_msg_size=wire.MAX_MESSAGE_BYTES)
        await self._send(StaffHello(token=self._token))
        msg = await self._ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"staff {self.account.staff_id}: no welcome ({msg.type!r})")
        welcome = wire.decode(wire.server_to_staff, msg.data)
        if not isinstance(welcome, StaffWelcome):
            raise RuntimeError(f"staff {self.account.staff_id}: expected welcome, got {welcome}")
        self.state = welcome.state

    async def set_available(self) -> None:
        await self._send(SetState(state="available"))
        await asyncio.wait_for(self._available.wait(), 30)

    async def _send(self, message: StaffToServer) -> None:
        assert self._ws is not None
        await self._ws.send_str(wire.encode(message))

    async def _hang_up_later(self, session_id: str) -> None:
        await asyncio.sleep(self._hold)
        await self._send(HangUp(session_id=session_id))

    async def _wrap_up(self, session_id: str) -> None:
        if session_id not in self._wrapped:
            self._wrapped.add(session_id)
            await self._send(WrapUpDone(session_id=session_id))

    async def run(self) -> None:
        assert self._ws is not None
        tally = self._tally
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            text: str = msg.data
            kind = _peek_type(text)
            tally.to_staff[kind or "?"] += 1
            tally.bytes_to_staff += len(text)
            if kind is not None and kind not in _STAFF_ACTS_ON:
                continue
            message = wire.decode(wire.server_to_staff, text)
            if tally.staff_frames is not None and isinstance(
                message, Offer | OfferWithdrawn | CallStarted | SessionEnded
            ):
                tally.staff_frames.setdefault(self.account.staff_id, []).append((now, message))
            if isinstance(message, Offer):
                sent = tally.sent_at.get(message.request_id)
                if sent is not None and message.request_id not in tally.offer_ms:
                    tally.offer_ms[message.request_id] = (now - sent) * 1000
                await self._send(AcceptOffer(offer_id=message.offer_id))
            elif isinstance(message, CallStarted):
                sent = tally.sent_at.get(message.request_id)
                if sent is not None:
                    tally.call_ms[message.request_id] = (now - sent) * 1000
                    tally.last_match_at = now
                    tally.check_done()
                self._session_id = message.session_id
                task = asyncio.create_task(self._hang_up_later(message.session_id))
                self._hangups.add(task)
                task.add_done_callback(self._hangups.discard)
            elif isinstance(message, SessionEnded):
                await self._wrap_up(message.session_id)
            elif isinstance(message, StaffStateChanged):
                self.state = message.state
                if message.state is StaffState.AVAILABLE:
                    self._available.set()
                elif message.state is StaffState.WRAP_UP and self._session_id is not None:
                    await self._wrap_up(self._session_id)
                elif message.state is StaffState.AWAY and self._available.is_set():
                    tally.set_away += 1
                    await self._send(SetState(state="available"))
            elif isinstance(message, OfferWithdrawn):
                tally.withdrawn[message.reason.value] += 1
            elif isinstance(message, ErrorMessage):
                tally.error("staff", message)

    async def aclose(self) -> None:
        for task in list(self._hangups):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class MatchingResult:
    """The load's tally and the servers' figures (summed over the servers: CPU in percent
    of one core, resident memory in MiB)."""

    tally: Tally
    server_cpu_percent: float
    server_rss_mb: float
    server_peak_rss_mb: float
    loadgen_cpu_percent: float
    connect_s: float
    server_stop_s: float | None = None


async def _close_all(clients: Sequence[BoothClient | StaffClient], limit_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def issue_tokens(population: Population, secret: str, ttl_s: float) -> dict[str, str]:
    """A signed HQ staff token for every staff member of ``population``."""
    return {
        s.staff_id: issue_staff_token(secret, s.staff_id, StaffRole.HQ, ttl_s)
        for s in population.staff
    }


async def run_matching_load(
    params: Params,
    population: Population,
    tokens: dict[str, str],
    base_urls: Sequence[str],
    server_pids: Sequence[int],
    *,
    record_staff_frames: bool = False,
    settle_s: float = 0.0,
) -> MatchingResult:
    """Connect every staff member and booth, spread round robin over ``base_urls``
    (``ws://host:port`` of each signaling node), and run the load of ``params``; the
    servers' CPU and memory are measured through ``server_pids``.

    ``record_staff_frames`` keeps the frames each staff client received
    (``Tally.staff_frames``); ``settle_s`` is waited after the last match, before the
    clients close (so that the last calls are hung up and wrapped up)."""
    tally = Tally(staff_frames={} if record_staff_frames else None)
    rng = random.Random(params.seed)
    idle: deque[BoothClient] = deque()
    booths = [BoothClient(b, tally, idle) for b in population.booths]
    staff = [StaffClient(s, tokens[s.staff_id], tally, params.hold) for s in population.staff]

    def url(i: int, path: str) -> str:
        return f"{base_urls[i % len(base_urls)]}{path}"

    readers: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            t_connect = time.perf_counter()
            await gather_limited(
                [partial(s.connect, http, url(i, "/ws/staff")) for i, s in enumerate(staff)],
                params.connect_concurrency,
            )
            readers += [asyncio.create_task(s.run()) for s in staff]
            await gather_limited([s.set_available for s in staff], params.connect_concurrency)
            log.info("%d staff available", len(staff))
            await gather_limited(
                [partial(b.connect, http, url(i, "/ws/booth")) for i, b in enumerate(booths)],
                params.connect_concurrency,
            )
            readers += [asyncio.create_task(b.run()) for b in booths]
            connect_s = time.perf_counter() - t_connect
            log.info("%d booths connected; %.1f s to connect everyone", len(booths), connect_s)
            order = list(booths)
            rng.shuffle(order)
            idle.extend(order)
            await asyncio.sleep(0.5)  # let the welcome-time snapshots settle

            server_meters = [ResourceMeter(pid) for pid in server_pids]
            own_meter = ResourceMeter(os.getpid())
            for meter in server_meters:
                meter.start()
            own_meter.start()
            log.info("requesting %.0f/s for %.0f s", params.rate, params.duration)
            tally.started_at = time.perf_counter()
            async for _ in steady_ticks(params.rate, params.duration):
                if not idle:
                    tally.skipped_no_idle_booth += 1
                    continue
                booth = idle.popleft()
                department, language = rng.choice(population.requestable)
                await booth.request_help(department, language)
            tally.sending_done = True
            tally.check_done()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tally.all_matched.wait(), params.drain)
            for meter in server_meters:
                await meter.stop()
            await own_meter.stop()
            log.info(
                "sent %d requests, %d offers, %d calls started",
                len(tally.sent_at),
                len(tally.offer_ms),
                len(tally.call_ms),
            )
            if settle_s > 0:
                await asyncio.sleep(settle_s)
            return MatchingResult(
                tally=tally,
                server_cpu_percent=sum(m.cpu_percent for m in server_meters),
                server_rss_mb=sum(m.max_rss_mb for m in server_meters),
                server_peak_rss_mb=sum(_peak_rss(pid) for pid in server_pids),
                loadgen_cpu_percent=own_meter.cpu_percent,
                connect_s=connect_s,
            )
        finally:
            await _close_all([*booths, *staff], 10)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)


def _peak_rss(pid: int) -> float:
    try:
        return process_peak_rss_mb(pid)
    except OSError:
        return float("nan")


async def run_echo_floor(params: Params, workdir: Path) -> dict[str, Any]:
    port = free_port()
    server = ChildProcess("echo server", echo_server_argv(port), workdir / "echo.log")
    connections = params.booths + params.staff
    try:
        await server.start()
        await server.wait_listening(LOOPBACK, port, 30)
        meter = ResourceMeter(server.pid)
        meter.start()
        result = await run_echo_load(
            f"ws://{LOOPBACK}:{port}/ws",
            connections=connections,
            rate=params.rate,
            duration=params.duration,
            connect_concurrency=params.connect_concurrency,
            drain_s=params.drain,
        )
        await meter.stop()
    finally:
        await server.aclose()
    p50 = percentile(result.latencies_ms, 50)
    p99 = percentile(result.latencies_ms, 99)
    log.info(
        "echo: %d/%d answered, p50 %.2f ms, p99 %.2f ms", result.received, result.sent, p50, p99
    )
    return {
        "echo_connections": connections,
        "echo_messages": result.sent,
        "echo_answered": result.received,
        "echo_p50_ms": rounded(p50),
        "echo_p99_ms": rounded(p99),
        "echo_server_cpu_percent": rounded(meter.cpu_percent, 1),
        "echo_server_rss_mb": rounded(meter.max_rss_mb, 1),
    }


async def run(params: Params, workdir: Path) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    needed = 2 * (params.booths + params.staff) + 256  # both ends live in processes we start
    if fd_limit < needed:
        log.warning("file-descriptor limit %d is below the %d this run needs", fd_limit, needed)

    population = make_population(params.booths, params.staff)
    database_url = f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    t0 = time.perf_counter()
    await write_population(database_url, population)
    log.info(
        "database ready in %.1f s: %d booths, %d staff",
        time.perf_counter() - t0,
        len(population.booths),
        len(population.staff),
    )
    token_secret = secrets.token_urlsafe(32)
    tokens = issue_tokens(population, token_secret, params.timeout + 3600)
    port = free_port()
    config_path = workdir / "signaling.toml"
    config_path.write_text(signaling_config_toml(port, database_url, token_secret))
    profiler = ["-m", "cProfile", "-o", str(params.profile_server)] if params.profile_server else []
    server = ChildProcess(
        "signaling server",
        [sys.executable, *profiler, "-m", "signaling", "--config", str(config_path)],
        workdir / "signaling.log",
    )
    try:
        await server.start()
        await server.wait_listening(LOOPBACK, port, 60)
        matching = await run_matching_load(
            params, population, tokens, [f"ws://{LOOPBACK}:{port}"], [server.pid]
        )
    except Exception:
        log.error("signaling log (tail):\n%s", server.log_tail())
        raise
    finally:
        # The server writes its queued records before it exits; give it time to.
        await server.aclose(grace_s=60 if params.profile_server else 15)

    echo: dict[str, Any] = (
        await run_echo_floor(params, workdir)
        if params.echo
        else {"echo_p50_ms": None, "echo_p99_ms": None}
    )
    matching.server_stop_s = server.stop_s
    return summarise(params, matching, echo)


def p50_by_second(t: Tally, seconds: int) -> list[float | None]:
    """Median request → offer latency of the requests sent in each second of the window
    (shows whether a queue builds up inside the server)."""
    buckets: list[list[float]] = [[] for _ in range(seconds)]
    for rid, ms in t.offer_ms.items():
        index = int(t.sent_at[rid] - t.started_at)
        if 0 <= index < seconds:
            buckets[index].append(ms)
    return [rounded(percentile(b, 50), 1) for b in buckets]


def load_figures(params: Params, t: Tally) -> dict[str, Any]:
    """Requests, matches and request → offer latency of one run (the keys of the same
    names in bench/README.md)."""
    offer_ms = list(t.offer_ms.values())
    requests = len(t.sent_at)
    matches = len(t.call_ms)
    # Achieved throughput: over the sending window, or longer if the server lagged behind.
    busy_s = max(params.duration, t.last_match_at - t.started_at)
    return {
        "requests": requests,
        "offers": len(offer_ms),
        "matches": matches,
        "unmatched": requests - matches,
        "skipped_no_idle_booth": t.skipped_no_idle_booth,
        "matches_per_s": rounded(matches / busy_s, 2),
        "request_to_offer_p50_ms": rounded(percentile(offer_ms, 50)),
        "request_to_offer_p99_ms": rounded(percentile(offer_ms, 99)),
        "request_to_offer_max_ms": rounded(max(offer_ms, default=float("nan"))),
    }


def summarise(params: Params, m: MatchingResult, echo: dict[str, Any]) -> dict[str, Any]:
    t = m.tally
    call_ms = list(t.call_ms.values())
    offer_p99 = percentile(list(t.offer_ms.values()), 99)
    echo_p99 = echo.get("echo_p99_ms")
    ratio = offer_p99 / echo_p99 if echo_p99 else float("nan")
    figures = load_figures(params, t)
    requests, matches = figures["requests"], figures["matches"]
    return {
        "scenario": SCENARIO,
        "booths": params.booths,
        "staff": params.staff,
        "rate_per_s": params.rate,
        "duration_s": params.duration,
        "hold_s": params.hold,
        **figures,
        "request_to_offer_p50_ms_by_second": p50_by_second(t, math.ceil(params.duration)),
        "request_to_call_started_p50_ms": rounded(percentile(call_ms, 50)),
        "request_to_call_started_p99_ms": rounded(percentile(call_ms, 99)),
        **echo,
        "ratio_p99_vs_echo": rounded(ratio, 2),
        "server_rss_mb": rounded(m.server_rss_mb, 1),
        "server_peak_rss_mb": rounded(m.server_peak_rss_mb, 1),
        "server_cpu_percent": rounded(m.server_cpu_percent, 1),
        "loadgen_cpu_percent": rounded(m.loadgen_cpu_percent, 1),
        "connect_all_s": rounded(m.connect_s, 2),
        "server_stop_s": rounded(m.server_stop_s, 2) if m.server_stop_s is not None else None,
        "frames_to_staff": dict(sorted(t.to_staff.items())),
        "frames_to_booths": dict(sorted(t.to_booths.items())),
        "bytes_to_staff": t.bytes_to_staff,
        "bytes_to_booths": t.bytes_to_booths,
        "errors": dict(sorted(t.errors.items())),
        "offers_withdrawn": dict(sorted(t.withdrawn.items())),
        "requests_closed": dict(sorted(t.closed.items())),
        "staff_set_away": t.set_away,
        "cpu_count": os.cpu_count(),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": bool(requests > 0 and matches == requests and offer_p99 <= TARGET_P99_MS),
    }


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Params:
    p = argparse.ArgumentParser(
        prog="python -m bench.matching", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--booths", type=int, default=1000, help="booth connections (default 1000)")
    p.add_argument("--staff", type=int, default=200, help="HQ staff connections (default 200)")
    p.add_argument("--rate", type=float, default=100.0, help="help requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of requests")
    p.add_argument("--hold", type=float, default=0.5, help="seconds a call lasts before hang-up")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for late matches")
    p.add_argument("--connect-concurrency", type=int, default=50, help="connections opened at once")
    p.add_argument("--no-echo", action="store_true", help="skip the echo-server floor")
    p.add_argument("--timeout", type=float, help="hard limit for the whole run, in seconds")
    p.add_argument("--seed", type=int, default=1, help="random seed for the request mix")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--profile-server",
        type=Path,
        metavar="FILE",
        help="run signaling under cProfile and write its statistics to FILE (pstats format)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=a.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    if a.booths < 1 or a.staff < 1 or a.rate <= 0 or a.duration <= 0:
        p.error("--booths, --staff, --rate and --duration must be positive")
    timeout = a.timeout if a.timeout is not None else 240 + 3 * a.duration + 2 * a.drain
    return Params(
        booths=a.booths,
        staff=a.staff,
        rate=a.rate,
        duration=a.duration,
        hold=a.hold,
        drain=a.drain,
        connect_concurrency=a.connect_concurrency,
        echo=not a.no_echo,
        timeout=timeout,
        seed=a.seed,
        profile_server=a.profile_server.resolve() if a.profile_server else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    return run_load_benchmark(
        "ekichika-bench-matching-", lambda workdir: run(params, workdir), params.timeout
    )


if __name__ == "__main__":
    sys.exit(main())
