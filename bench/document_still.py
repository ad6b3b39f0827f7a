"""Document still: a 4 MB JPEG from the booth to staff over an emulated link, and the floor.

::

    unshare --net -- bash -c 'ip link set lo up; ip addr add 127.0.0.2/8 dev lo; \\
        .venv/bin/python -m bench.document_still'                      # station, 10 transfers
    ... .venv/bin/python -m bench.document_still --transfers 3 --profile closed

Builds the booth–HQ link (:func:`tests.netlink.emulated_link`, default ``station``: 20 Mbit/s,
30 ms each way, 1 % loss). On the booth side an aiortc peer opens the call's ``ekichika``
data channel to an aiortc peer on the HQ side. Per transfer, the booth sends one still
with the product's sender (:func:`booth.document_still.send_still`: ``still_offer``,
64 KiB binary frames with at most 64 KiB queued on the channel, ``still_done``) and the
HQ side assembles it as the console does (:class:`bench.staff_peer.StillAssembly`,
SHA-256 checked). The clock runs from just before ``still_offer`` is sent to the moment
``still_done`` has been read and the bytes checked at HQ.

Variants (``--high-water``, repeatable): the same frames with more bytes allowed in the
channel's queue before the sender waits. The floor: the same bytes, length-prefixed, over
one TCP connection booth → HQ on the same link (the connection is opened before the clock
starts, as the data channel is; a new connection per transfer), clocked until the last
byte is read and checked. Rounds interleave the paths, so all of them see the same
conditions. Needs root; everything stays inside the link's two namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import logging
import math
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import numpy as np
from aiohttp import web
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from bench._load import percentile, rounded
from bench.staff_peer import ReceivedStill, StillAssembly
from booth.console_client import ConsoleClient
from booth.document_camera import DocumentStill
from booth.document_still import (
    drain_channel,
    offer_for,
    relay_still,
    send_still,
    still_frames,
)
from booth.ice import restrict_host_addresses, rtc_configuration
from hq_console.app import create_app
from shared import wire
from shared.config import ConsoleConfig
from shared.errors import AuthError, ProtocolError
from shared.protocol import Model, StillDone, StillOffer
from shared.security import open_still
from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import CallSession, HelpRequest
from shared.store.seed import seed_demo, upsert_booth
from tests.netlink import emulated_link
from tests.netlink.link import EmulatedLink

log = logging.getLogger("bench.document_still")

TARGET_RATIO: Final = 1.3
PRODUCT_HIGH_WATER: Final = 64 * 1024  # booth.document_still._HIGH_WATER
CHANNEL_OPEN_S: Final = 20.0
_TCP_HEADER: Final = 8  # big-endian length before the bytes


# --------------------------------------------------------------------------------------
# The still
# --------------------------------------------------------------------------------------


def make_jpeg(target_bytes: int, seed: int = 1) -> DocumentStill:
    """A noisy JPEG of about ``target_bytes`` (noise does not compress, like fine print)."""
    rng = np.random.default_rng(seed)

    def encode(width: int, height: int) -> bytes:
        base = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
        noise = rng.integers(0, 56, (height, width, 3), dtype=np.uint8)
        pixels = (base + noise).clip(0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)
        return out.getvalue()

    width, height = 800, 600
    sample = encode(width, height)
    scale = math.sqrt(target_bytes / len(sample))
    width, height = int(width * scale), int(height * scale)
    data = encode(width, height)
    return DocumentStill(data, width, height)


# --------------------------------------------------------------------------------------
# The data channel path (objects live on their side's loop; only plain values come back)
# --------------------------------------------------------------------------------------


class ChannelSender:
    """Booth side: the call's data channel as :func:`send_still` uses it (as the booth's
    call does: JSON messages through :mod:`shared.wire`, binary frames as they are)."""

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        self.pc = pc
        self.channel = channel
        self.opened = asyncio.Event()
        self.session_id: str | None = SESSION_ID
        channel.on("open", self.opened.set)

    def send_peer_data(self, message: Model) -> bool:
        if self.channel.readyState != "open":
            return False
        self.channel.send(wire.encode(message))
        return True

    def send_peer_bytes(self, data: bytes) -> bool:
        if self.channel.readyState != "open":
            return False
        self.channel.send(data)
        return True

    async def drain_peer_data(self, below: int, timeout_s: float = 30.0) -> bool:
        return await drain_channel(self.channel, below, timeout_s)


@dataclass
class ChannelReceiver:
    """HQ side: assembles stills from the channel as the console does."""

    pc: RTCPeerConnection
    assembly: StillAssembly = field(default_factory=StillAssembly)
    stills: asyncio.Queue[ReceivedStill] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    console: RelayConsole | None = None  # fetches relayed stills, as the console page does
    _fetches: set[asyncio.Task[None]] = field(default_factory=set)

    def attach(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            if isinstance(data, bytes):
                self.assembly.chunk(data)
                return
            try:
                message = wire.decode(wire.peer_data, data)
            except ProtocolError:
                log.warning("undecodable message on the channel")
                return
            if isinstance(message, StillOffer) and message.relay is not None:
                if self.console is not None:
                    task = asyncio.ensure_future(self._fetch(message, self.console))
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)
            elif isinstance(message, StillOffer):
                self.assembly.offer(message)
            elif isinstance(message, StillDone):
                still = self.assembly.done(message)
                if still is not None:
                    self.stills.put_nowait(still)

        self.opened.set()

    async def _fetch(self, offer: StillOffer, console: RelayConsole) -> None:
        """Download the sealed still from the console's relay and open it (still-viewer.js)."""
        assert offer.relay is not None
        offer_at = time.monotonic()
        url = f"{console.base}/api/sessions/{SESSION_ID}/stills/relay/{offer.relay.token}"
        data, rejected = b"", None
        try:
            async with console.staff.get(url) as resp:
                sealed = await resp.read()
                if resp.status != 200:
                    rejected = f"relay answered {resp.status}"
            if rejected is None:
                data = open_still(sealed, offer.relay.key, offer.relay.nonce)
                if hashlib.sha256(data).hexdigest() != offer.sha256:
                    rejected = "SHA-256 mismatch"
        except (aiohttp.ClientError, AuthError) as err:
            rejected = repr(err)
        self.stills.put_nowait(
            ReceivedStill(offer, data, rejected is None, rejected, offer_at, time.monotonic())
        )


# --------------------------------------------------------------------------------------
# The relay path: the real console app on the HQ side, the booth's real client
# --------------------------------------------------------------------------------------

SESSION_ID: Final = "bench-still-session"
BOOTH_ID: Final = "seiseki-1"
BOOTH_CREDENTIAL: Final = "bench-booth-credential-0123456789"
STAFF_PASSWORD: Final = "bench-staff-password"


@dataclass
class RelayConsole:
    """HQ side: hq_console serving on the link, and sato's signed-in browser session."""

    runner: web.AppRunner
    engine: AsyncEngine
    base: str
    staff: aiohttp.ClientSession


async def _hq_start_console(address: str, directory: str) -> RelayConsole:
    url = f"sqlite+aiosqlite:///{directory}/console.sqlite3"
    await migrate(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    await seed_demo(sessions, {}, STAFF_PASSWORD)
    await upsert_booth(sessions, BOOTH_ID, "seiseki", "聖蹟桜ヶ丘 1番ブース", BOOTH_CREDENTIAL)
    async with sessions() as db, db.begin():
        db.add(HelpRequest(id="bench-req", booth_id=BOOTH_ID, department="shimin", language="ja"))
        await db.flush()
        db.add(
            CallSession(
                id=SESSION_ID,
                request_id="bench-req",
                booth_id=BOOTH_ID,
                staff_id="sato",
                department="shimin",
                language="ja",
            )
        )
    config = ConsoleConfig(database_url=url, token_secret=secrets.token_hex(16), auto_migrate=False)
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://{address}:{port}"
    staff = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with staff.post(
        f"{base}/login",
        data={"login": "sato", "password": STAFF_PASSWORD},
        headers={"Origin": base},
        allow_redirects=False,
    ) as resp:
        if resp.status != 303:
            raise RuntimeError(f"staff sign-in failed: {resp.status}")
    return RelayConsole(runner, engine, base, staff)


async def _hq_stop_console(console: RelayConsole) -> None:
    await console.staff.close()
    await console.runner.cleanup()
    await console.engine.dispose()


async def _booth_console_client(base: str) -> ConsoleClient:
    return ConsoleClient(base, BOOTH_ID, BOOTH_CREDENTIAL, timeout_s=120)


async def _booth_relay_send(
    sender: ChannelSender, console: ConsoleClient, still: DocumentStill, timeout_s: float
) -> tuple[float, bool]:
    """The product's relay path (booth.document_still.relay_still); (clock start, relayed)."""
    offer = offer_for(still, request_id=secrets.token_hex(8), origin="staff")
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        ok = await relay_still(sender, console, SESSION_ID, offer, still.jpeg)
    return started, ok


async def relay_transfer(
    link: EmulatedLink,
    sender: ChannelSender,
    console: ConsoleClient,
    receiver: ChannelReceiver,
    still: DocumentStill,
    timeout_s: float,
) -> float:
    """Seconds for one still, offer sent → sealed bytes fetched, opened and checked at HQ."""
    (started, sent), (done_at, ok, why) = await asyncio.gather(
        link.booth.run(_booth_relay_send, sender, console, still, timeout_s),
        link.hq.run(_hq_next_still, receiver, timeout_s),
    )
    if not sent:
        raise RuntimeError("the booth could not relay the still")
    if not ok:
        raise RuntimeError(f"the relayed still arrived damaged: {why}")
    return done_at - started


async def _booth_offer() -> tuple[ChannelSender, str]:
    pc = RTCPeerConnection(rtc_configuration([]))
    sender = ChannelSender(pc, pc.createDataChannel("ekichika"))
    await pc.setLocalDescription(await pc.createOffer())
    return sender, pc.localDescription.sdp


async def _hq_answer(offer_sdp: str) -> tuple[ChannelReceiver, str]:
    pc = RTCPeerConnection(rtc_configuration([]))
    receiver = ChannelReceiver(pc)
    pc.on("datachannel", receiver.attach)
    await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return receiver, pc.localDescription.sdp


async def _booth_connect(sender: ChannelSender, answer_sdp: str) -> None:
    await sender.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
    async with asyncio.timeout(CHANNEL_OPEN_S):
        await sender.opened.wait()


async def _hq_wait_open(receiver: ChannelReceiver) -> None:
    async with asyncio.timeout(CHANNEL_OPEN_S):
        await receiver.opened.wait()


async def _send_with_high_water(
    channel: ChannelSender, offer: StillOffer, data: bytes, high_water: int
) -> bool:
    """:func:`send_still` with another queue limit (the product's is fixed at 64 KiB)."""
    if not channel.send_peer_data(offer):
        return False
    for frame in still_frames(offer.still_id, data):
        if not await channel.drain_peer_data(high_water):
            return False
        if not channel.send_peer_bytes(frame):
            return False
    return channel.send_peer_data(StillDone(still_id=offer.still_id))


async def _booth_send(
    sender: ChannelSender, still: DocumentStill, high_water: int, timeout_s: float
) -> tuple[float, bool]:
    """Send one still; (clock start, all sent)."""
    offer = offer_for(still, request_id=secrets.token_hex(8), origin="staff")
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        if high_water == PRODUCT_HIGH_WATER:
            ok = await send_still(sender, offer, still.jpeg)
        else:
            ok = await _send_with_high_water(sender, offer, still.jpeg, high_water)
    return started, ok


async def _hq_next_still(receiver: ChannelReceiver, timeout_s: float) -> tuple[float, bool, str]:
    """(time ``still_done`` was handled, bytes complete and checked, why not)."""
    async with asyncio.timeout(timeout_s):
        still = await receiver.stills.get()
    return still.done_at, still.ok, still.rejected or ""


async def _close_pc(pc: RTCPeerConnection) -> None:
    with contextlib.suppress(Exception):
        await pc.close()


async def data_channel_transfer(
    link: EmulatedLink,
    sender: ChannelSender,
    receiver: ChannelReceiver,
    still: DocumentStill,
    high_water: int,
    timeout_s: float,
) -> float:
    """Seconds for one still, offer sent → done read and checked at HQ."""
    (started, sent), (done_at, ok, why) = await asyncio.gather(
        link.booth.run(_booth_send, sender, still, high_water, timeout_s),
        link.hq.run(_hq_next_still, receiver, timeout_s),
    )
    if not sent:
        raise RuntimeError("the booth could not send the whole still (channel closed)")
    if not ok:
        raise RuntimeError(f"the still arrived damaged: {why}")
    return done_at - started


# --------------------------------------------------------------------------------------
# The floor: one TCP connection on the same link
# --------------------------------------------------------------------------------------


async def tcp_transfer(link: EmulatedLink, data: bytes, timeout_s: float) -> tuple[float, str]:
    """Seconds for ``data`` booth → HQ over a fresh, established TCP connection; and the
    sender's congestion control."""
    loop = asyncio.get_running_loop()
    listener = link.hq.bound_socket(socket.SOCK_STREAM)
    client = link.booth.socket()
    server: socket.socket | None = None
    digest = hashlib.sha256(data).digest()
    try:
        raw = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        congestion = raw.split(b"\0", 1)[0].decode()
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(client, listener.getsockname())
            server, _ = await loop.sock_accept(listener)
            server.setblocking(False)
            conn = server

            async def receive() -> float:
                buffer = bytearray()
                chunk = bytearray(1 << 18)
                want = _TCP_HEADER
                while len(buffer) < want:
                    n = await loop.sock_recv_into(conn, chunk)
                    if n == 0:
                        raise RuntimeError("TCP connection closed early")
                    buffer += chunk[:n]
                    if want == _TCP_HEADER and len(buffer) >= _TCP_HEADER:
                        want = _TCP_HEADER + int.from_bytes(buffer[:_TCP_HEADER], "big")
                if hashlib.sha256(buffer[_TCP_HEADER:]).digest() != digest:
                    raise RuntimeError("TCP bytes do not match")
                return time.monotonic()

            started = time.monotonic()
            receiving = asyncio.create_task(receive())
            await loop.sock_sendall(client, len(data).to_bytes(_TCP_HEADER, "big") + data)
            done_at = await receiving
    finally:
        client.close()
        listener.close()
        if server is not None:
            server.close()
    return done_at - started, congestion


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "transfers": len(seconds),
        "p50_s": rounded(percentile(seconds, 50)),
        "p95_s": rounded(percentile(seconds, 95)),
        "max_s": rounded(max(seconds)) if seconds else None,
        "seconds": [rounded(s) for s in seconds],
    }


def _variant_name(high_water: int) -> str:
    if high_water % (1 << 20) == 0:
        return f"data_channel_high_water_{high_water >> 20}mib"
    return f"data_channel_high_water_{high_water >> 10}kib"


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    still = await asyncio.to_thread(make_jpeg, args.bytes)
    log.info("still: %d bytes, %dx%d", len(still.jpeg), still.width, still.height)
    variants = list(dict.fromkeys(args.high_water or []))
    relay: list[float] = []
    channel: list[float] = []
    by_variant: dict[int, list[float]] = {hw: [] for hw in variants}
    tcp: list[float] = []
    congestion = ""
    async with emulated_link(args.profile) as link:
        restrict_host_addresses([link.booth.address, link.hq.address])
        sender: ChannelSender | None = None
        receiver: ChannelReceiver | None = None
        hq_console: RelayConsole | None = None
        booth_client: ConsoleClient | None = None
        with tempfile.TemporaryDirectory(prefix="ekichika-still-") as directory:
            try:
                hq_console = await link.hq.run(_hq_start_console, link.hq.address, directory)
                booth_client = await link.booth.run(_booth_console_client, hq_console.base)
                connect_started = time.monotonic()
                booth_side, offer_sdp = await link.booth.run(_booth_offer)
                sender = booth_side
                hq_side, answer_sdp = await link.hq.run(_hq_answer, offer_sdp)
                receiver = hq_side
                hq_side.console = hq_console
                await link.booth.run(_booth_connect, booth_side, answer_sdp)
                await link.hq.run(_hq_wait_open, hq_side)
                log.info("data channel open in %.2f s", time.monotonic() - connect_started)
                for n in range(args.transfers):
                    seconds = await relay_transfer(
                        link, booth_side, booth_client, hq_side, still, args.timeout
                    )
                    relay.append(seconds)
                    log.info("%d/%d relay (product): %.2f s", n + 1, args.transfers, seconds)
                    await asyncio.sleep(args.pause)
                    seconds, congestion = await tcp_transfer(link, still.jpeg, args.timeout)
                    tcp.append(seconds)
                    log.info("%d/%d TCP (%s): %.2f s", n + 1, args.transfers, congestion, seconds)
                    await asyncio.sleep(args.pause)
                    if n < args.channel_transfers:
                        seconds = await data_channel_transfer(
                            link, booth_side, hq_side, still, PRODUCT_HIGH_WATER, args.timeout
                        )
                        channel.append(seconds)
                        log.info("%d/%d data channel: %.2f s", n + 1, args.transfers, seconds)
                        await asyncio.sleep(args.pause)
                    for hw in variants:
                        seconds = await data_channel_transfer(
                            link, booth_side, hq_side, still, hw, args.timeout
                        )
                        by_variant[hw].append(seconds)
                        log.info(
                            "%d/%d %s: %.2f s", n + 1, args.transfers, _variant_name(hw), seconds
                        )
                        await asyncio.sleep(args.pause)
            finally:
                if booth_client is not None:
                    await link.booth.run(booth_client.aclose)
                if sender is not None:
                    await link.booth.run(_close_pc, sender.pc)
                if receiver is not None:
                    await link.hq.run(_close_pc, receiver.pc)
                if hq_console is not None:
                    await link.hq.run(_hq_stop_console, hq_console)
                restrict_host_addresses(["127.0.0.1"])
    profile = link.profile
    p95 = percentile(relay, 95)
    tcp_p95 = percentile(tcp, 95)
    ratio = p95 / tcp_p95 if tcp_p95 > 0 else math.nan
    size = len(still.jpeg)
    return {
        "scenario": "document_still",
        "path": (
            "booth.document_still.relay_still: still_offer with a relay ticket on an aiortc data"
            " channel (booth and HQ namespaces), the sealed JPEG uploaded by"
            " booth.console_client over the link into the real hq_console still relay, fetched"
            " by a signed-in staff client on the HQ side, opened and SHA-256 checked"
        ),
        "profile": profile.name,
        "link": {
            "rate_mbit": profile.rate_mbit,
            "delay_ms": profile.delay_ms,
            "loss_percent": profile.loss_percent,
        },
        "bytes": size,
        "width": still.width,
        "height": still.height,
        "transfers": len(relay),
        "p50_s": rounded(percentile(relay, 50)),
        "p95_s": rounded(p95),
        "max_s": rounded(max(relay)),
        "seconds": [rounded(s) for s in relay],
        "goodput_p50_mbit_s": rounded(size * 8 / percentile(relay, 50) / 1e6),
        "tcp_p50_s": rounded(percentile(tcp, 50)),
        "tcp_p95_s": rounded(tcp_p95),
        "tcp_seconds": [rounded(s) for s in tcp],
        "tcp_goodput_p50_mbit_s": rounded(size * 8 / percentile(tcp, 50) / 1e6),
        "tcp_congestion_control": congestion,
        "ratio_p95_vs_tcp": rounded(ratio),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "data_channel_fallback": (
            {
                "high_water_bytes": PRODUCT_HIGH_WATER,
                **_summary(channel),
                "ratio_p95_vs_tcp": rounded(percentile(channel, 95) / tcp_p95),
            }
            if channel
            else None
        ),
        "variants": {
            _variant_name(hw): {
                "high_water_bytes": hw,
                **_summary(by_variant[hw]),
                "ratio_p95_vs_tcp": rounded(percentile(by_variant[hw], 95) / tcp_p95),
            }
            for hw in variants
        },
    }


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="station", help="link profile (station)")
    parser.add_argument("--transfers", type=int, default=10, help="stills per path (10)")
    parser.add_argument("--bytes", type=_size, default=4_000_000, help="JPEG size (4000000)")
    parser.add_argument(
        "--channel-transfers",
        type=int,
        default=3,
        help="also measure the data channel fallback this many times (3; 0: not at all)",
    )
    parser.add_argument(
        "--high-water",
        type=_size,
        action="append",
        default=None,
        help="also measure the data channel with this queue limit (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per transfer, s (120)")
    parser.add_argument("--pause", type=float, default=0.5, help="between transfers, s (0.5)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def guarded() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_bench(args)

    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.error("interrupted")
        sys.exit(130)
    except Exception:
        log.exception("document_still failed")
        sys.exit(1)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
