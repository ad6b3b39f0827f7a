"""Scale-out benchmark: the matching load on one node with SQLite, one node with PostgreSQL
and Redis, and three nodes with PostgreSQL and Redis.

The same population (booths, HQ staff and their skills, as in :mod:`bench.matching`) and
the same load (:func:`bench.matching.run_matching_load`: a steady rate of help requests,
staff who accept at once, hang up after ``--hold`` and finish wrap-up) run against three
configurations, one after the other, each on a fresh database:

* ``sqlite_1node``: one ``python -m signaling`` node on a SQLite file;
* ``pg_redis_1node``: one node in cluster mode on a throwaway PostgreSQL server and Redis;
* ``pg_redis_3nodes``: three nodes on them; booths and staff are spread round robin.

The nodes are started by :func:`tests.cluster_support.running_cluster` with the server's
default settings. Double assignments are counted from the frames every staff client
received and, after the nodes have stopped, from the stored sessions and their timeline.

Prints one JSON object on stdout (keys in bench/README.md); logs go to stderr::

    .venv/bin/python -m bench.scale_out --booths 300 --staff 60 --rate 30 --duration 15
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import secrets
import shutil
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from sqlalchemy import select

from bench._load import raise_fd_limit, rounded, run_load_benchmark
from bench.matching import (
    MatchingResult,
    Params,
    Population,
    issue_tokens,
    load_figures,
    make_population,
    run_matching_load,
    write_population,
)
from shared.protocol import CallStarted, Offer, OfferWithdrawn, ServerToStaff
from shared.store import CallSession, SessionEvent, session_factory
from tests.cluster_support import NODE_IDS, running_cluster, staff_frame_problems
from tests.postgres_support import PostgresServer
from tests.redis_support import RedisServer
from tests.signaling_support import open_engine

log = logging.getLogger("bench.scale_out")

SCENARIO: Final = "scale_out"
SQLITE_1NODE: Final = "sqlite_1node"
PG_1NODE: Final = "pg_redis_1node"
PG_3NODES: Final = "pg_redis_3nodes"
# Timeline events that end an offer (the next offer of the request may follow).
_OFFER_ENDS: Final = frozenset({"accepted", "declined", "missed", "cancelled", "abandoned"})

StaffFrames = Mapping[str, Sequence[tuple[float, ServerToStaff]]]


# --------------------------------------------------------------------------------------
# Double assignments
# --------------------------------------------------------------------------------------


def requests_offered_at_once(frames: StaffFrames) -> list[str]:
    """Requests whose offers rang for two staff members at the same time, by the times the
    staff clients read them: an offer rings from its ``offer`` frame until its
    ``offer_withdrawn`` or the ``call_started`` of its request (or the end of the run)."""
    ringing: dict[str, list[tuple[float, float, str]]] = defaultdict(list)  # request → spans
    for staff_id, received in frames.items():
        open_offers: dict[str, tuple[float, str]] = {}  # offer id → (rang at, request id)
        for at, frame in received:
            if isinstance(frame, Offer):
                open_offers[frame.offer_id] = (at, frame.request_id)
            elif isinstance(frame, OfferWithdrawn | CallStarted):
                for offer_id, (rang_at, request_id) in list(open_offers.items()):
                    if (isinstance(frame, OfferWithdrawn) and offer_id == frame.offer_id) or (
                        isinstance(frame, CallStarted) and request_id == frame.request_id
                    ):
                        ringing[request_id].append((rang_at, at, staff_id))
                        del open_offers[offer_id]
        for rang_at, request_id in open_offers.values():
            ringing[request_id].append((rang_at, math.inf, staff_id))
    found = []
    for request_id, spans in ringing.items():
        spans.sort()
        until, holder = -math.inf, ""
        for start, end, staff_id in spans:
            if start < until and staff_id != holder:
                found.append(request_id)
                break
            if end > until:
                until, holder = end, staff_id
    return sorted(found)


def frame_double_assignments(frames: StaffFrames) -> dict[str, Any]:
    """What the staff clients saw: a second offer or call while one was held (per staff
    member, :func:`tests.cluster_support.staff_frame_problems`), and requests offered to
    two staff members at once."""
    problems: list[str] = []
    for staff_id, received in sorted(frames.items()):
        problems += staff_frame_problems(staff_id, [frame for _, frame in received])[1]
    at_once = requests_offered_at_once(frames)
    return {
        "staff_double_booked_frames": len(problems),
        "requests_offered_at_once": len(at_once),
        "examples": [*problems[:3], *(f"{r}: offered to two staff at once" for r in at_once[:3])],
    }


async def stored_double_assignments(database_url: str) -> dict[str, Any]:
    """What the database says after the run: one staff member's sessions that overlap, a
    request with more than one session row, a request offered again before its offer
    ended (in the timeline)."""
    async with open_engine(database_url) as engine:
        sessions = session_factory(engine)
        async with sessions() as db:
            rows = list((await db.scalars(select(CallSession))).all())
            events = list((await db.scalars(select(SessionEvent).order_by(SessionEvent.id))).all())
    examples: list[str] = []
    by_staff: dict[str, list[CallSession]] = defaultdict(list)
    for row in rows:
        by_staff[row.staff_id].append(row)
    overlapping = 0
    for staff_id, own in sorted(by_staff.items()):
        own.sort(key=lambda r: r.accepted_at)
        for before, after in itertools.pairwise(own):
            if before.ended_at is None or before.ended_at > after.accepted_at:
                overlapping += 1
                examples.append(f"{staff_id}: session {after.id} began during {before.id}")
    per_request = Counter(row.request_id for row in rows)
    several = [r for r, n in per_request.items() if n > 1]
    examples += [f"{r}: {per_request[r]} sessions" for r in several[:3]]
    offered_twice = 0
    ringing: dict[str, str | None] = {}  # request → the staff member its offer rings for
    for event in events:
        if event.kind == "offered":
            if event.request_id in ringing:
                offered_twice += 1
                examples.append(f"{event.request_id}: offered again while ringing")
            ringing[event.request_id] = event.staff_id
        elif event.kind in _OFFER_ENDS:
            ringing.pop(event.request_id, None)
    return {
        "stored_sessions": len(rows),
        "overlapping_sessions": overlapping,
        "requests_with_several_sessions": len(several),
        "requests_offered_twice": offered_twice,
        "examples": examples[:6],
    }


# --------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------


async def run_configuration(
    name: str,
    params: Params,
    population: Population,
    tokens: dict[str, str],
    directory: Path,
    database_url: str,
    redis_url: str,
    node_ids: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    await write_population(database_url, population)
    log.info("%s: database ready, starting %d node(s)", name, len(node_ids))
    async with running_cluster(
        directory, database_url, redis_url, node_ids=node_ids, settings=settings
    ) as cluster:
        nodes = [cluster.nodes[n] for n in node_ids]
        for node in nodes:
            log.info("started signaling node %s of %s (pid %d)", node.node_id, name, node.pid)
        if redis_url:
            leader = await cluster.leader(within=30)
            log.info("%s: node %s leads", name, leader.node_id)
        result: MatchingResult = await run_matching_load(
            params,
            population,
            tokens,
            [node.ws_url for node in nodes],
            [node.pid for node in nodes],
            record_staff_frames=True,
            settle_s=params.hold + 1.0,
        )
    # The nodes have stopped and written their queued records (a node that does not exit
    # within 15 s of SIGTERM is killed: what it had not written yet is lost).
    killed = [n.node_id for n in nodes if n.process.returncode == -signal.SIGKILL]
    if killed:
        log.warning("%s: node(s) %s did not stop on SIGTERM and were killed", name, killed)
    stored = await stored_double_assignments(database_url)
    seen = frame_double_assignments(result.tally.staff_frames or {})
    double = (
        seen["staff_double_booked_frames"]
        + seen["requests_offered_at_once"]
        + stored["overlapping_sessions"]
        + stored["requests_with_several_sessions"]
        + stored["requests_offered_twice"]
    )
    figures = load_figures(params, result.tally)
    log.info(
        "%s: %d requests, %d matched, p50 %s ms, p99 %s ms, %s matches/s, %d double assignments",
        name,
        figures["requests"],
        figures["matches"],
        figures["request_to_offer_p50_ms"],
        figures["request_to_offer_p99_ms"],
        figures["matches_per_s"],
        double,
    )
    t = result.tally
    return {
        "nodes": len(node_ids),
        "database": database_url.split("+", 1)[0],
        "redis": bool(redis_url),
        **figures,
        "stored_sessions": stored["stored_sessions"],
        "double_assignments": double,
        "staff_double_booked_frames": seen["staff_double_booked_frames"],
        "requests_offered_at_once": seen["requests_offered_at_once"],
        "overlapping_sessions": stored["overlapping_sessions"],
        "requests_with_several_sessions": stored["requests_with_several_sessions"],
        "requests_offered_twice": stored["requests_offered_twice"],
        "double_assignment_examples": [*seen["examples"], *stored["examples"]],
        "server_cpu_percent": rounded(result.server_cpu_percent, 1),
        "server_rss_mb": rounded(result.server_rss_mb, 1),
        "loadgen_cpu_percent": rounded(result.loadgen_cpu_percent, 1),
        "connect_all_s": rounded(result.connect_s, 2),
        "nodes_killed_at_stop": len(killed),
        "errors": dict(sorted(t.errors.items())),
        "offers_withdrawn": dict(sorted(t.withdrawn.items())),
        "requests_closed": dict(sorted(t.closed.items())),
    }


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _directories(workdir: Path) -> dict[str, Path]:
    """A directory for each configuration's node configs and logs."""
    made = {name: workdir / name for name in (SQLITE_1NODE, PG_1NODE, PG_3NODES)}
    for directory in made.values():
        directory.mkdir()
    return made


def missing_programs() -> list[str]:
    return [p for p in ("initdb", "pg_ctl", "psql", "redis-server") if shutil.which(p) is None]


def _ratio(configs: Mapping[str, dict[str, Any]], key: str, name: str) -> float | None:
    base, other = configs[SQLITE_1NODE].get(key), configs[name].get(key)
    if not base or other is None:
        return None
    return rounded(other / base, 3)


async def run(params: Params, workdir: Path) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    needed = 2 * (params.booths + params.staff) + 512
    if fd_limit < needed:
        log.warning("file-descriptor limit %d is below the %d this run needs", fd_limit, needed)
    population = make_population(params.booths, params.staff)
    token_secret = secrets.token_urlsafe(32)
    tokens = issue_tokens(population, token_secret, params.timeout + 3600)
    # The server's defaults, as in production; only the secret is the benchmark's own.
    settings = {"token_secret": token_secret}
    configs: dict[str, dict[str, Any]] = {}
    directories = _directories(workdir)

    configs[SQLITE_1NODE] = await run_configuration(
        SQLITE_1NODE, params, population, tokens, directories[SQLITE_1NODE],
        f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}", "", NODE_IDS[:1], settings,
    )  # fmt: skip

    postgres, redis = PostgresServer(), RedisServer()
    try:
        postgres.start()
        log.info("started PostgreSQL (pid %d)", postgres.pid)
        redis.start()
        assert redis.process is not None
        log.info("started Redis (pid %d)", redis.process.pid)
        for name, node_ids in ((PG_1NODE, NODE_IDS[:1]), (PG_3NODES, NODE_IDS)):
            if redis.command("FLUSHALL") != b"+OK\r\n":
                raise RuntimeError("Redis did not answer FLUSHALL")
            configs[name] = await run_configuration(
                name, params, population, tokens, directories[name],
                postgres.create_database(), redis.url, node_ids, settings,
            )  # fmt: skip
    finally:
        redis.stop()
        postgres.stop()

    double = sum(c["double_assignments"] for c in configs.values())
    all_matched = all(c["requests"] > 0 and c["unmatched"] == 0 for c in configs.values())
    return {
        "scenario": SCENARIO,
        "booths": params.booths,
        "staff": params.staff,
        "rate_per_s": params.rate,
        "duration_s": params.duration,
        "hold_s": params.hold,
        "seed": params.seed,
        "configurations": configs,
        "ratio_p99_pg_vs_sqlite": _ratio(configs, "request_to_offer_p99_ms", PG_1NODE),
        "ratio_p99_3nodes_vs_sqlite": _ratio(configs, "request_to_offer_p99_ms", PG_3NODES),
        "ratio_matches_per_s_pg_vs_sqlite": _ratio(configs, "matches_per_s", PG_1NODE),
        "ratio_matches_per_s_3nodes_vs_sqlite": _ratio(configs, "matches_per_s", PG_3NODES),
        "double_assignments": double,
        "cpu_count": os.cpu_count(),
        "meets_target": double == 0 and all_matched,
    }


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Params:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale_out", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--booths", type=int, default=300, help="booth connections (default 300)")
    p.add_argument("--staff", type=int, default=60, help="HQ staff connections (default 60)")
    p.add_argument("--rate", type=float, default=30.0, help="help requests per second (30)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of requests, each (15)")
    p.add_argument("--hold", type=float, default=0.5, help="seconds a call lasts (0.5)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for late matches")
    p.add_argument("--connect-concurrency", type=int, default=50, help="connections opened at once")
    p.add_argument("--timeout", type=float, help="hard limit for the whole run, in seconds")
    p.add_argument("--seed", type=int, default=1, help="random seed for the request mix")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=a.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    if a.booths < 1 or a.staff < 1 or a.rate <= 0 or a.duration <= 0:
        p.error("--booths, --staff, --rate and --duration must be positive")
    if missing := missing_programs():
        p.error(f"needs PostgreSQL and Redis server programs; not found: {', '.join(missing)}")
    timeout = a.timeout if a.timeout is not None else 240 + 3 * (a.duration + 2 * a.drain)
    return Params(
        booths=a.booths,
        staff=a.staff,
        rate=a.rate,
        duration=a.duration,
        hold=a.hold,
        drain=a.drain,
        connect_concurrency=a.connect_concurrency,
        echo=False,
        timeout=timeout,
        seed=a.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    return run_load_benchmark(
        "ekichika-bench-scale-out-", lambda workdir: run(params, workdir), params.timeout
    )


if __name__ == "__main__":
    sys.exit(main())
