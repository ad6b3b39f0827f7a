"""A leader whose term has ended without its noticing writes and sends nothing more.

The store (real PostgreSQL): records of an epoch are written only while
``signaling_leader`` holds that epoch. The cluster (three ``python -m signaling`` nodes,
real PostgreSQL and Redis): the leader's process is paused (SIGSTOP) until PostgreSQL
ends its idle connection and another node takes over; a call is made through the new
leader; the old leader is resumed (SIGCONT) with the events of that call waiting for it,
and nobody is offered, matched or stored twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import func, select

from shared.protocol import (
    AcceptOffer,
    CallStarted,
    HangUp,
    Offer,
    RequestHelp,
    ServerToStaff,
    SessionEnded,
    SetState,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WrapUpDone,
)
from shared.store import CallSession, HelpRequest, SignalingLeader, session_factory
from signaling.cluster import _CLAIM_TERM, asyncpg_dsn
from signaling.matching import NewRequest, RequestStatus, RequestStatusChanged
from signaling.store import Fenced, SignalingStore
from tests.cluster_support import Cluster, running_cluster, staff_frame_problems, token
from tests.postgres_support import postgres_server, postgres_url
from tests.redis_support import redis_server, redis_url
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    StaffClient,
    connect_booth,
    connect_staff,
    eventually,
    open_engine,
    prepare_database,
)

__all__ = ["postgres_server", "postgres_url", "redis_server", "redis_url"]  # fixtures


async def _claim(database_url: str, epoch: int, node_id: str) -> int | None:
    """Claim a leadership term as a new leader does; the epoch, or None if refused."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        claimed = await conn.fetchval(_CLAIM_TERM, epoch, node_id)
        return None if claimed is None else int(claimed)
    finally:
        await conn.close()


def _request(request_id: str) -> NewRequest:
    return NewRequest(request_id, "seiseki-1", "shimin", "ja", datetime.now(UTC))


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


async def test_records_of_an_ended_term_are_not_written(postgres_url: str) -> None:
    await prepare_database(postgres_url)
    store = SignalingStore(postgres_url)
    fenced: list[int] = []
    store.on_fenced = fenced.append
    await store.start()
    try:
        assert await _claim(postgres_url, 10, "a") == 10
        await store.insert_request(_request("r-term-10"), 10)

        # Another node takes over; a term older than the stored one cannot be claimed.
        assert await _claim(postgres_url, 20, "b") == 20
        assert await _claim(postgres_url, 15, "c") is None

        late = store.insert_request(_request("r-late"), 10)
        store.record(
            RequestStatusChanged("r-term-10", RequestStatus.CANCELLED, datetime.now(UTC)), 10
        )
        await store.flush()
        with pytest.raises(Fenced, match="epoch 10 has ended"):
            await late
        assert fenced == [10]

        # The new leader's records, and records outside any term, are written.
        await store.insert_request(_request("r-term-20"), 20)
        store.record(RequestStatusChanged("r-term-20", RequestStatus.CANCELLED, datetime.now(UTC)))
        await store.flush()
    finally:
        await store.aclose()

    async with open_engine(postgres_url) as engine:
        async with session_factory(engine)() as db:
            rows = {r.id: r.status for r in await db.scalars(select(HelpRequest))}
            leader = await db.get(SignalingLeader, 1)
    assert rows == {"r-term-10": "waiting", "r-term-20": "cancelled"}
    assert leader is not None and (leader.epoch, leader.node_id) == (20, "b")


# --------------------------------------------------------------------------------------
# A paused leader
# --------------------------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    await prepare_database(postgres_url)
    async with running_cluster(tmp_path, postgres_url, redis_url) as running:
        yield running


async def _available(staff: StaffClient) -> None:
    await staff.send(SetState(state="available"))
    while True:
        changed = await staff.expect(StaffStateChanged)
        if changed.state is StaffState.AVAILABLE:
            return


async def _call(booth_url: str, booth_id: str, staff: StaffClient, request_id: str) -> str:
    async with connect_booth(booth_url, booth_id, BOOTH_CREDENTIALS[booth_id]) as booth:
        await booth.send(RequestHelp(request_id=request_id, department="shimin", language="ja"))
        offer = await staff.expect(Offer, within=10)
        assert offer.request_id == request_id
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        started = await booth.expect(CallStarted)
        assert (await staff.expect(CallStarted)).session_id == started.session_id
        return started.session_id


async def test_a_paused_leader_neither_writes_nor_sends_after_another_took_over(
    cluster: Cluster,
) -> None:
    old = await cluster.leader()
    old_epoch = (await cluster.health(old) or {})["cluster"]["epoch"]
    others = [n for n in cluster.nodes.values() if n is not old]
    async with connect_staff(others[0].ws_url, token("suzuki")) as staff:
        await _available(staff)
        old.process.send_signal(signal.SIGSTOP)  # by its PID
        paused_at = time.monotonic()
        try:

            async def taken_over() -> list[str] | None:
                found = [n for n in await cluster.leaders() if n != old.node_id]
                return found or None

            found = await eventually(taken_over, within=15, interval=0.1)
            print(f"node {found} leads {time.monotonic() - paused_at:.2f} s after the pause")
            new = cluster.nodes[found[0]]
            new_epoch = (await cluster.health(new) or {})["cluster"]["epoch"]
            assert new_epoch > old_epoch
            # The staff member's node announces them to the new leader.
            welcome = await staff.expect(StaffWelcome, within=10)
            assert welcome.state is StaffState.AVAILABLE

            # A call through the new leader while the old one is paused: its events wait
            # in the stream for the old leader's blocked read.
            session_id = await _call(others[1].ws_url, "seiseki-1", staff, "r-during")
        finally:
            old.process.send_signal(signal.SIGCONT)

        async def stepped_down() -> bool:
            health = await cluster.health(old)
            return bool(health and not health["cluster"]["leader"])

        await eventually(stepped_down, within=10)
        await asyncio.sleep(2.0)  # time for any frame the old leader might still send
        log = cluster.log(old)
        print("old leader:", [line for line in log.splitlines() if "epoch" in line][-3:])
        assert "leadership of epoch" in log or "leadership lost" in log
        assert (await cluster.health(old) or {})["cluster"]["epoch"] == new_epoch
        assert await cluster.leaders() == [new.node_id]

        # The cluster goes on with the old leader's node as one of the others: a booth
        # on it is matched through the new leader.
        await staff.send(HangUp(session_id=session_id))
        await staff.expect(SessionEnded)
        await _available_after_wrap_up(staff, session_id)
        second = await _call(old.ws_url, "tamacenter-1", staff, "r-after")
        frames: list[ServerToStaff] = list(staff.history)
        _, problems = staff_frame_problems("suzuki", frames)
        assert problems == []
        offered = [f.request_id for f in frames if isinstance(f, Offer)]
        assert offered.count("r-during") == 1 and offered.count("r-after") == 1

    async with open_engine(cluster.database_url) as engine:
        async with session_factory(engine)() as db:
            rows = list(await db.scalars(select(CallSession).order_by(CallSession.accepted_at)))
            requests = await db.scalar(select(func.count()).select_from(HelpRequest))
            leader = await db.get(SignalingLeader, 1)
    assert [(r.id, r.request_id, r.staff_id) for r in rows] == [
        (session_id, "r-during", "suzuki"),
        (second, "r-after", "suzuki"),
    ]
    assert requests == 2
    assert leader is not None and (leader.epoch, leader.node_id) == (new_epoch, new.node_id)


async def _available_after_wrap_up(staff: StaffClient, session_id: str) -> None:
    await staff.send(WrapUpDone(session_id=session_id, note=""))
    while True:
        changed = await staff.expect(StaffStateChanged)
        if changed.state is StaffState.AVAILABLE:
            return
