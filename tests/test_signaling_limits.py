"""Abuse resistance of the signaling server, on a real server with real WebSocket clients:
message budgets, frame size, authentication-failure throttling per source address and
the bounded send queue of a peer that does not read."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from shared.protocol import (
    AcceptOffer,
    BoothHello,
    BoothWelcome,
    CallStarted,
    ErrorCode,
    ErrorMessage,
    MediaConnected,
    Offer,
    QueueStatus,
    Relay,
    RequestHelp,
    SdpPayload,
    SetState,
    StaffHello,
)
from signaling.limits import AuthThrottle, MessageBudget
from signaling.server import (
    CLOSE_POLICY,
    CLOSE_SLOW,
    CLOSE_THROTTLED,
    SLOW_CLOSE_GRACE_S,
    Connection,
)
from tests.signaling_app_support import booth_from, running_signaling_app, staff_from
from tests.signaling_support import (
    ConnectionClosed,
    connect_booth,
    connect_staff,
    eventually,
)

BOOTH = "seiseki-1"
OTHER_BOOTH = "tamacenter-1"


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------ message budget


async def test_flooding_booth_gets_rate_limited_then_closed_other_booth_unaffected(
    tmp_path: Path,
) -> None:
    async with (
        running_signaling_app(
            tmp_path, booth_message_rate_per_s=2.0, booth_message_burst=5, rate_limit_strikes=10
        ) as sig,
        connect_booth(sig.running.ws_url, BOOTH, sig.running.booth_credentials[BOOTH]) as flood,
        connect_booth(
            sig.running.ws_url, OTHER_BOOTH, sig.running.booth_credentials[OTHER_BOOTH]
        ) as calm,
    ):
        for _ in range(40):
            await flood.send(MediaConnected(session_id="s-none"))
        errors: list[ErrorMessage] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                errors.append(await flood.expect(ErrorMessage))
        assert closed.value.code == CLOSE_POLICY
        codes = [(e.code, e.fatal) for e in errors]
        # The burst (5, the hello included) is handled, each message answered on its
        # merits; then one warning; then the connection is closed with a fatal rate_limited.
        assert codes == [(ErrorCode.NOT_IN_SESSION, False)] * 4 + [
            (ErrorCode.RATE_LIMITED, False),
            (ErrorCode.RATE_LIMITED, True),
        ]
        assert BOOTH not in sig.server.booths
        assert (
            sig.metrics.registry.get_sample_value(
                "ekichika_signaling_limit_closes_total", {"reason": "message_rate"}
            )
            == 1.0
        )
        # The other booth is served as usual.
        await calm.send(RequestHelp(request_id="r-calm", department="shimin", language="ja"))
        status = await calm.expect(QueueStatus)
        assert (status.request_id, status.position) == ("r-calm", 1)


async def test_a_burst_then_a_pause_is_forgiven(tmp_path: Path) -> None:
    async with (
        running_signaling_app(
            tmp_path, booth_message_rate_per_s=5.0, booth_message_burst=4, rate_limit_strikes=3
        ) as sig,
        connect_booth(sig.running.ws_url, BOOTH, sig.running.booth_credentials[BOOTH]) as booth,
    ):
        # The hello took one token: 3 handled, 3 refused (one warning), not yet closed.
        for _ in range(6):
            await booth.send(MediaConnected(session_id="s-none"))
        codes = [(await booth.expect(ErrorMessage)).code for _ in range(4)]
        assert codes == [ErrorCode.NOT_IN_SESSION] * 3 + [ErrorCode.RATE_LIMITED]
        await asyncio.sleep(1.0)  # the bucket refills (4 / 5 per s = 0.8 s)
        for _ in range(4):
            await booth.send(MediaConnected(session_id="s-none"))
        codes = [(await booth.expect(ErrorMessage)).code for _ in range(4)]
        assert codes == [ErrorCode.NOT_IN_SESSION] * 4
        await booth.expect_none(ErrorMessage, within=0.2)
        assert sig.server.booths[BOOTH].closing is False


def test_message_budget_strikes_reset_only_when_refilled() -> None:
    budget = MessageBudget(rate_per_s=10.0, burst=2, now=0.0)
    assert [budget.take(0.0) for _ in range(3)] == [True, True, False]
    assert budget.strikes == 1
    assert budget.take(0.1) is True  # one token back, still not full: strikes stay
    assert budget.strikes == 1
    assert budget.take(0.1) is False
    assert budget.strikes == 2
    assert budget.take(1.0) is True  # refilled completely
    assert budget.strikes == 0


# ------------------------------------------------------------------ frame size


async def test_oversize_frame_is_refused_before_parsing(tmp_path: Path) -> None:
    async with (
        running_signaling_app(tmp_path, max_message_bytes=1024) as sig,
        connect_booth(sig.running.ws_url, BOOTH, sig.running.booth_credentials[BOOTH]) as booth,
    ):
        await booth.send_raw("x" * 5000)  # not even JSON: refused for its size alone
        error = await booth.expect(ErrorMessage)
        assert (error.code, error.fatal) == (ErrorCode.TOO_LARGE, False)
        assert (
            sig.metrics.registry.get_sample_value(
                "ekichika_signaling_messages_refused_total",
                {"side": "booth", "reason": "too_large"},
            )
            == 1.0
        )
        # Still connected and served.
        await booth.send(RequestHelp(request_id="r-after", department="shimin", language="ja"))
        assert (await booth.expect(QueueStatus)).request_id == "r-after"
        # Frames beyond the hard limit are not read at all: the WebSocket layer closes (1009).
        await booth.send_raw("y" * 70_000)
        assert await booth.expect_closed() == 1009


# ------------------------------------------------------------------ authentication throttle


async def _booth_hello(ws_url: str, credential: str, local_host: str = "127.0.0.1") -> int | None:
    """Say hello as BOOTH; the close code (None when welcomed, then closed by us)."""
    client = await booth_from(ws_url, local_host)
    try:
        await client.send(BoothHello(booth_id=BOOTH, credential=credential))
        try:
            first = await client.receive()
        except ConnectionClosed as closed:
            return closed.code
        if isinstance(first, BoothWelcome):
            return None
        assert isinstance(first, ErrorMessage)
        return await client.expect_closed()
    finally:
        await client.aclose()


async def test_repeated_bad_credentials_throttle_the_address(tmp_path: Path) -> None:
    window_s = 1.5
    async with running_signaling_app(
        tmp_path, auth_failure_limit=3, auth_failure_window_s=window_s
    ) as sig:
        ws_url, good = sig.running.ws_url, sig.running.booth_credentials[BOOTH]
        started = time.monotonic()
        # A connection opened before the limit is reached and says hello after it.
        early = await booth_from(ws_url)
        for _ in range(3):
            assert await _booth_hello(ws_url, "wrong-credential-123") == 4401
        # Now refused before the upgrade, even with the right credential ...
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await booth_from(ws_url)
        assert refused.value.status == 429
        assert refused.value.headers is not None
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 2
        # ... and on a connection that was already open: closed without a check.
        await early.send(BoothHello(booth_id=BOOTH, credential=good))
        error = await early.expect(ErrorMessage)
        assert (error.code, error.fatal) == (ErrorCode.RATE_LIMITED, True)
        assert await early.expect_closed() == CLOSE_THROTTLED
        await early.aclose()
        # Staff from the same address too (the throttle is per address).
        with pytest.raises(aiohttp.WSServerHandshakeError) as staff_refused:
            await staff_from(ws_url)
        assert staff_refused.value.status == 429
        # Another address is not affected.
        assert await _booth_hello(ws_url, good, local_host="127.0.0.2") is None
        registry = sig.metrics.registry
        assert (
            registry.get_sample_value(
                "ekichika_signaling_auth_failures_total", {"side": "booth", "code": "auth_failed"}
            )
            == 3.0
        )
        throttled = {
            where: registry.get_sample_value(
                "ekichika_signaling_auth_throttled_total", {"side": side, "where": where}
            )
            for side, where in (("booth", "http"), ("booth", "hello"))
        }
        assert throttled == {"http": 1.0, "hello": 1.0}
        # After the window the right credential is accepted again.
        await asyncio.sleep(max(0.0, started + window_s + 0.1 - time.monotonic()))
        assert await _booth_hello(ws_url, good) is None


async def test_expired_staff_tokens_count_as_failures(tmp_path: Path) -> None:
    async with running_signaling_app(tmp_path, auth_failure_limit=2) as sig:
        ws_url, token = sig.running.ws_url, sig.running.staff_token
        for _ in range(2):
            client = await staff_from(ws_url)
            await client.send(StaffHello(token=token("sato", ttl_s=-10)))
            assert (await client.expect(ErrorMessage)).code is ErrorCode.TOKEN_EXPIRED
            assert await client.expect_closed() == 4401
            await client.aclose()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await staff_from(ws_url)
        assert refused.value.status == 429


def test_auth_throttle_memory_is_bounded() -> None:
    throttle = AuthThrottle(limit=3, window_s=60.0, max_sources=100)
    for i in range(5000):
        throttle.record_failure(f"10.0.{i // 250}.{i % 250}", now=float(i) / 1000)
    assert len(throttle) == 100
    # The newest sources are the ones kept; one of them reaching the limit is throttled.
    for _ in range(3):
        throttle.record_failure("10.0.19.249", now=5.0)
    assert throttle.retry_after("10.0.19.249", now=5.0) is not None
    # IPv6 addresses of one /64 share an entry.
    for host in ("2001:db8::1", "2001:db8::2", "2001:db8::3"):
        throttle.record_failure(host, now=6.0)
    assert throttle.retry_after("2001:db8::ffff", now=6.0) is not None
    assert throttle.retry_after("2001:db8:0:1::1", now=6.0) is None


# ------------------------------------------------------------------ bounded send queue


async def test_staff_that_never_reads_is_closed_with_a_bounded_queue(tmp_path: Path) -> None:
    max_frames, max_bytes = 40, 256 * 1024
    async with (
        running_signaling_app(
            tmp_path,
            send_queue_max_frames=max_frames,
            send_queue_max_bytes=max_bytes,
            booth_message_rate_per_s=10_000.0,
            booth_message_burst=10_000,
        ) as sig,
        connect_booth(sig.running.ws_url, BOOTH, sig.running.booth_credentials[BOOTH]) as booth,
        connect_staff(sig.running.ws_url, sig.running.staff_token("sato")) as staff,
    ):
        await staff.send(SetState(state="available"))
        await booth.send(RequestHelp(request_id="r-slow", department="shimin", language="ja"))
        offer = await staff.expect(Offer)
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        started = await booth.expect(CallStarted)
        await staff.expect(CallStarted)
        conn = sig.server.staff["sato"]
        # From here on the staff client reads nothing.
        relay = Relay(
            session_id=started.session_id,
            payload=SdpPayload(sdp_type="offer", sdp="v=0 " + "a" * 60_000),
        )
        rss_before = _rss_bytes()
        peak_frames = peak_bytes = 0
        peak_rss = rss_before
        sent = 0
        while not conn.closing and sent < 2000:  # at most ~120 MB if nothing were bounded
            await booth.send(relay)
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0)  # let the server read and queue
            frames, size = conn.queued()
            peak_frames, peak_bytes = max(peak_frames, frames), max(peak_bytes, size)
            peak_rss = max(peak_rss, _rss_bytes())
        assert conn.closing, f"still open after {sent} relays of 60 kB"
        assert peak_frames <= max_frames
        assert peak_bytes <= max_bytes
        assert conn.queued() == (0, 0)  # dropped at once
        await eventually(lambda: "sato" not in sig.server.staff, within=SLOW_CLOSE_GRACE_S + 3)
        assert (
            sig.metrics.registry.get_sample_value(
                "ekichika_signaling_limit_closes_total", {"reason": "send_queue"}
            )
            == 1.0
        )
        # Kernel socket buffers hold a few MB; the server's queue is at most 256 kB.
        assert peak_rss - rss_before < 40 * 1024 * 1024
        # The booth stays connected and the call survives the staff drop (grace period).
        assert BOOTH in sig.server.booths


async def _stalled_connection(frames_out: list[Connection], ready: asyncio.Event) -> web.AppRunner:
    """A tiny app whose WebSocket handler wraps the socket in a signaling Connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(
            ws, "test peer", max_frames=20, max_bytes=1 << 20, transport=request.transport
        )
        frames_out.append(conn)
        ready.set()
        async for _msg in ws:
            pass
        await conn.aclose()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_coalesced_snapshots_replace_each_other_instead_of_overflowing() -> None:
    conns: list[Connection] = []
    ready = asyncio.Event()
    runner = await _stalled_connection(conns, ready)
    try:
        port = int(runner.addresses[0][1])
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/ws") as client,
        ):
            await ready.wait()
            conn = conns[0]
            filler = "f" * 100_000
            # Plain frames until the socket buffers are full and the queue starts to grow.
            plain = 0
            while conn.queued()[0] < 5:
                conn.send(filler)
                plain += 1
                await asyncio.sleep(0.01)
                assert plain < 2000, "the socket never filled"
            # Now thousands of snapshots: each replaces the unsent one before it.
            for version in range(5000):
                conn.send(f'{{"type": "queue", "version": {version}}}', coalesce="queue")
                assert conn.queued()[0] <= 6 + 1
            assert not conn.closing
            # The client reads again: the plain frames, then only the newest snapshot.
            texts: list[str] = []
            while not texts or texts[-1].startswith("f"):
                msg = await client.receive(timeout=10)
                assert msg.type is WSMsgType.TEXT
                texts.append(msg.data)
            assert texts[-1] == '{"type": "queue", "version": 4999}'
            assert sum(1 for t in texts if t.startswith("f")) == plain
            # Plain frames do overflow: the connection is closed 4408 (the client reads).
            for _ in range(2000):
                conn.send(filler)
                if conn.closing:
                    break
                await asyncio.sleep(0.005)
            assert conn.closing
            while True:
                msg = await client.receive(timeout=10)
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                    break
            assert client.close_code == CLOSE_SLOW
    finally:
        await runner.cleanup()
