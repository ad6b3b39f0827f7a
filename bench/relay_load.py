"""Relay benchmark: the signaling server's SDP/ICE relay against the PeerJS server.

Both servers run as processes of their own on 127.0.0.1 and get the same load from the
same load generator (this process):

1. **Idle connections**: ``--idle`` clients connect (``--connect-concurrency`` at a time)
   and stay idle; the clock of each runs from before the WebSocket upgrade to the moment
   the client is ready (signaling: ``hello`` → ``welcome``, a booth with its credential;
   PeerJS: ``OPEN``). The server's RSS is read from ``/proc`` before and after.
2. **Busy pairs**: ``--pairs`` pairs of clients in a live session (signaling: a booth and an
   HQ staff member matched through ``request_help``/``accept``; PeerJS: two peer ids)
   relay ~4 KB SDP-like payloads back and forth, ``--in-flight`` per pair: a message that
   arrives is answered at once (signaling: ``relay`` with an ``sdp`` payload; PeerJS:
   ``OFFER``/``ANSWER``). Each payload carries its send time in its ``o=`` line, so the
   relay latency is measured with one clock. After ``--warmup`` seconds, ``--duration``
   seconds are measured: throughput, latency, the server's CPU.

The same load also goes to a bare aiohttp relay (the floor: what aiohttp alone costs) unless
``--no-floor``; ``--rounds N`` alternates the servers N times and reports medians.

Prints one JSON object on stdout (keys in bench/README.md); logs go to stderr::

    .venv/bin/python -m bench.relay_load                         # 100 pairs, 1,000 idle, 10 s
    .venv/bin/python -m bench.relay_load --pairs 10 --idle 50 --duration 2 --no-peerjs

PeerJS is the npm package ``peer`` installed in ``bench/peerjs`` (``scripts/setup.sh`` does
it when npm is present); without it (or Node.js) only the signaling server is measured and
``peerjs_available`` is false.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web

from bench._load import (
    LOOPBACK,
    REPO_ROOT,
    ChildProcess,
    ResourceMeter,
    free_port,
    gather_limited,
    percentile,
    process_rss_mb,
    raise_fd_limit,
    rounded,
    run_load_benchmark,
)
from bench.matching import BoothAccount, Population, StaffAccount, write_population
from shared import wire
from shared.protocol import (
    AcceptOffer,
    BoothHello,
    BoothWelcome,
    CallStarted,
    Offer,
    Relay,
    RequestHelp,
    SdpPayload,
    SetState,
    StaffHello,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
)
from shared.security import issue_staff_token

log = logging.getLogger("bench.relay_load")

SCENARIO: Final = "relay_load"
PEERJS_DIR: Final = REPO_ROOT / "bench" / "peerjs"
PEERJS_BIN: Final = PEERJS_DIR / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
PEERJS_KEY: Final = "peerjs"
PEERJS_HEARTBEAT_S: Final = 5.0  # what the PeerJS client library sends
DEPARTMENT: Final = "shimin"
LANGUAGE: Final = "ja"
# Targets (issue): throughput and relay latency at least as good as PeerJS, memory per
# idle connection within 1.6 × PeerJS.
TARGET_RSS_RATIO: Final = 1.6
# Message budgets raised so that the benchmark measures the relay, not the limiter.
BENCH_MESSAGE_RATE: Final = 1_000_000.0
BENCH_MESSAGE_BURST: Final = 1_000_000
# The send time in a payload: "o=- <seq> <perf_counter_ns> IN IP4 127.0.0.1" (fixed width).
_ORIGIN_MARK: Final = "o=- "
_PLACEHOLDER: Final = "@@STAMP@@"


@dataclass(frozen=True)
class Params:
    pairs: int
    idle: int
    duration: float
    warmup: float
    in_flight: int
    payload_bytes: int
    connect_concurrency: int
    peerjs: bool
    rounds: int
    floor: bool
    client_deflate: bool
    timeout: float
    profile_server: Path | None = None


# --------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------


def sdp_text(size: int) -> str:
    """An SDP-like text of exactly ``size`` characters with a placeholder ``o=`` line."""
    head = (
        f"v=0\r\n{_ORIGIN_MARK}{_PLACEHOLDER} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "a=group:BUNDLE 0 1 2\r\na=msid-semantic:WMS *\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\n"
        "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:b3Jh\r\na=ice-pwd:cGFzc3dvcmRwYXNzd29yZA\r\n"
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    )
    lines = []
    i = 0
    stamp_len = len(_stamp(0, 0))
    total = len(head) - len(_PLACEHOLDER) + stamp_len
    while True:
        line = f"a=rtpmap:{96 + i % 32} VP8/90000\r\na=rtcp-fb:{96 + i % 32} nack pli\r\n"
        if total + len(line) > size:
            break
        lines.append(line)
        total += len(line)
        i += 1
    filler = "a=x-pad:" + "0" * max(0, size - total - 10) + "\r\n" if size - total >= 10 else ""
    text = head + "".join(lines) + filler
    return text + " " * (size - (len(text) - len(_PLACEHOLDER) + stamp_len))


def _stamp(seq: int, t_ns: int) -> str:
    return f"{seq:010d} {t_ns:020d}"


def read_stamp(text: str) -> tuple[int, int] | None:
    """(seq, send time in ns) from a frame that carries a payload of :func:`sdp_text`."""
    at = text.find(_ORIGIN_MARK)
    if at < 0:
        return None
    at += len(_ORIGIN_MARK)
    try:
        return int(text[at : at + 10]), int(text[at + 11 : at + 31])
    except ValueError:
        return None


@dataclass(frozen=True)
class FrameTemplate:
    """A frame split around the payload's stamp: filling it in costs one join."""

    before: str
    after: str

    @classmethod
    def of(cls, frame: str) -> FrameTemplate:
        before, sep, after = frame.partition(_PLACEHOLDER)
        if not sep:
            raise ValueError("frame has no stamp placeholder")
        return cls(before, after)

    def fill(self, seq: int, t_ns: int) -> str:
        return f"{self.before}{seq:010d} {t_ns:020d}{self.after}"


# --------------------------------------------------------------------------------------
# Measurements shared by both servers
# --------------------------------------------------------------------------------------


@dataclass
class RelayTally:
    measuring: bool = False
    stopping: bool = False
    relayed: int = 0  # messages received within the measured window
    latencies_ms: list[float] = field(default_factory=list)
    total_received: int = 0
    total_sent: int = 0
    other_frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Endpoint:
    """One side of a busy pair: answers every stamped frame with its own template."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, reply: FrameTemplate) -> None:
        self.ws = ws
        self.reply = reply
        self.peer: Endpoint | None = None

    async def send(self, tally: RelayTally, seq: int) -> None:
        tally.total_sent += 1
        await self.ws.send_str(self.reply.fill(seq, time.perf_counter_ns()))

    async def run(self, tally: RelayTally, kind_of: Callable[[str], str | None]) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter_ns()
            text: str = msg.data
            stamp = read_stamp(text)
            if stamp is None:
                kind = kind_of(text) or "?"
                tally.other_frames[kind] += 1
                if kind in ("error", "ERROR", "ID-TAKEN"):
                    tally.errors[text[:120]] += 1
                continue
            tally.total_received += 1
            seq, sent_ns = stamp
            if tally.measuring:
                tally.relayed += 1
                tally.latencies_ms.append((now - sent_ns) / 1e6)
            if not tally.stopping:
                await self.send(tally, seq + 1)


class Flavor(Protocol):
    """How the load generator talks to one kind of server."""

    name: str

    async def connect_idle(self, http: _WsSession, index: int) -> Any: ...

    async def open_pairs(
        self, http: _WsSession, pairs: int, sdp: str
    ) -> list[tuple[Endpoint, Endpoint]]: ...

    def kind_of(self, text: str) -> str | None: ...

    async def connections_held(self, http: aiohttp.ClientSession) -> int | None: ...


def _kind(text: str) -> str | None:
    """The ``type`` of a JSON frame that starts with it (both servers put it first)."""
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        return text[9:end] if end > 0 else None
    return None


@dataclass
class ServerFigures:
    name: str
    connect_ms: list[float] = field(default_factory=list)
    rss_before_mb: float = math.nan
    rss_idle_mb: float = math.nan
    idle_connected: int = 0  # still open when the RSS was read
    idle_held: int | None = None  # the server's own count then (signaling's /healthz)
    tally: RelayTally = field(default_factory=RelayTally)
    window_s: float = math.nan
    server_cpu_s: float = math.nan
    server_cpu_percent: float = math.nan
    loadgen_cpu_percent: float = math.nan
    server_rss_busy_mb: float = math.nan
    deflate: bool = False
    stop_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        t = self.tally
        rate = t.relayed / self.window_s if self.window_s > 0 else math.nan
        per_1000 = (self.rss_idle_mb - self.rss_before_mb) * 1000 / max(1, self.idle_connected)
        cpu_10k = self.server_cpu_s / t.relayed * 10_000 if t.relayed else math.nan
        return {
            "connect_p50_ms": rounded(percentile(self.connect_ms, 50)),
            "connect_p99_ms": rounded(percentile(self.connect_ms, 99)),
            "relay_p50_ms": rounded(percentile(t.latencies_ms, 50)),
            "relay_p99_ms": rounded(percentile(t.latencies_ms, 99)),
            "relay_max_ms": rounded(max(t.latencies_ms, default=math.nan)),
            "msgs_per_s": rounded(rate, 1),
            "relayed": t.relayed,
            "sent_total": t.total_sent,
            "received_total": t.total_received,
            "rss_mb_per_1000_idle": rounded(per_1000, 2),
            "rss_kb_per_idle_connection": rounded(per_1000 * 1024 / 1000, 2),
            "rss_before_idle_mb": rounded(self.rss_before_mb, 1),
            "rss_idle_mb": rounded(self.rss_idle_mb, 1),
            "rss_busy_mb": rounded(self.server_rss_busy_mb, 1),
            "idle_connected": self.idle_connected,
            "idle_held_by_server": self.idle_held,
            "cpu_s_per_10k_msgs": rounded(cpu_10k, 3),
            "server_cpu_percent": rounded(self.server_cpu_percent, 1),
            "loadgen_cpu_percent": rounded(self.loadgen_cpu_percent, 1),
            "window_s": rounded(self.window_s, 2),
            "permessage_deflate": self.deflate,
            "other_frames": dict(sorted(t.other_frames.items())),
            "errors": dict(sorted(t.errors.items())),
            "server_stop_s": rounded(self.stop_s, 2) if self.stop_s is not None else None,
        }


async def measure_server(
    flavor: Flavor, params: Params, server_pid: int, sdp: str
) -> ServerFigures:
    """The idle phase, then the busy pairs, against one running server."""
    figures = ServerFigures(flavor.name)
    compress = 15 if params.client_deflate else 0
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        http_ws = _WsSession(http, compress)
        # Warm up once (lazy imports, first database query), then the baseline.
        warm = await flavor.connect_idle(http_ws, -1)
        await warm.close()
        await asyncio.sleep(0.5)
        figures.rss_before_mb = process_rss_mb(server_pid)
        idle: list[aiohttp.ClientWebSocketResponse] = []
        # Idle clients still read, so that they answer the server's pings (aiohttp
        # answers them in receive()) and are not dropped as dead.
        idle_readers: list[asyncio.Task[None]] = []

        async def one_idle(index: int) -> None:
            t0 = time.perf_counter()
            ws = await flavor.connect_idle(http_ws, index)
            figures.connect_ms.append((time.perf_counter() - t0) * 1000)
            idle.append(ws)
            idle_readers.append(asyncio.create_task(_drain(ws)))

        try:
            await gather_limited(
                [partial(one_idle, i) for i in range(params.idle)], params.connect_concurrency
            )
            if idle:
                figures.deflate = _deflate_negotiated(idle[0])
            await asyncio.sleep(1.0)
            figures.rss_idle_mb = process_rss_mb(server_pid)
            figures.idle_connected = sum(1 for task in idle_readers if not task.done())
            figures.idle_held = await flavor.connections_held(http)
            log.info(
                "%s: %d idle connections, RSS %.1f → %.1f MiB, connect p99 %.1f ms",
                flavor.name,
                len(idle),
                figures.rss_before_mb,
                figures.rss_idle_mb,
                percentile(figures.connect_ms, 99),
            )
        finally:
            await _close_all(idle)
            for task in idle_readers:
                task.cancel()
            await asyncio.gather(*idle_readers, return_exceptions=True)
        await asyncio.sleep(0.5)

        pairs = await flavor.open_pairs(http_ws, params.pairs, sdp)
        log.info("%s: %d pairs ready", flavor.name, len(pairs))
        tally = figures.tally
        endpoints = [e for pair in pairs for e in pair]
        readers = [asyncio.create_task(e.run(tally, flavor.kind_of)) for e in endpoints]
        keepalive = (
            asyncio.create_task(_peerjs_heartbeats(endpoints))
            if isinstance(flavor, PeerJsFlavor)
            else None
        )
        try:
            for booth_side, _ in pairs:
                for k in range(params.in_flight):
                    await booth_side.send(tally, k * 1_000_000)
            await asyncio.sleep(params.warmup)
            server_meter, own_meter = ResourceMeter(server_pid), ResourceMeter(os.getpid())
            server_meter.start()
            own_meter.start()
            t0 = time.perf_counter()
            tally.measuring = True
            await asyncio.sleep(params.duration)
            tally.measuring = False
            figures.window_s = time.perf_counter() - t0
            await server_meter.stop()
            await own_meter.stop()
            tally.stopping = True
            figures.server_cpu_s = server_meter.cpu_seconds
            figures.server_cpu_percent = server_meter.cpu_percent
            figures.loadgen_cpu_percent = own_meter.cpu_percent
            figures.server_rss_busy_mb = server_meter.max_rss_mb
            log.info(
                "%s: %d relayed in %.1f s (%.0f/s), p50 %.2f ms, p99 %.2f ms; "
                "server CPU %.0f %%, load generator CPU %.0f %%",
                flavor.name,
                tally.relayed,
                figures.window_s,
                tally.relayed / figures.window_s,
                percentile(tally.latencies_ms, 50),
                percentile(tally.latencies_ms, 99),
                figures.server_cpu_percent,
                figures.loadgen_cpu_percent,
            )
            await asyncio.sleep(0.3)  # the messages in flight arrive and are not answered
        finally:
            if keepalive is not None:
                keepalive.cancel()
            await _close_all([e.ws for e in endpoints])
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if keepalive is not None:
                await asyncio.gather(keepalive, return_exceptions=True)
    return figures


@dataclass
class _WsSession:
    """The client session with the WebSocket options used for both servers."""

    http: aiohttp.ClientSession
    compress: int

    async def connect(self, url: str) -> aiohttp.ClientWebSocketResponse:
        return await self.http.ws_connect(
            url, compress=self.compress, max_msg_size=wire.MAX_MESSAGE_BYTES, autoping=True
        )


def _deflate_negotiated(ws: aiohttp.ClientWebSocketResponse) -> bool:
    return bool(getattr(ws, "compress", 0))


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def _close_all(sockets: Sequence[aiohttp.ClientWebSocketResponse]) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def _receive_json(ws: aiohttp.ClientWebSocketResponse, limit_s: float = 30) -> str:
    msg = await ws.receive(timeout=limit_s)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise RuntimeError(f"expected a text frame, got {msg.type!r} {msg.data!r}")
    text: str = msg.data
    return text


async def _peerjs_heartbeats(endpoints: Sequence[Endpoint]) -> None:
    beat = json.dumps({"type": "HEARTBEAT"})
    while True:
        await asyncio.sleep(PEERJS_HEARTBEAT_S)
        for e in endpoints:
            with contextlib.suppress(Exception):
                await e.ws.send_str(beat)


# --------------------------------------------------------------------------------------
# The signaling server
# --------------------------------------------------------------------------------------


class SignalingFlavor:
    """Booths (credential hello) and HQ staff (token hello) of ``python -m signaling``."""

    name = "ours"

    def __init__(self, port: int, population: Population, tokens: dict[str, str]) -> None:
        self.port = port
        self.base = f"ws://{LOOPBACK}:{port}"
        self.population = population
        self.tokens = tokens
        self._idle_booths = population.booths[len(population.staff) :]
        self._pair_booths = population.booths[: len(population.staff)]

    def kind_of(self, text: str) -> str | None:
        return _kind(text)

    async def connections_held(self, http: aiohttp.ClientSession) -> int | None:
        """Booths and staff connected, as the server counts them (``/healthz``)."""
        async with http.get(f"http://{LOOPBACK}:{self.port}/healthz") as response:
            health = await response.json()
        return int(health["booths"]) + int(health["staff"])

    async def _booth(self, http: _WsSession, account: BoothAccount) -> Any:
        ws = await http.connect(f"{self.base}/ws/booth")
        await ws.send_str(
            wire.encode(BoothHello(booth_id=account.booth_id, credential=account.credential))
        )
        welcome = wire.decode(wire.server_to_booth, await _receive_json(ws))
        if not isinstance(welcome, BoothWelcome):
            raise RuntimeError(f"booth {account.booth_id}: expected welcome, got {welcome}")
        return ws

    async def connect_idle(self, http: _WsSession, index: int) -> Any:
        # Index -1 (the warm-up connection) is the spare booth after the idle ones.
        return await self._booth(http, self._idle_booths[index])

    async def _staff(self, http: _WsSession, account: StaffAccount) -> Any:
        ws = await http.connect(f"{self.base}/ws/staff")
        await ws.send_str(wire.encode(StaffHello(token=self.tokens[account.staff_id])))
        welcome = wire.decode(wire.server_to_staff, await _receive_json(ws))
        if not isinstance(welcome, StaffWelcome):
            raise RuntimeError(f"staff {account.staff_id}: expected welcome, got {welcome}")
        await ws.send_str(wire.encode(SetState(state="available")))
        while True:
            message = wire.decode(wire.server_to_staff, await _receive_json(ws))
            if isinstance(message, StaffStateChanged) and message.state is StaffState.AVAILABLE:
                return ws

    async def open_pairs(
        self, http: _WsSession, pairs: int, sdp: str
    ) -> list[tuple[Endpoint, Endpoint]]:
        """Every staff member available, every booth asks for help, staff accept: one
        live session per booth and staff member."""
        staff_accounts = self.population.staff[:pairs]
        staff_ws = await gather_limited([partial(self._staff, http, s) for s in staff_accounts], 50)
        booth_ws = await gather_limited(
            [partial(self._booth, http, b) for b in self._pair_booths[:pairs]], 50
        )

        async def staff_session(ws: aiohttp.ClientWebSocketResponse) -> str:
            while True:
                message = wire.decode(wire.server_to_staff, await _receive_json(ws))
                if isinstance(message, Offer):
                    await ws.send_str(wire.encode(AcceptOffer(offer_id=message.offer_id)))
                elif isinstance(message, CallStarted):
                    return message.session_id

        async def booth_session(ws: aiohttp.ClientWebSocketResponse, index: int) -> str:
            request = RequestHelp(
                request_id=f"relay-{index}", department=DEPARTMENT, language=LANGUAGE
            )
            await ws.send_str(wire.encode(request))
            while True:
                message = wire.decode(wire.server_to_booth, await _receive_json(ws))
                if isinstance(message, CallStarted):
                    return message.session_id

        staff_sessions, booth_sessions = await asyncio.gather(
            asyncio.gather(*(staff_session(ws) for ws in staff_ws)),
            asyncio.gather(*(booth_session(ws, i) for i, ws in enumerate(booth_ws))),
        )
        by_session = dict(zip(staff_sessions, staff_ws, strict=True))
        result = []
        for session_id, b_ws in zip(booth_sessions, booth_ws, strict=True):
            s_ws = by_session[session_id]
            offer = Relay(session_id=session_id, payload=SdpPayload(sdp_type="offer", sdp=sdp))
            answer = Relay(session_id=session_id, payload=SdpPayload(sdp_type="answer", sdp=sdp))
            result.append(
                (
                    Endpoint(b_ws, FrameTemplate.of(wire.encode(offer))),
                    Endpoint(s_ws, FrameTemplate.of(wire.encode(answer))),
                )
            )
        return result


def signaling_config_toml(port: int, database_url: str, token_secret: str) -> str:
    values: dict[str, Any] = {
        "host": LOOPBACK,
        "port": port,
        "database_url": database_url,
        "token_secret": token_secret,
        "auto_migrate": False,
        # Raised for the benchmark (the defaults are 20/s and 50/s per connection).
        "booth_message_rate_per_s": BENCH_MESSAGE_RATE,
        "booth_message_burst": BENCH_MESSAGE_BURST,
        "staff_message_rate_per_s": BENCH_MESSAGE_RATE,
        "staff_message_burst": BENCH_MESSAGE_BURST,
    }
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


async def run_signaling(params: Params, workdir: Path, sdp: str) -> ServerFigures:
    pair_booths = [
        BoothAccount(f"relay-b{i:05d}", secrets.token_urlsafe(24)) for i in range(params.pairs)
    ]
    idle_booths = [
        BoothAccount(f"idle-b{i:05d}", secrets.token_urlsafe(24)) for i in range(params.idle + 1)
    ]
    staff = [
        StaffAccount(f"relay-s{i:04d}", ((DEPARTMENT, LANGUAGE),)) for i in range(params.pairs)
    ]
    # Idle booths come after the pair booths; the extra one warms the server up.
    population = Population(pair_booths + idle_booths, staff, [(DEPARTMENT, LANGUAGE)])
    database_url = f"sqlite+aiosqlite:///{workdir / 'relay.sqlite3'}"
    await write_population(database_url, population)
    token_secret = secrets.token_urlsafe(32)
    ttl = params.timeout + 3600
    tokens = {
        s.staff_id: issue_staff_token(token_secret, s.staff_id, StaffRole.HQ, ttl) for s in staff
    }
    port = free_port()
    config_path = workdir / "signaling.toml"
    config_path.write_text(signaling_config_toml(port, database_url, token_secret))
    profiler = ["-m", "cProfile", "-o", str(params.profile_server)] if params.profile_server else []
    server = ChildProcess(
        "signaling server",
        [sys.executable, *profiler, "-m", "signaling", "--config", str(config_path)],
        workdir / "signaling.log",
    )
    flavor = SignalingFlavor(port, population, tokens)
    try:
        await server.start()
        await server.wait_listening(LOOPBACK, port, 60)
        figures = await measure_server(flavor, params, server.pid, sdp)
    except Exception:
        log.error("signaling log (tail):\n%s", server.log_tail())
        raise
    finally:
        await server.aclose(grace_s=60 if params.profile_server else 15)
    figures.stop_s = server.stop_s
    return figures


# --------------------------------------------------------------------------------------
# PeerJS
# --------------------------------------------------------------------------------------


def peerjs_unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not PEERJS_BIN.exists():
        return f"{PEERJS_BIN.relative_to(REPO_ROOT)} is missing (run scripts/setup.sh)"
    return None


class PeerJsFlavor:
    """PeerJS clients: ``/peerjs?key&id&token``, ready on ``OPEN``; SDP in OFFER/ANSWER."""

    def __init__(self, port: int, name: str = "peerjs") -> None:
        self.name = name
        self.base = f"ws://{LOOPBACK}:{port}/peerjs?key={PEERJS_KEY}"

    def kind_of(self, text: str) -> str | None:
        return _kind(text)

    async def connections_held(self, http: aiohttp.ClientSession) -> int | None:
        return None  # PeerJS has no count without peer discovery

    async def _peer(self, http: _WsSession, peer_id: str) -> Any:
        ws = await http.connect(f"{self.base}&id={peer_id}&token={secrets.token_hex(8)}")
        opened = json.loads(await _receive_json(ws))
        if opened.get("type") != "OPEN":
            raise RuntimeError(f"peer {peer_id}: expected OPEN, got {opened}")
        return ws

    async def connect_idle(self, http: _WsSession, index: int) -> Any:
        return await self._peer(http, f"idle{index}" if index >= 0 else "warm")

    async def open_pairs(
        self, http: _WsSession, pairs: int, sdp: str
    ) -> list[tuple[Endpoint, Endpoint]]:
        booths = await gather_limited(
            [partial(self._peer, http, f"b{i}") for i in range(pairs)], 50
        )
        staff = await gather_limited([partial(self._peer, http, f"s{i}") for i in range(pairs)], 50)
        result = []
        for i, (b_ws, s_ws) in enumerate(zip(booths, staff, strict=True)):
            connection_id = f"mc_{secrets.token_hex(6)}"
            offer = {
                "type": "OFFER",
                "dst": f"s{i}",
                "payload": {
                    "sdp": {"type": "offer", "sdp": sdp},
                    "type": "media",
                    "connectionId": connection_id,
                },
            }
            answer = {
                "type": "ANSWER",
                "dst": f"b{i}",
                "payload": {
                    "sdp": {"type": "answer", "sdp": sdp},
                    "type": "media",
                    "connectionId": connection_id,
                },
            }
            compact = partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
            result.append(
                (
                    Endpoint(b_ws, FrameTemplate.of(compact(offer))),
                    Endpoint(s_ws, FrameTemplate.of(compact(answer))),
                )
            )
        return result


async def run_peerjs(params: Params, workdir: Path, sdp: str) -> ServerFigures:
    port = free_port()
    node = shutil.which("node") or "node"
    server = ChildProcess(
        "peerjs server",
        [node, str(PEERJS_BIN), "--host", LOOPBACK, "--port", str(port), "--key", PEERJS_KEY],
        workdir / "peerjs.log",
    )
    try:
        await server.start()
        await server.wait_listening(LOOPBACK, port, 30)
        figures = await measure_server(PeerJsFlavor(port), params, server.pid, sdp)
    except Exception:
        log.error("peerjs log (tail):\n%s", server.log_tail())
        raise
    finally:
        await server.aclose(grace_s=5)
    figures.stop_s = server.stop_s
    return figures


# --------------------------------------------------------------------------------------
# The floor: a bare aiohttp relay
# --------------------------------------------------------------------------------------

FLOOR_PEERS: Final = web.AppKey("floor_peers", dict[str, web.WebSocketResponse])
FLOOR_HEARTBEAT_S: Final = 10.0  # signaling's default heartbeat_s


def floor_app() -> web.Application:
    """The least a relay on aiohttp does: PeerJS's client protocol (``id`` in the query,
    ``OPEN``, ``dst`` in each message), each frame parsed to find ``dst`` and forwarded as
    it came. No authentication, validation, limits or sessions; the same WebSocket settings
    as signaling (heartbeat, no compression)."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        peer_id = request.query.get("id", "")
        ws = web.WebSocketResponse(
            heartbeat=FLOOR_HEARTBEAT_S, max_msg_size=wire.MAX_MESSAGE_BYTES, compress=False
        )
        await ws.prepare(request)
        peers = request.app[FLOOR_PEERS]
        peers[peer_id] = ws
        try:
            await ws.send_str('{"type":"OPEN"}')
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    target = peers.get(json.loads(msg.data).get("dst", ""))
                    if target is not None:
                        await target.send_str(msg.data)
        finally:
            if peers.get(peer_id) is ws:
                del peers[peer_id]
        return ws

    app = web.Application()
    app[FLOOR_PEERS] = {}
    app.router.add_get("/peerjs", handle)
    return app


def _serve_floor(port: int) -> None:
    raise_fd_limit()
    web.run_app(floor_app(), host=LOOPBACK, port=port, print=None, handle_signals=True)


async def run_floor(params: Params, workdir: Path, sdp: str) -> ServerFigures:
    port = free_port()
    argv = [sys.executable, "-m", "bench.relay_load", "floor", "--port", str(port)]
    server = ChildProcess("aiohttp floor", argv, workdir / "floor.log")
    try:
        await server.start()
        await server.wait_listening(LOOPBACK, port, 30)
        figures = await measure_server(PeerJsFlavor(port, "floor"), params, server.pid, sdp)
    except Exception:
        log.error("floor log (tail):\n%s", server.log_tail())
        raise
    finally:
        await server.aclose(grace_s=5)
    figures.stop_s = server.stop_s
    return figures


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return rounded(ours / theirs, 3)


async def run(params: Params, workdir: Path) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    needed = 2 * (params.idle + 2 * params.pairs) + 256
    if fd_limit < needed:
        log.warning("file-descriptor limit %d is below the %d this run needs", fd_limit, needed)
    sdp = sdp_text(params.payload_bytes)
    reason = None if params.peerjs else "disabled (--no-peerjs)"
    reason = reason or peerjs_unavailable_reason()
    if reason is not None:
        log.warning("PeerJS is not measured: %s", reason)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    # Rounds alternate between the servers (fresh processes each time), so that a change
    # in the machine's other load hits both alike.
    for n in range(params.rounds):
        if params.rounds > 1:
            log.info("round %d of %d", n + 1, params.rounds)
        ours.append((await run_signaling(params, _subdir(workdir, f"ours-{n}"), sdp)).as_json())
        if reason is None:
            theirs.append(
                (await run_peerjs(params, _subdir(workdir, f"peerjs-{n}"), sdp)).as_json()
            )
        if params.floor:
            floors.append((await run_floor(params, _subdir(workdir, f"floor-{n}"), sdp)).as_json())
    out = summarise(
        params, median_figures(ours), median_figures(theirs) if theirs else None, reason
    )
    if floors:
        floor = median_figures(floors)
        out.update({f"floor_{k}": v for k, v in floor.items()})
        out["ratio_msgs_per_s_vs_floor"] = _ratio(out["ours_msgs_per_s"], floor["msgs_per_s"])
        out["ratio_relay_p99_vs_floor"] = _ratio(out["ours_relay_p99_ms"], floor["relay_p99_ms"])
        out["ratio_cpu_per_10k_vs_floor"] = _ratio(
            out["ours_cpu_s_per_10k_msgs"], floor["cpu_s_per_10k_msgs"]
        )
        out["ratio_rss_per_idle_vs_floor"] = _ratio(
            out["ours_rss_mb_per_1000_idle"], floor["rss_mb_per_1000_idle"]
        )
    if params.rounds > 1:
        out["ours_msgs_per_s_by_round"] = [r["msgs_per_s"] for r in ours]
        out["ours_relay_p99_ms_by_round"] = [r["relay_p99_ms"] for r in ours]
        out["peerjs_msgs_per_s_by_round"] = [r["msgs_per_s"] for r in theirs]
        out["peerjs_relay_p99_ms_by_round"] = [r["relay_p99_ms"] for r in theirs]
    return out


def _subdir(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(exist_ok=True)
    return path


def median_figures(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One server's figures over the rounds: the median of each number, counters added."""
    out: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds]
        if isinstance(first, bool) or first is None:
            out[key] = first
        elif isinstance(first, int | float):
            numbers = [float(v) for v in values if v is not None]
            median = percentile(numbers, 50)
            out[key] = int(median) if isinstance(first, int) else rounded(median, 3)
        elif isinstance(first, dict):
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(sorted(total.items()))
        else:
            out[key] = first
    return out


def summarise(
    params: Params, ours: dict[str, Any], theirs: dict[str, Any] | None, reason: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scenario": SCENARIO,
        "rounds": params.rounds,
        "pairs": params.pairs,
        "idle_connections": params.idle,
        "duration_s": params.duration,
        "warmup_s": params.warmup,
        "in_flight_per_pair": params.in_flight,
        "payload_bytes": params.payload_bytes,
        "connect_concurrency": params.connect_concurrency,
        "client_offers_deflate": params.client_deflate,
        "signaling_message_rate_per_s": BENCH_MESSAGE_RATE,
        "signaling_message_burst": BENCH_MESSAGE_BURST,
        "peerjs_available": theirs is not None,
        "peerjs_unavailable_reason": reason,
    }
    out.update({f"ours_{k}": v for k, v in ours.items()})
    if theirs is not None:
        out.update({f"peerjs_{k}": v for k, v in theirs.items()})
    t = theirs or {}
    out["ratio_msgs_per_s_vs_peerjs"] = _ratio(ours["msgs_per_s"], t.get("msgs_per_s"))
    out["ratio_relay_p50_vs_peerjs"] = _ratio(ours["relay_p50_ms"], t.get("relay_p50_ms"))
    out["ratio_relay_p99_vs_peerjs"] = _ratio(ours["relay_p99_ms"], t.get("relay_p99_ms"))
    out["ratio_connect_p99_vs_peerjs"] = _ratio(ours["connect_p99_ms"], t.get("connect_p99_ms"))
    out["ratio_rss_per_idle_vs_peerjs"] = _ratio(
        ours["rss_mb_per_1000_idle"], t.get("rss_mb_per_1000_idle")
    )
    out["ratio_cpu_per_10k_vs_peerjs"] = _ratio(
        ours["cpu_s_per_10k_msgs"], t.get("cpu_s_per_10k_msgs")
    )
    out["target_rss_ratio"] = TARGET_RSS_RATIO
    r_msgs, r_p99 = out["ratio_msgs_per_s_vs_peerjs"], out["ratio_relay_p99_vs_peerjs"]
    r_rss = out["ratio_rss_per_idle_vs_peerjs"]
    out["meets_target"] = (
        None
        if theirs is None
        else bool(
            r_msgs is not None
            and r_msgs >= 1.0
            and r_p99 is not None
            and r_p99 <= 1.0
            and r_rss is not None
            and r_rss <= TARGET_RSS_RATIO
        )
    )
    out["cpu_count"] = os.cpu_count()
    return out


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Params:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay_load", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--pairs", type=int, default=100, help="busy pairs relaying (default 100)")
    p.add_argument("--idle", type=int, default=1000, help="idle connections (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--in-flight", type=int, default=1, help="messages in flight per pair")
    p.add_argument("--payload-bytes", type=int, default=4096, help="SDP size (default 4096)")
    p.add_argument("--connect-concurrency", type=int, default=20, help="connections at once")
    p.add_argument("--rounds", type=int, default=1, help="rounds, alternating the servers")
    p.add_argument("--no-peerjs", action="store_true", help="do not measure PeerJS")
    p.add_argument("--no-floor", action="store_true", help="do not measure the aiohttp floor")
    p.add_argument(
        "--no-client-deflate",
        action="store_true",
        help="do not offer permessage-deflate (browsers offer it)",
    )
    p.add_argument("--timeout", type=float, help="hard limit for the whole run, in seconds")
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
    if (
        a.rounds < 1
        or a.pairs < 1
        or a.idle < 0
        or a.duration <= 0
        or a.in_flight < 1
        or a.payload_bytes < 600
    ):
        p.error("--pairs, --duration, --in-flight must be positive; --payload-bytes ≥ 600")
    timeout = a.timeout if a.timeout is not None else (300 + 2 * (a.duration + a.warmup)) * a.rounds
    return Params(
        pairs=a.pairs,
        idle=a.idle,
        duration=a.duration,
        warmup=a.warmup,
        in_flight=a.in_flight,
        payload_bytes=a.payload_bytes,
        connect_concurrency=a.connect_concurrency,
        peerjs=not a.no_peerjs,
        rounds=a.rounds,
        floor=not a.no_floor,
        client_deflate=not a.no_client_deflate,
        timeout=timeout,
        profile_server=a.profile_server.resolve() if a.profile_server else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["floor"]:  # the floor server, started by the benchmark
        floor = argparse.ArgumentParser(prog="python -m bench.relay_load floor")
        floor.add_argument("--port", type=int, required=True)
        _serve_floor(floor.parse_args(args[1:]).port)
        return 0
    params = parse_args(args)
    return run_load_benchmark(
        "ekichika-bench-relay-", lambda workdir: run(params, workdir), params.timeout
    )


if __name__ == "__main__":
    sys.exit(main())
