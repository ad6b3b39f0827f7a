"""Printing with real components: a TCP receipt printer on loopback, a private cupsd, the
durable spool in SQLite, the device hub (its printer poll and the spool's retention), the
print-test command in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from booth.devices.base import DeviceKind, DeviceOwner, DeviceState, DeviceStatus
from booth.devices.hub import BoothDevices
from booth.devices.printing import (
    A4Printer,
    CupsA4Printer,
    CupsReceiptPrinter,
    NetworkReceiptPrinter,
    ReceiptPrinter,
    SimulatedA4Printer,
    SimulatedReceiptPrinter,
    UsbReceiptPrinter,
    create_a4_printer,
    create_receipt_printer,
)
from booth.devices.receipt import (
    QrBlock,
    Receipt,
    RuleBlock,
    TextBlock,
    encode_escpos,
    render_a4_pdf,
    render_receipt,
)
from booth.spool import INTERRUPTED_REASON, JobState, PrintJob, PrintSpool, SpoolError
from shared.config import DeviceConfig
from shared.errors import ConfigError
from tests.cups_support import CupsServer, _free_port, running_cupsd
from tests.printer_support import (
    ReceiptPrinterEmulator,
    parse_escpos,
    printed_image,
    raster_images,
    receipt_printer_emulator,
)

ROOT = Path(__file__).resolve().parent.parent

RECEIPT = Receipt(
    (
        TextBlock("受付票", 44, bold=True, align="center"),
        RuleBlock(),
        TextBlock("住民票の写し 1通 手数料 300円"),
        QrBlock("https://ekichika.invalid/r/A-012"),
        TextBlock("受付番号 A-012", 32, align="right"),
    ),
    title="receipt A-012",
)


@pytest.fixture
def emulator() -> Iterator[ReceiptPrinterEmulator]:
    with receipt_printer_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def cups() -> Iterator[CupsServer]:
    with running_cupsd() as server:
        yield server


def _pdfinfo(pdf: Path) -> dict[str, str]:
    tool = shutil.which("pdfinfo")
    if tool is None:
        raise RuntimeError("pdfinfo is missing: install poppler-utils (cups-filters pulls it in)")
    out = subprocess.run([tool, str(pdf)], capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Black pixels of a mode "L" image inside ``box``."""
    histogram = image.crop(box).histogram()
    return sum(histogram[:128])


def _assert_receipt_bytes(job: bytes, receipt: Receipt, width: int = 576) -> None:
    """The job initialises, carries the receipt as GS v 0 raster bands, feeds and cuts; the
    bands decode to exactly the rendered receipt, with ink where the heading is."""
    commands, used = parse_escpos(job)
    assert used == len(job)
    printing = [c for c in commands if c.name != "DLE EOT"]
    assert printing[0].name == "ESC @"
    assert printing[-1].name == "GS V"
    bands = raster_images(job)
    expected = render_receipt(receipt, width).convert("L")
    assert {b.width for b in bands} == {width}
    assert sum(b.height for b in bands) == expected.height
    assert all(any(b.data) for b in bands)
    got = printed_image(job)
    assert ImageChops.difference(got, expected).getbbox() is None
    # The heading (44-dot text at the top) is inked; the margin above it is blank paper.
    assert _ink(got, (0, 0, width, 8)) == 0
    assert _ink(got, (width // 4, 8, 3 * width // 4, 60)) > 300


# --------------------------------------------------------------------------------------
# Receipts


async def test_receipt_arrives_at_network_printer_as_escpos_raster(
    emulator: ReceiptPrinterEmulator,
) -> None:
    printer = NetworkReceiptPrinter("127.0.0.1", emulator.port, status_timeout_s=2)
    try:
        assert (await printer.query_status()).state is DeviceState.READY
        result = await printer.print_receipt(RECEIPT, job_id="r-1")
    finally:
        await printer.aclose()
    assert result.ref is None and not result.confirmed
    assert "received by the printer" in result.detail
    (job,) = await asyncio.to_thread(emulator.wait_for_jobs, 1)
    _assert_receipt_bytes(job, RECEIPT)
    # Status asked before the job and after it (raw 9100 confirms nothing by itself).
    names = [c.name for c in parse_escpos(job)[0]]
    raster_at = names.index("GS v 0")
    assert "DLE EOT" in names[:raster_at]
    assert "DLE EOT" in names[names.index("GS V") :]


async def test_network_printer_states(emulator: ReceiptPrinterEmulator) -> None:
    printer = NetworkReceiptPrinter("127.0.0.1", emulator.port, status_timeout_s=2)
    try:
        emulator.paper_out = True
        status = await printer.query_status()
        assert status.state is DeviceState.PAPER_OUT and "paper" in (status.reason or "")
        emulator.switch_off()
        status = await printer.query_status()
        assert status.state is DeviceState.OFFLINE
        assert f"127.0.0.1:{emulator.port}" in (status.reason or "")
    finally:
        await printer.aclose()
    assert emulator.jobs() == []


async def test_receipt_through_cups_raw_queue(
    cups: CupsServer, emulator: ReceiptPrinterEmulator
) -> None:
    cups.add_raw_queue("escpos", f"socket://{emulator.address}")
    printer = CupsReceiptPrinter("escpos", cups.server, poll_s=0.05)
    try:
        assert (await printer.query_status()).state is DeviceState.READY
        result = await printer.print_receipt(RECEIPT, job_id="r-cups")
    finally:
        await printer.aclose()
    assert result.confirmed and result.ref is not None and result.ref.startswith("escpos-")
    (job,) = await asyncio.to_thread(emulator.wait_for_jobs, 1)
    # CUPS passes the very bytes through.
    assert job == encode_escpos(render_receipt(RECEIPT))
    _assert_receipt_bytes(job, RECEIPT)


async def test_a4_pdf_through_cups_pdf_queue(cups: CupsServer) -> None:
    output = cups.root / "out" / "a4.pdf"
    cups.add_pdf_queue("a4", output)
    pdf = render_a4_pdf(
        [[TextBlock("申請書 1ページ目", 72, bold=True)], [TextBlock("申請書 2ページ目", 72)]]
    )
    printer = CupsA4Printer("a4", cups.server, poll_s=0.05)
    try:
        result = await printer.print_pdf(pdf, job_id="a4-1", title="application")
        assert await printer.job_outcome(result.ref or "") == "completed"
    finally:
        await printer.aclose()
    assert result.confirmed and result.ref is not None and result.ref.startswith("a4-")
    data = output.read_bytes()
    # A PDF printer gets the PDF, possibly wrapped in PJL.
    start, end = data.index(b"%PDF-"), data.rindex(b"%%EOF")
    extracted = cups.root / "out" / "extracted.pdf"
    extracted.write_bytes(data[start : end + 5])
    info = _pdfinfo(extracted)
    assert info["Pages"] == "2"
    assert "(A4)" in info["Page size"]


# --------------------------------------------------------------------------------------
# The spool


def _owner_receipt(printer: ReceiptPrinter) -> DeviceOwner[ReceiptPrinter]:
    return DeviceOwner(DeviceKind.RECEIPT_PRINTER, printer.name, printer)


@pytest.fixture
async def network_spool(
    emulator: ReceiptPrinterEmulator, tmp_path: Path
) -> AsyncIterator[tuple[PrintSpool, DeviceOwner[ReceiptPrinter]]]:
    printer = NetworkReceiptPrinter("127.0.0.1", emulator.port, status_timeout_s=2)
    owner = _owner_receipt(printer)
    spool = PrintSpool(
        tmp_path / "spool.sqlite3", receipt_printer=owner, retry_min_s=0.05, retry_max_s=0.2
    )
    await spool.start()
    try:
        yield spool, owner
    finally:
        await spool.aclose()
        await printer.aclose()


async def _wait_until(condition: object, what: str, within_s: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_spool_keeps_job_queued_while_printer_unreachable(
    network_spool: tuple[PrintSpool, DeviceOwner[ReceiptPrinter]],
    emulator: ReceiptPrinterEmulator,
) -> None:
    spool, owner = network_spool
    transitions: list[tuple[str, JobState]] = []
    spool.add_listener(lambda r: transitions.append((r.job_id, r.state)))
    device_states: list[DeviceState] = []
    owner.add_listener(lambda s: device_states.append(s.state))
    emulator.switch_off()

    assert await spool.submit(PrintJob.for_receipt("job-1", "session-7", RECEIPT)) == "job-1"

    async def retried_offline() -> bool:
        record = await spool.job("job-1")
        return record is not None and record.attempts >= 3 and record.state is JobState.QUEUED

    await _wait_until(retried_offline, "the job to be retried while the printer is off")
    record = await spool.job("job-1")
    assert record is not None and "cannot reach the receipt printer" in (record.reason or "")
    offline = owner.status
    assert offline.state is DeviceState.OFFLINE

    emulator.switch_on()
    async with asyncio.timeout(10):
        printed = await spool.wait_for("job-1", [JobState.PRINTED])
    assert printed.owner == "session-7" and printed.reason is None
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    (job,) = await asyncio.to_thread(emulator.wait_for_jobs, 1)
    assert len(emulator.jobs()) == 1
    _assert_receipt_bytes(job, RECEIPT)
    assert owner.status.state is DeviceState.READY
    assert DeviceState.OFFLINE in device_states
    states = [s for j, s in transitions if j == "job-1"]
    assert states[:3] == [JobState.QUEUED, JobState.PRINTING, JobState.QUEUED]
    assert states[-2:] == [JobState.PRINTING, JobState.PRINTED]


async def test_spool_waits_for_paper(
    network_spool: tuple[PrintSpool, DeviceOwner[ReceiptPrinter]],
    emulator: ReceiptPrinterEmulator,
) -> None:
    spool, owner = network_spool
    statuses: list[DeviceStatus] = []
    owner.add_listener(statuses.append)
    emulator.paper_out = True
    await spool.submit(PrintJob.for_receipt("job-p", "staff:sato", RECEIPT))

    async def paper_out() -> bool:
        return owner.status.state is DeviceState.PAPER_OUT

    await _wait_until(paper_out, "the paper-out state")
    record = await spool.job("job-p")
    assert record is not None and record.state in (JobState.QUEUED, JobState.PRINTING)
    assert "out of paper" in (owner.status.reason or "")
    assert emulator.jobs() == []
    emulator.paper_out = False
    async with asyncio.timeout(10):
        await spool.wait_for("job-p", [JobState.PRINTED])
    assert len(await asyncio.to_thread(emulator.wait_for_jobs, 1)) == 1
    assert [s.state for s in statuses].count(DeviceState.PAPER_OUT) == 1  # reported once


async def test_spool_same_job_id_prints_once(
    network_spool: tuple[PrintSpool, DeviceOwner[ReceiptPrinter]],
    emulator: ReceiptPrinterEmulator,
) -> None:
    spool, _ = network_spool
    job = PrintJob.for_receipt("job-dup", "session-1", RECEIPT)
    ids = await asyncio.gather(spool.submit(job), spool.submit(job))
    assert list(ids) == ["job-dup", "job-dup"]
    async with asyncio.timeout(10):
        await spool.wait_for("job-dup", [JobState.PRINTED])
    assert await spool.submit(job) == "job-dup"  # a late retry by the sender
    other = PrintJob.for_receipt("job-dup", "session-1", Receipt((TextBlock("別の内容"),)))
    with pytest.raises(SpoolError, match="already used"):
        await spool.submit(other)
    await asyncio.sleep(0.3)
    assert len(emulator.jobs()) == 1
    assert [r.job_id for r in await spool.jobs()] == ["job-dup"]
    # Printing again is an explicit command.
    again = await spool.reprint("job-dup", by="staff:sato")
    assert again.state is JobState.QUEUED
    async with asyncio.timeout(10):
        record = await spool.wait_for("job-dup", [JobState.PRINTED])
    assert record.reprints == 1
    assert len(await asyncio.to_thread(emulator.wait_for_jobs, 2)) == 2


async def test_spool_orders_jobs_and_cancels(tmp_path: Path) -> None:
    printer = SimulatedReceiptPrinter()
    owner = _owner_receipt(printer)
    printer.simulate(DeviceState.PAPER_OUT, "out of paper")
    async with PrintSpool(tmp_path / "s.sqlite3", receipt_printer=owner, retry_min_s=0.05) as spool:
        for n in range(3):
            await spool.submit(
                PrintJob.for_receipt(f"j{n}", "s", Receipt((TextBlock(f"番号 {n}"),)))
            )
        cancelled = await spool.cancel("j1", by="staff:sato")
        assert cancelled.state is JobState.CANCELLED
        printer.simulate(DeviceState.READY)
        async with asyncio.timeout(10):
            await spool.wait_for("j2", [JobState.PRINTED])
        assert [p.job_id for p in printer.printed] == ["j0", "j2"]
        with pytest.raises(SpoolError, match="no a4 printer"):
            await spool.submit(PrintJob.for_pdf("a", "s", render_a4_pdf([[TextBlock("x")]])))


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from booth.devices.base import DeviceKind, DeviceOwner
    from booth.devices.printing import NetworkReceiptPrinter
    from booth.devices.receipt import Receipt, TextBlock
    from booth.spool import PrintJob, PrintSpool

    async def main() -> None:
        printer = NetworkReceiptPrinter("127.0.0.1", int(sys.argv[2]), status_timeout_s=60)
        owner = DeviceOwner(DeviceKind.RECEIPT_PRINTER, printer.name, printer)
        spool = PrintSpool(sys.argv[1], receipt_printer=owner)
        await spool.start()
        receipt = Receipt((TextBlock("受付票 A-013"),))
        await spool.submit(PrintJob.for_receipt("job-k", "session-9", receipt))
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_spool_killed_mid_job_does_not_print_twice(
    emulator: ReceiptPrinterEmulator, tmp_path: Path
) -> None:
    """The booth agent dies while a job is with the printer: on restart the job is failed,
    not printed again; HQ's reprint prints it exactly once."""
    db = tmp_path / "spool.sqlite3"
    emulator.hold_status = True  # the printer is slow to answer: the job stays "printing"
    child = subprocess.Popen(  # noqa: ASYNC220 - killed by PID below
        [sys.executable, "-c", _CHILD, str(db), str(emulator.port)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:

        async def printing() -> bool:
            if not db.exists():
                return False
            try:
                with sqlite3.connect(db) as conn:
                    row = conn.execute(
                        "SELECT state FROM print_jobs WHERE job_id = 'job-k'"
                    ).fetchone()
            except sqlite3.OperationalError:  # the child has not created the table yet
                return False
            return row is not None and row[0] == "printing"

        await _wait_until(printing, "the child to start printing", within_s=20)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stderr is not None:
            child.stderr.close()
    emulator.hold_status = False

    printer = NetworkReceiptPrinter("127.0.0.1", emulator.port, status_timeout_s=2)
    owner = _owner_receipt(printer)
    try:
        async with PrintSpool(db, receipt_printer=owner, retry_min_s=0.05) as spool:
            async with asyncio.timeout(10):
                record = await spool.wait_for("job-k", [JobState.FAILED, JobState.PRINTED])
            assert record.state is JobState.FAILED and record.reason == INTERRUPTED_REASON
            assert record.owner == "session-9"
            await asyncio.sleep(0.3)
            assert emulator.jobs() == []
            await spool.reprint("job-k", by="staff:sato")
            async with asyncio.timeout(10):
                await spool.wait_for("job-k", [JobState.PRINTED])
        assert len(await asyncio.to_thread(emulator.wait_for_jobs, 1)) == 1
    finally:
        await printer.aclose()


async def test_spool_closed_mid_cups_job_is_settled_by_cups(
    cups: CupsServer, tmp_path: Path
) -> None:
    """The spool stops while CUPS holds the job; reopened from the file, it asks CUPS,
    waits for the job, and records it printed once — without sending it again."""
    output = cups.root / "out" / "held.pdf"
    cups.add_pdf_queue("held", output)
    cups.run("cupsdisable", "held")
    db = tmp_path / "spool.sqlite3"
    pdf = render_a4_pdf([[TextBlock("交付通知書", 72)]])
    printer: A4Printer = CupsA4Printer("held", cups.server, poll_s=0.05)
    owner: DeviceOwner[A4Printer] = DeviceOwner(DeviceKind.A4_PRINTER, printer.name, printer)
    try:
        spool = PrintSpool(db, a4_printer=owner)
        await spool.start()
        await spool.submit(PrintJob.for_pdf("doc-1", "staff:suzuki", pdf, "notice"))

        async def handed_to_cups() -> bool:
            record = await spool.job("doc-1")
            return record is not None and record.device_ref is not None

        await _wait_until(handed_to_cups, "the CUPS job id")
        record = await spool.job("doc-1")
        assert record is not None and record.state is JobState.PRINTING
        await spool.aclose()  # stop without completing

        reopened = PrintSpool(db, a4_printer=owner)
        await reopened.start()
        try:
            await asyncio.sleep(0.3)
            waiting = await reopened.job("doc-1")
            assert waiting is not None and waiting.state is JobState.PRINTING
            cups.run("cupsenable", "held")
            async with asyncio.timeout(20):
                done = await reopened.wait_for("doc-1", [JobState.PRINTED, JobState.FAILED])
            assert done.state is JobState.PRINTED and done.device_ref == record.device_ref
            assert done.attempts == 1
        finally:
            await reopened.aclose()
    finally:
        await printer.aclose()
    jobs = cups.run("lpstat", "-W", "all", "-o", "held").split()
    assert [j for j in jobs if j.startswith("held-")] == [record.device_ref]
    assert output.read_bytes().count(b"%PDF-") == 1


async def test_cups_receipt_queue_holds_the_job_until_the_printer_is_back(
    cups: CupsServer, tmp_path: Path
) -> None:
    """A receipt printer behind a raw CUPS queue is switched off: CUPS takes the job and its
    socket backend keeps trying. The job waits (the spool shows why, the hub's printer poll
    keeps the printer offline), and when the printer is back it prints exactly once."""
    emulator = ReceiptPrinterEmulator(port=_free_port())  # switched off: nothing listens
    cups.add_raw_queue("escpos-off", f"socket://{emulator.address}")
    devices = BoothDevices(
        DeviceConfig(
            receipt_printer=f"cups:escpos-off@{cups.server}",
            document_width=320,
            document_height=240,
            spool_path=str(tmp_path / "spool.sqlite3"),
        ),
        printer_poll_s=0.1,  # the hub asks the printers all the time
        camera_check_s=0,
    )
    await devices.start()
    try:
        spool, owner = devices.spool, devices.receipt
        assert spool is not None and owner is not None
        assert isinstance(owner.driver, CupsReceiptPrinter)
        assert owner.status.state is DeviceState.READY  # CUPS cannot know before a job
        owner.driver._cups.poll_s = 0.05
        transitions: list[tuple[JobState, str | None]] = []
        spool.add_listener(lambda r: transitions.append((r.state, r.reason)))
        reported: list[DeviceStatus] = []
        devices.add_listener(
            lambda statuses: reported.extend(
                s for s in statuses if s.kind is DeviceKind.RECEIPT_PRINTER
            )
        )
        await spool.submit(PrintJob.for_receipt("job-c", "session-3", RECEIPT))

        async def waiting_with_a_reason() -> bool:
            record = await spool.job("job-c")
            return record is not None and record.reason is not None

        await _wait_until(waiting_with_a_reason, "the job to wait in CUPS", within_s=20)
        assert owner.status.state in (DeviceState.OFFLINE, DeviceState.PAPER_OUT)
        reason = owner.status.reason or ""
        assert "the receipt printer cannot print" in reason and "waits in CUPS" in reason
        assert "The printer may not exist or is unavailable" in reason  # the backend's words
        await asyncio.sleep(0.5)  # several printer polls: they leave the waiting job's state
        assert owner.status.state is DeviceState.OFFLINE and owner.status.reason == reason
        assert devices.statuses()[-2] == owner.status  # what goes to the branch board
        waiting = await spool.job("job-c")
        assert waiting is not None
        assert (waiting.state, waiting.reason, waiting.attempts) == (
            JobState.PRINTING,
            reason,
            1,
        )
        assert waiting.device_ref is not None and waiting.device_ref.startswith("escpos-off-")
        assert emulator.connections() == []

        emulator.switch_on()  # the backend retries after 5, 10, 15… seconds
        async with asyncio.timeout(45):
            done = await spool.wait_for("job-c", [JobState.PRINTED, JobState.FAILED])
        assert done.state is JobState.PRINTED and done.reason is None
        assert (done.attempts, done.reprints, done.device_ref) == (1, 0, waiting.device_ref)
        await asyncio.sleep(0.5)  # a second copy would arrive now
        (job,) = await asyncio.to_thread(emulator.wait_for_jobs, 1)
        assert len(emulator.jobs()) == 1
        assert job == encode_escpos(render_receipt(RECEIPT))  # CUPS passes the bytes through
        _assert_receipt_bytes(job, RECEIPT)
        assert (await owner.driver._cups.job_state(waiting.device_ref))[0] == 9  # completed
        assert [s for s, _ in transitions].count(JobState.PRINTED) == 1
        assert [r for r in await spool.jobs() if r.job_id == "job-c"] == [done]
        assert owner.status.state is DeviceState.READY
        reported_states = [s.state for s in reported]
        assert DeviceState.OFFLINE in reported_states
        assert reported_states[-1] is DeviceState.READY
    finally:
        await devices.aclose()
        emulator.switch_off()


def _document(db: Path, job_id: str) -> bytes | None:
    """The document bytes the spool file holds for ``job_id`` (read by a second reader)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT document FROM print_jobs WHERE job_id = ?", (job_id,))
        value = row.fetchone()[0]
    return None if value is None else bytes(value)


async def test_hub_purges_documents_of_old_finished_jobs_and_keeps_queued_ones(
    tmp_path: Path,
) -> None:
    """The hub drops the documents of printed jobs past the retention time, at start and
    then periodically; a job still waiting for paper keeps its document however old it is."""
    db = tmp_path / "spool.sqlite3"
    config = DeviceConfig(spool_path=str(db), document_width=320, document_height=240)
    old = PrintJob.for_receipt("old", "session-1", RECEIPT)

    # A first run prints a job; with the default retention (a day) its document is kept.
    devices = BoothDevices(config, printer_poll_s=0, camera_check_s=0)
    await devices.start()
    try:
        assert devices.spool is not None
        await devices.spool.submit(old)
        async with asyncio.timeout(10):
            await devices.spool.wait_for("old", [JobState.PRINTED])
        assert await devices.purge_spool_documents() == 0
    finally:
        await devices.aclose()
    assert _document(db, "old") == old.document
    await asyncio.sleep(1.1)

    # The next start, with a short retention and a long interval, purges it at once.
    devices = BoothDevices(
        config,
        printer_poll_s=0,
        camera_check_s=0,
        spool_retention_s=1.0,
        spool_purge_interval_s=0.2,
    )
    await devices.start()
    try:
        spool, receipt = devices.spool, devices.receipt
        assert spool is not None and receipt is not None
        assert isinstance(receipt.driver, SimulatedReceiptPrinter)
        assert devices.documents_purged == 1
        assert _document(db, "old") is None
        record = await spool.job("old")
        assert record is not None and record.state is JobState.PRINTED  # the record stays
        with pytest.raises(SpoolError, match="no longer kept"):
            await spool.reprint("old", by="staff:sato")

        # While it runs: a printed job loses its document to the periodic task; a job
        # waiting for paper keeps it.
        recent = PrintJob.for_receipt("recent", "session-2", Receipt((TextBlock("番号 2"),)))
        await spool.submit(recent)
        async with asyncio.timeout(10):
            await spool.wait_for("recent", [JobState.PRINTED])
        receipt.driver.simulate(DeviceState.PAPER_OUT, "the receipt printer is out of paper")
        waiting = PrintJob.for_receipt("waiting", "session-3", Receipt((TextBlock("番号 3"),)))
        await spool.submit(waiting)
        assert _document(db, "recent") == recent.document

        async def recent_purged() -> bool:
            return await asyncio.to_thread(_document, db, "recent") is None

        await _wait_until(recent_purged, "the periodic purge", within_s=10)
        await asyncio.sleep(1.2)  # the waiting job is now past the retention time, too
        record = await spool.job("waiting")
        assert record is not None and record.state is JobState.QUEUED
        assert time.time() - record.created_at > 1.0
        assert _document(db, "waiting") == waiting.document
        assert devices.documents_purged == 2
        assert [p.job_id for p in receipt.driver.printed] == ["recent"]

        # Paper loaded: the kept document prints.
        receipt.driver.simulate(DeviceState.READY)
        async with asyncio.timeout(10):
            await spool.wait_for("waiting", [JobState.PRINTED])
        assert [p.job_id for p in receipt.driver.printed] == ["recent", "waiting"]
    finally:
        await devices.aclose()
        await devices.aclose()  # idempotent
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name() == "spool purge")


# --------------------------------------------------------------------------------------
# Factory, command line, hardware


def test_factories_pick_from_the_spec(tmp_path: Path) -> None:
    network = create_receipt_printer("network:10.1.2.3")
    assert isinstance(network, NetworkReceiptPrinter) and network.port == 9100
    assert isinstance(create_receipt_printer("network:printer.local:9101"), NetworkReceiptPrinter)
    assert isinstance(create_receipt_printer("cups:escpos@127.0.0.1:631"), CupsReceiptPrinter)
    usb = create_receipt_printer("usb:04b8:0202")
    assert isinstance(usb, UsbReceiptPrinter) and usb.vendor_id == 0x04B8
    simulated = create_receipt_printer(f"simulated:{tmp_path}")
    assert isinstance(simulated, SimulatedReceiptPrinter) and simulated.directory == tmp_path
    assert isinstance(create_a4_printer("simulated"), SimulatedA4Printer)
    assert isinstance(create_a4_printer("cups:a4"), CupsA4Printer)
    for bad in ("serial:/dev/ttyS0", "network:", "usb:zz:1", "cups:"):
        with pytest.raises(ConfigError):
            create_receipt_printer(bad)
    with pytest.raises(ConfigError):
        create_a4_printer("network:1.2.3.4")


def test_print_test_command_with_simulated_printers(tmp_path: Path) -> None:
    config = tmp_path / "booth.toml"
    config.write_text(
        f'[devices]\nreceipt_printer = "simulated:{tmp_path / "r"}"\n'
        f'a4_printer = "simulated:{tmp_path / "a"}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKICHIKA_")}
    command = [sys.executable, "-m", "booth", "print-test"]
    runs = {  # in parallel: each start imports the booth
        name: subprocess.Popen(
            command + args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in {
            "receipt": ["--receipt", "--config", str(config)],
            "a4": ["--a4", "--config", str(config)],
            "unreachable": ["--receipt", "--printer", "network:127.0.0.1:1"],
        }.items()
    }
    results = {name: (run.communicate(timeout=60), run.returncode) for name, run in runs.items()}
    for name in ("receipt", "a4"):
        (out, err), code = results[name]
        assert code == 0, err
        assert "printed: simulated" in out
    (_, err), code = results["unreachable"]
    assert code == 3
    assert re.search(r"cannot reach the receipt printer at 127\.0\.0\.1:1", err)
    data = (tmp_path / "r" / "print-test.bin").read_bytes()
    page = printed_image(data)
    assert page.width == 576 and page.height > 400
    preview = Image.open(tmp_path / "r" / "print-test.png").convert("L")
    assert ImageChops.difference(page, preview).getbbox() is None
    assert _ink(page, (0, 0, 576, 80)) > 500  # the heading 印刷テスト
    info = _pdfinfo(tmp_path / "a" / "print-test.pdf")
    assert info["Pages"] == "1" and "(A4)" in info["Page size"]


@pytest.mark.hardware
@pytest.mark.skipif(
    "EKICHIKA_TEST_USB_PRINTER" not in os.environ,
    reason="set EKICHIKA_TEST_USB_PRINTER=VID:PID with a USB receipt printer attached",
)
async def test_usb_receipt_printer_prints() -> None:
    printer = create_receipt_printer(f"usb:{os.environ['EKICHIKA_TEST_USB_PRINTER']}")
    try:
        assert (await printer.query_status()).state is DeviceState.READY
        await printer.print_receipt(RECEIPT, job_id="usb-test")
    finally:
        await printer.aclose()
