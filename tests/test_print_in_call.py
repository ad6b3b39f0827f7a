"""Printing from HQ inside a real call: real signaling, the booth agent, the automated
staff peer on the call's data channel, a TCP receipt printer on loopback and a private
cupsd with a PDF queue.

Staff send a print job; the receipt printer receives it as ESC/POS raster and staff see
every state. A printer switched off keeps the job queued (staff and the branch board see
why) and it prints exactly once when the printer is back; a resend of the same job id
prints nothing; only an explicit reprint command prints again. An A4 PDF crosses the data
channel in pieces, is checked against its SHA-256 and comes out of CUPS as 2 A4 pages.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import ImageChops

from bench.staff_peer import AutoStaff, CallRecord
from booth.agent import BoothAgent
from booth.devices.receipt import Receipt, render_receipt
from shared.documents import a4_test_document
from shared.protocol import (
    BoothsSnapshot,
    BoothStatus,
    PrintJobRejected,
    PrintJobStatus,
    ReceiptDocument,
    ReceiptQr,
    ReceiptRule,
    ReceiptText,
)
from tests.call_support import booth_config, start_call
from tests.call_support import signaling as signaling
from tests.call_support import staff as staff
from tests.cups_support import CupsServer, running_cupsd
from tests.printer_support import (
    ReceiptPrinterEmulator,
    parse_escpos,
    printed_image,
    raster_images,
    receipt_printer_emulator,
)
from tests.signaling_support import (
    RunningSignaling,
    StaffClient,
    connect_staff,
)

RECEIPT = ReceiptDocument(
    title="受付票",
    blocks=[
        ReceiptText(text="受付票", size=44, bold=True, align="center"),
        ReceiptRule(),
        ReceiptText(text="聖蹟桜ヶ丘駅前ブース　市民課"),
        ReceiptQr(data="ekichika:session:test"),
        ReceiptText(text="本日はご利用ありがとうございました", size=24, align="center"),
    ],
)


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _assert_receipt_job(job: bytes, document: ReceiptDocument) -> None:
    """The bytes initialise the printer, carry the receipt as GS v 0 raster that decodes
    to exactly the rendered receipt, and cut."""
    commands, used = parse_escpos(job)
    assert used == len(job)
    printing = [c.name for c in commands if c.name != "DLE EOT"]
    assert printing[0] == "ESC @" and printing[-1] == "GS V"
    assert "GS v 0" in printing
    data = document.model_dump(mode="json")
    expected = render_receipt(Receipt.from_json_dict(data)).convert("L")
    assert {b.width for b in raster_images(job)} == {576}
    assert ImageChops.difference(printed_image(job), expected).getbbox() is None


def _states(staff: AutoStaff, session_id: str, job_id: str) -> list[str]:
    return [
        u.state.value
        for u in staff.print_updates(session_id, job_id)
        if isinstance(u, PrintJobStatus)
    ]


@pytest.fixture
def emulator() -> Iterator[ReceiptPrinterEmulator]:
    with receipt_printer_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def cups() -> Iterator[CupsServer]:
    with running_cupsd() as server:
        yield server


async def _booth(
    signaling: RunningSignaling, tmp_path: Path, *, receipt: str, a4: str = "simulated"
) -> BoothAgent:
    agent = BoothAgent(
        booth_config(
            signaling,
            tmp_path,
            receipt_printer=receipt,
            a4_printer=a4,
        )
    )
    await agent.start()
    spool = agent.devices.spool
    assert spool is not None
    spool.retry_min_s, spool.retry_max_s = 0.2, 0.5  # quick retries for the test
    await eventually(lambda: agent.signaling.connected, 10, "booth online")
    return agent


async def _call(agent: BoothAgent, staff: AutoStaff) -> CallRecord:
    return await start_call(agent, staff)


async def _booth_status(branch: StaffClient, check: Callable[[BoothStatus], bool]) -> BoothStatus:
    while True:
        snap = await branch.expect(BoothsSnapshot, within=10.0)
        for status in snap.booths:
            if status.booth.booth_id == "seiseki-1" and check(status):
                return status


def _receipt_state(status: BoothStatus) -> str | None:
    return next((d.state for d in status.devices if d.kind == "receipt_printer"), None)


async def test_receipt_from_hq_prints_once_and_waits_while_the_printer_is_off(
    signaling: RunningSignaling,
    emulator: ReceiptPrinterEmulator,
    staff: AutoStaff,
    tmp_path: Path,
) -> None:
    agent = await _booth(signaling, tmp_path, receipt=f"network:{emulator.address}")
    try:
        async with connect_staff(signaling.ws_url, signaling.staff_token("takahashi")) as branch:
            record = await _call(agent, staff)
            session = record.session_id

            # 1. A receipt: ESC/POS raster at the printer, queued → printing → printed.
            await staff.print_receipt(session, "job-1", RECEIPT, title="受付票")
            done = await staff.print_status(session, "job-1", "printed", "failed")
            assert isinstance(done, PrintJobStatus) and done.state.value == "printed"
            assert done.attempts == 1 and done.reprints == 0 and done.reason is None
            assert _states(staff, session, "job-1") == ["queued", "printing", "printed"]
            (job,) = await asyncio.to_thread(emulator.wait_for_jobs, 1)
            _assert_receipt_job(job, RECEIPT)
            stored = await agent.devices.spool.job("job-1")  # type: ignore[union-attr]
            assert stored is not None and stored.owner == session and stored.title == "受付票"

            # 2. The printer is switched off: the job waits, staff and the branch see why.
            emulator.switch_off()
            await staff.print_receipt(session, "job-2", RECEIPT)
            waiting = await staff.print_status(session, "job-2", "queued", after=1)
            assert isinstance(waiting, PrintJobStatus)
            assert "cannot reach the receipt printer" in (waiting.reason or "")
            assert _states(staff, session, "job-2")[:3] == ["queued", "printing", "queued"]
            offline = await _booth_status(branch, lambda s: _receipt_state(s) == "offline")
            assert _receipt_state(offline) == "offline"

            def kiosk_receipt_offline() -> bool:  # the state the booth's own status shows
                devices = agent.status()["devices"]
                assert isinstance(devices, list)
                receipt = next(d for d in devices if d["kind"] == "receipt_printer")
                return bool(receipt["state"] == "offline" and "cannot reach" in receipt["reason"])

            await eventually(kiosk_receipt_offline, 5, "the booth to show the printer offline")
            await asyncio.sleep(1.0)  # retries while off put nothing on paper
            assert len(emulator.jobs()) == 1
            assert "printed" not in _states(staff, session, "job-2")

            # 3. Back on: printed exactly once.
            emulator.switch_on()
            done = await staff.print_status(session, "job-2", "printed", "failed")
            assert isinstance(done, PrintJobStatus) and done.state.value == "printed"
            jobs = await asyncio.to_thread(emulator.wait_for_jobs, 2)
            assert len(jobs) == 2
            _assert_receipt_job(jobs[1], RECEIPT)
            await _booth_status(branch, lambda s: _receipt_state(s) == "ready")

            # 4. The same job id again (a resend after a reconnect): nothing more is
            # printed, staff are told where the job is.
            before = len(staff.print_updates(session, "job-1"))
            await staff.print_receipt(session, "job-1", RECEIPT, title="受付票")
            again = await staff.print_status(session, "job-1", "printed", after=before)
            assert isinstance(again, PrintJobStatus) and again.attempts == 1
            await asyncio.sleep(0.5)
            assert len(emulator.jobs()) == 2

            # 5. A printed job cannot be cancelled; only a reprint command prints again.
            before = len(staff.print_updates(session, "job-1"))
            staff.print_command(session, "job-1", "cancel")
            refused = await staff.print_status(session, "job-1", "cancelled", after=before)
            assert isinstance(refused, PrintJobRejected) and "printed" in refused.reason
            before = len(staff.print_updates(session, "job-1"))
            staff.print_command(session, "job-1", "reprint")
            done = await staff.print_status(session, "job-1", "printed", after=before)
            assert isinstance(done, PrintJobStatus) and done.reprints == 1 and done.attempts == 2
            assert _states(staff, session, "job-1")[-3:] == ["queued", "printing", "printed"]
            jobs = await asyncio.to_thread(emulator.wait_for_jobs, 3)
            _assert_receipt_job(jobs[2], RECEIPT)

            # Commands for a job this call does not have are refused.
            staff.print_command(session, "job-of-someone-else", "reprint")
            unknown = await staff.print_status(session, "job-of-someone-else", "printed")
            assert isinstance(unknown, PrintJobRejected)
            assert len(emulator.jobs()) == 3
    finally:
        await agent.aclose()


def _pdfinfo(pdf: Path) -> dict[str, str]:
    tool = shutil.which("pdfinfo")
    if tool is None:
        raise RuntimeError("pdfinfo is missing: install poppler-utils (cups-filters pulls it in)")
    out = subprocess.run([tool, str(pdf)], capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


async def test_a4_pdf_from_hq_through_cups(
    signaling: RunningSignaling, cups: CupsServer, staff: AutoStaff, tmp_path: Path
) -> None:
    output = cups.root / "out" / "a4-call.pdf"
    cups.add_pdf_queue("a4call", output)
    agent = await _booth(signaling, tmp_path, receipt="simulated", a4=f"cups:a4call@{cups.server}")
    try:
        record = await _call(agent, staff)
        session = record.session_id
        pdf = a4_test_document("2025-04-01 10:00")

        # A document whose pieces do not add up to the announced SHA-256 is refused whole.
        await staff.print_pdf(session, "a4-bad", pdf, "A4 test", chunk_bytes=4096, corrupt=True)
        await staff.print_pdf(session, "a4-ok", pdf, "A4 test", chunk_bytes=4096)
        done = await staff.print_status(session, "a4-ok", "printed", "failed", timeout_s=30)
        assert isinstance(done, PrintJobStatus) and done.state.value == "printed", done
        assert _states(staff, session, "a4-ok") == ["queued", "printing", "printed"]
        rejected = await staff.print_status(session, "a4-bad", "printed")
        assert isinstance(rejected, PrintJobRejected) and "SHA-256" in rejected.reason
        assert await agent.devices.spool.job("a4-bad") is None  # type: ignore[union-attr]

        stored = await agent.devices.spool.job("a4-ok")  # type: ignore[union-attr]
        assert stored is not None and stored.device_ref is not None
        assert stored.device_ref.startswith("a4call-")
        data = output.read_bytes()
        start, end = data.index(b"%PDF-"), data.rindex(b"%%EOF")
        extracted = tmp_path / "extracted.pdf"
        extracted.write_bytes(data[start : end + 5])
        info = _pdfinfo(extracted)
        assert info["Pages"] == "2"
        assert "(A4)" in info["Page size"]
    finally:
        await agent.aclose()
