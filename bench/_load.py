"""Load-generation helpers shared by the benchmarks.

* child processes started by PID, stopped by PID (terminate, then kill), and tied to the
  benchmark's own life with ``PR_SET_PDEATHSIG`` so that nothing outlives a killed run;
* CPU and memory of a process read from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``;
* a steady-rate ticker, percentiles, free ports, the file-descriptor limit;
* the floor every WebSocket benchmark compares against: a minimal aiohttp WebSocket echo
  server (``python -m bench._load echo --port N``) and its client.

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import random
import resource
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import aiohttp
from aiohttp import web

from shared import wire
from shared.protocol import RequestHelp

log = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG: Final = 1
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (bounded by the hard limit).

    Child processes inherit the raised limit. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rounded(value: float, digits: int = 3) -> float | None:
    """A JSON-friendly number: NaN and infinities become None."""
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)


async def steady_ticks(rate: float, duration: float) -> AsyncIterator[int]:
    """Yield tick numbers at ``rate`` per second for ``duration`` seconds.

    Ticks are scheduled on absolute times (start + i / rate): a late tick is yielded at
    once rather than dropped, so a slow consumer does not lower the offered load.
    """
    start = time.perf_counter()
    total = int(rate * duration)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


async def gather_limited(factories: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the coroutine factories with at most ``limit`` at a time; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await factory()

    return list(await asyncio.gather(*(one(f) for f in factories)))


# --------------------------------------------------------------------------------------
# Process statistics from /proc
# --------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` in seconds (its own threads, not its children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def process_rss_mb(pid: int) -> float:
    """Resident set size now, in MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def process_peak_rss_mb(pid: int) -> float:
    """Peak resident set size since the process started (VmHWM), in MiB."""
    return _status_kib(pid, "VmHWM") / 1024


@dataclass
class ResourceMeter:
    """CPU (user+sys over wall time) and RSS of one process over a measured window."""

    pid: int
    interval_s: float = 0.1
    _cpu0: float = 0.0
    _wall0: float = 0.0
    _cpu_s: float = 0.0
    _wall_s: float = 0.0
    max_rss_mb: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._cpu0 = process_cpu_seconds(self.pid)
        self._wall0 = time.perf_counter()
        self.max_rss_mb = process_rss_mb(self.pid)
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.max_rss_mb = max(self.max_rss_mb, process_rss_mb(self.pid))
                await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.max_rss_mb = max(self.max_rss_mb, process_rss_mb(self.pid))
            self._cpu_s = process_cpu_seconds(self.pid) - self._cpu0
        self._wall_s = time.perf_counter() - self._wall0

    @property
    def cpu_seconds(self) -> float:
        return self._cpu_s

    @property
    def cpu_percent(self) -> float:
        """100 = one core busy for the whole window."""
        return 100.0 * self._cpu_s / self._wall_s if self._wall_s > 0 else math.nan


# --------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """A process started by the benchmark, logging to a file, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.stop_s: float | None = None  # how long it took to stop after SIGTERM

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc.pid

    async def start(self, env: dict[str, str] | None = None) -> None:
        self._log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a terminal Ctrl-C reaches the benchmark only
            preexec_fn=_die_with_parent,
        )
        log.info("started %s (pid %d)", self.name, self._proc.pid)

    async def wait_listening(self, host: str, port: int, limit_s: float) -> None:
        """Wait until ``host:port`` accepts TCP connections (fail early if the child exits)."""
        deadline = time.perf_counter() + limit_s
        while True:
            if self._proc is None or self._proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited before listening\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"{self.name} did not listen on {host}:{port} within {limit_s} s\n"
                        f"{self.log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Terminate by PID, kill if it does not exit in ``grace_s``; idempotent."""
        proc, self._proc = self._proc, None
        t0 = time.perf_counter()
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self.stop_s = time.perf_counter() - t0
            log.info(
                "stopped %s (pid %d, exit %s) in %.1f s",
                self.name,
                proc.pid,
                proc.returncode,
                self.stop_s,
            )
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------
# The floor: WebSocket echo
# --------------------------------------------------------------------------------------


def echo_app() -> web.Application:
    """A WebSocket server that sends every text frame back unchanged."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=wire.MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    return app


def echo_server_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "bench._load", "echo", "--host", LOOPBACK, "--port", str(port)]


@dataclass
class EchoResult:
    connections: int
    sent: int = 0
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def run_echo_load(
    url: str,
    *,
    connections: int,
    rate: float,
    duration: float,
    connect_concurrency: int = 50,
    drain_s: float = 5.0,
) -> EchoResult:
    """Open ``connections`` WebSockets to the echo server and send ``rate`` frames per
    second, round robin, for ``duration`` seconds; measure each frame's round trip.

    The frames are the same size and kind as the booths' ``request_help``, and each echo
    is decoded through :mod:`shared.wire` like a real message, so that the client-side work
    per frame matches the matching benchmark's.
    """
    result = EchoResult(connections=connections)
    sent_at: dict[str, float] = {}
    all_answered = asyncio.Event()
    sending_done = False

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    ) as http:

        async def connect() -> aiohttp.ClientWebSocketResponse:
            return await http.ws_connect(url, autoping=True, max_msg_size=wire.MAX_MESSAGE_BYTES)

        sockets = await gather_limited([connect] * connections, connect_concurrency)

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.perf_counter()
                echoed = wire.decode(wire.booth_to_server, msg.data)
                assert isinstance(echoed, RequestHelp)
                t0 = sent_at.pop(echoed.request_id, None)
                if t0 is not None:
                    result.received += 1
                    result.latencies_ms.append((now - t0) * 1000)
                if sending_done and not sent_at:
                    all_answered.set()

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        try:
            order = list(range(connections))
            random.shuffle(order)
            async for i in steady_ticks(rate, duration):
                ws = sockets[order[i % connections]]
                rid = f"echo-{i}"
                frame = wire.encode(RequestHelp(request_id=rid, department="shimin", language="ja"))
                sent_at[rid] = time.perf_counter()
                await ws.send_str(frame)
                result.sent += 1
            sending_done = True
            if sent_at:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_answered.wait(), drain_s)
        finally:
            for ws in sockets:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return result


def _serve_echo(host: str, port: int) -> None:
    raise_fd_limit()
    web.run_app(echo_app(), host=host, port=port, print=None, handle_signals=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._load")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="run the WebSocket echo server (the floor)")
    echo.add_argument("--host", default=LOOPBACK)
    echo.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "echo":
        _serve_echo(args.host, args.port)


if __name__ == "__main__":
    main()


def run_load_benchmark(
    prefix: str,
    run: Callable[[Path], Awaitable[dict[str, Any]]],
    timeout_s: float,
) -> int:
    """A load benchmark's ``main``: a temporary working directory, ``run`` in a fresh event
    loop under a hard time limit, the result as one JSON line. SIGINT and SIGTERM cancel the
    run, so that every ``finally`` stops what it started (also when the parent shell ignored
    SIGINT); exit 130 then, 2 on the time limit."""
    log = logging.getLogger("bench")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        log.info("working directory %s", tmp)
        try:
            result = asyncio.run(_limited(run(Path(tmp)), timeout_s))
        except (KeyboardInterrupt, asyncio.CancelledError):
            log.error("interrupted; everything it started is stopped")
            return 130
        except TimeoutError as err:
            log.error("timed out (the whole run is limited to %.0f s): %s", timeout_s, err)
            return 2
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


async def _limited(awaitable: Awaitable[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    for signum in stop_signals:
        loop.add_signal_handler(signum, task.cancel)
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    finally:
        for signum in stop_signals:
            loop.remove_signal_handler(signum)
