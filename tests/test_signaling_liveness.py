"""Connections that die, drop or should not be let in: heartbeats, reconnect grace,
lost peers during a call, the Origin check and the protocol version."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import TypeAdapter

from shared.protocol import (
    AcceptOffer,
    BoothHello,
    BoothsSnapshot,
    BoothState,
    BoothWelcome,
    CallStarted,
    EndReason,
    ErrorCode,
    ErrorMessage,
    HangUp,
    Offer,
    QueueStatus,
    Relay,
    RequestClosed,
    RequestHelp,
    SdpPayload,
    ServerToBooth,
    SessionEnded,
    SetState,
    StaffHello,
    StaffState,
    StaffStateChanged,
    WrapUpDone,
)
from shared.store import CallSession, session_factory
from shared.wire import encode
from signaling.server import CLOSE_BAD_PROTOCOL
from tests.signaling_support import (
    BoothClient,
    ProtocolClient,
    StaffClient,
    connect_booth,
    connect_staff,
    open_booth,
    open_engine,
    open_staff,
    running_signaling,
)

BOOTH = "seiseki-1"


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _booth_state(branch: StaffClient, booth_id: str, within: float) -> BoothState:
    snapshot = await branch.expect(BoothsSnapshot, within)
    return next(b.state for b in snapshot.booths if b.booth.booth_id == booth_id)


async def _wait_booth_state(
    branch: StaffClient, booth_id: str, state: BoothState, within: float
) -> float:
    """Read branch snapshots until ``booth_id`` is in ``state``; returns when it was seen."""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"booth {booth_id} never became {state}")
        if await _booth_state(branch, booth_id, remaining) is state:
            return time.monotonic()


@contextlib.asynccontextmanager
async def _silent_booth(ws_url: str, credential: str) -> AsyncIterator[BoothClient]:
    """A booth whose WebSocket never answers pings: it is alive on TCP but dead to the
    protocol, like a kiosk whose network stopped forwarding packets."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(ws_url + "/ws/booth", autoping=False)
    client: BoothClient = ProtocolClient(session, ws, TypeAdapter(ServerToBooth))
    try:
        await client.send(BoothHello(booth_id=BOOTH, credential=credential))
        await client.expect(BoothWelcome)
        yield client
    finally:
        await client.aclose()


async def test_a_booth_that_stops_answering_pings_is_detected_and_set_offline(
    tmp_path: Path,
) -> None:
    async with (
        running_signaling(tmp_path, heartbeat_s=0.3) as (_c, ws_url, creds, token),
        connect_staff(ws_url, token("takahashi")) as branch,
    ):
        assert await _booth_state(branch, BOOTH, 2) is BoothState.OFFLINE
        async with _silent_booth(ws_url, creds[BOOTH]) as booth:
            await booth.send(RequestHelp(request_id="r-dead", department="shimin", language="ja"))
            await _wait_booth_state(branch, BOOTH, BoothState.WAITING, 2)
            # The booth reads nothing from now on: pings go unanswered.
            started = time.monotonic()
            seen = await _wait_booth_state(branch, BOOTH, BoothState.OFFLINE, 5)
            # heartbeat 0.3 s: a ping, then half a heartbeat for the pong
            assert seen - started < 2.0
        async with open_engine(_c.database_url) as engine:
            async with engine.connect() as conn:
                status = (
                    await conn.exec_driver_sql(
                        "SELECT status FROM help_requests WHERE id = 'r-dead'"
                    )
                ).scalar_one()
        # Still waiting: the booth has booth_reconnect_grace_s to come back.
        assert status == "waiting"


async def _in_call(booth: BoothClient, staff: StaffClient, request_id: str) -> str:
    await staff.send(SetState(state="available"))
    await booth.send(RequestHelp(request_id=request_id, department="shimin", language="ja"))
    offer = await staff.expect(Offer)
    await staff.send(AcceptOffer(offer_id=offer.offer_id))
    started = await booth.expect(CallStarted)
    await staff.expect(CallStarted)
    return started.session_id


async def _stored_outcome(database_url: str, session_id: str) -> str | None:
    async with open_engine(database_url) as engine:
        sessions = session_factory(engine)
        deadline = time.monotonic() + 5
        while True:
            async with sessions() as s:
                row = await s.get(CallSession, session_id)
                if row is not None and row.outcome is not None:
                    return row.outcome
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)


async def test_booth_lost_during_a_call_ends_it_after_the_grace(tmp_path: Path) -> None:
    async with running_signaling(tmp_path, booth_reconnect_grace_s=0.5) as (
        config,
        ws_url,
        creds,
        token,
    ):
        async with connect_staff(ws_url, token("sato")) as staff:
            async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
                session_id = await _in_call(booth, staff, "r-lost")
            dropped = time.monotonic()
            ended = await staff.expect(SessionEnded, within=5)
            assert ended.session_id == session_id
            assert ended.reason is EndReason.BOOTH_LOST
            assert time.monotonic() - dropped >= 0.4  # not before the grace
            assert (await staff.expect(StaffStateChanged)).state is StaffState.WRAP_UP
        assert await _stored_outcome(config.database_url, session_id) == "booth_lost"


async def test_booth_back_within_the_grace_keeps_the_call(tmp_path: Path) -> None:
    async with running_signaling(tmp_path, booth_reconnect_grace_s=3.0) as (
        _c,
        ws_url,
        creds,
        token,
    ):
        async with connect_staff(ws_url, token("sato")) as staff:
            async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
                session_id = await _in_call(booth, staff, "r-back")
            async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
                welcome = booth.history[0]
                assert isinstance(welcome, BoothWelcome)
                assert welcome.session_id == session_id
                relay = Relay(
                    session_id=session_id, payload=SdpPayload(sdp_type="offer", sdp="v=0 again")
                )
                await booth.send(relay)
                assert await staff.expect(Relay) == relay
                await staff.expect_none(SessionEnded, within=3.5)


async def test_staff_lost_during_a_call_ends_it_after_the_grace(tmp_path: Path) -> None:
    async with running_signaling(tmp_path, staff_reconnect_grace_s=0.5) as (
        config,
        ws_url,
        creds,
        token,
    ):
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
            async with connect_staff(ws_url, token("sato")) as staff:
                session_id = await _in_call(booth, staff, "r-staff-lost")
            ended = await booth.expect(SessionEnded, within=5)
            assert (ended.session_id, ended.reason) == (session_id, EndReason.STAFF_LOST)
        assert await _stored_outcome(config.database_url, session_id) == "staff_lost"


async def test_staff_socket_from_a_foreign_origin_is_refused(tmp_path: Path) -> None:
    origin = "http://127.0.0.1:8080"
    async with running_signaling(tmp_path, allowed_origins=[origin]) as (_c, ws_url, _b, token):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_staff(ws_url, origin="http://evil.example")
        assert refused.value.status == 403
        staff = await open_staff(ws_url, origin=origin)
        try:
            await staff.send(StaffHello(token=token("sato")))
            welcome = await staff.receive()
            assert welcome.type == "welcome"
        finally:
            await staff.aclose()


async def test_a_newer_protocol_version_is_refused_clearly(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as (_c, ws_url, creds, _t):
        booth = await open_booth(ws_url)
        try:
            await booth.send_raw(
                encode(BoothHello(booth_id=BOOTH, credential=creds[BOOTH])).replace(
                    '"protocol":1', '"protocol":2'
                )
            )
            error = await booth.expect(ErrorMessage)
            assert (error.code, error.fatal) == (ErrorCode.UNSUPPORTED_PROTOCOL, True)
            assert await booth.expect_closed() == CLOSE_BAD_PROTOCOL
        finally:
            await booth.aclose()


async def test_queue_status_reaches_a_booth_that_comes_back(tmp_path: Path) -> None:
    """A booth that drops while waiting and comes back within the grace is told that its
    request is still queued, with its position."""
    async with running_signaling(tmp_path) as (_c, ws_url, creds, _t):
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
            await booth.send(RequestHelp(request_id="r-q", department="kazei", language="ja"))
            await booth.expect(QueueStatus)
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
            welcome = booth.history[0]
            assert isinstance(welcome, BoothWelcome) and welcome.pending_request_id == "r-q"
            status = await booth.expect(QueueStatus)
            assert (status.request_id, status.position) == ("r-q", 1)


async def test_a_reused_request_id_is_refused_and_leaves_the_old_record_alone(
    tmp_path: Path,
) -> None:
    """Requests are matched while their row is written; one the database refuses (the id
    was used before) leaves the queue again, and nothing is attached to the old row."""
    async with running_signaling(tmp_path) as (config, ws_url, creds, token):
        async with (
            connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
            connect_staff(ws_url, token("sato")) as staff,
        ):
            session_id = await _in_call(booth, staff, "r-once")
            await staff.send(HangUp(session_id=session_id))
            await booth.expect(SessionEnded)
            await staff.expect(SessionEnded)
            await staff.send(WrapUpDone(session_id=session_id, note=""))
            await _stored_outcome(config.database_url, session_id)
            async with open_engine(config.database_url) as engine, engine.connect() as conn:
                before = (
                    (
                        await conn.exec_driver_sql(
                            "SELECT kind FROM session_events WHERE request_id = 'r-once' "
                            "ORDER BY id"
                        )
                    )
                    .scalars()
                    .all()
                )
            await booth.send(RequestHelp(request_id="r-once", department="shimin", language="ja"))
            closed = await booth.expect(RequestClosed)
            assert closed.request_id == "r-once"
            error = await booth.expect(ErrorMessage)
            assert (error.code, error.ref) == (ErrorCode.OUT_OF_ORDER, "request_help")
            # The booth can go on with a fresh id.
            await booth.send(RequestHelp(request_id="r-twice", department="shimin", language="ja"))
            assert (await booth.expect(QueueStatus)).request_id == "r-twice"
        async with open_engine(config.database_url) as engine, engine.connect() as conn:
            after = (
                (
                    await conn.exec_driver_sql(
                        "SELECT kind FROM session_events WHERE request_id = 'r-once' ORDER BY id"
                    )
                )
                .scalars()
                .all()
            )
            status = (
                await conn.exec_driver_sql("SELECT status FROM help_requests WHERE id = 'r-once'")
            ).scalar_one()
        assert list(after) == list(before)
        assert status == "matched"
