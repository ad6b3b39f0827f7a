"""Signaling nodes live through a restart of Redis.

Three ``python -m signaling`` nodes on real PostgreSQL and a Redis server of this test's
own, which is stopped during a call and started again empty (no persistence, as a Redis
without a disk would come back). Messages the clients send while Redis is away reach
their peer once it is back; the call goes on in the same session and can be ended; a
request that was waiting keeps its place; one node leads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from shared.protocol import (
    AcceptOffer,
    CallStarted,
    HangUp,
    IcePayload,
    Offer,
    QueueStatus,
    Relay,
    RequestHelp,
    SdpPayload,
    ServiceNotice,
    SessionEnded,
    SetState,
    StaffHello,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WrapUpDone,
)
from shared.store import CallSession, HelpRequest, session_factory
from tests.cluster_support import Cluster, running_cluster, token
from tests.postgres_support import postgres_server, postgres_url
from tests.redis_support import RedisServer, own_redis_server
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    StaffClient,
    connect_booth,
    connect_staff,
    eventually,
    open_engine,
    open_staff,
    prepare_database,
)

__all__ = ["own_redis_server", "postgres_server", "postgres_url"]  # fixtures

REDIS_DOWN_S = 3.0
BACK_WITHIN_S = 10.0


@pytest.fixture
async def cluster(
    tmp_path: Path, postgres_url: str, own_redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    await prepare_database(postgres_url)
    async with running_cluster(tmp_path, postgres_url, own_redis_server.url) as running:
        yield running


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def _until_state(staff: StaffClient, state: StaffState, within: float = 5.0) -> None:
    while (await staff.expect(StaffStateChanged, within=within)).state is not state:
        pass


async def test_a_call_goes_on_through_a_redis_restart(
    cluster: Cluster, own_redis_server: RedisServer
) -> None:
    leader = await cluster.leader()
    others = [n for n in cluster.nodes.values() if n is not leader]
    seiseki = ("seiseki-1", BOOTH_CREDENTIALS["seiseki-1"])
    tamacenter = ("tamacenter-1", BOOTH_CREDENTIALS["tamacenter-1"])
    async with (
        connect_staff(others[0].ws_url, token("sato")) as staff,
        connect_booth(others[1].ws_url, *seiseki) as booth,
        connect_booth(leader.ws_url, *tamacenter) as waiting,
    ):
        await staff.send(SetState(state="available"))
        await _until_state(staff, StaffState.AVAILABLE)
        await booth.send(RequestHelp(request_id="r-call", department="shimin", language="ja"))
        offer = await staff.expect(Offer)
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        started = await booth.expect(CallStarted)
        session_id = started.session_id
        await waiting.send(RequestHelp(request_id="r-wait", department="shimin", language="ja"))
        assert (await waiting.expect(QueueStatus)).request_id == "r-wait"

        own_redis_server.halt()
        stopped_at = time.monotonic()
        # Sent while Redis is away: kept by the node and passed on when it is back.
        sdp = SdpPayload(sdp_type="offer", sdp="v=0\r\n" + "a=x\r\n" * 100, generation=1)
        await booth.send(Relay(session_id=session_id, payload=sdp))
        await asyncio.sleep(REDIS_DOWN_S)
        # /healthz tells the operator, and the booth's node keeps its events meanwhile.
        health = await cluster.health(others[1])
        assert health is not None
        assert health["cluster"]["redis"] == "unreachable"
        assert health["cluster"]["redis_unreachable_s"] >= REDIS_DOWN_S / 2
        assert health["cluster"]["events_queued"] >= 1
        metrics = await _metrics(others[1].port)
        assert "ekichika_signaling_cluster_redis_up 0.0" in metrics
        assert "ekichika_signaling_cluster_events_queued 0.0" not in metrics
        # Staff on the nodes were told that what they send waits, and so is a staff member
        # who signs in meanwhile (their welcome comes from the leader, once Redis is back).
        assert (await staff.expect(ServiceNotice)).state == "degraded"
        late = await open_staff(others[1].ws_url)
        await late.send(StaffHello(token=token("suzuki")))
        assert (await late.expect(ServiceNotice)).state == "degraded"
        own_redis_server.start()
        back_at = time.monotonic()

        relayed: Relay | None = None
        told_ok = False
        while relayed is None or not told_ok:  # the relay and the all-clear, in any order
            message = await staff.receive(within=BACK_WITHIN_S)
            if isinstance(message, Relay):
                relayed = message
                through = time.monotonic() - back_at
            elif isinstance(message, ServiceNotice):
                assert message.state == "ok"
                told_ok = True
        print(
            f"relay sent {REDIS_DOWN_S:.0f} s before Redis came back arrived {through:.2f} s after"
        )
        assert (relayed.session_id, relayed.payload) == (session_id, sdp)
        seen: dict[str, Any] = {}
        while len(seen) < 2:  # its welcome and the all-clear, in any order
            message = await late.receive(within=BACK_WITHIN_S)
            if isinstance(message, StaffWelcome | ServiceNotice):
                seen[message.type] = message
        assert seen["welcome"].staff.staff_id == "suzuki"
        assert seen["service"].state == "ok"
        await late.aclose()
        ice = IcePayload(candidate="candidate:1 1 udp 1 127.0.0.1 5000 typ host", sdp_mid="0")
        await staff.send(Relay(session_id=session_id, payload=ice))
        assert (await booth.expect(Relay, within=BACK_WITHIN_S)).payload == ice
        assert len(await cluster.leaders()) == 1

        async def redis_ok() -> bool:
            health = await cluster.health(others[1])
            return bool(health and health["cluster"]["redis"] == "ok")

        await eventually(redis_ok)
        assert (await cluster.health(others[1]) or {})["cluster"]["events_queued"] == 0
        assert "ekichika_signaling_cluster_redis_up 1.0" in await _metrics(others[1].port)

        await staff.send(HangUp(session_id=session_id))
        ended = await booth.expect(SessionEnded, within=BACK_WITHIN_S)
        assert ended.session_id == session_id
        await _until_state(staff, StaffState.WRAP_UP, within=BACK_WITHIN_S)
        await staff.send(WrapUpDone(session_id=session_id, note="Redis 再起動中も通話継続"))
        # The waiting request kept its place: it is offered next.
        offer = await staff.expect(Offer, within=BACK_WITHIN_S)
        assert offer.request_id == "r-wait"
        print(f"next offer {time.monotonic() - stopped_at:.2f} s after Redis stopped")

    async with open_engine(cluster.database_url) as engine:
        sessions = session_factory(engine)

        async def stored() -> bool:
            async with sessions() as db:
                row = await db.get(CallSession, session_id)
                return bool(row and row.note == "Redis 再起動中も通話継続")

        await eventually(stored)
        async with sessions() as db:
            rows = list(await db.scalars(select(CallSession)))
            request = await db.get(HelpRequest, "r-call")
    assert [r.id for r in rows] == [session_id]
    assert rows[0].outcome == "hangup_staff"
    assert request is not None and request.status == "matched"
