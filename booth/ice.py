"""ICE settings for the booth's WebRTC peer.

aiortc gathers host candidates through :func:`aioice.ice.get_host_addresses`, which leaves
out 127.0.0.1 and uses every other interface of the machine. A booth may have to keep its
media on one interface (and tests must keep it on loopback), so
:func:`restrict_host_addresses` replaces that function with one that returns only the
addresses given.

:func:`rtc_configuration` always hands aiortc an explicit list of ICE servers: given
``None``, aiortc would add a public STUN server on its own. It can also force relayed
candidates only and choose which of the offered TURN URLs to use (aiortc uses one), and
:func:`selected_candidate_path` tells which path a connected call took.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aioice.ice
import aioice.turn
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

from shared.protocol import IceServer
from shared.security import TurnTransport, parse_turn_url

logger = logging.getLogger(__name__)

HostAddressFunction = Callable[[bool, bool], list[str]]

# aioice's own implementation, kept so that an empty restriction restores it.
_AIOICE_HOST_ADDRESSES: Final[HostAddressFunction] = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make WebRTC host candidates use only ``addresses`` (e.g. ``["127.0.0.1"]``).

    Applies to every peer connection created afterwards in this process. An empty list
    restores aioice's default (every interface but loopback).
    """
    if not addresses:
        aioice.ice.get_host_addresses = _AIOICE_HOST_ADDRESSES  # type: ignore[assignment]
        logger.info("ICE host candidates: every interface")
        return
    checked = [str(ipaddress.ip_address(a)) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        result = []
        for address in checked:
            version = ipaddress.ip_address(address).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                result.append(address)
        return result

    aioice.ice.get_host_addresses = get_host_addresses
    logger.info("ICE host candidates restricted to %s", ", ".join(checked))


def _turn_transport(url: str) -> TurnTransport | None:
    if not url.startswith("turn"):
        return None
    try:
        return parse_turn_url(url).transport
    except ValueError:
        return None


def _preferring(ice_servers: Sequence[IceServer], transport: TurnTransport) -> list[IceServer]:
    """The servers and their URLs reordered so that the first TURN URL uses ``transport``
    (when one does; the order is kept otherwise)."""

    def rank(url: str) -> int:
        found = _turn_transport(url)
        return 0 if found == transport else 1 if found is None else 2

    reordered = [s.model_copy(update={"urls": sorted(s.urls, key=rank)}) for s in ice_servers]
    return sorted(reordered, key=lambda s: min((rank(u) for u in s.urls), default=1) != 0)


def rtc_configuration(
    ice_servers: Sequence[IceServer],
    *,
    relay_only: bool = False,
    turn_transport: TurnTransport | None = None,
) -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE servers (an empty list when none).

    Every track and the data channel share one ICE/DTLS transport (max-bundle): one set
    of candidates to gather and check, one DTLS handshake, one port through a firewall
    or TURN server. Browsers bundle by default.

    aiortc uses one TURN URL only: the first it supports, in the order given (signaling
    lists UDP, then TCP, then TLS). ``turn_transport`` picks another one when the servers
    offer it: ``"tcp"`` or ``"tls"`` for a booth whose network drops UDP. ``relay_only``
    gathers relayed candidates only (``iceTransportPolicy="relay"``): the call goes through
    TURN or fails, and the peer's own addresses never reach the other side.
    """
    if turn_transport is not None:
        ice_servers = _preferring(ice_servers, turn_transport)
    servers = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in ice_servers
    ]
    return RTCConfiguration(
        iceServers=servers,
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


@dataclass(frozen=True, slots=True)
class CandidatePath:
    """The candidate pair ICE selected for a call: the path its media takes.

    ``local_type`` / ``remote_type``: ``host``, ``srflx``, ``prflx`` or ``relay``;
    ``relay_protocol``: for a relayed local candidate, how this peer reaches its TURN
    server (``udp``, ``tcp`` or ``tls``); None otherwise."""

    local_type: str
    local_address: tuple[str, int]
    remote_type: str
    remote_address: tuple[str, int]
    relay_protocol: str | None

    @property
    def relayed(self) -> bool:
        return self.local_type == "relay" or self.remote_type == "relay"


def selected_candidate_path(pc: RTCPeerConnection) -> CandidatePath | None:
    """The pair ICE nominated for the connection's (bundled) transport; None before
    ICE has connected. For logs and tests: "this call runs through TURN over TCP"."""
    sctp = pc.sctp
    if sctp is not None:
        ice = sctp.transport.transport
    else:
        transceivers = pc.getTransceivers()
        if not transceivers:
            return None
        ice = transceivers[0].sender.transport.transport
    connection = ice._connection
    nominated = getattr(connection, "_nominated", {})
    pair = nominated.get(1)
    if pair is None:
        return None
    relay_protocol = None
    if pair.local_candidate.type == "relay":
        relay_protocol = _relay_protocol(pair.protocol)
    return CandidatePath(
        local_type=pair.local_candidate.type,
        local_address=pair.local_addr,
        remote_type=pair.remote_candidate.type,
        remote_address=pair.remote_addr,
        relay_protocol=relay_protocol,
    )


def _relay_protocol(protocol: object) -> str | None:
    """``udp``, ``tcp`` or ``tls``: how a relayed candidate reaches its TURN server."""
    transport = getattr(protocol, "transport", None)
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)
    if inner is None:
        return None
    if isinstance(inner, aioice.turn.TurnClientTcpProtocol):
        secure = inner.transport is not None and inner.transport.get_extra_info("ssl_object")
        return "tls" if secure else "tcp"
    if isinstance(inner, aioice.turn.TurnClientUdpProtocol):
        return "udp"
    return None
