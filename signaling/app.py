"""The aiohttp application of the signaling server, built by :func:`create_app`.

Routes: ``/ws/booth`` and ``/ws/staff`` (WebSocket, see ``docs/protocol.md``),
``GET /healthz`` (liveness; JSON: ``ok``, connected ``booths`` and ``staff``, ``waiting``
requests, active ``sessions``), ``GET /readyz`` (readiness: 200 when the server accepts
connections and the database answers, else 503) and ``GET /metrics`` (Prometheus text,
only to ``metrics_allowed_addresses``; see :mod:`signaling.metrics`).

Start-up (in ``cleanup_ctx``): migrate the database when ``auto_migrate``, close sessions
a previous run left open (``server_restart``), load departments, booths, staff and the
recent handle times, re-queue the requests that were still waiting (their booths have
``booth_reconnect_grace_s`` to come back), then serve. Shut-down closes every WebSocket
(1001) and writes every queued record before the store closes.

Cluster mode (``redis_url`` set, PostgreSQL ``database_url``): the start-up above is the
leader's, done when a node takes the leadership (:mod:`signaling.cluster`); every node
serves the WebSockets and forwards their events. ``/healthz`` then also reports
``cluster``: this ``node``, whether it is the ``leader`` and the newest ``epoch`` seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.config import SignalingConfig
from shared.protocol import IceServer
from shared.security import ice_servers_for
from shared.store import migrate
from signaling.cluster import ClusterNode, asyncpg_dsn
from signaling.matching import Dispatcher, MatchingRules, utc
from signaling.metrics import SignalingMetrics
from signaling.server import SignalingServer, hard_frame_limit
from signaling.store import SignalingStore

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("signaling_config", SignalingConfig)
SERVER_KEY = web.AppKey("signaling_server", SignalingServer)
METRICS_KEY = web.AppKey("signaling_metrics", SignalingMetrics)
CLUSTER_KEY = web.AppKey("signaling_cluster", ClusterNode)


async def load_dispatcher(
    config: SignalingConfig, store: SignalingStore, metrics: SignalingMetrics, now: float
) -> Dispatcher:
    """A dispatcher with the directory, the recent handle times and the requests still
    waiting in the database (their booths count as offline since ``now``)."""

    def ice_servers(user: str) -> list[IceServer]:
        servers = ice_servers_for(
            config.stun_urls, config.turn_urls, config.turn_secret, user, config.turn_ttl_s
        )
        if any(server.username for server in servers):
            metrics.turn_credentials.inc()
        return servers

    dispatcher = Dispatcher(
        MatchingRules.from_config(config),
        departments=await store.departments(),
        languages=config.languages,
        ice_servers=ice_servers,
    )
    for booth in await store.booths():
        dispatcher.upsert_booth(booth.info)
    for account in await store.staff_accounts():
        if account.active:
            dispatcher.upsert_staff(account.info, account.role, account.site_id, account.skills)
    for department, seconds in (
        await store.recent_handle_times(config.wait_estimate_samples)
    ).items():
        dispatcher.add_handle_times(department, seconds)
    restored = 0
    for pending in await store.waiting_requests():
        if pending.booth_id in dispatcher.booths:
            dispatcher.restore_request(
                pending.request_id,
                pending.booth_id,
                pending.department,
                pending.language,
                pending.created_at,
                now,
            )
            restored += 1
    if restored:
        log.info("%d waiting requests restored", restored)
    wrap_ups = 0
    for staff_id, session_id in await store.pending_wrap_ups(utc(now - config.wrap_up_resume_s)):
        wrap_ups += dispatcher.restore_wrap_up(staff_id, session_id)
    if wrap_ups:
        log.info("%d unfinished wrap-ups restored", wrap_ups)
    return dispatcher


async def build_server(
    config: SignalingConfig, metrics: SignalingMetrics | None = None
) -> SignalingServer:
    """Open the store, load the directory and the waiting requests, start the server.

    Cluster mode (``redis_url``): the server's own dispatcher only keeps the directory;
    matching runs on the leader (:mod:`signaling.cluster`), which loads its state when it
    takes over."""
    metrics = metrics or SignalingMetrics(config.node_id)
    if config.redis_url:
        asyncpg_dsn(config.database_url)  # PostgreSQL, or a ConfigError now
    if config.auto_migrate:
        await migrate(config.database_url)
    store = SignalingStore(config.database_url)
    await store.start()
    try:
        if config.redis_url:
            dispatcher = Dispatcher(
                MatchingRules.from_config(config),
                departments=await store.departments(),
                languages=config.languages,
            )
        else:
            now = time.time()
            interrupted = await store.close_interrupted_sessions(utc(now))
            if interrupted:
                log.info("%d sessions of the previous run closed (server_restart)", interrupted)
            dispatcher = await load_dispatcher(config, store, metrics, now)
    except BaseException:
        await store.aclose()
        raise
    server = SignalingServer(config, store, dispatcher, metrics=metrics)
    server.start()
    return server


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    server = await build_server(config, app[METRICS_KEY])
    app[SERVER_KEY] = server
    node: ClusterNode | None = None
    try:
        if config.redis_url:
            node = ClusterNode(
                config, server, partial(load_dispatcher, config, server.store, app[METRICS_KEY])
            )
            await node.start()
            app[METRICS_KEY].watch_cluster(node.status)
            server.cluster = node
            app[CLUSTER_KEY] = node
        yield
    finally:
        await server.aclose()
        if node is not None:
            await node.aclose()
        await server.store.aclose()


async def _on_shutdown(app: web.Application) -> None:
    server = app.get(SERVER_KEY)
    if server is not None:
        await server.shutdown()


async def _booth_ws(request: web.Request) -> web.StreamResponse:
    return await request.app[SERVER_KEY].handle_booth(request)


async def _staff_ws(request: web.Request) -> web.StreamResponse:
    return await request.app[SERVER_KEY].handle_staff(request)


async def _healthz(request: web.Request) -> web.StreamResponse:
    node = request.app.get(CLUSTER_KEY)
    if node is None:
        return await request.app[SERVER_KEY].handle_health(request)
    return web.json_response({**request.app[SERVER_KEY].health(), "cluster": node.status()})


async def _readyz(request: web.Request) -> web.StreamResponse:
    server = request.app.get(SERVER_KEY)
    if server is None:
        return web.json_response({"ready": False, "accepting": "starting"}, status=503)
    return await server.handle_ready(request)


async def _metrics(request: web.Request) -> web.StreamResponse:
    if request.remote not in request.app[CONFIG_KEY].metrics_allowed_addresses:
        raise web.HTTPForbidden(text="metrics are not served to this address")
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(config: SignalingConfig) -> web.Application:
    """The signaling app; the server starts with the app (``cleanup_ctx``)."""
    app = web.Application(client_max_size=hard_frame_limit(config))
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = SignalingMetrics(config.node_id)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/ws/booth", _booth_ws)
    app.router.add_get("/ws/staff", _staff_ws)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
