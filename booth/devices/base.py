"""What every device owner shares: states, the worker thread, serialised access, calm logs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.errors import DeviceError

T = TypeVar("T")
D = TypeVar("D")

logger = logging.getLogger(__name__)


class DeviceKind(enum.StrEnum):
    CARD_READER = "card_reader"
    DOCUMENT_CAMERA = "document_camera"
    RECEIPT_PRINTER = "receipt_printer"
    A4_PRINTER = "a4_printer"


class DeviceState(enum.StrEnum):
    READY = "ready"
    BUSY = "busy"
    CARD_PRESENT = "card_present"
    PAPER_OUT = "paper_out"
    OFFLINE = "offline"
    ERROR = "error"


FAILED_STATES = frozenset({DeviceState.PAPER_OUT, DeviceState.OFFLINE, DeviceState.ERROR})


@dataclass(frozen=True)
class DeviceStatus:
    """What a device is doing, since when, and (when it fails) why, in words a person can
    act on. ``reason`` never holds personal data."""

    kind: DeviceKind
    name: str  # e.g. "Virtual PCD 00 00", "receipt (socket://10.0.0.5:9100)"
    state: DeviceState
    since: float = field(default_factory=time.time)  # wall clock, seconds
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES


StatusListener = Callable[[DeviceStatus], None]


class DeviceWorker:
    """One thread for one device's blocking calls; results come back to the event loop."""

    def __init__(self, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"device-{name}"
        )
        self._closed = False

    async def run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise DeviceError("the device is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Idempotent; waits for a running call to finish."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)


class DeviceOwner(Generic[D]):
    """Holds one device driver, serialises every use of it and publishes its state.

    Subclasses call :meth:`use` for each operation and :meth:`set_state` when the device
    reports something. A failure is logged once, and the recovery once.
    """

    def __init__(self, kind: DeviceKind, name: str, driver: D) -> None:
        self.kind = kind
        self.name = name
        self.driver = driver
        self._lock = asyncio.Lock()
        self._listeners: list[StatusListener] = []
        self._status = DeviceStatus(kind, name, DeviceState.READY)

    @property
    def status(self) -> DeviceStatus:
        return self._status

    @property
    def in_use(self) -> bool:
        """Whether an operation holds the device now (a print job waiting in CUPS, a still
        being taken): a status poll then leaves the device alone."""
        return self._lock.locked()

    def add_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: StatusListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set_state(self, state: DeviceState, reason: str | None = None) -> None:
        old = self._status
        if old.state is state and old.reason == reason:
            return
        new = DeviceStatus(self.kind, self.name, state, time.time(), reason)
        self._status = new
        if new.failed and not old.failed:
            logger.warning("%s %s: %s (%s)", self.kind.value, self.name, state.value, reason)
        elif old.failed and not new.failed:
            logger.info("%s %s: recovered (%s)", self.kind.value, self.name, state.value)
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:
                logger.exception("device status listener failed")

    async def use(self, operation: Callable[[D], Awaitable[T]]) -> T:
        """Run ``operation(driver)`` with exclusive access to the device."""
        async with self._lock:
            return await operation(self.driver)
