"""All devices of one booth, opened from the configuration, with one status feed.

The agent owns one :class:`BoothDevices`: the card reader, the receipt and A4 printers
and the durable print spool in front of them. A device that cannot be opened does not
stop the booth: its owner starts in ``offline``/``error`` with the reason, so the kiosk,
the branch board and ``python -m booth doctor`` can say what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from booth.devices.base import DeviceKind, DeviceOwner, DeviceState, DeviceStatus
from booth.devices.card import CardReaderOwner, open_card_reader
from booth.devices.printing import (
    A4Printer,
    ReceiptPrinter,
    create_a4_printer,
    create_receipt_printer,
)
from booth.spool import PrintSpool
from shared.config import DeviceConfig
from shared.errors import ConfigError, DeviceError

logger = logging.getLogger(__name__)

DevicesListener = Callable[[list[DeviceStatus]], None]


class BoothDevices:
    """The booth's card reader, printers and print spool."""

    def __init__(self, config: DeviceConfig, *, printer_poll_s: float = 30.0) -> None:
        self.config = config
        # Printers report paper out and offline only when asked: ask them while idle, so
        # that an empty roll shows on the branch board before the next resident needs it.
        self.printer_poll_s = printer_poll_s
        self._poll_task: asyncio.Task[None] | None = None
        self.card: CardReaderOwner | None = None
        self.receipt: DeviceOwner[ReceiptPrinter] | None = None
        self.a4: DeviceOwner[A4Printer] | None = None
        self.spool: PrintSpool | None = None
        self._unavailable: dict[DeviceKind, DeviceStatus] = {}
        self._listeners: list[DevicesListener] = []
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Open every configured device (idempotent). Failures become device states."""
        if self._started:
            return
        self._started = True
        c = self.config
        try:
            self.card = CardReaderOwner(open_card_reader(c.card_reader))
            self.card.add_listener(self._changed)
            await self.card.start()
        except (ConfigError, DeviceError) as err:
            self._unavailable_device(DeviceKind.CARD_READER, c.card_reader, err)
        try:
            receipt = create_receipt_printer(c.receipt_printer)
            self.receipt = DeviceOwner(DeviceKind.RECEIPT_PRINTER, receipt.name, receipt)
            self.receipt.add_listener(self._changed)
        except (ConfigError, DeviceError) as err:
            self._unavailable_device(DeviceKind.RECEIPT_PRINTER, c.receipt_printer, err)
        try:
            a4 = create_a4_printer(c.a4_printer)
            self.a4 = DeviceOwner(DeviceKind.A4_PRINTER, a4.name, a4)
            self.a4.add_listener(self._changed)
        except (ConfigError, DeviceError) as err:
            self._unavailable_device(DeviceKind.A4_PRINTER, c.a4_printer, err)
        self.spool = PrintSpool(c.spool_path, receipt_printer=self.receipt, a4_printer=self.a4)
        await self.spool.start()
        await self.check_printers()
        self._notify()
        if self.printer_poll_s > 0:
            self._poll_task = asyncio.create_task(self._poll_printers(), name="printer-poll")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        if self.spool is not None:
            await self.spool.aclose()
        if self.card is not None:
            await self.card.aclose()
        for owner in (self.receipt, self.a4):
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.driver.aclose()
        self._listeners.clear()

    def statuses(self) -> list[DeviceStatus]:
        """The state of every device, in a fixed order."""
        out: list[DeviceStatus] = []
        owners: dict[DeviceKind, DeviceOwner[object] | None] = {
            DeviceKind.CARD_READER: self.card,  # type: ignore[dict-item]
            DeviceKind.RECEIPT_PRINTER: self.receipt,  # type: ignore[dict-item]
            DeviceKind.A4_PRINTER: self.a4,  # type: ignore[dict-item]
        }
        for kind, owner in owners.items():
            if owner is not None:
                out.append(owner.status)
            elif kind in self._unavailable:
                out.append(self._unavailable[kind])
        return out

    async def check_printers(self) -> None:
        """Ask each idle printer for its condition now and publish it (a printer that is
        printing is left alone: the print spool reports on it)."""
        owners: list[DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer]] = [
            o for o in (self.receipt, self.a4) if o is not None
        ]
        for owner in owners:
            if _printing(owner):
                continue
            try:
                condition = await owner.use(lambda p: p.query_status())
            except DeviceError as err:
                owner.set_state(DeviceState.ERROR, err.reason)
                continue
            if not _printing(owner):  # a job may have started meanwhile
                owner.set_state(condition.state, condition.reason)

    async def _poll_printers(self) -> None:
        while True:
            await asyncio.sleep(self.printer_poll_s)
            try:
                await self.check_printers()
            except Exception:
                logger.exception("checking the printers failed")

    def add_listener(self, listener: DevicesListener) -> None:
        """Call ``listener`` with all statuses whenever one of them changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: DevicesListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _unavailable_device(self, kind: DeviceKind, spec: str, err: Exception) -> None:
        reason = getattr(err, "reason", None) or str(err)
        logger.warning("%s %s could not be opened: %s", kind.value, spec, reason)
        self._unavailable[kind] = DeviceStatus(kind, spec, DeviceState.OFFLINE, reason=reason)

    def _changed(self, _status: DeviceStatus) -> None:
        self._notify()

    def _notify(self) -> None:
        statuses = self.statuses()
        for listener in list(self._listeners):
            try:
                listener(statuses)
            except Exception:
                logger.exception("devices listener failed")


def _printing(owner: DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer]) -> bool:
    return owner.status.state is DeviceState.BUSY
