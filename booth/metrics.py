"""Prometheus metrics of the booth agent, on the kiosk app's port (docs/architecture.md
"Monitoring").

``GET /metrics`` answers loopback clients only (a node exporter or a local agent that
forwards them; the kiosk port itself listens on 127.0.0.1). Everything is read from the
agent when scraped: the call state, the signaling connection, each device's state and
the print spool's unfinished jobs. No identifiers of residents, no session ids as labels.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from booth.agent import BoothAgent
from booth.call import CallState
from booth.signaling_client import SignalingState
from booth.spool import JobState

_UNFINISHED: Final = (JobState.QUEUED, JobState.PRINTING)


class _BoothState(Collector):
    def __init__(self, agent: BoothAgent) -> None:
        self.agent = agent
        self.spool_jobs: dict[str, int] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        call = GaugeMetricFamily(
            "ekichika_booth_call_state",
            "The booth's call state (1 for the current one; idle without a call)",
            labels=["state"],
        )
        current = agent.call.state if agent.call is not None else CallState.IDLE
        for state in CallState:
            call.add_metric([state.value], 1 if state is current else 0)
        yield call
        signaling = GaugeMetricFamily(
            "ekichika_booth_signaling_state",
            "The signaling connection's state (1 for the current one)",
            labels=["state"],
        )
        for s in SignalingState:
            signaling.add_metric([s.value], 1 if s is agent.signaling.state else 0)
        yield signaling
        devices = GaugeMetricFamily(
            "ekichika_booth_device_state",
            "Each device's state (1 for the current one)",
            labels=["kind", "name", "state"],
        )
        for d in agent.devices.statuses():
            devices.add_metric([d.kind.value, d.name, d.state.value], 1)
        yield devices
        spool = GaugeMetricFamily(
            "ekichika_booth_print_spool_jobs",
            "Print jobs not finished yet, by state (queued, printing)",
            labels=["state"],
        )
        for job_state in _UNFINISHED:
            spool.add_metric([job_state.value], self.spool_jobs.get(job_state.value, 0))
        yield spool

    async def refresh(self) -> None:
        spool = self.agent.devices.spool
        counts = dict.fromkeys((s.value for s in _UNFINISHED), 0)
        if spool is not None:
            for job in await spool.jobs(_UNFINISHED):
                counts[job.state.value] = counts.get(job.state.value, 0) + 1
        self.spool_jobs = counts


class BoothMetrics:
    def __init__(self, agent: BoothAgent) -> None:
        self.registry = CollectorRegistry()
        self.state = _BoothState(agent)
        self.registry.register(self.state)


BOOTH_METRICS: Final = web.AppKey("booth_metrics", BoothMetrics)


def setup_booth_metrics(app: web.Application, agent: BoothAgent) -> None:
    """Add ``GET /metrics`` (loopback only) to the kiosk app."""
    app[BOOTH_METRICS] = BoothMetrics(agent)
    app.router.add_get("/metrics", _metrics)


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def _metrics(request: web.Request) -> web.StreamResponse:
    if not _loopback(request.remote):
        raise web.HTTPForbidden(text="metrics are served to this machine only")
    metrics = request.app[BOOTH_METRICS]
    await metrics.state.refresh()
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
