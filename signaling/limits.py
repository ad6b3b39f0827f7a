"""Abuse resistance of the signaling server: per-connection message budgets and the
throttle of authentication failures per source address (docs/architecture.md "Limits").

Both are plain synchronous objects that take the current time as an argument, so the
server decides what "now" is and tests can reason about them exactly.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass


class MessageBudget:
    """A token bucket: ``burst`` messages at once, refilled at ``rate_per_s``.

    ``strikes`` counts the messages refused since the connection ran out of tokens; it
    goes back to 0 only once the bucket has refilled completely (the client slowed down),
    so a client that keeps sending faster than the rate keeps collecting strikes."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s", "strikes")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = max(0.0, rate_per_s)
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = now
        self.strikes = 0

    def take(self, now: float) -> bool:
        """Spend one token; False (and one more strike) when none is left."""
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        if self._tokens >= self.burst:
            self.strikes = 0
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.strikes += 1
        return False


def source_key(address: str) -> str:
    """The throttle's key for a client address: IPv4 as is, IPv6 by its /64 (one host
    usually owns a whole /64); anything unparsable as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Failures:
    since: float  # start of the current window
    count: int


class AuthThrottle:
    """Authentication failures per source within a fixed window.

    After ``limit`` failures within ``window_s`` of the first one, the source is
    throttled until that window ends: its hellos are refused without looking at the
    credential. At most ``max_sources`` sources are tracked (memory stays bounded): when
    full, the entry whose window started first goes (expired entries are dropped on the
    way, in the same order)."""

    def __init__(self, limit: int, window_s: float, max_sources: int) -> None:
        self.limit = max(1, limit)
        self.window_s = max(0.0, window_s)
        self.max_sources = max(1, max_sources)
        self._sources: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def retry_after(self, source: str, now: float) -> float | None:
        """Seconds until ``source`` may try again, or None when it is not throttled."""
        entry = self._sources.get(source_key(source))
        if entry is None or entry.count < self.limit:
            return None
        remaining = entry.since + self.window_s - now
        return remaining if remaining > 0 else None

    def failures(self, source: str) -> int:
        """Failures counted in the source's current window."""
        entry = self._sources.get(source_key(source))
        return entry.count if entry is not None else 0

    def record_failure(self, source: str, now: float) -> bool:
        """Count one failure; True when the source is throttled from now on."""
        key = source_key(source)
        entry = self._sources.get(key)
        if entry is None or now - entry.since >= self.window_s:
            entry = _Failures(now, 0)
            self._sources.pop(key, None)
            self._make_room(now)
            self._sources[key] = entry
        entry.count += 1
        return entry.count >= self.limit

    def _make_room(self, now: float) -> None:
        # Entries are in the order their windows started, so the expired ones come first.
        while self._sources:
            oldest = next(iter(self._sources.values()))
            if now - oldest.since < self.window_s and len(self._sources) < self.max_sources:
                return
            self._sources.popitem(last=False)
