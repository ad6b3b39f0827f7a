"""ICE settings for the booth's WebRTC peer.

aiortc gathers host candidates through :func:`aioice.ice.get_host_addresses`, which leaves
out 127.0.0.1 and uses every other interface of the machine. A booth may have to keep its
media on one interface (and tests must keep it on loopback), so
:func:`restrict_host_addresses` replaces that function with one that returns only the
addresses given.

:func:`rtc_configuration` always hands aiortc an explicit list of ICE servers: given
``None``, aiortc would add a public STUN server on its own.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Final

import aioice.ice
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer

from shared.protocol import IceServer

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


def rtc_configuration(ice_servers: Sequence[IceServer]) -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE servers (an empty list when none).

    Every track and the data channel share one ICE/DTLS transport (max-bundle): one set
    of candidates to gather and check, one DTLS handshake, one port through a firewall
    or TURN server. Browsers bundle by default."""
    servers = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in ice_servers
    ]
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
