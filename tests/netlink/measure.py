"""Measurements across an emulated link: round-trip time, loss, TCP throughput.

Used by the link's own tests and by ``bench/link_check.py``. The sockets are created
inside the two namespaces (:meth:`LinkEnd.socket`) and driven from the caller's event
loop, so the measuring code itself is ordinary asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field
from typing import Final, cast

from tests.netlink.link import EmulatedLink, LinkEnd

_PROBE: Final = struct.Struct("!Id")  # sequence number, send time
_UDP_IP_ETHERNET_HEADERS: Final = 8 + 20 + 14


# --------------------------------------------------------------------------------------
# Round-trip time
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RttResult:
    sent: int
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | None, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class _Collector(asyncio.DatagramProtocol):
    """Receives probes; remembers (sequence, arrival time)."""

    def __init__(self) -> None:
        self.arrivals: dict[int, tuple[float, float]] = {}  # seq -> (sent, arrived)

    def datagram_received(self, data: bytes, addr: tuple[str | None, int]) -> None:
        seq, sent = _PROBE.unpack_from(data)
        self.arrivals.setdefault(seq, (sent, time.monotonic()))


async def measure_rtt(
    link: EmulatedLink, probes: int = 40, interval_s: float = 0.025, size: int = 64
) -> RttResult:
    """UDP echo: probes from the booth to an echo socket at HQ and back."""
    loop = asyncio.get_running_loop()
    server_sock = link.hq.bound_socket(socket.SOCK_DGRAM)
    client_sock = link.booth.bound_socket(socket.SOCK_DGRAM)
    client_sock.connect(server_sock.getsockname())
    echo_transport, _ = await loop.create_datagram_endpoint(_Echo, sock=server_sock)
    client_transport, collector = await loop.create_datagram_endpoint(_Collector, sock=client_sock)
    try:
        padding = b"\0" * max(0, size - _PROBE.size)
        for seq in range(probes):
            client_transport.sendto(_PROBE.pack(seq, time.monotonic()) + padding)
            await asyncio.sleep(interval_s)
        await asyncio.sleep(2 * link.profile.rtt_ms / 1000 + 0.2)
    finally:
        client_transport.close()
        echo_transport.close()
    samples = [(arrived - sent) * 1000 for sent, arrived in collector.arrivals.values()]
    return RttResult(sent=probes, samples_ms=samples)


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossResult:
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def loss_percent(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


async def _one_way_loss(
    src: LinkEnd, dst: LinkEnd, packets: int, duration_s: float, size: int, settle_s: float
) -> LossResult:
    loop = asyncio.get_running_loop()
    rx_sock = dst.bound_socket(socket.SOCK_DGRAM)
    rx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx_sock = src.bound_socket(socket.SOCK_DGRAM)
    tx_sock.connect(rx_sock.getsockname())
    rx_transport, collector = await loop.create_datagram_endpoint(_Collector, sock=rx_sock)
    tx_transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=tx_sock)
    try:
        padding = b"\0" * max(0, size - _PROBE.size)
        batches = max(1, int(duration_s / 0.005))  # a small batch every 5 ms
        start = loop.time()
        seq = 0
        for batch in range(batches):
            upto = packets * (batch + 1) // batches
            while seq < upto:
                tx_transport.sendto(_PROBE.pack(seq, time.monotonic()) + padding)
                seq += 1
            await asyncio.sleep(max(0.0, start + (batch + 1) * 0.005 - loop.time()))
        await asyncio.sleep(settle_s)
    finally:
        tx_transport.close()
        rx_transport.close()
    received = sum(1 for s in collector.arrivals if 0 <= s < packets)
    return LossResult(sent=packets, received=received)


async def measure_loss(
    link: EmulatedLink, packets: int = 2500, duration_s: float = 1.0, size: int = 100
) -> dict[str, LossResult]:
    """``packets`` UDP datagrams each way at once, paced over ``duration_s``; the result
    per direction (``"booth_to_hq"``, ``"hq_to_booth"``).

    The pace is stretched when needed so that the datagrams use at most half the link's
    rate: only the profile's random loss is measured, never a full queue.
    """
    frame_bits = (size + _UDP_IP_ETHERNET_HEADERS) * 8
    duration_s = max(duration_s, packets * frame_bits / (0.5 * link.profile.rate_mbit * 1e6))
    settle_s = link.profile.delay_ms / 1000 + link.profile.queue_ms / 1000 + 0.3
    up, down = await asyncio.gather(
        _one_way_loss(link.booth, link.hq, packets, duration_s, size, settle_s),
        _one_way_loss(link.hq, link.booth, packets, duration_s, size, settle_s),
    )
    return {"booth_to_hq": up, "hq_to_booth": down}


# --------------------------------------------------------------------------------------
# TCP throughput
# --------------------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    congestion_control: str
    mbit_s: dict[str, float] = field(default_factory=dict)  # direction -> goodput


def _set_congestion_control(sock: socket.socket, wanted: str | None) -> str:
    if wanted is not None:
        with contextlib.suppress(OSError):  # not available in this kernel: keep the default
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, wanted.encode())
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return raw.split(b"\0", 1)[0].decode()


async def _bulk_transfer(
    src: LinkEnd, dst: LinkEnd, warmup_s: float, duration_s: float, congestion: str | None
) -> tuple[float, str]:
    """Goodput (Mbit/s) of one TCP connection src → dst, counted after ``warmup_s``."""
    loop = asyncio.get_running_loop()
    listener = dst.bound_socket(socket.SOCK_STREAM)
    sender = src.socket()
    received = 0
    receiver: socket.socket | None = None
    try:
        used = _set_congestion_control(sender, congestion)
        await loop.sock_connect(sender, listener.getsockname())
        receiver, _ = await loop.sock_accept(listener)
        receiver.setblocking(False)

        async def receive(sock: socket.socket) -> None:
            nonlocal received
            buffer = bytearray(1 << 18)
            while n := await loop.sock_recv_into(sock, buffer):
                received += n

        async def send() -> None:
            chunk = b"\0" * (1 << 18)
            while True:
                await loop.sock_sendall(sender, chunk)

        tasks = [asyncio.create_task(receive(receiver)), asyncio.create_task(send())]
        try:
            await asyncio.sleep(warmup_s)
            t0, b0 = time.monotonic(), received
            await asyncio.sleep(duration_s)
            t1, b1 = time.monotonic(), received
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sender.close()
        listener.close()
        if receiver is not None:
            receiver.close()
    return (b1 - b0) * 8 / (t1 - t0) / 1e6, used


async def measure_throughput(
    link: EmulatedLink,
    duration_s: float = 3.0,
    warmup_s: float = 1.0,
    congestion: str | None = "bbr",
    both_ways: bool = True,
) -> ThroughputResult:
    """TCP goodput booth → HQ (and HQ → booth at the same time when ``both_ways``).

    ``congestion`` picks the sender's TCP congestion control (``None``: the system's
    default; an unavailable one also falls back to the default). Loss-based control
    (cubic, reno) cannot fill a lossy long link — that is TCP, not the link.
    """
    jobs = [_bulk_transfer(link.booth, link.hq, warmup_s, duration_s, congestion)]
    if both_ways:
        jobs.append(_bulk_transfer(link.hq, link.booth, warmup_s, duration_s, congestion))
    results = await asyncio.gather(*jobs)
    out = ThroughputResult(congestion_control=results[0][1])
    out.mbit_s["booth_to_hq"] = results[0][0]
    if both_ways:
        out.mbit_s["hq_to_booth"] = results[1][0]
    return out
