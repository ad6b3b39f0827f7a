"""Link emulation for tests and benchmarks: a booth and HQ in two network namespaces,
joined by a link with a given rate, delay and loss (see :mod:`tests.netlink.link`)."""

from tests.netlink.link import (
    BOOTH_ADDRESS,
    HQ_ADDRESS,
    SIDES,
    EmulatedLink,
    LinkEnd,
    LinkSetupError,
    Side,
    emulated_link,
)
from tests.netlink.namespace import NamespaceError, NetNamespace
from tests.netlink.profiles import CLOSED, LAN, PROFILES, STATION, LinkProfile, profile_named

__all__ = [
    "BOOTH_ADDRESS",
    "CLOSED",
    "HQ_ADDRESS",
    "LAN",
    "PROFILES",
    "SIDES",
    "STATION",
    "EmulatedLink",
    "LinkEnd",
    "LinkProfile",
    "LinkSetupError",
    "NamespaceError",
    "NetNamespace",
    "Side",
    "emulated_link",
    "profile_named",
]
