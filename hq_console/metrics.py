"""Prometheus metrics and readiness of the HQ console (docs/architecture.md "Monitoring").

:func:`setup_metrics` adds ``GET /metrics`` (Prometheus text, answered only to the client
addresses in ``metrics_allowed_addresses``, default loopback; anyone else gets 403) and
``GET /readyz`` (200 when the database answers within ``readiness_timeout_s`` and the
console is not shutting down, else 503). ``/healthz`` keeps its own contract.

* Sign-ins and still relay transfers are counted as their responses go out (the
  ``on_response_prepare`` signal), so the handlers stay as they are.
* Issued certificates and submitted applications are counted in the database when
  Prometheus scrapes: the totals survive restarts and add up across console instances.

Every metric lives on the app's own ``CollectorRegistry``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import ConsoleConfig
from shared.store.models import Application, IssuedDocument

log = logging.getLogger(__name__)

_STILL_UPLOAD_ROUTE: Final = "sessions/{session_id}/stills/relay/{token}"


class _StoredTotals(Collector):
    """Totals read from the database before each scrape (see ``refresh``)."""

    def __init__(self) -> None:
        self.certificates: dict[str, int] = {}
        self.applications: dict[str, int] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        issued = CounterMetricFamily(
            "ekichika_console_certificates_issued",
            "Certificates issued (all time, from the database), by kind",
            labels=["kind"],
        )
        for kind, count in sorted(self.certificates.items()):
            issued.add_metric([kind], count)
        yield issued
        submitted = CounterMetricFamily(
            "ekichika_console_applications",
            "Signed applications submitted (all time, from the database), by form",
            labels=["form_id"],
        )
        for form_id, count in sorted(self.applications.items()):
            submitted.add_metric([form_id], count)
        yield submitted

    async def refresh(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(IssuedDocument.kind, func.count()).group_by(IssuedDocument.kind)
            )
            self.certificates = {str(kind): int(count) for kind, count in rows}
            rows = await conn.execute(
                select(Application.form_id, func.count()).group_by(Application.form_id)
            )
            self.applications = {str(form): int(count) for form, count in rows}


@dataclass
class ConsoleMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    shutting_down: bool = False

    def __post_init__(self) -> None:
        r = self.registry
        self.logins = Counter(
            "ekichika_console_logins",
            "Staff sign-ins, by outcome (ok, failed, throttled)",
            ["outcome"],
            registry=r,
        )
        self.still_transfers = Counter(
            "ekichika_console_still_relay_transfers",
            "Document stills through the still relay, by outcome (ok, refused)",
            ["outcome"],
            registry=r,
        )
        self.still_bytes = Counter(
            "ekichika_console_still_relay_bytes",
            "Bytes of document stills relayed",
            registry=r,
        )
        self.stored = _StoredTotals()
        r.register(self.stored)


METRICS: Final = web.AppKey("console_metrics", ConsoleMetrics)


def setup_metrics(app: web.Application) -> None:
    """Add /metrics and /readyz to the console app and start counting."""
    app[METRICS] = ConsoleMetrics()
    app.on_response_prepare.append(_observe)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/readyz", readyz)


def _config(app: web.Application) -> ConsoleConfig:
    from hq_console.app import CONFIG  # the app module imports this one

    return app[CONFIG]


def _engine(app: web.Application) -> AsyncEngine:
    from hq_console.app import ENGINE

    return app[ENGINE]


async def _observe(request: web.Request, response: web.StreamResponse) -> None:
    metrics = request.app[METRICS]
    if request.method != "POST":
        return
    if request.path == "/login":
        outcome = {303: "ok", 401: "failed", 429: "throttled"}.get(response.status)
        if outcome is not None:
            metrics.logins.labels(outcome).inc()
        return
    route = request.match_info.route.resource
    if route is not None and route.canonical.endswith(_STILL_UPLOAD_ROUTE):
        if 200 <= response.status < 300:
            metrics.still_transfers.labels("ok").inc()
            metrics.still_bytes.inc(request.content_length or 0)
        else:
            metrics.still_transfers.labels("refused").inc()


async def _on_shutdown(app: web.Application) -> None:
    app[METRICS].shutting_down = True


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    if request.remote not in _config(request.app).metrics_allowed_addresses:
        raise web.HTTPForbidden(text="metrics are not served to this address")
    metrics = request.app[METRICS]
    try:
        async with asyncio.timeout(_config(request.app).readiness_timeout_s):
            await metrics.stored.refresh(_engine(request.app))
    except Exception as err:  # the last totals are served; readiness reports the database
        log.warning("metrics: database totals not refreshed (%s)", type(err).__name__)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.StreamResponse:
    checks = {"accepting": "shutting down" if request.app[METRICS].shutting_down else "ok"}
    try:
        async with asyncio.timeout(_config(request.app).readiness_timeout_s):
            async with _engine(request.app).connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as err:
        log.warning("readiness: database unreachable (%s)", type(err).__name__)
        checks["database"] = "unreachable"
    else:
        checks["database"] = "ok"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)
