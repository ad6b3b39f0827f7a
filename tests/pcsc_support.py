"""A real pcscd with the vpcd virtual readers, started and stopped by the tests.

pcscd 1.9 has its socket and PID file at the fixed path ``/run/pcscd``. To keep the test
daemon apart from any other pcscd on the machine, it runs in a private mount namespace
where a fresh directory is bind-mounted on ``/run/pcscd``; clients reach it through
``PCSCLITE_CSOCK_NAME=<that directory>/pcscd.comm``. libpcsclite reads that variable once
per process, so one daemon (and one directory) serves the whole test session.

vpcd listens on 0.0.0.0:35963/35964, so the daemon is started only inside a network
namespace that has nothing but loopback (as the test command creates). Both ports lie in
the ephemeral range: they are reserved first, and the readers count as ready only when
both ports listen.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

VPCD_PORTS = (35963, 35964)
READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
SETUP_HINT = "install it with scripts/setup.sh (Debian packages pcscd, vsmartcard-vpcd)"


@dataclass
class PcscDaemon:
    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process (pyscard, pcsc_scan) of this daemon."""
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _require_isolated_network() -> None:
    interfaces = {name for _index, name in socket.if_nameindex()}  # this namespace's
    if interfaces - {"lo"}:
        pytest.fail(
            "vpcd listens on 0.0.0.0: run the card reader tests inside a network namespace "
            "with only loopback (unshare --net, as scripts/test.sh does); found interfaces "
            f"{sorted(interfaces)}"
        )


def _reserve_ports() -> None:
    current = RESERVED_PORTS.read_text().strip()
    wanted = ",".join(filter(None, [current, *(str(p) for p in VPCD_PORTS)]))
    try:
        RESERVED_PORTS.write_text(wanted)
    except OSError as err:
        pytest.fail(f"cannot reserve the vpcd ports {VPCD_PORTS} (needs root): {err}")


def start_pcscd(workdir: Path, timeout_s: float = 10.0) -> PcscDaemon:
    """Start ``pcscd -f`` with vpcd; return once both virtual readers listen."""
    pcscd = shutil.which("pcscd") or (
        "/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None
    )
    if pcscd is None:
        pytest.fail(f"pcscd is not installed; {SETUP_HINT}")
    if not VPCD_DRIVER.exists():
        pytest.fail(f"the vpcd reader driver {VPCD_DRIVER} is missing; {SETUP_HINT}")
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing")
    _require_isolated_network()
    busy = _listening_ports() & set(VPCD_PORTS)
    if busy:
        pytest.fail(f"ports {sorted(busy)} already listen: another pcscd runs in this namespace")
    _reserve_ports()
    run_dir = workdir / "run"
    run_dir.mkdir()
    Path("/run/pcscd").mkdir(parents=True, exist_ok=True)  # the mount point
    log_path = workdir / "pcscd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                'mount --bind "$1" /run/pcscd && exec "$2" -f',
                "sh",
                str(run_dir),
                pcscd,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    daemon = PcscDaemon(process, run_dir / "pcscd.comm", log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"pcscd exited with {process.returncode}:\n{daemon.log_tail()}")
        if daemon.socket_path.exists() and set(VPCD_PORTS) <= _listening_ports():
            return daemon
        if time.monotonic() > deadline:
            stop_pcscd(daemon)
            pytest.fail(
                f"pcscd did not open both vpcd ports in {timeout_s} s:\n{daemon.log_tail()}"
            )
        time.sleep(0.05)


def stop_pcscd(daemon: PcscDaemon, timeout_s: float = 5.0) -> None:
    """Stop the daemon by its PID (SIGTERM, then SIGKILL)."""
    process = daemon.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_SESSION_DAEMON = pytest.StashKey[PcscDaemon]()


@pytest.fixture(scope="session", name="pcscd")
def pcscd_session(request: pytest.FixtureRequest) -> PcscDaemon:
    """One pcscd with vpcd for the session; this process's PC/SC clients use it.

    Test modules import this fixture by name, and pytest keeps a fixture of its own for
    each module that does; libpcsclite, though, reads its socket path once per process and
    vpcd's ports take one daemon. So the daemon lives in the session's stash: the first
    module that asks starts it, every other module gets the same one, and it stops when
    the session ends."""
    stash = request.config.stash
    running = stash.get(_SESSION_DAEMON, None)
    if running is not None:
        return running
    workdir = Path(tempfile.mkdtemp(prefix="ekichika-pcscd-"))
    previous = os.environ.get("PCSCLITE_CSOCK_NAME")
    daemon = start_pcscd(workdir)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(daemon.socket_path)

    def stop() -> None:
        stop_pcscd(daemon)
        if previous is None:
            os.environ.pop("PCSCLITE_CSOCK_NAME", None)
        else:
            os.environ["PCSCLITE_CSOCK_NAME"] = previous
        shutil.rmtree(workdir, ignore_errors=True)
        del stash[_SESSION_DAEMON]

    stash[_SESSION_DAEMON] = daemon
    request.config.add_cleanup(stop)
    return daemon
