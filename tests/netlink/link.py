"""Two network namespaces, "booth" and "hq", joined by an emulated link.

Layout (per :func:`emulated_link`)::

    booth namespace                                            hq namespace
    lo + tap "link0" 198.18.0.1/30                 tap "link0" 198.18.0.2/30 + lo
      egress: tbf (rate, queue)                      egress: tbf (rate, queue)
      ingress: nft numgen loss                       ingress: nft numgen loss
              \\                                          /
               `---- wire process (delay each way) -----'

* Rate: a ``tbf`` qdisc on each TAP's egress — the sender's bottleneck of that direction.
* Loss: an nftables rule on each TAP's ingress (``numgen random mod 10000 < N drop``),
  applied to IPv4 packets arriving over the link, independently per direction.
* Delay: ``wire.py`` in its own process holds both TAP devices and writes every frame
  to the other one ``delay_ms`` later.

Addresses are in 198.18.0.0/15 (RFC 2544 benchmarking range) and exist only inside the two
namespaces. Neither namespace has a default route or any other device, so nothing in them
can reach the outer namespace, let alone another machine. IPv6 is off on the link; the
neighbours are static entries, so no ARP crosses the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from socket import AF_INET, SO_REUSEADDR, SOCK_STREAM, SOL_SOCKET, AddressFamily, SocketKind
from socket import socket as Socket
from typing import Any, Final, Literal, TypeVar

from tests.netlink.namespace import NetNamespace
from tests.netlink.profiles import LinkProfile, profile_named

log = logging.getLogger(__name__)

Side = Literal["booth", "hq"]
SIDES: Final[tuple[Side, Side]] = ("booth", "hq")

BOOTH_ADDRESS: Final = "198.18.0.1"
HQ_ADDRESS: Final = "198.18.0.2"
PREFIX_LEN: Final = 30
INTERFACE: Final = "link0"
MTU: Final = 1500
_MACS: Final[dict[Side, str]] = {"booth": "02:00:c6:12:00:01", "hq": "02:00:c6:12:00:02"}

_TUNSETIFF: Final = 0x400454CA
_IFF_TAP: Final = 0x0002
_IFF_NO_PI: Final = 0x1000
_WIRE_SCRIPT: Final = Path(__file__).resolve().with_name("wire.py")
_STOP_GRACE_S: Final = 3.0
_WIRE_READY_S: Final = 10.0

T = TypeVar("T")


class LinkSetupError(RuntimeError):
    """A command that builds the link failed (missing tool, kernel feature or privilege)."""


def _open_tap(name: str) -> int:
    """Create TAP device ``name`` in the calling thread's namespace; return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _stop_process(proc: asyncio.subprocess.Process, what: str) -> None:
    """Terminate ``proc`` by its PID, kill it after a grace period, reap it."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
    except TimeoutError:
        log.warning("%s (pid %d) ignored SIGTERM; killing it", what, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class LinkEnd:
    """One side of the link: its namespace, its address and ways to run code there.

    * :meth:`socket` — a socket created inside the namespace, for use on any event loop
      (``loop.create_datagram_endpoint(sock=...)``, ``asyncio.start_server(sock=...)``,
      ``web.SockSite(runner, sock)``...);
    * :meth:`run` — a coroutine run on the side's own event loop, in its own thread (for
      code that opens sockets itself: aiortc peers, aiohttp client sessions);
    * :meth:`run_command` / :meth:`start_process` — programs inside the namespace.
    """

    def __init__(self, link: EmulatedLink, side: Side, ns: NetNamespace, address: str) -> None:
        self._link = link
        self.side: Final = side
        self.ns: Final = ns
        self.address: Final = address
        self.interface: Final = INTERFACE

    @property
    def peer_address(self) -> str:
        return self._link.end(self._link.other(self.side)).address

    @property
    def net_path(self) -> str:
        """``/proc/<pid>/task/<tid>/ns/net`` of this side (``nsenter --net=...``)."""
        return self.ns.net_path

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.ns.loop

    def socket(
        self,
        family: AddressFamily = AF_INET,
        type: SocketKind = SOCK_STREAM,
        proto: int = 0,
    ) -> Socket:
        return self.ns.socket(family, type, proto)

    def bound_socket(self, type: SocketKind, port: int = 0) -> Socket:
        """A socket of this side bound to ``(address, port)``; TCP sockets also listen."""
        sock = self.ns.socket(AF_INET, type)
        try:
            sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
            sock.bind((self.address, port))
            if type == SOCK_STREAM:
                sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return sock

    async def run(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return await self.ns.run(coro_fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.ns.call(fn, *args)

    def command(self, argv: list[str]) -> list[str]:
        return self.ns.command(argv)

    async def start_process(self, argv: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
        return await self._link.start_process(self.side, argv, **kwargs)

    async def run_command(
        self, argv: list[str], limit_s: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return await self._link.run_command(self.side, argv, limit_s=limit_s, check=check)


class EmulatedLink:
    """Built and torn down by :func:`emulated_link`; see the module docstring."""

    def __init__(self, profile: LinkProfile) -> None:
        self.profile: Final = profile
        self._ends: dict[Side, LinkEnd] = {}
        self._namespaces: list[NetNamespace] = []
        self._tap_fds: list[int] = []
        self._wire: asyncio.subprocess.Process | None = None
        self._wire_pipe_w: int | None = None
        self._processes: list[tuple[asyncio.subprocess.Process, str]] = []
        self._closed = False

    # -- access ----------------------------------------------------------------------

    @property
    def booth(self) -> LinkEnd:
        return self._ends["booth"]

    @property
    def hq(self) -> LinkEnd:
        return self._ends["hq"]

    def end(self, side: Side) -> LinkEnd:
        return self._ends[side]

    @staticmethod
    def other(side: Side) -> Side:
        return "hq" if side == "booth" else "booth"

    @property
    def wire_pid(self) -> int | None:
        return None if self._wire is None else self._wire.pid

    @property
    def process_pids(self) -> list[int]:
        """PIDs of the programs started with :meth:`start_process` that still run."""
        return [p.pid for p, _ in self._processes if p.returncode is None]

    # -- programs inside a namespace --------------------------------------------------

    async def start_process(
        self, side: Side, argv: list[str], **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` inside ``side``'s namespace (keyword arguments as for
        ``asyncio.create_subprocess_exec``). The link stops it by PID when it closes;
        stop it earlier yourself if you like."""
        if self._closed:
            raise RuntimeError("the link is closed")
        proc = await asyncio.create_subprocess_exec(*self.end(side).command(argv), **kwargs)
        self._processes.append((proc, f"{side}:{argv[0]}"))
        return proc

    async def run_command(
        self, side: Side, argv: list[str], limit_s: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``side``'s namespace to completion; text output captured."""
        proc = await self.start_process(side, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit_s)
        except BaseException:
            await _stop_process(proc, f"{side}:{argv[0]}")
            raise
        result = subprocess.CompletedProcess(
            argv, proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            )
        return result

    # -- building ----------------------------------------------------------------------

    async def _setup(self) -> None:
        addresses: dict[Side, str] = {"booth": BOOTH_ADDRESS, "hq": HQ_ADDRESS}
        for side in SIDES:
            ns = await NetNamespace.create(f"{self.profile.name}-{side}")
            self._namespaces.append(ns)
            self._ends[side] = LinkEnd(self, side, ns, addresses[side])
        for side in SIDES:
            self._tap_fds.append(self.end(side).ns.call_blocking(_open_tap, INTERFACE))
        for side in SIDES:
            await self._configure(side)
        await self._start_wire()

    async def _configure(self, side: Side) -> None:
        end, peer = self.end(side), self.end(self.other(side))
        p = self.profile
        rate_bytes_s = p.rate_mbit * 1e6 / 8
        # Burst: enough for the kernel timer's granularity (4 ms at HZ=250), at least two
        # full frames. Queue: queue_ms worth of bytes at the rate.
        burst = max(int(rate_bytes_s * 0.004), 2 * (MTU + 14))
        limit = max(int(rate_bytes_s * p.queue_ms / 1000), burst + MTU + 14)
        ip_batch = "\n".join(
            [
                "link set dev lo up",
                f"link set dev {INTERFACE} address {_MACS[side]} mtu {MTU} addrgenmode none",
                f"link set dev {INTERFACE} up",
                f"addr add {end.address}/{PREFIX_LEN} dev {INTERFACE}",
                f"neigh replace {peer.address} lladdr {_MACS[peer.side]} dev {INTERFACE}"
                " nud permanent",
            ]
        )
        await self._setup_command(side, ["ip", "-batch", "-"], ip_batch + "\n")
        tbf = (
            f"qdisc replace dev {INTERFACE} root tbf rate {int(rate_bytes_s * 8)}bit"
            f" burst {burst} limit {limit}\n"
        )
        await self._setup_command(side, ["tc", "-batch", "-"], tbf)
        if p.loss_percent > 0:
            threshold = round(p.loss_percent * 100)  # out of 10000: 0.01 % steps
            ruleset = (
                "table netdev ekichika_link {\n"
                f"  chain loss {{ type filter hook ingress device {INTERFACE} priority 0;\n"
                f"    meta protocol ip numgen random mod 10000 < {threshold} drop\n"
                "  }\n"
                "}\n"
            )
            await self._setup_command(side, ["nft", "-f", "-"], ruleset)

    async def _setup_command(self, side: Side, argv: list[str], stdin: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.end(side).command(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise LinkSetupError(f"{argv[0]} is not installed: {exc}") from exc
        out, err = await proc.communicate(stdin.encode())
        if proc.returncode != 0:
            raise LinkSetupError(
                f"{side}: {' '.join(argv)} failed ({proc.returncode}):\n{stdin}\n"
                f"{err.decode(errors='replace')}{out.decode(errors='replace')}"
            )

    async def _start_wire(self) -> None:
        read_end, self._wire_pipe_w = os.pipe2(os.O_CLOEXEC)
        fd_a, fd_b = self._tap_fds
        try:
            self._wire = await asyncio.create_subprocess_exec(
                sys.executable,
                str(_WIRE_SCRIPT),
                f"--fd-a={fd_a}",
                f"--fd-b={fd_b}",
                f"--delay-ms={self.profile.delay_ms}",
                f"--parent-fd={read_end}",
                pass_fds=(fd_a, fd_b, read_end),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
        finally:
            os.close(read_end)
            # The wire holds the TAP devices now; our copies would keep them up after it.
            self._close_tap_fds()
        assert self._wire.stdout is not None
        try:
            line = await asyncio.wait_for(self._wire.stdout.readline(), _WIRE_READY_S)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            raise LinkSetupError(
                f"the link wire did not start (exit status {self._wire.returncode})"
            )

    def _close_tap_fds(self) -> None:
        fds, self._tap_fds = self._tap_fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- teardown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop started programs and the wire by PID, close the namespaces; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc, what in reversed(self._processes):
                await _stop_process(proc, what)
            if self._wire is not None:
                await _stop_process(self._wire, "link wire")
        finally:
            self._close_tap_fds()
            if self._wire_pipe_w is not None:
                with contextlib.suppress(OSError):
                    os.close(self._wire_pipe_w)
                self._wire_pipe_w = None
            for ns in reversed(self._namespaces):
                await ns.aclose()


@contextlib.asynccontextmanager
async def emulated_link(profile: LinkProfile | str) -> AsyncIterator[EmulatedLink]:
    """Build the booth–HQ link described by ``profile`` (a :class:`LinkProfile` or the name
    of one); tear it down on exit, also when the body raises or is cancelled."""
    if isinstance(profile, str):
        profile = profile_named(profile)
    link = EmulatedLink(profile)
    try:
        await link._setup()
        log.info(
            "link %s up: %s <-> %s, wire pid %s",
            profile.name,
            BOOTH_ADDRESS,
            HQ_ADDRESS,
            link.wire_pid,
        )
        yield link
    finally:
        await link.aclose()
