"""A private CUPS scheduler for tests: its own directory, port and socket; stopped by PID.

``cupsd -f -c cupsd.conf -s cups-files.conf`` with ``Browsing No`` and ``FileDevice Yes``,
no authentication (it listens on loopback only, inside the test's network namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CUPSD = "/usr/sbin/cupsd"
GENERIC_PDF_PPD = Path("/usr/share/ppd/cupsfilters/Generic-PDF_Printer-PDF.ppd")


def _require(binary: str) -> str:
    path = shutil.which(binary) or (binary if os.path.exists(binary) else None)
    if path is None:
        raise RuntimeError(
            f"{binary} is missing: install the Debian packages cups, cups-client and "
            "cups-filters (scripts/setup.sh does)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class CupsServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def server(self) -> str:
        """What ``lp -h`` and ``CUPS_SERVER`` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CUPS_SERVER": self.server}

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [_require(args[0]), "-h", self.server, *args[1:]],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}\n{self.log()}")
        return result.stdout

    def add_raw_queue(self, name: str, uri: str) -> None:
        """A raw queue: bytes go to ``uri`` unchanged (e.g. ``socket://127.0.0.1:PORT``)."""
        self.run("lpadmin", "-p", name, "-E", "-v", uri, "-m", "raw")

    def add_pdf_queue(self, name: str, output: Path) -> None:
        """A PDF printer (cups-filters' generic PDF model) writing each job to ``output``."""
        model = ["-P", str(GENERIC_PDF_PPD)] if GENERIC_PDF_PPD.exists() else ["-m", "raw"]
        self.run("lpadmin", "-p", name, "-E", "-v", f"file://{output}", *model)

    def log(self) -> str:
        path = self.root / "log" / "error_log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def running_cupsd() -> Iterator[CupsServer]:
    """Start a private cupsd and stop it (by PID) afterwards."""
    _require(CUPSD)
    for tool in ("lp", "lpadmin", "lpstat"):
        _require(tool)
    # Backends and filters run as the unprivileged "lp" user: the directory must be
    # reachable for it (pytest's tmp_path is not).
    root = Path(tempfile.mkdtemp(prefix="ekichika-cups-"))
    root.chmod(0o755)
    for sub in ("spool", "spool/tmp", "cache", "state", "log", "ppd", "out"):
        (root / sub).mkdir()
    (root / "spool").chmod(0o710)
    (root / "spool" / "tmp").chmod(0o1777)
    (root / "out").chmod(0o1777)
    port = _free_port()
    (root / "cupsd.conf").write_text(
        f"""LogLevel info
Listen 127.0.0.1:{port}
Listen {root}/cups.sock
Browsing No
BrowseLocalProtocols none
DefaultAuthType None
WebInterface No
MaxLogSize 0
JobRetryInterval 1
PreserveJobHistory Yes
<Location />
  Order allow,deny
  Allow all
</Location>
<Policy default>
  <Limit All>
    Order deny,allow
    Allow all
  </Limit>
</Policy>
""",
        encoding="utf-8",
    )
    (root / "cups-files.conf").write_text(
        f"""ServerRoot {root}
RequestRoot {root}/spool
TempDir {root}/spool/tmp
CacheDir {root}/cache
StateDir {root}/state
ErrorLog {root}/log/error_log
AccessLog {root}/log/access_log
PageLog {root}/log/page_log
FileDevice Yes
Printcap {root}/printcap
User lp
Group lp
SystemGroup root
""",
        encoding="utf-8",
    )
    with open(root / "log" / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            [CUPSD, "-f", "-c", str(root / "cupsd.conf"), "-s", str(root / "cups-files.conf")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = CupsServer(root, port, process)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                err = (root / "log" / "stderr").read_text(errors="replace")
                raise RuntimeError(f"cupsd exited: {err}\n{server.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cupsd did not start listening\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
