"""A throwaway Redis server for tests: Debian's ``redis-server`` on 127.0.0.1, a free port,
no persistence (no RDB snapshots, no append-only file), its files in a temporary directory.

One server per test session (:func:`redis_server`); :func:`redis_url` empties it before
each test::

    async def test_something(redis_url: str) -> None:   # "redis://127.0.0.1:PORT/0"
        ...

Tests are skipped when ``redis-server`` is not installed (``scripts/setup.sh`` installs
it). The server is stopped by its PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_support import free_port


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` is idempotent."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self._binary = binary
        self.base = Path(tempfile.mkdtemp(prefix="ekichika-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self._binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.base),
                "--protected-mode", "yes",
                "--loglevel", "warning",
                "--logfile", str(self.base / "log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self.command("PING") != b"+PONG\r\n":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start (see {self.base / 'log'})")
            time.sleep(0.05)

    def command(self, *words: str) -> bytes:
        """Send one command (RESP) and return the raw first reply; b"" if unreachable."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(request.encode())
                return s.recv(4096)
        except OSError:
            return b""

    def halt(self) -> None:
        """Stop the process (by its PID); :meth:`start` brings it back on the same port,
        empty: nothing is persisted."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.base, ignore_errors=True)


def _serve() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The test session's Redis server (started on first use)."""
    yield from _serve()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test alone, which it may halt and start again."""
    yield from _serve()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis server, emptied for this test."""
    assert redis_server.command("FLUSHALL") == b"+OK\r\n"
    return redis_server.url
