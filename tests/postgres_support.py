"""A throwaway PostgreSQL server for tests: initdb as the ``postgres`` system user, a free
port on 127.0.0.1 (Unix socket in its own temporary directory), ``fsync=off``.

One server per test session (:func:`postgres_server`), a fresh database for each test
(:func:`postgres_url`)::

    async def test_something(postgres_url: str) -> None:
        await migrate(postgres_url)   # "postgresql+asyncpg://postgres@127.0.0.1:PORT/t_…"

Tests are skipped when the server binaries (``initdb``, ``pg_ctl``) are not installed
(``scripts/setup.sh`` installs them). The server is stopped by the PID it wrote
(``postmaster.pid``), and its directory removed.
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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; :meth:`stop` is idempotent."""

    def __init__(self) -> None:
        initdb = shutil.which("initdb")
        pg_ctl = shutil.which("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.base = Path(tempfile.mkdtemp(prefix="ekichika-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.pid: int | None = None
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        else:
            self._as_postgres = []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_postgres, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run(self._initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off"
            " -c max_connections=200"
        )
        self._run(
            self._pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.base / "log"),
            "-w", "start",
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"',
        )  # fmt: skip
        return self.url(name)

    def stop(self) -> None:
        """Immediate shutdown of the postmaster (SIGQUIT to its PID), then remove the files."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The test session's PostgreSQL server (started on first use)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
