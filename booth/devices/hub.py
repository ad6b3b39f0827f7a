"""All devices of one booth, opened from the configuration, with one status feed.

The agent owns one :class:`BoothDevices`: the card reader, the document camera, the
receipt and A4 printers and the durable print spool in front of them. A device that cannot
be opened does not stop the booth: its owner starts in ``offline``/``error`` with the
reason, so the kiosk, the branch board and ``python -m booth doctor`` can say what is wrong.

Besides opening and closing them, the hub runs the devices' housekeeping while the booth
runs: it asks idle printers and the document camera for their condition now and then, and
drops the documents of finished print jobs from the spool once they are older than the
retention time (they may hold personal data; only a reprint needs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from booth.devices.base import DeviceKind, DeviceOwner, DeviceState, DeviceStatus
from booth.devices.card import CardReaderOwner, open_card_reader
from booth.devices.printing import (
    A4Printer,
    ReceiptPrinter,
    create_a4_printer,
    create_receipt_printer,
)
from booth.document_camera import DocumentCameraOwner, open_document_camera
from booth.spool import PrintSpool
from shared.config import DeviceConfig
from shared.errors import ConfigError, DeviceError

logger = logging.getLogger(__name__)

DevicesListener = Callable[[list[DeviceStatus]], None]


DEFAULT_SPOOL_RETENTION_S = 24 * 3600.0
DEFAULT_SPOOL_PURGE_INTERVAL_S = 3600.0


class BoothDevices:
    """The booth's card reader, document camera, printers and print spool.

    ``printer_poll_s``/``camera_check_s``: how often idle printers and the document camera
    are asked for their condition (0: never). ``spool_retention_s``: how long the spool keeps
    the document of a printed or cancelled job (for a reprint); ``spool_purge_interval_s``:
    how often it drops older ones (also once at start; 0: never).
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        printer_poll_s: float = 30.0,
        camera_check_s: float = 5.0,
        spool_retention_s: float = DEFAULT_SPOOL_RETENTION_S,
        spool_purge_interval_s: float = DEFAULT_SPOOL_PURGE_INTERVAL_S,
    ) -> None:
        self.config = config
        # Printers report paper out and offline only when asked: ask them while idle, so
        # that an empty roll shows on the branch board before the next resident needs it.
        self.printer_poll_s = printer_poll_s
        self.camera_check_s = camera_check_s
        self.spool_retention_s = spool_retention_s
        self.spool_purge_interval_s = spool_purge_interval_s
        self.documents_purged = 0  # spool documents dropped by the retention task so far
        self._tasks: list[asyncio.Task[None]] = []
        self.card: CardReaderOwner | None = None
        self.document_camera: DocumentCameraOwner | None = None
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
            self.document_camera = DocumentCameraOwner(open_document_camera(c))
            self.document_camera.add_listener(self._changed)
        except (ConfigError, DeviceError) as err:
            self._unavailable_device(DeviceKind.DOCUMENT_CAMERA, c.document_camera, err)
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
        await self.check_document_camera()
        self._notify()
        self._every(self.printer_poll_s, self.check_printers, "checking the printers")
        self._every(self.camera_check_s, self.check_document_camera, "checking the camera")
        if self.spool_purge_interval_s > 0:
            try:
                await self.purge_spool_documents()
            except Exception:
                logger.exception("spool purge failed")
            self._every(self.spool_purge_interval_s, self.purge_spool_documents, "spool purge")

    def _every(self, interval_s: float, job: Callable[[], Awaitable[object]], what: str) -> None:
        if interval_s > 0:
            task = asyncio.create_task(self._repeat(interval_s, job, what), name=what)
            self._tasks.append(task)

    @staticmethod
    async def _repeat(interval_s: float, job: Callable[[], Awaitable[object]], what: str) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:
                logger.exception("%s failed", what)

    async def aclose(self) -> None:
        """Stop the housekeeping, close the spool and every device; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.spool is not None:
            await self.spool.aclose()
        if self.card is not None:
            await self.card.aclose()
        if self.document_camera is not None:
            with contextlib.suppress(Exception):
                await self.document_camera.aclose()
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
            DeviceKind.DOCUMENT_CAMERA: self.document_camera,  # type: ignore[dict-item]
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

    async def check_document_camera(self) -> None:
        """Ask the document camera whether it works now and publish the answer."""
        if self.document_camera is not None:
            await self.document_camera.check()

    async def purge_spool_documents(self) -> int:
        """Drop the documents of printed and cancelled jobs older than the retention time
        (the job records stay). Returns how many were dropped."""
        if self.spool is None or self._closed:
            return 0
        purged = await self.spool.purge_documents(self.spool_retention_s)
        if purged:
            self.documents_purged += purged
            logger.info(
                "print spool: dropped the documents of %d finished jobs older than %g h",
                purged,
                self.spool_retention_s / 3600,
            )
        return purged

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
    # in use: a job holds the printer, e.g. waiting in CUPS for a printer that is off (its
    # state is then "offline" from the job's progress, which a poll must not overwrite)
    return owner.in_use or owner.status.state is DeviceState.BUSY
