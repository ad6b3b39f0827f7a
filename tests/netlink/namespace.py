"""A network namespace held by a thread of this process, with its own event loop.

The thread calls ``unshare(CLONE_NEWNET)`` on itself, so the new namespace belongs to that
thread only; the rest of the process stays where it was. Everything that thread does
happens inside the namespace:

* sockets it creates live in the namespace for good — a socket keeps the namespace it was
  created in, so :meth:`NetNamespace.socket` hands sockets back to the caller, who can use
  them from any thread or event loop (``sock=`` arguments of asyncio and aiohttp);
* its event loop runs whole coroutines there (:meth:`NetNamespace.run`), including code
  that opens its own sockets (aiortc, aiohttp clients) and threads it starts;
* programs are run in it with ``nsenter --net=<net_path>`` (:meth:`NetNamespace.command`).

The namespace disappears once the thread has ended and no process or socket uses it any
more. No name is registered in ``/run/netns``, so nothing is left behind after a crash and
two test runs never collide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

log = logging.getLogger(__name__)

CLONE_NEWNET: Final = 0x40000000

T = TypeVar("T")


class NamespaceError(RuntimeError):
    """The namespace could not be created or has been closed."""


class NetNamespace:
    """A new, empty network namespace (only a loopback device, down) and its thread.

    Create with ``await NetNamespace.create(name)``; close with ``await aclose()``
    (idempotent). ``name`` only labels the thread and log lines.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tid: int | None = None
        self._closed = False

    @classmethod
    async def create(cls, name: str) -> NetNamespace:
        ns = cls(name)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        ns._thread = threading.Thread(
            target=ns._thread_main, args=(started,), name=f"netns-{name}", daemon=True
        )
        ns._thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await ns.aclose()
            raise
        return ns

    # -- thread ----------------------------------------------------------------------

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            started.set_exception(
                NamespaceError(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (needs root)")
            )
            return
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._tid = threading.get_native_id()
        self._loop = loop
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    # -- what callers use ------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The namespace thread's event loop (for ``run_coroutine_threadsafe`` and the like)."""
        if self._loop is None or self._closed:
            raise NamespaceError(f"namespace {self.name} is not running")
        return self._loop

    @property
    def net_path(self) -> str:
        """``/proc/<pid>/task/<tid>/ns/net``: pass to ``nsenter --net=`` or ``setns``."""
        if self._tid is None or self._closed:
            raise NamespaceError(f"namespace {self.name} is not running")
        return f"/proc/{os.getpid()}/task/{self._tid}/ns/net"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that it runs inside this namespace (``nsenter`` execs it,
        so the PID of the started process is the PID of ``argv[0]``)."""
        return ["nsenter", f"--net={self.net_path}", "--", *argv]

    def call_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the namespace thread and wait for it (blocks the caller).

        Meant for quick calls (creating a socket, opening a device). Do not call it from
        the namespace's own thread.
        """
        if threading.get_native_id() == self._tid:
            return fn(*args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(job)
        return done.result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn(*args)`` in the namespace thread; await its result."""
        return await asyncio.to_thread(self.call_blocking, fn, *args)

    async def run(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``coro_fn(*args)`` to completion on the namespace's event loop.

        Everything the coroutine creates (sockets, aiortc peers, aiohttp sessions, tasks)
        lives on that loop and in the namespace; keep such objects on that side and hand
        plain results back. Cancelling the awaiting task cancels the coroutine.
        """
        future = asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop)
        return await asyncio.wrap_future(future)

    def socket(
        self,
        family: socket.AddressFamily = socket.AF_INET,
        type: socket.SocketKind = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A new socket inside the namespace (non-blocking), usable from any thread."""

        def make() -> socket.socket:
            sock = socket.socket(family, type, proto)
            sock.setblocking(False)
            return sock

        return self.call_blocking(make)

    async def aclose(self) -> None:
        """Stop the event loop and end the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            await asyncio.to_thread(self._wait_thread_gone, thread, 10.0)

    def _wait_thread_gone(self, thread: threading.Thread, limit_s: float) -> None:
        # join() returns when Python is done with the thread, a moment before the kernel
        # has reaped it; wait for that too, so the namespace is really released on return.
        deadline = time.monotonic() + limit_s
        thread.join(limit_s)
        task_dir = None if self._tid is None else f"/proc/{os.getpid()}/task/{self._tid}"
        while task_dir is not None and os.path.exists(task_dir):
            if time.monotonic() > deadline:
                log.warning("namespace thread %s did not stop within %.0f s", self.name, limit_s)
                return
            time.sleep(0.002)
