"""Calls survive the loss of a signaling node (three node processes, real PostgreSQL and
Redis, a real booth agent and a real aiortc staff peer).

A call is set up between the booth agent and an automated staff peer on different nodes;
then a node is killed with SIGKILL. Media goes on (it is peer to peer: stamped frames keep
arriving), the clients whose node died connect to another node from their list and the
session resumes there (same session id) within 5 s, hang-up then ends it on both sides,
and the timeline records the gap (``signaling_lost`` / ``signaling_resumed``). A waiting
request whose booth was on the killed node keeps its place in the queue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from sqlalchemy import select

from bench.staff_peer import AutoStaff, CallRecord
from booth.agent import BoothAgent
from booth.signaling_client import SignalingState
from shared.config import BoothConfig, DeviceConfig
from shared.kiosk_protocol import ChooseLanguage, RequestHelpTouched
from shared.protocol import (
    BoothWelcome,
    EndReason,
    Offer,
    QueueStatus,
    RequestHelp,
    ServerToStaff,
    StaffWelcome,
)
from shared.store import CallSession, SessionEvent, session_factory
from shared.store.seed import upsert_booth
from tests.cluster_support import Cluster, Node, running_cluster, token
from tests.postgres_support import postgres_server, postgres_url
from tests.redis_support import redis_server, redis_url
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    connect_booth,
    eventually,
    open_engine,
    prepare_database,
)

__all__ = ["postgres_server", "postgres_url", "redis_server", "redis_url"]  # fixtures

RESUME_WITHIN_S = 5.0
EXTRA_BOOTH = ("nagayama-1", "nagayama-1-test-credential")


class FailoverStaff(AutoStaff):
    """An automated staff peer that, like the staff page, connects to the next signaling
    node of its list when its connection is lost (the peer connection stays up)."""

    def __init__(self, urls: list[str], staff_id: str) -> None:
        super().__init__(urls[0], lambda: token(staff_id), auto_accept=True)
        self.urls = urls
        self.index = 0
        self.welcomes: list[tuple[float, StaffWelcome]] = []
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FailoverStaff:
        await self.connect()
        return self

    async def connect(self) -> None:
        await super().connect()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._reconnect_loop())

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await super().aclose()

    async def _handle(self, message: ServerToStaff) -> None:
        if isinstance(message, StaffWelcome):
            self.welcomes.append((time.monotonic(), message))
        await super()._handle(message)

    async def _reconnect_loop(self) -> None:
        while True:
            await self.wait_state("disconnected", timeout_s=3600)
            while True:
                self.index = (self.index + 1) % len(self.urls)
                self._ws_url = self.urls[self.index]
                await asyncio.sleep(0.25)
                if self._ws is not None:
                    await self._ws.close()
                if self._http is not None:
                    await self._http.close()
                self.welcome = None
                try:
                    await super().connect()
                    break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    continue


def _booth_urls(first: Node, cluster: Cluster) -> list[str]:
    others = [n for n in cluster.nodes.values() if n is not first]
    return [f"{n.ws_url}/ws/booth" for n in (first, *others)]


def _staff_urls(first: Node, cluster: Cluster) -> list[str]:
    others = [n for n in cluster.nodes.values() if n is not first]
    return [f"{n.ws_url}/ws/staff" for n in (first, *others)]


@contextlib.asynccontextmanager
async def booth_agent(urls: list[str]) -> AsyncIterator[BoothAgent]:
    config = BoothConfig(
        booth_id="seiseki-1",
        credential=BOOTH_CREDENTIALS["seiseki-1"],
        server_urls=urls,
        kiosk_port=0,
        devices=DeviceConfig(video_width=320, video_height=240, video_fps=15),
        ice_host_addresses=["127.0.0.1"],
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        ended_screen_s=0.5,
    )
    agent = BoothAgent(config)
    await agent.start()
    try:
        await eventually(lambda: agent.signaling.state is SignalingState.CONNECTED, within=10)
        yield agent
    finally:
        await agent.aclose()


async def _call(booth: BoothAgent, staff: FailoverStaff) -> CallRecord:
    await staff.set_available()
    await booth.handle_touch(ChooseLanguage(language="ja"))
    await booth.handle_touch(RequestHelpTouched(department="shimin"))
    async with asyncio.timeout(20):
        record = await staff.call_started.get()
        await record.connected.wait()
        await record.first_frame.wait()
    call = booth.call
    assert call is not None and call.session_id == record.session_id
    await eventually(lambda: call.video_frames >= 5, within=10)
    return record


async def _media_flows(booth: BoothAgent, record: CallRecord, during: float) -> None:
    """Both ways, stamped frames keep arriving for ``during`` seconds, in order."""
    call = booth.call
    assert call is not None
    staff_before, booth_before = len(record.stamps), call.video_frames
    stamp_before = record.stamps[-1]
    await asyncio.sleep(during)
    assert len(record.stamps) - staff_before >= during * 5, "booth frames stopped at staff"
    assert call.video_frames - booth_before >= during * 5, "staff frames stopped at booth"
    assert record.stamps[-1] > stamp_before
    assert record.stamps == sorted(record.stamps)


async def _hang_up_and_check(
    cluster: Cluster, booth: BoothAgent, staff: FailoverStaff, record: CallRecord
) -> list[tuple[str, str | None]]:
    await staff.hang_up(record.session_id)
    async with asyncio.timeout(10):
        await record.finished.wait()
    assert record.ended is not None and record.ended.reason is EndReason.HANGUP_STAFF
    await eventually(lambda: booth.call is None or booth.call.finished, within=10)
    async with open_engine(cluster.database_url) as engine:
        sessions = session_factory(engine)

        async def stored() -> CallSession | None:
            async with sessions() as db:
                row = await db.get(CallSession, record.session_id)
            return row if row is not None and row.ended_at is not None else None

        row = await eventually(stored, within=10)
        assert row.outcome == EndReason.HANGUP_STAFF.value
        async with sessions() as db:
            events = (
                await db.execute(
                    select(SessionEvent.kind, SessionEvent.detail)
                    .where(SessionEvent.session_id == record.session_id)
                    .order_by(SessionEvent.at, SessionEvent.id)
                )
            ).all()
    return [(str(kind), detail) for kind, detail in events]


# --------------------------------------------------------------------------------------
# The booth's node dies
# --------------------------------------------------------------------------------------


async def test_the_booth_node_is_killed_during_a_call(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    await prepare_database(postgres_url)
    async with open_engine(postgres_url) as engine:
        booth_id, credential = EXTRA_BOOTH
        await upsert_booth(session_factory(engine), booth_id, "tamacenter", "永山", credential)
    async with running_cluster(tmp_path, postgres_url, redis_url) as cluster:
        leader = await cluster.leader()
        booth_node, staff_node = [n for n in cluster.nodes.values() if n is not leader]
        async with (
            FailoverStaff(_staff_urls(staff_node, cluster), "sato") as staff,
            booth_agent(_booth_urls(booth_node, cluster)) as booth,
        ):
            record = await _call(booth, staff)
            session_id = record.session_id
            # Two requests wait meanwhile: the first one's booth is on the node that dies.
            tamacenter = ("tamacenter-1", BOOTH_CREDENTIALS["tamacenter-1"])
            async with (
                connect_booth(booth_node.ws_url, *tamacenter) as first,
                connect_booth(leader.ws_url, *EXTRA_BOOTH) as second,
            ):
                await first.send(
                    RequestHelp(request_id="r-first", department="shimin", language="ja")
                )
                assert (await first.expect(QueueStatus)).position == 1
                await second.send(
                    RequestHelp(request_id="r-second", department="shimin", language="ja")
                )
                assert (await second.expect(QueueStatus)).position == 2

                killed_at = time.monotonic()
                await cluster.kill(booth_node)
                outage = asyncio.create_task(_media_flows(booth, record, during=1.5))

                def booth_resumed() -> bool:
                    welcome = booth.signaling.welcome
                    return (
                        booth.signaling.connections >= 2
                        and welcome is not None
                        and welcome.session_id == session_id
                    )

                await eventually(booth_resumed, within=RESUME_WITHIN_S, interval=0.02)
                resumed_in = time.monotonic() - killed_at
                print(
                    f"booth resumed on {booth.signaling.server_url}"
                    f" {resumed_in:.2f} s after SIGKILL"
                )
                assert resumed_in < RESUME_WITHIN_S
                await outage
                assert booth.call is not None and booth.call.session_id == session_id
                await _media_flows(booth, record, during=1.0)

            # The waiting booth of the dead node comes back on another node: its request
            # is still first in the queue.
            async with connect_booth(staff_node.ws_url, *tamacenter) as first:
                welcome = first.history[0]
                assert isinstance(welcome, BoothWelcome)
                assert welcome.pending_request_id == "r-first"
                status = await first.expect(QueueStatus)
                assert (status.request_id, status.position) == ("r-first", 1)

                events = await _hang_up_and_check(cluster, booth, staff, record)
                print("timeline:", events)
                kinds = [k for k, _ in events]
                assert ("signaling_lost", "booth") in events
                assert ("signaling_resumed", "booth") in events
                assert kinds.index("signaling_lost") < kinds.index("signaling_resumed")
                assert kinds[-1] == "ended"
                assert not any(d == "staff" for k, d in events if k.startswith("signaling"))
                # The first waiting request is offered next.
                staff.auto_accept = False
                await staff.wrap_up(session_id)
                async with asyncio.timeout(10):
                    while True:
                        _, offer = await staff.offers.get()
                        if offer.request_id != record.request_id:
                            break
                assert isinstance(offer, Offer) and offer.request_id == "r-first"


# --------------------------------------------------------------------------------------
# The leader dies (with the booth and the staff member on it)
# --------------------------------------------------------------------------------------


async def test_the_leader_is_killed_during_a_call(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    await prepare_database(postgres_url)
    async with running_cluster(tmp_path, postgres_url, redis_url) as cluster:
        leader = await cluster.leader()
        async with (
            FailoverStaff(_staff_urls(leader, cluster), "sato") as staff,
            booth_agent(_booth_urls(leader, cluster)) as booth,
        ):
            record = await _call(booth, staff)
            session_id = record.session_id
            killed_at = time.monotonic()
            await cluster.kill(leader)
            outage = asyncio.create_task(_media_flows(booth, record, during=1.5))

            def both_resumed() -> bool:
                welcome = booth.signaling.welcome
                return (
                    booth.signaling.connections >= 2
                    and welcome is not None
                    and welcome.session_id == session_id
                    and len(staff.welcomes) >= 2
                    and staff.welcomes[-1][1].session_id == session_id
                )

            await eventually(both_resumed, within=RESUME_WITHIN_S, interval=0.02)
            resumed_in = time.monotonic() - killed_at
            print(f"booth and staff resumed {resumed_in:.2f} s after SIGKILL of the leader")
            assert resumed_in < RESUME_WITHIN_S
            await outage
            assert staff.welcomes[-1][1].state.value == "in_call"
            new_leader = await cluster.leader()
            assert new_leader is not leader
            await _media_flows(booth, record, during=1.0)

            events = await _hang_up_and_check(cluster, booth, staff, record)
            print("timeline:", events)
            for side in ("booth", "staff"):
                assert ("signaling_lost", side) in events
                assert ("signaling_resumed", side) in events
            assert events[-1][0] == "ended"
