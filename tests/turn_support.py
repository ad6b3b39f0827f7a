"""coturn for tests: a real ``turnserver`` with TURN REST credentials.

::

    async with running_coturn(tmp_path, "198.51.100.10", namespace=topology.public) as turn:
        turn.urls            # turn:…?transport=udp, turn:…?transport=tcp, turns:…
        turn.secret          # the static-auth-secret (SignalingConfig.turn_secret)
        turn.log_text()      # what coturn logged so far

coturn (Debian's ``turnserver``, installed by scripts/setup.sh) runs in the foreground
inside the given network namespace (or, without one, in the test's own namespace), listens
on one address only for UDP and TCP (:attr:`CoturnServer.port`) and TLS
(:attr:`CoturnServer.tls_port`, with a self-signed certificate for that address made in
the test), relays from that same address, has no CLI, and checks credentials with
``use-auth-secret``. It logs to a file in ``directory`` and is stopped by its PID.

The :func:`loopback_coturn` fixture runs one on 127.0.0.1 (with ``allow-loopback-peers``)
for tests whose peers stay on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.protocol import IceServer
from shared.security import turn_rest_credentials, turn_urls
from tests.netlink.namespace import NetNamespace

TURNSERVER: Final = "/usr/bin/turnserver"
REALM: Final = "ekichika.test"
DEFAULT_PORT: Final = 3478
DEFAULT_TLS_PORT: Final = 5349
RELAY_PORTS: Final = (49152, 49407)
# What a city's server denies as relay peers (docs/architecture.md, "NAT traversal").
DENIED_PEER_RANGES: Final = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
)
_READY_S: Final = 10.0
_STOP_GRACE_S: Final = 3.0


@dataclass
class CoturnServer:
    """A running coturn; see the module docstring."""

    address: str
    port: int
    tls_port: int | None
    secret: str
    realm: str
    log_path: Path
    certificate_path: Path | None  # the self-signed certificate a TLS client must trust
    pid: int
    namespace: NetNamespace | None = field(default=None, repr=False)

    @property
    def udp_url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=udp"

    @property
    def tcp_url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=tcp"

    @property
    def tls_url(self) -> str | None:
        if self.tls_port is None:
            return None
        return f"turns:{self.address}:{self.tls_port}?transport=tcp"

    @property
    def urls(self) -> list[str]:
        """UDP, TCP and (when enabled) TLS: what ``SignalingConfig.turn_urls`` holds."""
        return turn_urls(self.address, port=self.port, tls_port=self.tls_port)

    def credentials(
        self, user: str, ttl_s: int = 600, *, secret: str | None = None
    ) -> tuple[str, str]:
        """REST credentials for ``user`` (``ttl_s`` < 0: already expired; ``secret``:
        sign with another secret, i.e. forge them)."""
        return turn_rest_credentials(secret or self.secret, user, ttl_s)

    def ice_server(self, user: str, ttl_s: int = 600) -> IceServer:
        username, password = self.credentials(user, ttl_s)
        return IceServer(urls=self.urls, username=username, credential=password)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self, containing: str) -> list[str]:
        return [line for line in self.log_text().splitlines() if containing in line]

    async def wait_for_log(self, pattern: str, within: float = 5.0) -> re.Match[str]:
        """Wait until a log line matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            for line in self.log_text().splitlines():
                if found := regex.search(line):
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(f"coturn logged no line matching {pattern!r}")
            await asyncio.sleep(0.05)


def self_signed_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A P-256 key and a one-day certificate for the IP ``address``; (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ekichika test TURN")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "turn-cert.pem", directory / "turn-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def coturn_config(
    directory: Path,
    address: str,
    *,
    port: int,
    tls_port: int | None,
    secret: str,
    realm: str,
    certificate: tuple[Path, Path] | None,
) -> str:
    lines = [
        f"listening-ip={address}",
        f"relay-ip={address}",
        f"listening-port={port}",
        f"min-port={RELAY_PORTS[0]}",
        f"max-port={RELAY_PORTS[1]}",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={realm}",
        "fingerprint",
        "no-cli",
        "no-dtls",
        "no-multicast-peers",
        "no-software-attribute",
        "no-stdout-log",
        "verbose",
        "simple-log",
        f"log-file={directory / 'turnserver.log'}",
        f"pidfile={directory / 'turnserver.pid'}",
        f"userdb={directory / 'turndb.sqlite3'}",
    ]
    if ipaddress.ip_address(address).is_loopback:
        lines.append("allow-loopback-peers")
    else:
        lines += [f"denied-peer-ip={r}" for r in DENIED_PEER_RANGES]
    if tls_port is not None and certificate is not None:
        cert, key = certificate
        lines += [f"tls-listening-port={tls_port}", f"cert={cert}", f"pkey={key}"]
    else:
        lines.append("no-tls")
    return "\n".join(lines) + "\n"


async def _listening(namespace: NetNamespace | None, address: str, port: int) -> bool:
    loop = asyncio.get_running_loop()
    if namespace is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
    else:
        sock = namespace.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), 1.0)
        except (OSError, TimeoutError):
            return False
    return True


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def running_coturn(
    directory: Path,
    address: str,
    *,
    namespace: NetNamespace | None = None,
    port: int = DEFAULT_PORT,
    tls_port: int | None = DEFAULT_TLS_PORT,
    secret: str | None = None,
    realm: str = REALM,
) -> AsyncIterator[CoturnServer]:
    """coturn on ``address`` (which must belong to ``namespace``, or to the test's own
    namespace when None); stopped by PID on exit. ``tls_port=None``: no TLS listener."""
    if shutil.which(TURNSERVER) is None:
        pytest.skip("coturn is not installed (scripts/setup.sh installs it)")
    os.makedirs(directory, exist_ok=True)
    secret = secret or secrets.token_urlsafe(24)
    certificate = self_signed_certificate(directory, address) if tls_port is not None else None
    conf = directory / "turnserver.conf"
    conf.write_text(
        coturn_config(
            directory,
            address,
            port=port,
            tls_port=tls_port,
            secret=secret,
            realm=realm,
            certificate=certificate,
        )
    )
    argv = [TURNSERVER, "-c", str(conf)]
    if namespace is not None:
        argv = namespace.command(argv)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    server = CoturnServer(
        address=address,
        port=port,
        tls_port=tls_port,
        secret=secret,
        realm=realm,
        log_path=directory / "turnserver.log",
        certificate_path=None if certificate is None else certificate[0],
        pid=proc.pid,
        namespace=namespace,
    )
    try:
        deadline = time.monotonic() + _READY_S
        ports = [port] if tls_port is None else [port, tls_port]
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"turnserver exited with status {proc.returncode}:\n{server.log_text()}"
                )
            ready = "Total General servers" in server.log_text()
            if ready and all([await _listening(namespace, address, p) for p in ports]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start:\n{server.log_text()}")
            await asyncio.sleep(0.05)
        yield server
    finally:
        await _stop(proc)


@pytest.fixture
async def loopback_coturn(tmp_path: Path) -> AsyncIterator[CoturnServer]:
    """coturn on 127.0.0.1 of the test's namespace (UDP/TCP 3478, TLS 5349)."""
    async with running_coturn(tmp_path / "coturn", "127.0.0.1") as server:
        yield server
