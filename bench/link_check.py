"""Link check: measures each emulated link profile and prints one JSON object.

::

    .venv/bin/python -m bench.link_check                     # every profile
    .venv/bin/python -m bench.link_check --profile station   # one

Per profile it builds the link (:func:`tests.netlink.emulated_link`), then measures
* RTT: UDP echo booth → HQ → booth (``--probes`` probes, 20 ms apart): median, min, max;
* loss: ``--packets`` UDP datagrams each way at the same time, paced over one second;
* TCP goodput, each direction alone and both at once, with the sender's congestion
  control ``--congestion`` (default bbr; loss-based control cannot fill a lossy link).

Next to each measurement it prints the profile's value and the measured/expected ratio.
Needs root; everything stays inside the link's two namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from bench._load import rounded
from tests.netlink import PROFILES, LinkProfile, emulated_link
from tests.netlink.measure import measure_loss, measure_rtt, measure_throughput

log = logging.getLogger("bench.link_check")

# The profile's rate counts whole Ethernet frames; TCP goodput of full-size segments is
# 1448 payload bytes per 1514-byte frame (timestamps on).
GOODPUT_SHARE = 1448 / 1514


async def check_profile(
    profile: LinkProfile, probes: int, packets: int, duration_s: float, congestion: str
) -> dict[str, Any]:
    started = time.monotonic()
    async with emulated_link(profile) as link:
        log.info("%s: RTT", profile.name)
        rtt = await measure_rtt(link, probes=probes, interval_s=0.02)
        log.info("%s: loss", profile.name)
        loss = await measure_loss(link, packets=packets, duration_s=1.0)
        log.info("%s: TCP one way", profile.name)
        one_way = await measure_throughput(
            link, duration_s=duration_s, warmup_s=1.0, congestion=congestion, both_ways=False
        )
        log.info("%s: TCP both ways", profile.name)
        both = await measure_throughput(
            link, duration_s=duration_s, warmup_s=1.0, congestion=congestion, both_ways=True
        )
    expected_goodput = profile.rate_mbit * GOODPUT_SHARE
    lost = sum(r.lost for r in loss.values())
    sent = sum(r.sent for r in loss.values())
    return {
        "profile": {
            "rate_mbit": profile.rate_mbit,
            "delay_ms": profile.delay_ms,
            "loss_percent": profile.loss_percent,
            "queue_ms": profile.queue_ms,
        },
        "rtt_ms": {
            "expected": profile.rtt_ms,
            "median": rounded(rtt.median_ms),
            "min": rounded(rtt.min_ms),
            "max": rounded(rtt.max_ms),
            "answered": len(rtt.samples_ms),
            "sent": rtt.sent,
        },
        "loss_percent": {
            "expected_per_direction": profile.loss_percent,
            **{k: rounded(v.loss_percent) for k, v in loss.items()},
            "packets_per_direction": packets,
            "both_directions": rounded(100 * lost / sent),
        },
        "tcp_goodput_mbit_s": {
            "congestion_control": one_way.congestion_control,
            "expected": rounded(expected_goodput),
            "booth_to_hq_alone": rounded(one_way.mbit_s["booth_to_hq"]),
            "booth_to_hq_with_reverse": rounded(both.mbit_s["booth_to_hq"]),
            "hq_to_booth_with_reverse": rounded(both.mbit_s["hq_to_booth"]),
            "ratio_alone_vs_expected": rounded(one_way.mbit_s["booth_to_hq"] / expected_goodput),
        },
        "check_s": rounded(time.monotonic() - started, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [args.profile] if args.profile else list(PROFILES)
    results = {}
    for name in names:
        results[name] = await check_profile(
            PROFILES[name], args.probes, args.packets, args.duration, args.congestion
        )
    return {"scenario": "link_check", "profiles": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.link_check", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--packets", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=3.0, help="TCP seconds measured")
    parser.add_argument("--congestion", default="bbr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
