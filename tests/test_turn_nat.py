"""Calls through NAT and UDP-blocking firewalls, relayed by a real coturn.

The booth and the staff PC each sit behind their own NAT router (tests/netlink/nat.py:
symmetric masquerade, no inbound connections, private addresses the other side cannot
route to); coturn and a real signaling server run on the public side between them.
Signaling hands both peers time-limited TURN credentials in ``call_started``; the booth is
an aiortc offerer configured by :func:`booth.ice.rtc_configuration`, the staff member the
automated staff peer (bench/staff_peer.py). What is proven, by content:

* both behind NAT → the call connects, the selected candidate pair is relayed on both
  sides, and frames stamped by the booth arrive at staff in order;
* UDP dropped at the booth's router → the booth's relay runs over TCP (and over TLS),
  and media still flows;
* expired or forged credentials → coturn refuses the allocation (its log says why, and
  the client sees 401), and no call connects with them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioice.stun
import aioice.turn
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.staff_peer import BOOTH_TONE_HZ, AutoStaff
from booth.ice import (
    CandidatePath,
    restrict_host_addresses,
    rtc_configuration,
    selected_candidate_path,
)
from booth.media import StampedVideoTrack, ToneAudioTrack
from shared.config import SignalingConfig
from shared.protocol import CallStarted, IceServer, Relay, RequestHelp, SdpPayload
from shared.security import TurnTransport
from signaling.app import create_app
from tests.netlink.nat import SERVICE_ADDRESS, NatTopology, nat_topology
from tests.signaling_support import (
    BOOTH_CREDENTIALS,
    TEST_TIMINGS,
    TOKEN_SECRET,
    StaffTokenFactory,
    connect_booth,
    eventually,
    prepare_database,
    sqlite_url,
)
from tests.turn_support import CoturnServer, running_coturn
from tests.turn_support import loopback_coturn as loopback_coturn

FRAMES_WANTED = 8  # stamped booth frames staff must decode (0.8 s of 10 fps video)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@dataclass
class Network:
    topology: NatTopology
    turn: CoturnServer
    directory: Path


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    if os.geteuid() != 0:
        pytest.skip("the NAT topology needs root (network namespaces, nftables)")
    async with nat_topology() as topology:
        async with running_coturn(
            tmp_path / "coturn", SERVICE_ADDRESS, namespace=topology.public
        ) as turn:
            yield Network(topology, turn, tmp_path)


@pytest.fixture(autouse=True)
def _hosts_behind_nat() -> Iterator[None]:
    """Host candidates on the two private addresses (each peer binds the one its
    namespace has); back to loopback-only afterwards."""
    restrict_host_addresses(["192.168.10.2", "192.168.20.2"])
    yield
    restrict_host_addresses(["127.0.0.1"])


@contextlib.asynccontextmanager
async def public_signaling(net: Network, **overrides: Any) -> AsyncIterator[str]:
    """A signaling server on the public service address; yields its ws:// base URL."""
    url = sqlite_url(net.directory / "signaling.sqlite3")
    await prepare_database(url)
    settings: dict[str, Any] = {
        "host": SERVICE_ADDRESS,
        "port": 0,
        "database_url": url,
        "token_secret": TOKEN_SECRET,
        "turn_urls": net.turn.urls,
        "turn_secret": net.turn.secret,
        "turn_ttl_s": 300,
        **TEST_TIMINGS,
        **overrides,
    }
    runner = web.AppRunner(create_app(SignalingConfig(**settings)), shutdown_timeout=2.0)
    await runner.setup()
    sock = net.topology.public.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((SERVICE_ADDRESS, 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        yield f"ws://{SERVICE_ADDRESS}:{port}"
    finally:
        await runner.cleanup()
        sock.close()


# --------------------------------------------------------------------------------------
# the two peers, each run on its own namespace's event loop
# --------------------------------------------------------------------------------------


@dataclass
class BoothOutcome:
    ice_servers: list[IceServer]
    offered_candidate_types: set[str]
    state: str
    path: CandidatePath | None


@dataclass
class StaffOutcome:
    connected: bool
    stamps: list[int]
    path: CandidatePath | None


async def booth_side(
    ws_url: str,
    *,
    relay_only: bool,
    turn_transport: TurnTransport | None,
    staff_done: concurrent.futures.Future[None],
    booth_done: concurrent.futures.Future[None],
    connect_within: float,
) -> BoothOutcome:
    """The booth: asks for 市民課, makes the WebRTC offer with the ICE servers signaling
    sent, sends stamped 320x240 10 fps video until staff has seen enough. Gives up when
    WebRTC has not connected within ``connect_within`` seconds (as the booth's own
    connect timeout does)."""
    pc: RTCPeerConnection | None = None
    try:
        async with connect_booth(ws_url, "seiseki-1", BOOTH_CREDENTIALS["seiseki-1"]) as client:
            await client.send(RequestHelp(request_id="turn-1", department="shimin", language="ja"))
            started = await client.expect(CallStarted, within=15)
            pc = RTCPeerConnection(
                rtc_configuration(
                    started.ice_servers, relay_only=relay_only, turn_transport=turn_transport
                )
            )
            settled = asyncio.Event()

            @pc.on("connectionstatechange")
            def _state() -> None:
                assert pc is not None
                if pc.connectionState in ("connected", "failed", "closed"):
                    settled.set()

            pc.addTrack(StampedVideoTrack(width=320, height=240, fps=10))
            pc.addTrack(ToneAudioTrack(hz=BOOTH_TONE_HZ))
            await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp
            offered = {
                line.split(" typ ", 1)[1].split()[0]
                for line in sdp.splitlines()
                if line.startswith("a=candidate:")
            }
            await client.send(
                Relay(session_id=started.session_id, payload=SdpPayload(sdp_type="offer", sdp=sdp))
            )
            while True:
                relay = await client.expect(Relay, within=15)
                if isinstance(relay.payload, SdpPayload) and relay.payload.sdp_type == "answer":
                    break
            await pc.setRemoteDescription(RTCSessionDescription(relay.payload.sdp, "answer"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), connect_within)
            state = pc.connectionState
            path = selected_candidate_path(pc)
            if state == "connected":
                await asyncio.wait_for(asyncio.wrap_future(staff_done), 30)
            return BoothOutcome(started.ice_servers, offered, state, path)
    finally:
        booth_done.set_result(None)
        if pc is not None:
            await pc.close()


async def staff_side(
    ws_url: str,
    token: str,
    *,
    expect_media: bool,
    staff_done: concurrent.futures.Future[None],
    booth_done: concurrent.futures.Future[None],
) -> StaffOutcome:
    """The staff member: available, accepts the offer; with ``expect_media`` waits for
    FRAMES_WANTED stamped booth frames, otherwise until the booth has given up."""
    try:
        async with AutoStaff(ws_url + "/ws/staff", token, fps=10) as staff:
            await staff.set_available()
            record = await asyncio.wait_for(staff.call_started.get(), 20)
            if expect_media:
                async with asyncio.timeout(30):
                    await record.connected.wait()
                    await eventually(lambda: record.frames >= FRAMES_WANTED, within=30)
            else:
                await asyncio.wait_for(asyncio.wrap_future(booth_done), 40)
            pc = staff._pcs.get(record.session_id)
            path = None if pc is None else selected_candidate_path(pc)
            return StaffOutcome(record.connected.is_set(), list(record.stamps), path)
    finally:
        if not staff_done.done():
            staff_done.set_result(None)


async def call_through(
    net: Network,
    ws_url: str,
    *,
    relay_only: bool = False,
    turn_transport: TurnTransport | None = None,
    expect_media: bool = True,
) -> tuple[BoothOutcome, StaffOutcome]:
    staff_done: concurrent.futures.Future[None] = concurrent.futures.Future()
    booth_done: concurrent.futures.Future[None] = concurrent.futures.Future()
    token = StaffTokenFactory(TOKEN_SECRET)("sato")
    topo = net.topology
    staff = asyncio.ensure_future(
        topo.staff.host.run(
            functools.partial(
                staff_side,
                ws_url,
                token,
                expect_media=expect_media,
                staff_done=staff_done,
                booth_done=booth_done,
            )
        )
    )
    await asyncio.sleep(0.5)  # staff available before the request: matched at once
    booth = asyncio.ensure_future(
        topo.booth.host.run(
            functools.partial(
                booth_side,
                ws_url,
                relay_only=relay_only,
                turn_transport=turn_transport,
                staff_done=staff_done,
                booth_done=booth_done,
                connect_within=20.0 if expect_media else 4.0,
            )
        )
    )
    booth_outcome, staff_outcome = await asyncio.gather(booth, staff)
    return booth_outcome, staff_outcome


def assert_media_flowed(staff: StaffOutcome) -> None:
    assert staff.connected
    assert len(staff.stamps) >= FRAMES_WANTED
    assert staff.stamps == sorted(staff.stamps)
    assert staff.stamps[-1] > staff.stamps[0]


def assert_relayed(path: CandidatePath | None, relay_protocol: str) -> None:
    assert path is not None
    assert path.local_type == "relay"
    assert path.remote_type == "relay"
    assert path.local_address[0] == SERVICE_ADDRESS  # coturn's relayed address
    assert path.remote_address[0] == SERVICE_ADDRESS
    assert path.relay_protocol == relay_protocol


# --------------------------------------------------------------------------------------
# the topology itself
# --------------------------------------------------------------------------------------


async def test_the_nat_hides_each_host_from_the_other(network: Network) -> None:
    topo = network.topology
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername")[0])
        writer.close()

    public = topo.public.socket()
    public.bind((SERVICE_ADDRESS, 0))
    server = await asyncio.start_server(accept, sock=public)
    staff_listener = topo.staff.host.socket()
    staff_listener.bind((topo.staff.address, 0))
    staff_listener.listen()
    try:
        # The booth reaches the public side; servers there see its router's address.
        booth_out = topo.booth.host.socket()
        with booth_out:
            await loop.sock_connect(booth_out, public.getsockname())
        await asyncio.sleep(0.1)
        assert seen == [topo.booth.public_address]
        # The booth cannot reach the staff PC's own address (no route across the public
        # side), nor the staff router's public address (no inbound connections).
        for target in (
            (topo.staff.address, staff_listener.getsockname()[1]),
            (topo.staff.public_address, 22),
        ):
            probe = topo.booth.host.socket()
            with probe, pytest.raises((OSError, TimeoutError)):
                await asyncio.wait_for(loop.sock_connect(probe, target), 1.0)
    finally:
        server.close()
        await server.wait_closed()
        staff_listener.close()


# --------------------------------------------------------------------------------------
# (a) both behind NAT, UDP allowed
# --------------------------------------------------------------------------------------


async def test_call_behind_two_nats_goes_through_turn(network: Network) -> None:
    async with public_signaling(network) as ws_url:
        booth, staff = await call_through(network, ws_url)  # default ICE policy
    # Signaling handed out the three TURN URLs with one time-limited credential.
    (server,) = booth.ice_servers
    assert server.urls == network.turn.urls
    assert server.username is not None and server.credential is not None
    expiry, user = server.username.split(":", 1)
    assert 0 < int(expiry) - time.time() <= 300  # turn_ttl_s
    assert user.startswith("s-")  # the session id, not a person
    assert {"host", "relay"} <= booth.offered_candidate_types  # host offered, but useless
    assert booth.state == "connected"
    assert_relayed(booth.path, "udp")
    assert_relayed(staff.path, "udp")
    assert_media_flowed(staff)
    # coturn allocated for this call's credential (user = the session id).
    await network.turn.wait_for_log(
        rf"user <{re.escape(server.username)}>: incoming packet ALLOCATE processed, success"
    )


# --------------------------------------------------------------------------------------
# (b) UDP dropped at the booth's router: TURN over TCP, over TLS
# --------------------------------------------------------------------------------------


async def _udp_is_dropped(net: Network) -> None:
    """A datagram from the booth to the public side never arrives; the router counted it."""
    topo = net.topology
    loop = asyncio.get_running_loop()
    receiver = topo.public.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((SERVICE_ADDRESS, 0))
    sender = topo.booth.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        sender.sendto(b"probe", receiver.getsockname())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(receiver, 100), 0.5)
    assert await topo.dropped_udp_packets("booth") >= 1


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_call_through_a_udp_blocking_firewall_uses_turn_over_tcp(
    network: Network, transport: TurnTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await network.topology.block_udp("booth")
    await _udp_is_dropped(network)
    if transport == "tls":
        # the booth trusts the test's self-signed coturn certificate
        assert network.turn.certificate_path is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(network.turn.certificate_path))
    async with public_signaling(network) as ws_url:
        booth, staff = await call_through(
            network, ws_url, relay_only=True, turn_transport=transport
        )
    assert booth.offered_candidate_types == {"relay"}  # relay-only: no address revealed
    assert booth.state == "connected"
    assert_relayed(booth.path, transport)
    assert_relayed(staff.path, "udp")  # the staff side's UDP is not blocked
    assert_media_flowed(staff)
    issued = booth.ice_servers[0].username
    assert issued is not None
    await network.turn.wait_for_log(
        rf"user <{re.escape(issued)}>: incoming packet ALLOCATE processed, success"
    )


# --------------------------------------------------------------------------------------
# (c) expired and forged credentials
# --------------------------------------------------------------------------------------


async def _allocate(server: CoturnServer, username: str, password: str, transport: str) -> None:
    turn_transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=(server.address, server.port),
        username=username,
        password=password,
        transport=transport,
    )
    turn_transport.close()


@pytest.mark.parametrize("kind", ["expired", "forged"])
async def test_expired_or_forged_credentials_are_refused(network: Network, kind: str) -> None:
    turn = network.turn
    if kind == "expired":
        username, password = turn.credentials("probe-expired", ttl_s=-60)
        overrides: dict[str, Any] = {"turn_ttl_s": -60}
    else:
        username, password = turn.credentials("probe-forged", secret="not-the-city-secret")
        overrides = {"turn_secret": "not-the-city-secret"}
    # A valid credential allocates: the server is there and answers.
    good = turn.credentials("probe-valid")
    await network.topology.booth.host.run(_allocate, turn, *good, "udp")
    # The bad one is refused with 401, over UDP and over TCP.
    for transport in ("udp", "tcp"):
        with pytest.raises(aioice.stun.TransactionFailed) as refused:
            await network.topology.booth.host.run(_allocate, turn, username, password, transport)
        assert refused.value.response.attributes["ERROR-CODE"][0] == 401
    await turn.wait_for_log(
        rf"user <{re.escape(username)}>: incoming packet message processed, error 401"
    )
    # Signaling handing out such credentials: no relayed candidate, no call.
    async with public_signaling(network, **overrides) as ws_url:
        booth, staff = await call_through(network, ws_url, relay_only=True, expect_media=False)
    assert booth.offered_candidate_types == set()  # relay-only and no allocation
    assert booth.state in ("new", "failed")
    assert not staff.connected
    assert staff.stamps == []
    issued = booth.ice_servers[0].username
    assert issued is not None and issued.split(":", 1)[1].startswith("s-")
    await turn.wait_for_log(rf"Cannot find credentials of user <{re.escape(issued)}>")
    assert not [line for line in turn.log_lines(issued) if "processed, success" in line]


# --------------------------------------------------------------------------------------
# coturn on loopback (the fixture other tests use)
# --------------------------------------------------------------------------------------


async def test_loopback_coturn_relays_two_relay_only_peers(
    loopback_coturn: CoturnServer,
) -> None:
    restrict_host_addresses(["127.0.0.1"])
    server = loopback_coturn.ice_server("loopback-probe")
    offerer = RTCPeerConnection(rtc_configuration([server], relay_only=True))
    answerer = RTCPeerConnection(rtc_configuration([server], relay_only=True))
    try:
        channel = offerer.createDataChannel("probe")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(opened.wait(), 15)
        for pc in (offerer, answerer):
            path = selected_candidate_path(pc)
            assert path is not None and path.local_type == "relay"
            assert path.relay_protocol == "udp"
            assert path.local_address[0] == "127.0.0.1"
    finally:
        await offerer.close()
        await answerer.close()
    await loopback_coturn.wait_for_log(r"user <\d+:loopback-probe>: incoming packet ALLOCATE")
