"""The signaling server over real WebSockets on 127.0.0.1, with a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import select

from shared.protocol import (
    AcceptOffer,
    BoothHello,
    BoothWelcome,
    CallStarted,
    CancelRequest,
    DeclineOffer,
    EndReason,
    ErrorCode,
    ErrorMessage,
    HangUp,
    IcePayload,
    MediaConnected,
    Offer,
    OfferWithdrawn,
    QueueStatus,
    Relay,
    RequestClosed,
    RequestHelp,
    SdpPayload,
    SessionEnded,
    SetState,
    StaffHello,
    StaffRole,
    StaffState,
    StaffStateChanged,
    WithdrawReason,
    WrapUpDone,
)
from shared.security import issue_staff_token
from shared.store import CallSession, HelpRequest, SessionEvent, session_factory
from signaling.server import CLOSE_AUTH, CLOSE_DUPLICATE
from tests.signaling_support import (
    connect_booth,
    connect_staff,
    open_booth,
    open_engine,
    open_staff,
    running_signaling,
    sqlite_url,
)
from tests.signaling_support import prepare_database as prepare_db

BOOTH = "seiseki-1"
OTHER_BOOTH = "tamacenter-1"


def request(request_id: str, department: str = "shimin", language: str = "ja") -> RequestHelp:
    return RequestHelp(request_id=request_id, department=department, language=language)


async def test_wrong_booth_credential_is_refused(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as (_config, ws_url, _creds, _token):
        client = await open_booth(ws_url)
        try:
            await client.send(BoothHello(booth_id=BOOTH, credential="not-the-credential"))
            error = await client.expect(ErrorMessage)
            assert (error.code, error.fatal) == (ErrorCode.AUTH_FAILED, True)
            assert await client.expect_closed() == CLOSE_AUTH
        finally:
            await client.aclose()


async def test_forged_and_expired_staff_tokens_are_refused(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as (config, ws_url, _creds, token):
        forged = issue_staff_token("another-secret-of-enough-length", "sato", StaffRole.HQ, 300)
        expired = token("sato", ttl_s=-10)
        for bad, code in ((forged, ErrorCode.AUTH_FAILED), (expired, ErrorCode.TOKEN_EXPIRED)):
            client = await open_staff(ws_url)
            try:
                await client.send(StaffHello(token=bad))
                error = await client.expect(ErrorMessage)
                assert (error.code, error.fatal) == (code, True)
                assert await client.expect_closed() == CLOSE_AUTH
            finally:
                await client.aclose()
        # The genuine token of the same account works.
        async with connect_staff(ws_url, token("sato")) as staff:
            assert staff.history[0].type == "welcome"
        assert config.token_secret != "another-secret-of-enough-length"


async def test_no_hello_in_time_is_refused(tmp_path: Path) -> None:
    async with running_signaling(tmp_path, hello_timeout_s=0.3) as (_c, ws_url, _creds, _t):
        client = await open_booth(ws_url)
        try:
            started = time.monotonic()
            error = await client.expect(ErrorMessage, within=3)
            assert error.code is ErrorCode.AUTH_REQUIRED and error.fatal
            assert 0.25 <= time.monotonic() - started < 2.0
            assert await client.expect_closed() == CLOSE_AUTH
        finally:
            await client.aclose()
        # A first message that is not hello is refused the same way.
        client = await open_booth(ws_url)
        try:
            await client.send(request("r-early"))
            error = await client.expect(ErrorMessage)
            assert error.code is ErrorCode.AUTH_REQUIRED
        finally:
            await client.aclose()


async def test_bad_frames_get_their_error_code_and_the_connection_keeps_working(
    tmp_path: Path,
) -> None:
    async with running_signaling(tmp_path, max_message_bytes=4096) as (_c, ws_url, creds, token):
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
            cases = [
                ("this is not json", ErrorCode.BAD_JSON),
                ("[1, 2, 3]", ErrorCode.BAD_JSON),
                (json.dumps({"type": "request_help", "request_id": "x"}), ErrorCode.BAD_MESSAGE),
                (json.dumps({"type": "no_such_type"}), ErrorCode.BAD_MESSAGE),
                ("x" * 5000, ErrorCode.TOO_LARGE),
                (
                    json.dumps({"type": "cancel_request", "request_id": "r-none"}),
                    ErrorCode.OUT_OF_ORDER,
                ),
                (
                    BoothHello(booth_id=BOOTH, credential=creds[BOOTH]).model_dump_json(),
                    ErrorCode.OUT_OF_ORDER,
                ),
                (
                    Relay(
                        session_id="s-none", payload=IcePayload(candidate=None)
                    ).model_dump_json(),
                    ErrorCode.NOT_IN_SESSION,
                ),
                (
                    request("r-dept", department="nope").model_dump_json(),
                    ErrorCode.UNKNOWN_DEPARTMENT,
                ),
            ]
            for frame, code in cases:
                await booth.send_raw(frame)
                error = await booth.expect(ErrorMessage)
                assert (error.code, error.fatal) == (code, False), frame[:40]
            # Still working: a valid request is queued.
            await booth.send(request("r-ok"))
            status = await booth.expect(QueueStatus)
            assert (status.request_id, status.position) == ("r-ok", 1)
            # A second, different request while one waits is out of order; the same one
            # again is idempotent (QueueStatus again).
            await booth.send(request("r-other"))
            assert (await booth.expect(ErrorMessage)).code is ErrorCode.OUT_OF_ORDER
            await booth.send(request("r-ok"))
            assert (await booth.expect(QueueStatus)).request_id == "r-ok"
        async with connect_staff(ws_url, token("sato")) as staff:
            await staff.send(AcceptOffer(offer_id="o-unknown"))
            assert (await staff.expect(ErrorMessage)).code is ErrorCode.OUT_OF_ORDER
            await staff.send(WrapUpDone(session_id="s-none", note=""))
            assert (await staff.expect(ErrorMessage)).code is ErrorCode.OUT_OF_ORDER
            await staff.send_raw("{not json")
            assert (await staff.expect(ErrorMessage)).code is ErrorCode.BAD_JSON
            await staff.send(SetState(state="available"))
            changed = await staff.expect(StaffStateChanged)
            assert changed.state is StaffState.AVAILABLE
        async with (
            aiohttp.ClientSession() as http,
            http.get(ws_url.replace("ws://", "http://") + "/healthz") as resp,
        ):
            health = await resp.json()
        # The booth left; its request waits booth_reconnect_grace_s for it to come back.
        assert (health["ok"], health["booths"], health["waiting"]) == (True, 0, 1)


async def test_relay_outside_the_session_is_refused_and_not_delivered(tmp_path: Path) -> None:
    async with (
        running_signaling(tmp_path) as (_c, ws_url, creds, token),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
        connect_booth(ws_url, OTHER_BOOTH, creds[OTHER_BOOTH]) as intruder,
        connect_staff(ws_url, token("sato")) as sato,
        connect_staff(ws_url, token("suzuki")) as suzuki,
    ):
        await sato.send(SetState(state="available"))
        await booth.send(request("r-1"))
        offer = await sato.expect(Offer)
        await sato.send(AcceptOffer(offer_id=offer.offer_id))
        started = await booth.expect(CallStarted)
        await sato.expect(CallStarted)
        foreign = Relay(
            session_id=started.session_id,
            payload=SdpPayload(sdp_type="offer", sdp="v=0 forged"),
        )
        await intruder.send(foreign)
        error = await intruder.expect(ErrorMessage)
        assert (error.code, error.fatal) == (ErrorCode.NOT_IN_SESSION, False)
        await suzuki.send(foreign)
        assert (await suzuki.expect(ErrorMessage)).code is ErrorCode.NOT_IN_SESSION
        await sato.expect_none(Relay, within=0.3)
        await booth.expect_none(Relay, within=0.1)


async def test_full_call_flow_is_relayed_and_recorded(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as (config, ws_url, creds, token):
        async with (
            connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
            connect_staff(ws_url, token("sato")) as staff,
        ):
            assert staff.history[0].type == "welcome"
            assert staff.history[0].state is StaffState.AWAY
            await booth.send(request("r-flow", language="en"))
            status = await booth.expect(QueueStatus)
            assert (status.position, status.staff_online, status.estimated_wait_s) == (1, 0, None)
            await staff.send(SetState(state="available"))
            offer = await staff.expect(Offer)
            assert (offer.request_id, offer.department, offer.language) == (
                "r-flow",
                "shimin",
                "en",
            )
            assert offer.booth.booth_id == BOOTH
            await staff.send(AcceptOffer(offer_id=offer.offer_id))
            on_booth = await booth.expect(CallStarted)
            on_staff = await staff.expect(CallStarted)
            assert on_booth.session_id == on_staff.session_id
            assert (on_booth.role, on_staff.role) == ("offerer", "answerer")
            assert on_booth.ice_servers == []  # no STUN/TURN configured
            session_id = on_booth.session_id
            sdp_offer = Relay(
                session_id=session_id, payload=SdpPayload(sdp_type="offer", sdp="v=0 o")
            )
            await booth.send(sdp_offer)
            assert await staff.expect(Relay) == sdp_offer
            sdp_answer = Relay(
                session_id=session_id, payload=SdpPayload(sdp_type="answer", sdp="v=0 a")
            )
            await staff.send(sdp_answer)
            assert await booth.expect(Relay) == sdp_answer
            await booth.send(MediaConnected(session_id=session_id))
            await asyncio.sleep(0.05)
            await staff.send(HangUp(session_id=session_id))
            ended_staff = await staff.expect(SessionEnded)
            ended_booth = await booth.expect(SessionEnded)
            assert ended_staff == ended_booth
            assert ended_booth.reason is EndReason.HANGUP_STAFF
            assert (await staff.expect(StaffStateChanged)).state is StaffState.WRAP_UP
            await staff.send(WrapUpDone(session_id=session_id, note="住民票の写しを交付"))
            assert (await staff.expect(StaffStateChanged)).state is StaffState.AVAILABLE
        async with open_engine(config.database_url) as engine:
            sessions = session_factory(engine)

            async def stored() -> CallSession | None:
                async with sessions() as s:
                    row = await s.get(CallSession, session_id)
                    return row if row is not None and row.note is not None else None

            deadline = time.monotonic() + 5
            row = await stored()
            while row is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                row = await stored()
            assert row is not None
            assert (row.request_id, row.booth_id, row.staff_id) == ("r-flow", BOOTH, "sato")
            assert row.outcome == "hangup_staff" and row.note == "住民票の写しを交付"
            assert row.connected_at is not None and row.ended_at is not None
            assert row.accepted_at <= row.connected_at <= row.ended_at
            async with sessions() as s:
                kinds = list(
                    await s.scalars(
                        select(SessionEvent.kind)
                        .where(SessionEvent.request_id == "r-flow")
                        .order_by(SessionEvent.id)
                    )
                )
                help_row = await s.get(HelpRequest, "r-flow")
            assert kinds == ["requested", "offered", "accepted", "connected", "ended"]
            assert help_row is not None and help_row.status == "matched"


async def test_cancel_while_ringing_withdraws_the_offer_at_once(tmp_path: Path) -> None:
    async with (
        running_signaling(tmp_path, ring_timeout_s=10.0) as (_c, ws_url, creds, token),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
        connect_staff(ws_url, token("sato")) as staff,
    ):
        await staff.send(SetState(state="available"))
        await booth.send(request("r-cancel"))
        offer = await staff.expect(Offer)
        started = time.monotonic()
        await booth.send(CancelRequest(request_id="r-cancel"))
        withdrawn = await staff.expect(OfferWithdrawn)
        assert time.monotonic() - started < 0.5
        assert withdrawn == OfferWithdrawn(offer_id=offer.offer_id, reason=WithdrawReason.CANCELLED)
        closed = await booth.expect(RequestClosed)
        assert (closed.request_id, closed.reason) == ("r-cancel", "cancelled")
        # The accept that crosses the cancel is out of order, and nothing rings again.
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        assert (await staff.expect(ErrorMessage)).code is ErrorCode.OUT_OF_ORDER
        await staff.expect_none(Offer, within=0.3)


async def test_ring_timeout_moves_the_offer_to_the_next_staff_member(tmp_path: Path) -> None:
    async with (
        running_signaling(tmp_path, ring_timeout_s=0.3) as (_c, ws_url, creds, token),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
        connect_staff(ws_url, token("sato")) as sato,
        connect_staff(ws_url, token("suzuki")) as suzuki,
    ):
        await sato.send(SetState(state="available"))
        await sato.expect(StaffStateChanged)
        await suzuki.send(SetState(state="available"))
        await suzuki.expect(StaffStateChanged)
        await booth.send(request("r-ring"))
        first = await sato.expect(Offer)  # idle longest
        started = time.monotonic()
        withdrawn = await sato.expect(OfferWithdrawn)
        assert withdrawn.reason is WithdrawReason.TIMEOUT
        second = await suzuki.expect(Offer)
        assert time.monotonic() - started + 0.05 >= 0.25
        assert second.request_id == first.request_id == "r-ring"
        assert second.offer_id != first.offer_id
        # Declining it too: nobody is left outside their cool-down.
        await suzuki.send(DeclineOffer(offer_id=second.offer_id))
        declined = await suzuki.expect(OfferWithdrawn)
        assert declined.reason is WithdrawReason.DECLINED
        await sato.expect_none(Offer, within=0.2)


async def test_queue_position_and_estimate_follow_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "signaling.sqlite3"
    url = sqlite_url(db)
    await prepare_db(url)
    # Two past shimin calls of 300 s and 500 s.
    async with (
        open_engine(url) as engine,
        session_factory(engine).begin() as s,
    ):
        base = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        for n, seconds in enumerate((300, 500)):
            s.add(
                HelpRequest(
                    id=f"past-{n}",
                    booth_id=BOOTH,
                    department="shimin",
                    language="ja",
                    status="matched",
                    created_at=base,
                )
            )
            await s.flush()
            s.add(
                CallSession(
                    id=f"past-s{n}", request_id=f"past-{n}", booth_id=BOOTH, staff_id="sato",
                    department="shimin", language="ja", accepted_at=base,
                    ended_at=base + timedelta(seconds=seconds), outcome="hangup_staff",
                )
            )  # fmt: skip
    overrides = {"wait_estimate_min_samples": 2, "ring_timeout_s": 10.0}
    async with (
        running_signaling(tmp_path, database_path=db, **overrides) as (
            _c,
            ws_url,
            creds,
            token,
        ),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as first,
        connect_booth(ws_url, OTHER_BOOTH, creds[OTHER_BOOTH]) as second,
        connect_staff(ws_url, token("sato")) as sato,
    ):
        await sato.send(SetState(state="available"))
        await sato.expect(StaffStateChanged)
        await first.send(request("r-a"))
        await sato.expect(Offer)
        await second.send(request("r-b"))
        status = await second.expect(QueueStatus)
        # Second of two, one staff member signed in: ceil(2 / 1) * 400 s.
        assert (status.position, status.staff_online, status.estimated_wait_s) == (2, 1, 800)
        assert status.ringing is False
        ringing = await first.expect(QueueStatus)
        assert ringing.position == 1
        await first.send(CancelRequest(request_id="r-a"))
        moved = await second.expect(QueueStatus)
        while moved.position != 1 or not moved.ringing:
            moved = await second.expect(QueueStatus)
        assert (moved.position, moved.estimated_wait_s, moved.ringing) == (1, 400, True)


async def test_a_second_connection_replaces_the_first(tmp_path: Path) -> None:
    async with (
        running_signaling(tmp_path) as (_c, ws_url, creds, _t),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as old,
    ):
        await old.send(request("r-dup"))
        await old.expect(QueueStatus)
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as new:
            error = await old.expect(ErrorMessage)
            assert (error.code, error.fatal) == (ErrorCode.DUPLICATE_CONNECTION, True)
            assert await old.expect_closed() == CLOSE_DUPLICATE
            welcome = new.history[0]
            assert isinstance(welcome, BoothWelcome) and welcome.pending_request_id == "r-dup"
            await new.send(CancelRequest(request_id="r-dup"))
            assert (await new.expect(RequestClosed)).request_id == "r-dup"
