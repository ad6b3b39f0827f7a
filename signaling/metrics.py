"""Prometheus metrics of the signaling server (docs/architecture.md "Monitoring").

One :class:`SignalingMetrics` per app, on its own ``CollectorRegistry`` (never the global
one), so that several servers can run in one process. Counters and the match latency
histogram are updated as events happen; presence and queue gauges are read from the
matching state when Prometheus scrapes (:meth:`SignalingMetrics.watch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from signaling.matching import Dispatcher

# Seconds from a help request to its first offer: the resident's wait at the booth.
MATCH_LATENCY_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """What the scrape-time gauges read: connected peers and the matching state."""

    booths: int
    staff_by_role: dict[str, int]
    dispatcher: Dispatcher


class _LiveState(Collector):
    """Gauges computed at scrape time from the server's current state."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.source: Callable[[], PresenceSnapshot] | None = None
        self.cluster: Callable[[], dict[str, Any]] | None = None

    def describe(self) -> list[Metric]:  # no describe-time collection
        return []

    def collect(self) -> Iterator[Metric]:
        if self.cluster is not None:
            yield from _cluster_gauges(self.cluster())
        source = self.source
        if source is None:
            return
        snap = source()
        booths = GaugeMetricFamily(
            "ekichika_signaling_booths_connected", "Booths connected to this node"
        )
        booths.add_metric([], snap.booths)
        yield booths
        staff = GaugeMetricFamily(
            "ekichika_signaling_staff_connected",
            "Staff connections to this node, by role",
            labels=["role"],
        )
        for role, count in sorted(snap.staff_by_role.items()):
            staff.add_metric([role], count)
        yield staff
        d = snap.dispatcher
        length = GaugeMetricFamily(
            "ekichika_signaling_queue_length",
            "Help requests waiting (ringing ones included), by department",
            labels=["department"],
        )
        oldest = GaugeMetricFamily(
            "ekichika_signaling_queue_oldest_wait_seconds",
            "Age of the oldest waiting help request, by department (0: none waiting)",
            labels=["department"],
        )
        counts: dict[str, int] = dict.fromkeys(d.departments, 0)
        first: dict[str, float] = {}
        for req in d.waiting.values():  # oldest first
            counts[req.department] = counts.get(req.department, 0) + 1
            first.setdefault(req.department, req.requested_at.timestamp())
        now = self._clock()
        for department in sorted(counts):
            length.add_metric([department], counts[department])
            since = first.get(department)
            oldest.add_metric([department], max(0.0, now - since) if since is not None else 0.0)
        yield length
        yield oldest
        sessions = GaugeMetricFamily(
            "ekichika_signaling_sessions_active", "Call sessions in progress (not yet ended)"
        )
        sessions.add_metric([], sum(1 for s in d.sessions.values() if s.active))
        yield sessions


def _cluster_gauges(status: dict[str, Any]) -> Iterator[Metric]:
    for name, text, value in (
        ("leader", "1 while this node leads (matching)", int(status["leader"])),
        ("redis_up", "1 while this node's Redis calls work", int(status["redis"] == "ok")),
        (
            "events_queued",
            "Events of this node's connections not yet sent to Redis",
            status["events_queued"],
        ),
    ):
        gauge = GaugeMetricFamily(f"ekichika_signaling_cluster_{name}", text)
        gauge.add_metric([], value)
        yield gauge


@dataclass
class SignalingMetrics:
    """Every metric of one signaling app, registered on ``registry``."""

    node_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        r = self.registry
        info = Gauge("ekichika_signaling_node_info", "This node (value 1)", ["node_id"], registry=r)
        info.labels(self.node_id).set(1)
        self.match_latency = Histogram(
            "ekichika_signaling_match_latency_seconds",
            "Help request to its first offer to a staff member",
            ["department"],
            buckets=MATCH_LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "ekichika_signaling_sessions",
            "Call sessions ended, by outcome (end reason)",
            ["outcome"],
            registry=r,
        )
        self.requests_closed = Counter(
            "ekichika_signaling_requests_closed",
            "Help requests that left the queue, by status (matched, cancelled, abandoned)",
            ["status"],
            registry=r,
        )
        self.connections = Counter(
            "ekichika_signaling_connections",
            "Authenticated connections accepted, by side (booth, staff)",
            ["side"],
            registry=r,
        )
        self.reconnects = Counter(
            "ekichika_signaling_reconnects",
            "Connections of a booth or staff member that had connected to this node before, "
            "by side and whether they resumed a waiting request or a call",
            ["side", "resumed"],
            registry=r,
        )
        self.relay_messages = Counter(
            "ekichika_signaling_relay_messages",
            "Peer-to-peer messages relayed, by payload kind (sdp, ice, media_state)",
            ["kind"],
            registry=r,
        )
        self.turn_credentials = Counter(
            "ekichika_signaling_turn_credentials_issued",
            "TURN REST credentials handed out with a call",
            registry=r,
        )
        self.auth_failures = Counter(
            "ekichika_signaling_auth_failures",
            "Failed hellos, by side and error code (auth_failed, token_expired)",
            ["side", "code"],
            registry=r,
        )
        self.auth_throttled = Counter(
            "ekichika_signaling_auth_throttled",
            "Connection attempts refused because their source address failed too often "
            "(where: http = 429 before the upgrade, hello = closed 4429)",
            ["side", "where"],
            registry=r,
        )
        self.messages_refused = Counter(
            "ekichika_signaling_messages_refused",
            "Frames refused by a limit, by side and reason (rate, too_large)",
            ["side", "reason"],
            registry=r,
        )
        self.limit_closes = Counter(
            "ekichika_signaling_limit_closes",
            "Connections closed by a limit, by reason (message_rate, send_queue)",
            ["reason"],
            registry=r,
        )
        self._live = _LiveState(self.clock)
        r.register(self._live)

    def watch(self, source: Callable[[], PresenceSnapshot]) -> None:
        """Read presence and queue gauges from ``source`` at every scrape."""
        self._live.source = source

    def watch_cluster(self, status: Callable[[], dict[str, Any]]) -> None:
        """Cluster mode: the node's leadership and Redis gauges from ``status``
        (:meth:`signaling.cluster.ClusterNode.status`) at every scrape."""
        self._live.cluster = status
