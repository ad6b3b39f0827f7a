"""Several signaling nodes on real PostgreSQL and Redis servers.

Three ``python -m signaling`` processes (nodes a, b, c) share one PostgreSQL database and
one Redis server; booths and staff connect to different nodes. The matching core runs on
the leader only (the holder of the PostgreSQL advisory lock): a call set up across nodes,
many simultaneous requests without double offers or double sessions, and a new leader
within seconds after the leader's process is killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, text

from shared.config import SignalingConfig
from shared.protocol import (
    AcceptOffer,
    BoothWelcome,
    CallStarted,
    EndReason,
    ErrorCode,
    ErrorMessage,
    HangUp,
    IcePayload,
    MediaConnected,
    Offer,
    Relay,
    RequestHelp,
    SdpPayload,
    ServerToStaff,
    SessionEnded,
    SetState,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WrapUpDone,
)
from shared.store import CallSession, HelpRequest, SessionEvent, session_factory
from shared.store.seed import upsert_booth, upsert_staff
from signaling.cluster import LEADER_LOCK_KEY
from signaling.server import CLOSE_DUPLICATE
from tests.cluster_support import (
    NODE_IDS,
    Cluster,
    running_cluster,
    staff_frame_problems,
    token,
)
from tests.postgres_support import postgres_server, postgres_url
from tests.redis_support import redis_server, redis_url
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    DEMO_PASSWORD,
    BoothClient,
    StaffClient,
    connect_booth,
    connect_staff,
    eventually,
    open_engine,
    prepare_database,
)

__all__ = ["postgres_server", "postgres_url", "redis_server", "redis_url"]  # fixtures


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    await prepare_database(postgres_url)
    async with running_cluster(tmp_path, postgres_url, redis_url) as running:
        yield running


async def _leader_lock_holders(database_url: str) -> list[str]:
    """application_name of every connection holding the leader's advisory lock."""
    high, low = LEADER_LOCK_KEY >> 32, LEADER_LOCK_KEY & 0xFFFFFFFF
    async with open_engine(database_url) as engine, engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT a.application_name FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted"
                " AND l.classid = :high AND l.objid = :low"
            ),
            {"high": high, "low": low},
        )
        return sorted(str(r[0]) for r in rows)


async def _available(staff: StaffClient) -> None:
    await staff.send(SetState(state="available"))
    while True:
        changed = await staff.expect(StaffStateChanged)
        if changed.state is StaffState.AVAILABLE:
            return


async def _call(booth: BoothClient, staff: StaffClient, request_id: str) -> str:
    """The booth asks, the staff member is offered that request and accepts: the session
    id the booth is told."""
    await booth.send(RequestHelp(request_id=request_id, department="shimin", language="ja"))
    offer = await staff.expect(Offer)
    assert offer.request_id == request_id
    await staff.send(AcceptOffer(offer_id=offer.offer_id))
    return (await booth.expect(CallStarted)).session_id


# --------------------------------------------------------------------------------------
# One call across nodes
# --------------------------------------------------------------------------------------


async def test_a_call_between_a_booth_and_staff_on_different_nodes(cluster: Cluster) -> None:
    leader = await cluster.leader()
    assert await _leader_lock_holders(cluster.database_url) == [
        f"ekichika-signaling leader {leader.node_id}"
    ]
    a, b, c = (cluster.nodes[n] for n in NODE_IDS)
    async with (
        connect_staff(c.ws_url, token("sato")) as older,
        connect_staff(b.ws_url, token("sato")) as staff,
        connect_booth(a.ws_url, "seiseki-1", BOOTH_CREDENTIALS["seiseki-1"]) as booth,
    ):
        # Signed in again on another node: the older connection is closed by its node.
        duplicate = await older.expect_error()
        assert (duplicate.code, duplicate.fatal) == (ErrorCode.DUPLICATE_CONNECTION, True)
        # (the client had not read for a while: the close frame is what it gets; by
        # then the server may have closed the socket, too late for the client's reply)
        closing = await older.ws.receive(timeout=5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, CLOSE_DUPLICATE)
        assert isinstance(staff.history[0], StaffWelcome)
        assert isinstance(booth.history[0], BoothWelcome)
        assert booth.history[0].booth.booth_id == "seiseki-1"
        await _available(staff)
        await booth.send(RequestHelp(request_id="r-cross-1", department="shimin", language="ja"))
        offer = await staff.expect(Offer)
        assert (offer.request_id, offer.booth.booth_id) == ("r-cross-1", "seiseki-1")
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        on_staff = await staff.expect(CallStarted)
        on_booth = await booth.expect(CallStarted)
        assert on_staff.session_id == on_booth.session_id
        assert (on_booth.role, on_staff.role) == ("offerer", "answerer")
        session_id = on_booth.session_id

        # Events of one connection keep their order (those of two nodes need not): the
        # relay that reaches the staff member was handled after media_connected.
        await booth.send(MediaConnected(session_id=session_id))
        sdp = SdpPayload(sdp_type="offer", sdp="v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=ekichika\r\n")
        await booth.send(Relay(session_id=session_id, payload=sdp))
        relayed = await staff.expect(Relay)
        assert (relayed.session_id, relayed.payload) == (session_id, sdp)
        ice = IcePayload(candidate="candidate:1 1 udp 1 127.0.0.1 5000 typ host", sdp_mid="0")
        await staff.send(Relay(session_id=session_id, payload=ice))
        assert (await booth.expect(Relay)).payload == ice

        await staff.send(HangUp(session_id=session_id))
        ended_staff = await staff.expect(SessionEnded)
        ended_booth = await booth.expect(SessionEnded)
        assert ended_staff == ended_booth
        assert (ended_booth.session_id, ended_booth.reason) == (session_id, EndReason.HANGUP_STAFF)
        wrap_up = await staff.expect(StaffStateChanged)
        assert wrap_up.state is StaffState.WRAP_UP

    async with open_engine(cluster.database_url) as engine:
        sessions = session_factory(engine)

        async def stored() -> list[CallSession] | None:
            async with sessions() as db:
                rows = list((await db.scalars(select(CallSession))).all())
            return rows if rows and rows[0].ended_at and rows[0].connected_at else None

        rows = await eventually(stored)
        assert len(rows) == 1
        row = rows[0]
        assert (row.id, row.request_id, row.booth_id, row.staff_id) == (
            session_id,
            "r-cross-1",
            "seiseki-1",
            "sato",
        )
        assert row.outcome == EndReason.HANGUP_STAFF.value
        async with sessions() as db:
            request = await db.get(HelpRequest, "r-cross-1")
            assert request is not None and request.status == "matched"
            kinds = [
                e.kind
                for e in await db.scalars(
                    select(SessionEvent)
                    .where(SessionEvent.request_id == "r-cross-1")
                    .order_by(SessionEvent.id)
                )
            ]
        assert kinds == ["requested", "offered", "accepted", "connected", "ended"]


async def _entries(redis: Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    return cast(list[tuple[str, dict[str, str]]], await redis.xrange(stream))


async def test_a_late_announcement_of_an_older_connection_does_not_close_the_newer(
    cluster: Cluster,
) -> None:
    """Of two connections of one booth the later one is kept, whatever order their events
    reach the leader in: an announcement of an older connection (a node telling a new
    leader about a leftover connection) arriving after the current one's connect closes
    the older one, not the booth's live connection."""
    a, b, c = (cluster.nodes[n] for n in NODE_IDS)
    prefix = SignalingConfig.model_fields["cluster_key_prefix"].default
    events = f"{prefix}:events"
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        async with (
            connect_staff(b.ws_url, token("sato")) as staff,
            connect_booth(a.ws_url, "seiseki-1", BOOTH_CREDENTIALS["seiseki-1"]) as booth,
        ):
            await _available(staff)

            async def booth_connect() -> dict[str, str] | None:
                for _, fields in reversed(await _entries(redis, events)):
                    if (fields["k"], fields["p"]) == ("connected", "seiseki-1"):
                        return dict(fields)
                return None

            connect = await eventually(booth_connect)
            body = json.loads(connect["b"])
            assert body["connected_at"] > 0
            stale = {
                **connect,
                "n": c.node_id,
                "c": "leftover-1",
                "k": "announced",
                "b": json.dumps({**body, "connected_at": body["connected_at"] - 30}),
            }
            await redis.xadd(events, cast(Any, stale))

            await booth.expect_none(ErrorMessage, within=1.0)
            session_id = await _call(booth, staff, "r-late")
            await booth.send(HangUp(session_id=session_id))
            assert (await booth.expect(SessionEnded)).session_id == session_id

            # The leftover connection is what the leader closed: a close for it went to
            # node c's stream.
            closes = [
                item
                for _, fields in await _entries(redis, f"{prefix}:to:{c.node_id}")
                for item in json.loads(fields["m"])["items"]
                if item["conn"] == "leftover-1"
            ]
            assert [item["close_code"] for item in closes] == [CLOSE_DUPLICATE]
    finally:
        await redis.aclose()


# --------------------------------------------------------------------------------------
# Many booths and staff at once
# --------------------------------------------------------------------------------------

BOOTHS = 30
EXTRA_STAFF = ("kato", "ito", "yamada")  # with sato and suzuki: five HQ staff members


async def _seed_many(database_url: str) -> dict[str, str]:
    credentials = {f"crowd-{i:02d}": f"crowd-{i:02d}-test-credential" for i in range(BOOTHS)}
    async with open_engine(database_url) as engine:
        sessions = session_factory(engine)
        for i, (booth_id, credential) in enumerate(credentials.items()):
            site = "seiseki" if i % 2 else "tamacenter"
            await upsert_booth(sessions, booth_id, site, f"ブース {i}", credential)
        for staff_id in EXTRA_STAFF:
            await upsert_staff(
                sessions, staff_id, staff_id, staff_id, DEMO_PASSWORD, StaffRole.HQ, None,
                (("shimin", "ja"),),
            )  # fmt: skip
    return credentials


def _check_staff_frames(staff_id: str, frames: list[ServerToStaff]) -> list[str]:
    """At most one offer ringing and at most one session at any time, in the order the
    staff member received them; returns the request ids of their sessions."""
    requests, problems = staff_frame_problems(staff_id, frames)
    assert not problems, problems
    return requests


async def test_simultaneous_requests_over_three_nodes_never_double_book(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    await prepare_database(postgres_url)
    credentials = await _seed_many(postgres_url)
    staff_ids = ["sato", "suzuki", *EXTRA_STAFF]
    async with running_cluster(tmp_path, postgres_url, redis_url) as cluster:
        await cluster.leader()
        nodes = [cluster.nodes[n] for n in NODE_IDS]
        async with contextlib.AsyncExitStack() as stack:
            staff = {
                staff_id: await stack.enter_async_context(
                    connect_staff(nodes[i % 3].ws_url, token(staff_id))
                )
                for i, staff_id in enumerate(staff_ids)
            }
            booths = {
                booth_id: await stack.enter_async_context(
                    connect_booth(nodes[i % 3].ws_url, booth_id, credential)
                )
                for i, (booth_id, credential) in enumerate(credentials.items())
            }
            for client in staff.values():
                await _available(client)
            done = asyncio.Event()
            sessions_started: list[str] = []

            async def work(staff_id: str, client: StaffClient) -> None:
                """Accept every offer at once, hang up, finish the wrap-up, again."""
                while not done.is_set():
                    try:
                        message = await client.receive(0.2)
                    except TimeoutError:
                        continue
                    if isinstance(message, Offer):
                        await client.send(AcceptOffer(offer_id=message.offer_id))
                    elif isinstance(message, CallStarted):
                        sessions_started.append(message.session_id)
                        await client.send(HangUp(session_id=message.session_id))
                    elif isinstance(message, SessionEnded):
                        await client.send(WrapUpDone(session_id=message.session_id, note=""))
                    if len(sessions_started) == BOOTHS:
                        done.set()

            async def request(booth_id: str) -> str:
                booth = booths[booth_id]
                await booth.send(
                    RequestHelp(request_id=f"r-{booth_id}", department="shimin", language="ja")
                )
                started = await booth.expect(CallStarted, within=60)
                ended = await booth.expect(SessionEnded, within=30)
                assert ended.session_id == started.session_id
                assert started.request_id == f"r-{booth_id}"
                return started.session_id

            began = time.monotonic()
            workers = [asyncio.create_task(work(s, c)) for s, c in staff.items()]
            try:
                booth_sessions = await asyncio.gather(*(request(b) for b in booths))
                await asyncio.wait_for(done.wait(), 30)
            finally:
                done.set()
                await asyncio.gather(*workers)
            elapsed = time.monotonic() - began
            print(f"{BOOTHS} requests over 3 nodes, {len(staff)} staff: {elapsed:.2f} s")

            assert len(set(booth_sessions)) == BOOTHS
            assert sorted(sessions_started) == sorted(booth_sessions)
            served: dict[str, list[str]] = {}
            for staff_id, client in staff.items():
                served[staff_id] = _check_staff_frames(staff_id, client.history)
            all_requests = [r for requests in served.values() for r in requests]
            assert sorted(all_requests) == sorted(f"r-{b}" for b in booths)
            assert all(served.values()), served  # every node's staff took calls

    async with open_engine(postgres_url) as engine:
        db_sessions = session_factory(engine)

        async def all_stored() -> list[CallSession] | None:
            async with db_sessions() as db:
                rows = list((await db.scalars(select(CallSession))).all())
            return rows if len(rows) == BOOTHS and all(r.ended_at for r in rows) else None

        rows = await eventually(all_stored, within=10)
        assert sorted(r.request_id for r in rows) == sorted(f"r-{b}" for b in credentials)
        assert sorted(r.id for r in rows) == sorted(booth_sessions)
        by_staff: dict[str, list[CallSession]] = defaultdict(list)
        for row in rows:
            by_staff[row.staff_id].append(row)
        for staff_id, own in by_staff.items():
            own.sort(key=lambda r: r.accepted_at)
            for before, after in itertools.pairwise(own):
                assert before.ended_at is not None
                assert before.ended_at <= after.accepted_at, f"{staff_id}: overlapping sessions"
            assert [r.request_id for r in own] == served[staff_id]
        async with db_sessions() as db:
            events = list((await db.scalars(select(SessionEvent).order_by(SessionEvent.id))).all())
        ringing: dict[str, str] = {}  # request -> staff member its offer rings for
        for event in events:
            if event.kind == "offered":
                assert event.request_id not in ringing, f"{event.request_id} offered twice"
                ringing[event.request_id] = str(event.staff_id)
            elif event.kind in ("accepted", "declined", "missed"):
                assert ringing.pop(event.request_id) == event.staff_id
        assert not ringing


# --------------------------------------------------------------------------------------
# The leader's process is killed
# --------------------------------------------------------------------------------------


async def test_another_node_leads_within_seconds_after_the_leader_is_killed(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    assert await _leader_lock_holders(cluster.database_url) == [
        f"ekichika-signaling leader {leader.node_id}"
    ]
    first_epoch = (await cluster.health(leader) or {})["cluster"]["epoch"]
    others = [n for n in cluster.nodes.values() if n is not leader]
    async with (
        connect_staff(others[0].ws_url, token("suzuki")) as staff,
        connect_booth(others[1].ws_url, "seiseki-1", BOOTH_CREDENTIALS["seiseki-1"]) as booth,
    ):
        await _available(staff)
        # The leader answers for the nodes: a call across them works before the kill.
        session_id = await _call(booth, staff, "r-before")
        await booth.send(HangUp(session_id=session_id))
        await booth.expect(SessionEnded)
        await staff.send(WrapUpDone(session_id=session_id, note=""))
        await staff.expect(StaffStateChanged)
        # The new leader takes over from what is stored (a match is stored before the
        # clients hear of it); the note is written with the next batch: kill the leader
        # once it is there.
        async with open_engine(cluster.database_url) as engine:
            sessions = session_factory(engine)

            async def written() -> bool:
                async with sessions() as db:
                    row = await db.get(CallSession, session_id)
                    request = await db.get(HelpRequest, "r-before")
                    return bool(row and row.note == "" and request and request.status == "matched")

            await eventually(written)

        killed_at = time.monotonic()
        await cluster.kill(leader)

        async def new_leader() -> list[str] | None:
            found = await cluster.leaders()
            return found if found else None

        found = await eventually(new_leader, within=10, interval=0.05)
        took_over = time.monotonic() - killed_at
        print(f"new leader {found} {took_over:.2f} s after SIGKILL of {leader.node_id}")
        assert len(found) == 1 and found[0] != leader.node_id
        assert took_over < 5.0
        successor = cluster.nodes[found[0]]
        assert await _leader_lock_holders(cluster.database_url) == [
            f"ekichika-signaling leader {successor.node_id}"
        ]
        health = await cluster.health(successor)
        assert health is not None and health["cluster"]["epoch"] > first_epoch

        # The surviving nodes announce their connections to the new leader: the staff
        # member is welcomed again in the state their node last told them (available)
        # and the booth's next request is matched through the new leader.
        welcome = await staff.expect(StaffWelcome, within=5)
        assert welcome.state is StaffState.AVAILABLE
        await booth.send(RequestHelp(request_id="r-after", department="shimin", language="ja"))
        offer = await staff.expect(Offer, within=5)
        assert offer.request_id == "r-after"
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        on_booth = await booth.expect(CallStarted)
        on_staff = await staff.expect(CallStarted)
        assert on_booth.session_id == on_staff.session_id
        matched_after = time.monotonic() - killed_at
        print(f"a new request matched {matched_after:.2f} s after the kill")

    async with open_engine(cluster.database_url) as engine:
        sessions = session_factory(engine)

        async def matched() -> bool:
            async with sessions() as db:
                request = await db.get(HelpRequest, "r-after")
                row = await db.get(CallSession, on_booth.session_id)
                return bool(request and request.status == "matched" and row)

        await eventually(matched)


async def test_a_wrap_up_in_progress_when_the_leader_is_killed_is_kept(
    cluster: Cluster,
) -> None:
    """The staff member is writing the note of a call that just ended when the leader
    dies: the new leader keeps them in that wrap-up, and the note they send is stored."""
    leader = await cluster.leader()
    others = [n for n in cluster.nodes.values() if n is not leader]
    async with (
        connect_staff(others[0].ws_url, token("sato")) as staff,
        connect_booth(others[1].ws_url, "seiseki-1", BOOTH_CREDENTIALS["seiseki-1"]) as booth,
    ):
        await _available(staff)
        session_id = await _call(booth, staff, "r-wrap")
        await booth.send(HangUp(session_id=session_id))
        await booth.expect(SessionEnded)
        while (await staff.expect(StaffStateChanged)).state is not StaffState.WRAP_UP:
            pass
        async with open_engine(cluster.database_url) as engine:
            sessions = session_factory(engine)

            async def closed() -> bool:
                async with sessions() as db:
                    row = await db.get(CallSession, session_id)
                    return bool(row and row.ended_at is not None)

            await eventually(closed)
        await cluster.kill(leader)

        welcome = await staff.expect(StaffWelcome, within=10)
        assert (welcome.state, welcome.session_id) == (StaffState.WRAP_UP, session_id)
        await staff.send(SetState(state="available"))
        assert (await staff.expect_error()).code is ErrorCode.OUT_OF_ORDER
        await staff.send(WrapUpDone(session_id=session_id, note="転出届の期限を案内"))
        while (await staff.expect(StaffStateChanged)).state is not StaffState.AVAILABLE:
            pass

    async with open_engine(cluster.database_url) as engine:
        sessions = session_factory(engine)

        async def noted() -> bool:
            async with sessions() as db:
                row = await db.get(CallSession, session_id)
                return bool(row and row.note == "転出届の期限を案内")

        await eventually(noted)
