"""A waiting request and an unfinished wrap-up survive a restart of the signaling server."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from shared.protocol import (
    AcceptOffer,
    BoothWelcome,
    CallStarted,
    HangUp,
    Offer,
    QueueStatus,
    RequestHelp,
    SetState,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WrapUpDone,
)
from shared.store import CallSession, HelpRequest, SessionEvent, session_factory
from tests.signaling_support import connect_booth, connect_staff, open_engine, running_signaling

BOOTH = "seiseki-1"


async def test_waiting_request_is_restored_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "restart.sqlite3"
    async with (
        running_signaling(tmp_path, database_path=db) as (_c, ws_url, creds, _t),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
    ):
        await booth.send(RequestHelp(request_id="r-survivor", department="hoken", language="ja"))
        status = await booth.expect(QueueStatus)
        assert (status.request_id, status.position, status.staff_online) == ("r-survivor", 1, 0)
        # The booth leaves, then the server stops with the request still waiting.
    async with (
        running_signaling(tmp_path, database_path=db) as (config, ws_url, creds, token),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
    ):
        welcome = booth.history[0]
        assert isinstance(welcome, BoothWelcome)
        assert welcome.pending_request_id == "r-survivor"
        status = await booth.expect(QueueStatus)
        assert (status.request_id, status.position) == ("r-survivor", 1)
        # Re-sending the same request is idempotent.
        await booth.send(RequestHelp(request_id="r-survivor", department="hoken", language="ja"))
        assert (await booth.expect(QueueStatus)).request_id == "r-survivor"
        async with connect_staff(ws_url, token("sato")) as staff:
            await staff.send(SetState(state="available"))
            offer = await staff.expect(Offer)
            assert offer.request_id == "r-survivor"
            await staff.send(AcceptOffer(offer_id=offer.offer_id))
            started = await booth.expect(CallStarted)
            assert started.request_id == "r-survivor"
    async with open_engine(config.database_url) as engine, session_factory(engine)() as s:
        count = await s.scalar(
            select(func.count()).select_from(HelpRequest).where(HelpRequest.id == "r-survivor")
        )
        row = await s.get(HelpRequest, "r-survivor")
        kinds = list(
            await s.scalars(
                select(SessionEvent.kind)
                .where(SessionEvent.request_id == "r-survivor")
                .order_by(SessionEvent.id)
            )
        )
    assert count == 1
    assert row is not None and row.status == "matched"
    assert kinds[0] == "requested" and kinds.count("requested") == 1
    assert kinds[-2:] == ["offered", "accepted"]


async def test_an_unfinished_wrap_up_is_asked_for_again_after_a_restart(tmp_path: Path) -> None:
    """sato wrote the note of his first call; his second is cut by the restart. suzuki had
    not written the note of hers. Both are back in the wrap-up of their latest session,
    and the notes they then write are stored; after one more restart both come back away."""
    db = tmp_path / "wrap.sqlite3"
    calls = [("sato", BOOTH, "noted"), ("suzuki", "tamacenter-1", "hung_up"), ("sato", BOOTH, "")]
    sessions: dict[str, str] = {}
    async with running_signaling(tmp_path, database_path=db) as (_c, ws_url, creds, token):
        for n, (staff_id, booth_id, until) in enumerate(calls):
            async with (
                connect_booth(ws_url, booth_id, creds[booth_id]) as booth,
                connect_staff(ws_url, token(staff_id)) as staff,
            ):
                await staff.send(SetState(state="available"))
                await booth.send(
                    RequestHelp(request_id=f"r-{n}", department="shimin", language="ja")
                )
                offer = await staff.expect(Offer)
                await staff.send(AcceptOffer(offer_id=offer.offer_id))
                started = await booth.expect(CallStarted)
                sessions[staff_id] = started.session_id
                if not until:
                    continue  # the server stops during this call
                await staff.send(HangUp(session_id=started.session_id))
                while (await staff.expect(StaffStateChanged)).state is not StaffState.WRAP_UP:
                    pass
                if until == "noted":
                    await staff.send(WrapUpDone(session_id=started.session_id, note="済"))
                    while (await staff.expect(StaffStateChanged)).state is not StaffState.AVAILABLE:
                        pass
    notes = {"sato": "再起動で切断、折り返し連絡", "suzuki": "転入届を案内"}
    async with running_signaling(tmp_path, database_path=db) as (config, ws_url, _creds, token):
        for staff_id, note in notes.items():
            async with connect_staff(ws_url, token(staff_id)) as staff:
                welcome = staff.history[0]
                assert isinstance(welcome, StaffWelcome)
                assert (welcome.state, welcome.session_id) == (
                    StaffState.WRAP_UP,
                    sessions[staff_id],
                )
                # Available is refused while the note is not written.
                await staff.send(SetState(state="available"))
                await staff.expect_error()
                await staff.send(WrapUpDone(session_id=sessions[staff_id], note=note))
                changed = await staff.expect(StaffStateChanged)
                assert changed.state is StaffState.AVAILABLE
    async with open_engine(config.database_url) as engine, session_factory(engine)() as s:
        rows = list(await s.scalars(select(CallSession).order_by(CallSession.accepted_at)))
    assert [(r.staff_id, r.note) for r in rows] == [
        ("sato", "済"), ("suzuki", notes["suzuki"]), ("sato", notes["sato"]),
    ]  # fmt: skip
    assert [r.outcome == "server_restart" for r in rows] == [False, False, True]
    async with running_signaling(tmp_path, database_path=db) as (_c, ws_url, _creds, token):
        for staff_id in notes:
            async with connect_staff(ws_url, token(staff_id)) as staff:
                welcome = staff.history[0]
                assert isinstance(welcome, StaffWelcome)
                assert (welcome.state, welcome.session_id) == (StaffState.AWAY, None)
