"""A booth and a staff PC, each behind its own NAT router, and a "public" side between.

Layout (per :func:`nat_topology`), five network namespaces joined by veth pairs::

    booth host   eth0 192.168.10.2 ──── lan0 192.168.10.1   booth router
                                        wan0 198.18.10.2 ──┐  (masquerade)
                                                            │
    public       lo 198.51.100.10 (coturn, signaling)       │
                 booth0 198.18.10.1 ────────────────────────┘
                 staff0 198.18.20.1 ────────────────────────┐
                                                            │
    staff router wan0 198.18.20.2 ──────────────────────────┘  (masquerade)
                 lan0 192.168.20.1 ──── eth0 192.168.20.2   staff host

* Each router forwards its LAN to the public side and masquerades it (nftables
  ``masquerade random``: a new random public port for every flow, the "symmetric" NAT
  of mobile carriers, through which no hole can be punched) and drops every connection
  that starts on the public side. A host's own addresses are private: the other host
  has no route to them.
* The public namespace stands for the Internet: it routes between the two routers' public
  addresses and holds the service address (:data:`SERVICE_ADDRESS`, on its loopback)
  where a test runs coturn and signaling. It has no route to either LAN.
* :meth:`NatTopology.block_udp` makes a router drop every UDP packet from its LAN (a
  firewall that lets only TCP out).

Every address lives only inside these namespaces; none of them has a device that leads
out of them, so nothing reaches the outer namespace or another machine. IPv6 is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from tests.netlink.link import LinkSetupError, _stop_process
from tests.netlink.namespace import NetNamespace

log = logging.getLogger(__name__)

SiteName = Literal["booth", "staff"]

SERVICE_ADDRESS: Final = "198.51.100.10"
"""The public service address (TEST-NET-2): coturn and signaling listen here."""

_SITE_NETS: Final[dict[SiteName, tuple[str, str]]] = {
    # site: (LAN prefix, WAN prefix), each a /24
    "booth": ("192.168.10", "198.18.10"),
    "staff": ("192.168.20", "198.18.20"),
}
_NO_IPV6: Final = "net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"


@dataclass
class NatSite:
    """One side: the host (where a peer runs) and its NAT router."""

    name: SiteName
    host: NetNamespace
    router: NetNamespace
    address: str  # the host's private address
    router_lan_address: str
    public_address: str  # the router's address on the public side: what servers see

    @property
    def lan_prefix(self) -> str:
        return self.address.rsplit(".", 1)[0] + ".0/24"


class NatTopology:
    """Built and torn down by :func:`nat_topology`; see the module docstring."""

    def __init__(self) -> None:
        self._namespaces: list[NetNamespace] = []
        self._processes: list[tuple[asyncio.subprocess.Process, str]] = []
        self._sites: dict[SiteName, NatSite] = {}
        self._public: NetNamespace | None = None
        self._closed = False
        self.service_address: Final = SERVICE_ADDRESS

    @property
    def public(self) -> NetNamespace:
        assert self._public is not None
        return self._public

    @property
    def booth(self) -> NatSite:
        return self._sites["booth"]

    @property
    def staff(self) -> NatSite:
        return self._sites["staff"]

    def site(self, name: SiteName) -> NatSite:
        return self._sites[name]

    @property
    def process_pids(self) -> list[int]:
        return [p.pid for p, _ in self._processes if p.returncode is None]

    # -- programs ----------------------------------------------------------------------

    async def start_process(
        self, ns: NetNamespace, argv: list[str], **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` inside ``ns`` (keyword arguments as for
        ``asyncio.create_subprocess_exec``); stopped by PID when the topology closes."""
        if self._closed:
            raise RuntimeError("the topology is closed")
        proc = await asyncio.create_subprocess_exec(*ns.command(argv), **kwargs)
        self._processes.append((proc, f"{ns.name}:{argv[0]}"))
        return proc

    async def run_command(
        self, ns: NetNamespace, argv: list[str], stdin: str = "", limit_s: float = 30.0
    ) -> str:
        """Run ``argv`` inside ``ns`` to completion; its output. LinkSetupError on failure."""
        try:
            proc = await self.start_process(
                ns,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise LinkSetupError(f"{argv[0]} is not installed: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), limit_s)
        except BaseException:
            await _stop_process(proc, f"{ns.name}:{argv[0]}")
            raise
        if proc.returncode != 0:
            raise LinkSetupError(
                f"{ns.name}: {' '.join(argv)} failed ({proc.returncode}):\n{stdin}\n"
                f"{err.decode(errors='replace')}{out.decode(errors='replace')}"
            )
        return out.decode(errors="replace")

    # -- firewall ----------------------------------------------------------------------

    async def block_udp(self, site: SiteName) -> None:
        """The site's router drops every UDP packet coming from its LAN."""
        ruleset = (
            "table inet ekichika_firewall {\n"
            "  chain forward { type filter hook forward priority filter - 10;\n"
            '    iifname "lan0" meta l4proto udp counter drop\n'
            "  }\n"
            "}\n"
        )
        await self.run_command(self.site(site).router, ["nft", "-f", "-"], ruleset)

    async def dropped_udp_packets(self, site: SiteName) -> int:
        """How many UDP packets :meth:`block_udp` has dropped at ``site``'s router."""
        out = await self.run_command(
            self.site(site).router, ["nft", "list", "table", "inet", "ekichika_firewall"]
        )
        for line in out.splitlines():
            if "udp" in line and "counter packets" in line:
                return int(line.split("counter packets", 1)[1].split()[0])
        return 0

    # -- building ----------------------------------------------------------------------

    async def _namespace(self, name: str) -> NetNamespace:
        ns = await NetNamespace.create(name)
        self._namespaces.append(ns)
        return ns

    async def _setup(self) -> None:
        self._public = await self._namespace("nat-public")
        await self.run_command(
            self.public, ["sysctl", "-q", "-w", *_NO_IPV6.split(), "net.ipv4.ip_forward=1"]
        )
        await self.run_command(
            self.public,
            ["ip", "-batch", "-"],
            f"link set dev lo up\naddr add {SERVICE_ADDRESS}/32 dev lo\n",
        )
        for name in _SITE_NETS:
            await self._setup_site(name)

    async def _setup_site(self, name: SiteName) -> None:
        lan, wan = _SITE_NETS[name]
        host = await self._namespace(f"nat-{name}")
        router = await self._namespace(f"nat-{name}-router")
        site = NatSite(name, host, router, f"{lan}.2", f"{lan}.1", f"{wan}.2")
        self._sites[name] = site
        for ns in (host, router):
            await self.run_command(ns, ["sysctl", "-q", "-w", *_NO_IPV6.split()])
        await self.run_command(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        public_if = f"{name}0"
        await self.run_command(
            router,
            ["ip", "-batch", "-"],
            "\n".join(
                [
                    f"link add lan0 type veth peer name eth0 netns {host.net_path}",
                    f"link add wan0 type veth peer name {public_if} netns {self.public.net_path}",
                    "link set dev lo up",
                    "link set dev lan0 up",
                    "link set dev wan0 up",
                    f"addr add {lan}.1/24 dev lan0",
                    f"addr add {wan}.2/24 dev wan0",
                    f"route add default via {wan}.1 dev wan0",
                ]
            )
            + "\n",
        )
        await self.run_command(
            host,
            ["ip", "-batch", "-"],
            f"link set dev lo up\nlink set dev eth0 up\naddr add {lan}.2/24 dev eth0\n"
            f"route add default via {lan}.1 dev eth0\n",
        )
        await self.run_command(
            self.public,
            ["ip", "-batch", "-"],
            f"link set dev {public_if} up\naddr add {wan}.1/24 dev {public_if}\n",
        )
        nat = (
            "table ip ekichika_nat {\n"
            "  chain postrouting { type nat hook postrouting priority srcnat;\n"
            '    oifname "wan0" masquerade random\n'
            "  }\n"
            "  chain forward { type filter hook forward priority filter; policy drop;\n"
            "    ct state established,related accept\n"
            '    iifname "lan0" oifname "wan0" accept\n'
            "  }\n"
            "}\n"
        )
        await self.run_command(router, ["nft", "-f", "-"], nat)

    # -- teardown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop started programs by PID, close the namespaces; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc, what in reversed(self._processes):
                await _stop_process(proc, what)
        finally:
            for ns in reversed(self._namespaces):
                await ns.aclose()


@contextlib.asynccontextmanager
async def nat_topology() -> AsyncIterator[NatTopology]:
    """Build the topology of the module docstring; tear it down on exit (also when the
    body raises or is cancelled)."""
    topology = NatTopology()
    try:
        await topology._setup()
        log.info(
            "NAT topology up: booth %s behind %s, staff %s behind %s, service %s",
            topology.booth.address,
            topology.booth.public_address,
            topology.staff.address,
            topology.staff.public_address,
            SERVICE_ADDRESS,
        )
        yield topology
    finally:
        await topology.aclose()
