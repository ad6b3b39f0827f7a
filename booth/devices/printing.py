"""Receipt and A4 printers: interfaces, drivers, simulators and the factories.

Receipt printers (ESC/POS): ``network:HOST[:PORT]`` (raw TCP, port 9100 by default),
``cups:QUEUE[@SERVER]`` (a raw CUPS queue), ``usb:VID:PID`` (hexadecimal ids), or
``simulated[:DIR]``. A4 printers: ``cups:QUEUE[@SERVER]`` (PDF with A4, one-sided, grey) or
``simulated[:DIR]``. ``SERVER`` is ``host:port`` of the CUPS scheduler; without it the
``CUPS_SERVER`` environment variable or the local scheduler is used.

What "printed" means differs by transport, and the drivers say so in :class:`PrintResult`:
raw port 9100 gives no delivery confirmation, so the network driver asks the printer for its
status (``DLE EOT``) before and after a job — an answer after the job proves the printer
received every byte; CUPS reports the end of the job (``confirmed``).

A :class:`PrinterError` says whether anything may have reached the printer
(``delivered``): only a job that certainly did not is ever retried automatically.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from booth.devices.base import DeviceState, DeviceWorker
from booth.devices.receipt import RECEIPT_WIDTH_80MM, Receipt, encode_escpos, render_receipt
from shared.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_RAW_PORT = 9100

# ESC/POS real-time status (Epson TM and compatibles).
DLE_EOT_PRINTER = b"\x10\x04\x01"  # bit 3: offline
DLE_EOT_PAPER = b"\x10\x04\x04"  # bits 5-6: paper end; bits 2-3: near end
_OFFLINE_BIT = 0x08
_PAPER_END_BITS = 0x60
_PAPER_NEAR_END_BITS = 0x0C


# --------------------------------------------------------------------------------------
# Results and errors


@dataclass(frozen=True)
class PrinterCondition:
    """What a printer reports. ``known`` is False when it gave no status answer."""

    state: DeviceState
    reason: str | None = None
    known: bool = True


READY = PrinterCondition(DeviceState.READY)


class PrinterError(DeviceError):
    """A print job did not (certainly) print.

    ``state`` is what the printer is in (offline, paper out, error). ``delivered`` is True
    when some or all of the job may have reached the printer: such a job must not be sent
    again without a person deciding so.
    """

    def __init__(
        self, reason: str, *, state: DeviceState = DeviceState.ERROR, delivered: bool = False
    ) -> None:
        super().__init__(reason)
        self.state = state
        self.delivered = delivered


class JobOutcome(enum.StrEnum):
    """What the print system knows about a job handed to it earlier."""

    COMPLETED = "completed"
    PENDING = "pending"  # still queued or printing there
    FAILED = "failed"  # cancelled or aborted there
    UNKNOWN = "unknown"  # the transport cannot tell (raw TCP, USB) or the job is forgotten


@dataclass(frozen=True)
class PrintResult:
    """How a job ended. ``ref`` is the print system's job id (CUPS ``queue-12``); None for
    direct transports. ``confirmed``: the print system reported the job complete (CUPS), as
    opposed to "the printer received every byte" (raw TCP, USB)."""

    ref: str | None
    confirmed: bool
    detail: str


@dataclass
class JobProgress:
    """Callbacks while a job runs (called on the event loop): the print system accepted it
    under ``ref``, and the printer's condition changed while the job waits."""

    submitted: Callable[[str], None] = field(default=lambda ref: None)
    condition: Callable[[PrinterCondition], None] = field(default=lambda c: None)


# --------------------------------------------------------------------------------------
# Interfaces


class ReceiptPrinter(Protocol):
    """An ESC/POS receipt printer (80 mm: 576 dots)."""

    @property
    def name(self) -> str: ...

    @property
    def dot_width(self) -> int: ...

    async def query_status(self) -> PrinterCondition: ...

    async def print_receipt(
        self, receipt: Receipt, *, job_id: str, progress: JobProgress | None = None
    ) -> PrintResult: ...

    async def job_outcome(self, ref: str) -> JobOutcome: ...

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult: ...

    async def aclose(self) -> None: ...


class A4Printer(Protocol):
    """A document printer for PDFs on A4 paper."""

    @property
    def name(self) -> str: ...

    async def query_status(self) -> PrinterCondition: ...

    async def print_pdf(
        self, pdf: bytes, *, job_id: str, title: str, progress: JobProgress | None = None
    ) -> PrintResult: ...

    async def job_outcome(self, ref: str) -> JobOutcome: ...

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------
# ESC/POS over python-escpos transports (network, USB)


def _condition_from_status(
    printer_status: int | None, paper_status: int | None
) -> PrinterCondition:
    if printer_status is None and paper_status is None:
        return PrinterCondition(DeviceState.READY, None, known=False)
    if paper_status is not None and paper_status & _PAPER_END_BITS:
        return PrinterCondition(
            DeviceState.PAPER_OUT, "the receipt printer is out of paper; load a new roll"
        )
    if printer_status is not None and printer_status & _OFFLINE_BIT:
        return PrinterCondition(
            DeviceState.OFFLINE,
            "the receipt printer is offline; close its cover and check the error light",
        )
    if paper_status is not None and paper_status & _PAPER_NEAR_END_BITS:
        return PrinterCondition(DeviceState.READY, "the paper roll is nearly empty")
    return READY


class _EscPosPrinter:
    """Shared by the python-escpos transports: render on the worker, status before and
    after the job, errors translated."""

    def __init__(self, name: str, dot_width: int) -> None:
        self._name = name
        self._dot_width = dot_width
        self._worker = DeviceWorker(name)
        self._answers_status: bool | None = None  # learnt from the first query

    @property
    def name(self) -> str:
        return self._name

    @property
    def dot_width(self) -> int:
        return self._dot_width

    # Subclasses: open the python-escpos printer; raise PrinterError(OFFLINE) if unreachable.
    def _open(self) -> Any:
        raise NotImplementedError

    def _set_read_timeout(self, printer: Any, timeout: float | None) -> None:
        """Bound how long a status read may wait (subclasses that can)."""

    status_timeout_s = 1.0

    def _read_status(self, printer: Any) -> PrinterCondition:
        if self._answers_status is False:
            return PrinterCondition(DeviceState.READY, None, known=False)
        self._set_read_timeout(printer, self.status_timeout_s)
        try:
            online = printer.query_status(DLE_EOT_PRINTER)
            paper = printer.query_status(DLE_EOT_PAPER) if online else b""
        except TimeoutError:
            online, paper = b"", b""
        finally:
            self._set_read_timeout(printer, None)
        if not online:
            if self._answers_status is None:
                logger.info("receipt printer %s does not answer status queries", self._name)
                self._answers_status = False
            return PrinterCondition(DeviceState.READY, None, known=False)
        self._answers_status = True
        return _condition_from_status(online[0], paper[0] if paper else None)

    def _close(self, printer: Any) -> None:
        try:
            printer.close()
        except Exception:
            logger.debug("closing receipt printer %s failed", self._name, exc_info=True)

    def _status_blocking(self) -> PrinterCondition:
        printer = self._open()
        try:
            return self._read_status(printer)
        except OSError as err:
            raise PrinterError(self._lost_reason(), state=DeviceState.OFFLINE) from err
        finally:
            self._close(printer)

    def _lost_reason(self) -> str:
        return f"the connection to the receipt printer {self._name} broke; check its cable"

    def _print_blocking(self, receipt: Receipt, job_id: str) -> PrintResult:
        data = encode_escpos(render_receipt(receipt, self._dot_width))
        printer = self._open()
        try:
            try:
                before = self._read_status(printer)
            except OSError as err:
                raise PrinterError(self._lost_reason(), state=DeviceState.OFFLINE) from err
            if before.state is not DeviceState.READY:
                raise PrinterError(before.reason or before.state.value, state=before.state)
            try:
                printer._raw(data)
            except Exception as err:  # socket or USB errors: part may have been printed
                raise PrinterError(
                    self._lost_reason() + "; check the receipt and reprint if it is incomplete",
                    state=DeviceState.OFFLINE,
                    delivered=True,
                ) from err
            try:
                after = self._read_status(printer)
            except OSError:
                after = PrinterCondition(DeviceState.READY, None, known=False)
            if after.state is DeviceState.PAPER_OUT:
                raise PrinterError(
                    "the receipt printer ran out of paper during the job; load paper, check "
                    "the receipt and reprint if it is incomplete",
                    state=DeviceState.PAPER_OUT,
                    delivered=True,
                )
            detail = (
                f"{len(data)} bytes received by the printer"
                if after.known
                else f"{len(data)} bytes sent (the printer does not confirm receipt)"
            )
            logger.info("receipt job %s: %s", job_id, detail)
            return PrintResult(None, False, detail)
        finally:
            self._close(printer)

    async def query_status(self) -> PrinterCondition:
        try:
            return await self._worker.run(self._status_blocking)
        except PrinterError as err:
            return PrinterCondition(err.state, err.reason)

    async def print_receipt(
        self, receipt: Receipt, *, job_id: str, progress: JobProgress | None = None
    ) -> PrintResult:
        return await self._worker.run(lambda: self._print_blocking(receipt, job_id))

    async def job_outcome(self, ref: str) -> JobOutcome:
        return JobOutcome.UNKNOWN

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult:
        raise PrinterError("this receipt printer cannot report on earlier jobs")

    async def aclose(self) -> None:
        await asyncio.to_thread(self._worker.close)


class NetworkReceiptPrinter(_EscPosPrinter):
    """ESC/POS over raw TCP (python-escpos ``Network``)."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_RAW_PORT,
        *,
        dot_width: int = RECEIPT_WIDTH_80MM,
        connect_timeout_s: float = 5.0,
        status_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(f"receipt (socket://{host}:{port})", dot_width)
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.status_timeout_s = status_timeout_s

    def _open(self) -> Any:
        from escpos.printer import Network  # type: ignore[import-untyped]

        # Connect here rather than with Network.open(), which leaks the socket of a failed
        # connection attempt.
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        except OSError as err:
            raise PrinterError(
                f"cannot reach the receipt printer at {self.host}:{self.port}; check that it "
                "is switched on and its network cable is connected",
                state=DeviceState.OFFLINE,
            ) from err
        printer = Network(self.host, self.port, timeout=self.connect_timeout_s)
        printer.device = sock
        return printer

    def _set_read_timeout(self, printer: Any, timeout: float | None) -> None:
        printer.device.settimeout(self.connect_timeout_s if timeout is None else timeout)


class UsbReceiptPrinter(_EscPosPrinter):
    """ESC/POS over USB (python-escpos ``Usb``, needs pyusb and access to the device)."""

    def __init__(self, vendor_id: int, product_id: int, *, dot_width: int = RECEIPT_WIDTH_80MM):
        super().__init__(f"receipt (usb {vendor_id:04x}:{product_id:04x})", dot_width)
        self.vendor_id = vendor_id
        self.product_id = product_id

    def _open(self) -> Any:
        try:
            from escpos.printer import Usb
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise PrinterError("USB printing needs pyusb; install it") from err
        try:
            printer = Usb(
                self.vendor_id, self.product_id, timeout=int(self.status_timeout_s * 1000)
            )
            printer.open()
        except Exception as err:
            raise PrinterError(
                f"cannot open the USB receipt printer {self.vendor_id:04x}:"
                f"{self.product_id:04x}; check its cable and power",
                state=DeviceState.OFFLINE,
            ) from err
        return printer


# --------------------------------------------------------------------------------------
# CUPS


_IPP_JOB_STATES = {
    3: "pending",
    4: "held",
    5: "processing",
    6: "stopped",
    7: "canceled",
    8: "aborted",
    9: "completed",
}


class CupsQueue:
    """One CUPS queue: submit with ``lp``, follow the job over IPP (Get-Job-Attributes)."""

    def __init__(self, queue: str, server: str | None, *, poll_s: float = 0.25) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", queue):
            raise ConfigError(f"invalid CUPS queue name {queue!r}")
        self.queue = queue
        self.server = server or os.environ.get("CUPS_SERVER") or "localhost:631"
        if self.server.startswith("/"):
            raise ConfigError("give the CUPS server as host:port (IPP), not a socket path")
        self.poll_s = poll_s
        self._worker = DeviceWorker(f"cups-{queue}")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C", "CUPS_SERVER": self.server}

    async def submit(self, document: bytes, *, title: str, options: list[str]) -> str:
        args = ["lp", "-d", self.queue, "-t", title[:100] or "ekichika"]
        for option in options:
            args += ["-o", option]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
            )
        except FileNotFoundError as err:
            raise PrinterError("the CUPS client (lp) is missing; install cups-client") from err
        out, err_out = await proc.communicate(document)
        if proc.returncode != 0:
            message = err_out.decode(errors="replace").strip() or "lp failed"
            state = DeviceState.OFFLINE if "connect" in message.lower() else DeviceState.ERROR
            raise PrinterError(
                f"CUPS did not take the job for queue {self.queue} ({message}); check that "
                "cupsd runs and the queue exists (lpstat -p)",
                state=state,
            )
        match = re.search(r"request id is (\S+)", out.decode(errors="replace"))
        if match is None:
            raise PrinterError(f"CUPS gave no job id for queue {self.queue}", delivered=True)
        return match.group(1)

    def _job_number(self, ref: str) -> int:
        number = ref.rsplit("-", 1)[-1]
        if not number.isdigit():
            raise PrinterError(f"{ref!r} is not a CUPS job id")
        return int(number)

    def _ipp(
        self, operation: int, attributes: list[tuple[int, str, bytes | list[bytes]]]
    ) -> dict[str, list[bytes]]:
        body = bytearray(b"\x02\x00" + operation.to_bytes(2, "big") + (1).to_bytes(4, "big"))
        body += b"\x01"
        base = [
            (0x47, "attributes-charset", b"utf-8"),
            (0x48, "attributes-natural-language", b"en"),
        ]
        for tag, name, value in [*base, *attributes]:
            values = value if isinstance(value, list) else [value]
            for i, item in enumerate(values):
                encoded = b"" if i else name.encode()
                body += bytes([tag]) + len(encoded).to_bytes(2, "big") + encoded
                body += len(item).to_bytes(2, "big") + item
        body += b"\x03"
        request = urllib.request.Request(
            f"http://{self.server}/", data=bytes(body), headers={"Content-Type": "application/ipp"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return _parse_ipp(response.read())

    def _job_blocking(self, ref: str) -> tuple[int, str]:
        number = self._job_number(ref)
        attrs = self._ipp(
            0x0009,  # Get-Job-Attributes
            [
                (0x45, "printer-uri", f"ipp://localhost/printers/{self.queue}".encode()),
                (0x21, "job-id", number.to_bytes(4, "big")),
                (0x44, "requested-attributes", [b"job-state", b"job-printer-state-message"]),
            ],
        )
        state = int.from_bytes(attrs.get("job-state", [b"\x00\x00\x00\x00"])[0], "big")
        message = b"".join(attrs.get("job-printer-state-message", [])).decode(errors="replace")
        return state, message

    async def job_state(self, ref: str) -> tuple[int, str]:
        """The IPP job-state (3 pending … 9 completed; 0 when CUPS does not know the job)."""
        try:
            return await self._worker.run(lambda: self._job_blocking(ref))
        except (OSError, urllib.error.URLError) as err:
            raise PrinterError(
                f"cannot reach CUPS at {self.server}; check that cupsd runs",
                state=DeviceState.OFFLINE,
            ) from err

    async def outcome(self, ref: str) -> JobOutcome:
        try:
            state, _ = await self.job_state(ref)
        except PrinterError:
            return JobOutcome.UNKNOWN
        if state == 9:
            return JobOutcome.COMPLETED
        if state in (7, 8):
            return JobOutcome.FAILED
        if state in (3, 4, 5, 6):
            return JobOutcome.PENDING
        return JobOutcome.UNKNOWN

    async def wait(self, ref: str, progress: JobProgress | None, *, what: str) -> PrintResult:
        """Wait until CUPS ends the job. A job CUPS still holds is not lost: this waits as
        long as it takes and reports the printer's trouble through ``progress``."""
        progress = progress or JobProgress()
        reported: PrinterCondition | None = None
        stuck_since = time.monotonic()
        while True:
            try:
                state, message = await self.job_state(ref)
            except PrinterError as err:
                condition = PrinterCondition(err.state, err.reason)
            else:
                if state == 9:
                    if reported is not None and reported.state is not DeviceState.READY:
                        progress.condition(READY)
                    return PrintResult(ref, True, f"CUPS job {ref} completed")
                if state in (7, 8):
                    raise PrinterError(
                        f"CUPS job {ref} was {_IPP_JOB_STATES[state]}"
                        + (f" ({message})" if message else "")
                        + f"; check the {what} and reprint if needed",
                        state=DeviceState.ERROR,
                        delivered=True,
                    )
                if state == 0:
                    raise PrinterError(f"CUPS no longer knows job {ref}", delivered=True)
                if state in (4, 6) or (message and time.monotonic() - stuck_since > 2):
                    condition = PrinterCondition(
                        DeviceState.OFFLINE,
                        f"the {what} cannot print ({message or _IPP_JOB_STATES[state]}); the job "
                        "waits in CUPS",
                    )
                else:
                    condition = PrinterCondition(DeviceState.BUSY)
            if condition != reported:
                reported = condition
                progress.condition(condition)
            await asyncio.sleep(self.poll_s)

    def _printer_blocking(self) -> tuple[int, list[str], str]:
        attrs = self._ipp(
            0x000B,  # Get-Printer-Attributes
            [
                (0x45, "printer-uri", f"ipp://localhost/printers/{self.queue}".encode()),
                (
                    0x44,
                    "requested-attributes",
                    [b"printer-state", b"printer-state-reasons", b"printer-state-message"],
                ),
            ],
        )
        state = int.from_bytes(attrs.get("printer-state", [b"\x00\x00\x00\x00"])[0], "big")
        reasons = [r.decode(errors="replace") for r in attrs.get("printer-state-reasons", [])]
        message = b"".join(attrs.get("printer-state-message", [])).decode(errors="replace")
        return state, reasons, message

    async def condition(self, what: str) -> PrinterCondition:
        try:
            state, reasons, message = await self._worker.run(self._printer_blocking)
        except (OSError, urllib.error.URLError):
            return PrinterCondition(
                DeviceState.OFFLINE, f"cannot reach CUPS at {self.server}; check that cupsd runs"
            )
        if state == 0:
            return PrinterCondition(
                DeviceState.ERROR, f"CUPS has no queue {self.queue}; add it with lpadmin"
            )
        if any(r.startswith("media-empty") or r.startswith("media-needed") for r in reasons):
            return PrinterCondition(DeviceState.PAPER_OUT, f"the {what} is out of paper")
        if state == 5:
            return PrinterCondition(
                DeviceState.OFFLINE,
                f"the CUPS queue {self.queue} is stopped"
                + (f" ({message})" if message else "")
                + f"; enable it with cupsenable {self.queue}",
            )
        if any(r.startswith("offline") for r in reasons):
            return PrinterCondition(DeviceState.OFFLINE, f"the {what} is offline")
        return READY

    async def aclose(self) -> None:
        await asyncio.to_thread(self._worker.close)


def _parse_ipp(data: bytes) -> dict[str, list[bytes]]:
    """The attributes of an IPP response (all groups merged), raw values."""
    if len(data) < 8:
        raise OSError("short IPP response")
    status = int.from_bytes(data[2:4], "big")
    attrs: dict[str, list[bytes]] = {}
    i = 8
    name = ""
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == 0x03:
            break
        if tag < 0x10:  # a group delimiter
            continue
        name_len = int.from_bytes(data[i : i + 2], "big")
        i += 2
        if name_len:
            name = data[i : i + name_len].decode(errors="replace")
        i += name_len
        value_len = int.from_bytes(data[i : i + 2], "big")
        i += 2
        attrs.setdefault(name, []).append(data[i : i + value_len])
        i += value_len
    if status == 0x0406:  # client-error-not-found
        return {}
    if status >= 0x0400:
        raise OSError(f"IPP status {status:#06x}")
    return attrs


class CupsReceiptPrinter:
    """ESC/POS through a raw CUPS queue (``lp -o raw``); CUPS confirms the job's end."""

    def __init__(
        self,
        queue: str,
        server: str | None = None,
        *,
        dot_width: int = RECEIPT_WIDTH_80MM,
        poll_s: float = 0.25,
    ) -> None:
        self._cups = CupsQueue(queue, server, poll_s=poll_s)
        self._dot_width = dot_width
        self._worker = DeviceWorker(f"receipt-{queue}")

    @property
    def name(self) -> str:
        return f"receipt (cups {self._cups.queue})"

    @property
    def dot_width(self) -> int:
        return self._dot_width

    async def query_status(self) -> PrinterCondition:
        return await self._cups.condition("receipt printer")

    async def print_receipt(
        self, receipt: Receipt, *, job_id: str, progress: JobProgress | None = None
    ) -> PrintResult:
        data = await self._worker.run(
            lambda: encode_escpos(render_receipt(receipt, self._dot_width))
        )
        ref = await self._cups.submit(data, title=f"receipt {job_id}", options=["raw"])
        logger.info("receipt job %s: CUPS job %s", job_id, ref)
        if progress is not None:
            progress.submitted(ref)
        return await self._cups.wait(ref, progress, what="receipt printer")

    async def job_outcome(self, ref: str) -> JobOutcome:
        return await self._cups.outcome(ref)

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult:
        return await self._cups.wait(ref, progress, what="receipt printer")

    async def aclose(self) -> None:
        await self._cups.aclose()
        await asyncio.to_thread(self._worker.close)


A4_OPTIONS = ["media=A4", "sides=one-sided", "ColorModel=Gray"]


class CupsA4Printer:
    """PDF through CUPS with A4, one-sided, grey; waits until CUPS completes the job."""

    def __init__(self, queue: str, server: str | None = None, *, poll_s: float = 0.25) -> None:
        self._cups = CupsQueue(queue, server, poll_s=poll_s)

    @property
    def name(self) -> str:
        return f"A4 (cups {self._cups.queue})"

    async def query_status(self) -> PrinterCondition:
        return await self._cups.condition("A4 printer")

    async def print_pdf(
        self, pdf: bytes, *, job_id: str, title: str, progress: JobProgress | None = None
    ) -> PrintResult:
        if not pdf.startswith(b"%PDF-"):
            raise PrinterError("the document is not a PDF")
        ref = await self._cups.submit(pdf, title=title or f"document {job_id}", options=A4_OPTIONS)
        logger.info("A4 job %s: CUPS job %s", job_id, ref)
        if progress is not None:
            progress.submitted(ref)
        return await self._cups.wait(ref, progress, what="A4 printer")

    async def job_outcome(self, ref: str) -> JobOutcome:
        return await self._cups.outcome(ref)

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult:
        return await self._cups.wait(ref, progress, what="A4 printer")

    async def aclose(self) -> None:
        await self._cups.aclose()


# --------------------------------------------------------------------------------------
# Simulators


def _safe_file_name(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", job_id)[:100] or "job"


@dataclass(frozen=True)
class SimulatedReceipt:
    job_id: str
    data: bytes  # the ESC/POS bytes a real printer would get
    image: Image.Image  # what would be on the paper


class _Simulated:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.condition = READY

    def simulate(self, state: DeviceState, reason: str | None = None) -> None:
        """Put the simulated printer into ``state`` (demo: paper out, offline)."""
        self.condition = PrinterCondition(state, reason)

    async def query_status(self) -> PrinterCondition:
        return self.condition

    def _check(self) -> None:
        if self.condition.state is not DeviceState.READY:
            raise PrinterError(
                self.condition.reason or self.condition.state.value, state=self.condition.state
            )

    async def job_outcome(self, ref: str) -> JobOutcome:
        return JobOutcome.UNKNOWN

    async def wait_for_job(self, ref: str, progress: JobProgress | None = None) -> PrintResult:
        raise PrinterError("the simulated printer cannot report on earlier jobs")

    async def aclose(self) -> None:
        pass


class SimulatedReceiptPrinter(_Simulated):
    """Keeps the ESC/POS bytes and the printed image in memory and, with a directory,
    writes ``<job>.bin`` and a ``<job>.png`` preview there."""

    def __init__(self, directory: Path | None = None, *, dot_width: int = RECEIPT_WIDTH_80MM):
        super().__init__(directory)
        self._dot_width = dot_width
        self.printed: list[SimulatedReceipt] = []
        self._worker = DeviceWorker("receipt-simulated")

    @property
    def name(self) -> str:
        return "receipt (simulated)"

    @property
    def dot_width(self) -> int:
        return self._dot_width

    def _print_blocking(self, receipt: Receipt, job_id: str) -> SimulatedReceipt:
        image = render_receipt(receipt, self._dot_width)
        data = encode_escpos(image)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stem = _safe_file_name(job_id)
            (self.directory / f"{stem}.bin").write_bytes(data)
            image.save(self.directory / f"{stem}.png")
        return SimulatedReceipt(job_id, data, image)

    async def print_receipt(
        self, receipt: Receipt, *, job_id: str, progress: JobProgress | None = None
    ) -> PrintResult:
        self._check()
        printed = await self._worker.run(lambda: self._print_blocking(receipt, job_id))
        self.printed.append(printed)
        return PrintResult(None, True, f"simulated, {len(printed.data)} bytes")

    async def aclose(self) -> None:
        await asyncio.to_thread(self._worker.close)


class SimulatedA4Printer(_Simulated):
    """Keeps the PDFs in memory and, with a directory, writes ``<job>.pdf`` there."""

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__(directory)
        self.printed: list[tuple[str, bytes]] = []

    @property
    def name(self) -> str:
        return "A4 (simulated)"

    async def print_pdf(
        self, pdf: bytes, *, job_id: str, title: str, progress: JobProgress | None = None
    ) -> PrintResult:
        self._check()
        if not pdf.startswith(b"%PDF-"):
            raise PrinterError("the document is not a PDF")
        if self.directory is not None:
            directory = self.directory
            path = directory / f"{_safe_file_name(job_id)}.pdf"

            def write() -> None:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_bytes(pdf)

            await asyncio.to_thread(write)
        self.printed.append((job_id, pdf))
        return PrintResult(None, True, f"simulated, {len(pdf)} bytes")


# --------------------------------------------------------------------------------------
# Factories


def _cups_spec(rest: str) -> tuple[str, str | None]:
    queue, _, server = rest.partition("@")
    if not queue:
        raise ConfigError("a CUPS printer needs a queue name: cups:QUEUE[@HOST:PORT]")
    return queue, server or None


def create_receipt_printer(spec: str, *, dot_width: int = RECEIPT_WIDTH_80MM) -> ReceiptPrinter:
    """The receipt printer for a ``DeviceConfig.receipt_printer`` spec."""
    kind, _, rest = spec.partition(":")
    if kind == "simulated":
        return SimulatedReceiptPrinter(Path(rest) if rest else None, dot_width=dot_width)
    if kind == "network":
        host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
        if not host:
            raise ConfigError(f"receipt printer {spec!r}: use network:HOST[:PORT]")
        try:
            port_number = int(port) if port else DEFAULT_RAW_PORT
        except ValueError as err:
            raise ConfigError(f"receipt printer {spec!r}: the port is not a number") from err
        return NetworkReceiptPrinter(host, port_number, dot_width=dot_width)
    if kind == "cups":
        queue, server = _cups_spec(rest)
        return CupsReceiptPrinter(queue, server, dot_width=dot_width)
    if kind == "usb":
        vid, _, pid = rest.partition(":")
        try:
            return UsbReceiptPrinter(int(vid, 16), int(pid, 16), dot_width=dot_width)
        except ValueError as err:
            raise ConfigError(f"receipt printer {spec!r}: use usb:VID:PID in hex") from err
    raise ConfigError(
        f"unknown receipt printer {spec!r}: use simulated, network:HOST[:PORT], cups:QUEUE or "
        "usb:VID:PID"
    )


def create_a4_printer(spec: str) -> A4Printer:
    """The A4 printer for a ``DeviceConfig.a4_printer`` spec."""
    kind, _, rest = spec.partition(":")
    if kind == "simulated":
        return SimulatedA4Printer(Path(rest) if rest else None)
    if kind == "cups":
        queue, server = _cups_spec(rest)
        return CupsA4Printer(queue, server)
    raise ConfigError(f"unknown A4 printer {spec!r}: use simulated or cups:QUEUE")
