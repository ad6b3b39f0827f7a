"""Recovery benchmark: clients resume their session on another signaling node after their
node is killed.

Three ``python -m signaling`` nodes on a throwaway PostgreSQL server and Redis server. Per
round: a booth (the booth's own signaling client, with every node's URL) and a staff member
(a client that, like the staff page, tries the next URL) are in a session, both connected
to the same node; that node is killed with SIGKILL (every other round it is the leader);
the time until both have been welcomed again on other nodes with the same session id is
one sample. The session is then hung up, the node restarted, and the next round begins.

Then (``--outages``, default 10 of ``--outage-s`` 10 s) the media part of
:mod:`bench.media_recovery`: the booth's line goes down completely and comes back; the
time to the first stamped frame of the renegotiated connection at staff.

Keys: ``node_failover_p50_s``, ``node_failover_p95_s`` (target ≤ 5 s), ``node_failover_max_s``,
``leader_kills``, ``kills``, ``recovery_p50_s``, ``recovery_p95_s`` (target ≤ 5 s), ``media``
(the whole media_recovery result), ``meets_target`` (both)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench._load import percentile, rounded
from bench.media_recovery import Params as MediaParams
from bench.media_recovery import run as run_media_recovery
from booth.signaling_client import BoothSignalingClient
from shared import wire
from shared.config import BoothConfig
from shared.protocol import (
    AcceptOffer,
    BoothWelcome,
    CallStarted,
    HangUp,
    Offer,
    RequestHelp,
    ServerToBooth,
    ServerToStaff,
    SetState,
    StaffHello,
    StaffWelcome,
    WrapUpDone,
)
from tests.cluster_support import Cluster, Node, running_cluster, token
from tests.postgres_support import PostgresServer
from tests.redis_support import RedisServer
from tests.signaling_support import BOOTH_CREDENTIALS, eventually, prepare_database

log = logging.getLogger("bench.recovery")

TARGET_S: Final = 5.0


class BoothSide:
    """The booth's signaling client's handler: keeps every welcome and message."""

    def __init__(self) -> None:
        self.welcomes: list[tuple[float, BoothWelcome]] = []
        self.inbox: asyncio.Queue[ServerToBooth] = asyncio.Queue()

    async def on_welcome(self, welcome: BoothWelcome) -> None:
        self.welcomes.append((time.monotonic(), welcome))

    async def on_message(self, message: ServerToBooth) -> None:
        self.inbox.put_nowait(message)

    async def on_disconnected(self, reason: str) -> None:
        pass


class StaffSide:
    """A staff member who connects to the next URL whenever the connection is lost."""

    def __init__(self, urls: list[str], staff_id: str) -> None:
        self.urls = urls
        self.staff_id = staff_id
        self.index = 0
        self.welcomes: list[tuple[float, StaffWelcome]] = []
        self.inbox: asyncio.Queue[ServerToStaff] = asyncio.Queue()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def send(self, message: Any) -> None:
        assert self._ws is not None
        await self._ws.send_str(wire.encode(message))

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.ws_connect(self.urls[self.index], heartbeat=5) as ws:
                        self._ws = ws
                        await ws.send_str(wire.encode(StaffHello(token=token(self.staff_id))))
                        async for frame in ws:
                            if frame.type is not aiohttp.WSMsgType.TEXT:
                                continue
                            message = wire.decode(wire.server_to_staff, frame.data)
                            if isinstance(message, StaffWelcome):
                                self.welcomes.append((time.monotonic(), message))
                            self.inbox.put_nowait(message)
                except (aiohttp.ClientError, OSError):
                    pass
                self._ws = None
                self.index = (self.index + 1) % len(self.urls)
                await asyncio.sleep(0.25)


async def _expect(inbox: asyncio.Queue[Any], kind: type, within: float = 10.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            message = await inbox.get()
            if isinstance(message, kind):
                return message


async def _round(cluster: Cluster, target: Node, number: int) -> float:
    others = [n for n in cluster.nodes.values() if n is not target]
    order = [target, *others]
    handler = BoothSide()
    booth = BoothSignalingClient(
        BoothConfig(
            booth_id="seiseki-1",
            credential=BOOTH_CREDENTIALS["seiseki-1"],
            server_urls=[f"{n.ws_url}/ws/booth" for n in order],
            reconnect_min_s=0.5,
            reconnect_max_s=2.0,
        ),
        handler,
    )
    staff = StaffSide([f"{n.ws_url}/ws/staff" for n in order], "sato")
    await staff.start()
    await booth.start()
    try:
        await booth.wait_connected(10)
        await _expect(staff.inbox, StaffWelcome)
        await staff.send(SetState(state="available"))
        await booth.request_help(
            RequestHelp(request_id=f"r-recovery-{number}", department="shimin", language="ja")
        )
        offer = await _expect(staff.inbox, Offer)
        await staff.send(AcceptOffer(offer_id=offer.offer_id))
        started = await _expect(handler.inbox, CallStarted)
        session_id = started.session_id
        await _expect(staff.inbox, CallStarted)

        killed_at = time.monotonic()
        await cluster.kill(target)

        def resumed_at() -> float | None:
            times = []
            for welcomes in (handler.welcomes, staff.welcomes):
                later = [t for t, w in welcomes if t > killed_at and w.session_id == session_id]
                if not later:
                    return None
                times.append(later[0])
            return max(times)

        done: float = await eventually(resumed_at, within=30, interval=0.01)
        sample = done - killed_at
        await staff.send(HangUp(session_id=session_id))
        await staff.send(WrapUpDone(session_id=session_id, note=""))
        return sample
    finally:
        await booth.aclose()
        await staff.aclose()


async def run(kills: int, workdir: Path) -> dict[str, Any]:
    postgres, redis = PostgresServer(), RedisServer()
    postgres.start()
    redis.start()
    try:
        database_url = postgres.create_database()
        await prepare_database(database_url)
        samples: list[float] = []
        leader_kills = 0
        async with running_cluster(workdir, database_url, redis.url) as cluster:
            for number in range(kills):
                leader = await cluster.leader(within=20)
                if number % 2 == 0:
                    target = leader
                    leader_kills += 1
                else:
                    target = next(n for n in cluster.nodes.values() if n is not leader)
                sample = await _round(cluster, target, number)
                samples.append(sample)
                log.info(
                    "kill %d (%s node %s): resumed in %.2f s",
                    number + 1,
                    "leader" if target is leader else "non-leader",
                    target.node_id,
                    sample,
                )
                await cluster.start_node(target.node_id)
                await cluster.wait_serving(cluster.nodes[target.node_id])
    finally:
        redis.stop()
        postgres.stop()
    p95 = percentile(samples, 95)
    return {
        "scenario": "recovery",
        "kills": len(samples),
        "leader_kills": leader_kills,
        "node_failover_p50_s": rounded(percentile(samples, 50), 2),
        "node_failover_p95_s": rounded(p95, 2),
        "node_failover_max_s": rounded(max(samples), 2) if samples else None,
        "target_s": TARGET_S,
        "meets_target": bool(samples) and p95 <= TARGET_S,
    }


async def run_both(kills: int, media: MediaParams, workdir: Path) -> dict[str, Any]:
    """Node failover (this module), then media recovery after line outages
    (:mod:`bench.media_recovery`), in one JSON object."""
    result: dict[str, Any] = (
        await run(kills, workdir / "failover") if kills > 0 else {"scenario": "recovery"}
    )
    if media.outages > 0:
        outcome = await run_media_recovery(media, workdir / "media")
        result["media"] = outcome
        result["recovery_p95_s"] = outcome["recovery_p95_s"]
        result["recovery_p50_s"] = outcome["recovery_p50_s"]
        result["meets_target"] = bool(result.get("meets_target", True)) and bool(
            outcome["meets_target"]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    p.add_argument("--kills", type=int, default=10, help="signaling nodes killed (0: none)")
    p.add_argument("--outages", type=int, default=10, help="booth line outages (0: none)")
    p.add_argument("--outage-s", type=float, default=10.0, help="length of each outage")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    media = MediaParams(args.outages, args.outage_s, 3.0, "station", 0)
    with tempfile.TemporaryDirectory(prefix="ekichika-bench-") as tmp:
        (Path(tmp) / "failover").mkdir()
        (Path(tmp) / "media").mkdir()
        result = asyncio.run(run_both(args.kills, media, Path(tmp)))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
