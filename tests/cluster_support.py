"""Several ``python -m signaling`` node processes on one database (and, in cluster mode,
one Redis server), for tests and benchmarks.

Three nodes (a, b, c) on a PostgreSQL database and a Redis server, with the shrunk test
timings and :data:`tests.signaling_support.TOKEN_SECRET`::

    async with running_cluster(tmp_path, postgres_url, redis_url) as cluster:
        leader = await cluster.leader()
        url = cluster.nodes["b"].ws_url          # "ws://127.0.0.1:PORT"

Other node ids (one node, say) and other settings (the server's defaults, another token
secret) are arguments of :func:`running_cluster`; ``redis_url=""`` runs each node on its
own (one node on SQLite, as the single-process server). Every node is a child process,
logging to ``<directory>/node-<id>.log``, stopped by its PID.

:func:`staff_frame_problems` checks the frames one staff client received for double
bookings (two offers ringing, or two sessions, at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from shared.protocol import (
    CallStarted,
    Offer,
    OfferWithdrawn,
    ServerToStaff,
    SessionEnded,
    StaffWelcome,
)
from tests.postgres_support import free_port
from tests.signaling_support import TEST_TIMINGS, TOKEN_SECRET, StaffTokenFactory, eventually

REPO = Path(__file__).resolve().parent.parent
NODE_IDS: Final = ("a", "b", "c")
# What the cluster tests run their nodes with: short timings, the tests' token secret, a
# quick take-over of a lost leadership.
TEST_NODE_SETTINGS: Final[dict[str, Any]] = {
    **TEST_TIMINGS,
    "token_secret": TOKEN_SECRET,
    "leader_retry_s": 0.25,
    "node_timeout_s": 3.0,
}
token = StaffTokenFactory(TOKEN_SECRET)


@dataclass
class Node:
    node_id: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Cluster:
    directory: Path
    database_url: str
    redis_url: str
    settings: Mapping[str, Any] = field(default_factory=lambda: dict(TEST_NODE_SETTINGS))
    nodes: dict[str, Node] = field(default_factory=dict)

    async def start_node(self, node_id: str) -> Node:
        port = free_port()
        settings: dict[str, Any] = {
            **self.settings,
            "host": "127.0.0.1",
            "port": port,
            "node_id": node_id,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "auto_migrate": False,
        }
        path = self.directory / f"node-{node_id}.toml"
        path.write_text(
            "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()), encoding="utf-8"
        )
        log_path = self.directory / f"node-{node_id}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EKICHIKA_")}
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signaling", "--config", str(path),
                cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file,
            )  # fmt: skip
        node = self.nodes[node_id] = Node(node_id, port, log_path, process)
        return node

    async def health(self, node: Node) -> dict[str, Any] | None:
        if not node.alive:
            return None
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{node.port}/healthz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp,
            ):
                if resp.status != 200:
                    return None
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_serving(self, node: Node, within: float = 30.0) -> None:
        async def serving() -> bool:
            assert node.alive, self.log(node)
            return await self.health(node) is not None

        await eventually(serving, within=within, interval=0.1)

    async def leaders(self) -> list[str]:
        found = []
        for node in self.nodes.values():
            health = await self.health(node)
            if health is not None and health["cluster"]["leader"]:
                found.append(node.node_id)
        return found

    async def leader(self, within: float = 10.0) -> Node:
        async def one() -> list[str] | None:
            found = await self.leaders()
            return found if len(found) == 1 else None

        found = await eventually(one, within=within, interval=0.05)
        return self.nodes[found[0]]

    def log(self, node: Node) -> str:
        return node.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    async def kill(self, node: Node) -> None:
        node.process.send_signal(signal.SIGKILL)  # by its PID
        await node.process.wait()

    async def stop(self, node: Node) -> None:
        if node.alive:
            node.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(node.process.wait(), 15)
            except TimeoutError:
                print(
                    f"--- node {node.node_id} did not stop within 15 s of SIGTERM; killed ---\n"
                    f"{self.log(node)}",
                    file=sys.stderr,
                )
                node.process.send_signal(signal.SIGKILL)
                await node.process.wait()
            else:
                log = self.log(node)
                if "did not stop within" in log:  # signaling.cluster left a task behind
                    print(f"--- node {node.node_id}: slow stop ---\n{log}", file=sys.stderr)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.asynccontextmanager
async def running_cluster(
    directory: Path,
    database_url: str,
    redis: str,
    *,
    node_ids: Sequence[str] = NODE_IDS,
    settings: Mapping[str, Any] = TEST_NODE_SETTINGS,
) -> AsyncIterator[Cluster]:
    """Nodes ``node_ids`` started and serving (``/healthz`` answers); stopped on exit.
    On an error the tail of every node's log goes to stderr."""
    cluster = Cluster(directory, database_url, redis, dict(settings))
    try:
        for node_id in node_ids:
            await cluster.start_node(node_id)
        for node in cluster.nodes.values():
            await cluster.wait_serving(node)
        yield cluster
    except BaseException:
        for node in cluster.nodes.values():
            print(f"--- node {node.node_id} ---\n{cluster.log(node)}", file=sys.stderr)
        raise
    finally:
        await asyncio.gather(*(cluster.stop(node) for node in cluster.nodes.values()))


def staff_frame_problems(
    staff_id: str, frames: Sequence[ServerToStaff]
) -> tuple[list[str], list[str]]:
    """Walk the frames one staff client received, in order: at most one offer may ring and
    at most one session may be open at any time. Returns the request ids of their sessions
    and a description of every frame that broke the rule (empty: no double booking).
    A welcome may name the session the staff member is in; ``call_started`` repeated for
    the open session (after a reconnect, before its media connected) is no new session."""
    ringing: Offer | None = None
    in_session: str | None = None
    started: set[str] = set()
    requests: list[str] = []
    problems: list[str] = []
    for frame in frames:
        if isinstance(frame, StaffWelcome):
            if frame.session_id is not None:
                in_session = frame.session_id
        elif isinstance(frame, CallStarted) and frame.session_id in started:
            if frame.session_id != in_session:
                problems.append(f"{staff_id}: call_started again for a closed session: {frame}")
        elif isinstance(frame, CallStarted) and frame.session_id == in_session:
            # named by a welcome before its call_started came (a leader died in between)
            started.add(frame.session_id)
            ringing = None
            requests.append(frame.request_id)
        elif isinstance(frame, Offer):
            if ringing is not None:
                problems.append(f"{staff_id}: a second offer while one rings: {frame}")
            if in_session is not None:
                problems.append(f"{staff_id}: an offer during session {in_session}: {frame}")
            ringing = frame
        elif isinstance(frame, OfferWithdrawn):
            if ringing is None or frame.offer_id != ringing.offer_id:
                problems.append(f"{staff_id}: withdrawn an offer that was not ringing: {frame}")
            ringing = None
        elif isinstance(frame, CallStarted):
            if ringing is None or frame.request_id != ringing.request_id:
                problems.append(f"{staff_id}: a call without its offer ringing: {frame}")
            if in_session is not None:
                problems.append(f"{staff_id}: a second session during {in_session}: {frame}")
            ringing, in_session = None, frame.session_id
            started.add(frame.session_id)
            requests.append(frame.request_id)
        elif isinstance(frame, SessionEnded):
            if frame.session_id != in_session:
                problems.append(f"{staff_id}: the end of a session not open: {frame}")
            in_session = None
    return requests, problems
