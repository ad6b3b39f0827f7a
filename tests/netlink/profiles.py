"""Named link profiles: rate, one-way delay and loss of the link between a booth and HQ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class LinkProfile:
    """One emulated link, the same in both directions.

    ``rate_mbit`` is the bottleneck rate of each direction (token bucket at the sender),
    ``delay_ms`` the one-way propagation delay (so the round trip adds ``2 × delay_ms``),
    ``loss_percent`` the chance that a packet is lost, drawn independently per packet and
    per direction (so a request/response pair is lost with about twice that chance).
    ``queue_ms`` is how much the bottleneck queue holds, in time at ``rate_mbit``; packets
    that do not fit are dropped, like a real access router's buffer.
    """

    name: str
    rate_mbit: float
    delay_ms: float
    loss_percent: float
    queue_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be positive, got {self.rate_mbit}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, got {self.delay_ms}")
        if not 0 <= self.loss_percent < 100:
            raise ValueError(f"loss_percent must be in [0, 100), got {self.loss_percent}")
        if self.queue_ms <= 0:
            raise ValueError(f"queue_ms must be positive, got {self.queue_ms}")

    @property
    def rtt_ms(self) -> float:
        """Round-trip time the link adds (propagation only, no queueing)."""
        return 2 * self.delay_ms


STATION: Final = LinkProfile("station", rate_mbit=20, delay_ms=30, loss_percent=1)
"""A booth at a station: shared fibre or LTE uplink, some loss."""

LAN: Final = LinkProfile("lan", rate_mbit=1000, delay_ms=0.5, loss_percent=0)
"""A booth inside a city building, on the municipal LAN."""

CLOSED: Final = LinkProfile("closed", rate_mbit=4, delay_ms=60, loss_percent=2)
"""A poor link: the closed-network (閉域網) mobile line of a remote branch."""

PROFILES: Final[dict[str, LinkProfile]] = {p.name: p for p in (STATION, LAN, CLOSED)}


def profile_named(name: str) -> LinkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown link profile {name!r} (known: {known})") from None
