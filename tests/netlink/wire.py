"""The wire of an emulated link: forwards Ethernet frames between two TAP devices, late.

Run as its own process (so that the test process's CPU use does not disturb the timing)::

    python wire.py --fd-a 3 --fd-b 4 --delay-ms 30 --parent-fd 5

``--fd-a`` and ``--fd-b`` are open TAP devices (``IFF_TAP | IFF_NO_PI``), one in each
network namespace, inherited from the process that created them. Every frame read from
one is written to the other ``delay_ms`` later; frames keep their order. When a frame
cannot be written (the receiving device's queue is full) it is dropped, as on a real wire.

Timing uses one ``timerfd`` per direction (absolute ``CLOCK_MONOTONIC`` deadlines), so
frames leave within tens of microseconds of their due time rather than at the millisecond
steps of ``epoll`` timeouts.

``--parent-fd`` is the read end of a pipe whose write end only the parent holds: end of
file there means the parent is gone, and the wire exits. SIGTERM ends it as well (default
action; it holds nothing that needs cleaning up). Once both devices are being watched it
writes ``ready`` and a newline to stdout.

Only the standard library is used, so the file runs without the project on the path.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import select
import sys
import time

_MAX_FRAME = 65536
_READ_BATCH = 64  # frames read per wake-up, so one busy direction cannot starve the other
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd, armed at absolute ``time.monotonic()`` values."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._spec = _Itimerspec()

    def arm(self, at: float) -> None:
        ns = max(int(at * 1e9), 1)  # 0 would disarm
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def acknowledge(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


class Direction:
    """Frames travelling from ``src`` to ``dst``, each released at its due time."""

    def __init__(self, src: int, dst: int, delay_s: float, timer: _TimerFd) -> None:
        self.src = src
        self._dst = dst
        self._delay_s = delay_s
        self.timer = timer
        self._in_flight: collections.deque[tuple[float, bytes]] = collections.deque()
        self.forwarded = 0
        self.dropped = 0

    def on_readable(self) -> None:
        was_empty = not self._in_flight
        due = time.monotonic() + self._delay_s
        for _ in range(_READ_BATCH):
            try:
                frame = os.read(self.src, _MAX_FRAME)
            except BlockingIOError:
                break
            if not frame:
                break
            self._in_flight.append((due, frame))
        if was_empty and self._in_flight:
            self.timer.arm(self._in_flight[0][0])

    def on_timer(self) -> None:
        self.timer.acknowledge()
        now = time.monotonic()
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            _, frame = in_flight.popleft()
            try:
                os.write(self._dst, frame)
                self.forwarded += 1
            except OSError:  # queue full (EAGAIN) or device gone: the frame is lost
                self.dropped += 1
        if in_flight:
            self.timer.arm(in_flight[0][0])


def run_wire(fd_a: int, fd_b: int, delay_s: float, parent_fd: int | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)
    directions = [
        Direction(fd_a, fd_b, delay_s, _TimerFd(libc)),
        Direction(fd_b, fd_a, delay_s, _TimerFd(libc)),
    ]
    handlers = {}
    for d in directions:
        handlers[d.src] = d.on_readable
        handlers[d.timer.fd] = d.on_timer
    poller = select.epoll()
    for fd in handlers:
        poller.register(fd, select.EPOLLIN)
    if parent_fd is not None:
        poller.register(parent_fd, select.EPOLLIN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for fd, _ in poller.poll():
            handler = handlers.get(fd)
            if handler is not None:
                handler()
            elif fd == parent_fd and not os.read(parent_fd, 64):
                return  # end of file: the parent has exited


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Forward frames between two TAP devices, late.")
    parser.add_argument("--fd-a", type=int, required=True)
    parser.add_argument("--fd-b", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--parent-fd", type=int, default=None)
    args = parser.parse_args(argv)
    run_wire(args.fd_a, args.fd_b, args.delay_ms / 1000.0, args.parent_fd)


if __name__ == "__main__":
    main()
