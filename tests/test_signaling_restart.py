"""A waiting request survives a restart of the signaling server."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from shared.protocol import (
    AcceptOffer,
    BoothWelcome,
    CallStarted,
    Offer,
    QueueStatus,
    RequestHelp,
    SetState,
)
from shared.store import HelpRequest, SessionEvent, session_factory
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
