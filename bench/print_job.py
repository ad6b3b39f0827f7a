"""Print benchmark: HQ asks for a print job → it is on the printer.

Real components: ``python -m signaling`` and ``python -m booth`` as separate processes,
a network receipt printer emulated by a TCP receiver in this process
(``tests/printer_support.py``, raw port 9100 style) and a private cupsd with a PDF queue
(``tests/cups_support.py``) as the A4 printer; this process is the automated staff member
(:class:`bench.staff_peer.AutoStaff`) and the kiosk page. Must run as root in a network
namespace that has only loopback (cupsd), e.g. ``unshare --net``.

Per receipt: staff send ``print_job`` on the call's data channel; the clock stops when the
receiver holds the complete ESC/POS job (raster image and the final cut). Per A4 job: the
2-page A4 test document goes as ``print_job`` plus base64 pieces; the clock stops when
staff receive ``print_job_status`` ``printed``, which the booth sends only after CUPS
reports the job completed. Keys ``receipt_p95_s`` and ``a4_p95_s`` (target ≤ 2 s each).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench._call import Params, run_benchmark, running_booth
from bench._load import percentile, rounded
from shared.documents import a4_test_document
from shared.protocol import (
    PrintJobStatus,
    ReceiptDocument,
    ReceiptQr,
    ReceiptRule,
    ReceiptText,
)
from tests.cups_support import running_cupsd
from tests.printer_support import ReceiptPrinterEmulator, parse_escpos, raster_images

log = logging.getLogger("bench.print_job")

TARGET_S = 2.0


def _receipt(n: int) -> ReceiptDocument:
    return ReceiptDocument(
        title="受付票",
        blocks=[
            ReceiptText(text="受付票", size=44, bold=True, align="center"),
            ReceiptRule(),
            ReceiptText(text="ブース: 聖蹟桜ヶ丘 1番ブース"),
            ReceiptText(text="担当課: 市民課"),
            ReceiptText(text=f"日時: 2025年4月1日 10:{n:02d}"),
            ReceiptQr(data=f"ekichika:session:bench-{n}"),
            ReceiptRule(),
            ReceiptText(text="本日はご利用ありがとうございました", size=28, align="center"),
        ],
    )


def _complete_jobs(emulator: ReceiptPrinterEmulator) -> int:
    """Connections holding a whole receipt: raster image and the final cut."""
    count = 0
    for data in emulator.connections():
        if not raster_images(data):
            continue
        names = [c.name for c in parse_escpos(data)[0] if c.name != "DLE EOT"]
        if names and names[-1] == "GS V":
            count += 1
    return count


def _wait_complete(emulator: ReceiptPrinterEmulator, count: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _complete_jobs(emulator) >= count:
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"receipt {count} did not arrive at the printer")


def _pdf_pages(path: Path) -> int:
    data = path.read_bytes()
    start, end = data.index(b"%PDF-"), data.rindex(b"%%EOF")
    extracted = path.with_suffix(".extracted.pdf")
    extracted.write_bytes(data[start : end + 5])
    tool = shutil.which("pdfinfo")
    if tool is None:
        raise RuntimeError("pdfinfo is missing: install poppler-utils")
    out = subprocess.run([tool, str(extracted)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("Pages:"):
            return int(line.split(":")[1])
    return 0


async def run(jobs: int, workdir: Path) -> dict[str, Any]:
    params = Params(width=320, height=240, fps=15)
    emulator = ReceiptPrinterEmulator()
    emulator.switch_on()
    receipt_times: list[float] = []
    receipt_status_times: list[float] = []
    a4_times: list[float] = []
    pages = 0
    with running_cupsd() as cups:
        output = cups.root / "out" / "a4.pdf"
        cups.add_pdf_queue("a4", output)
        devices = {
            "receipt_printer": f"network:{emulator.address}",
            "a4_printer": f"cups:a4@{cups.server}",
            "spool_path": str(workdir / "spool.sqlite3"),
        }
        pdf = a4_test_document("2025-04-01 10:00")
        try:
            async with running_booth(workdir, params, devices) as booth:
                staff = booth.staff
                session = (await booth.start_call()).session_id
                for i in range(jobs):
                    job_id = str(uuid.uuid4())
                    sent = time.monotonic()
                    await staff.print_receipt(session, job_id, _receipt(i), title="受付票")
                    arrived = await asyncio.to_thread(_wait_complete, emulator, i + 1, 20)
                    status = await staff.print_status(session, job_id, "printed", "failed")
                    if not isinstance(status, PrintJobStatus) or status.state != "printed":
                        raise RuntimeError(f"receipt {i}: {status}")
                    receipt_times.append(arrived - sent)
                    receipt_status_times.append(time.monotonic() - sent)
                    log.info("receipt %d: %.3f s", i + 1, arrived - sent)
                for i in range(jobs):
                    job_id = str(uuid.uuid4())
                    sent = time.monotonic()
                    await staff.print_pdf(session, job_id, pdf, "A4 test document")
                    status = await staff.print_status(
                        session, job_id, "printed", "failed", timeout_s=60
                    )
                    if not isinstance(status, PrintJobStatus) or status.state != "printed":
                        raise RuntimeError(f"A4 job {i}: {status}")
                    a4_times.append(time.monotonic() - sent)
                    log.info("A4 job %d: %.3f s", i + 1, a4_times[-1])
                pages = await asyncio.to_thread(_pdf_pages, output)
        finally:
            emulator.switch_off()
    receipt_p95 = percentile(receipt_times, 95)
    a4_p95 = percentile(a4_times, 95)
    return {
        "scenario": "print_job",
        "receipts": len(receipt_times),
        "a4_jobs": len(a4_times),
        "receipt_printer": "TCP receiver (ESC/POS, raw 9100 style) on loopback",
        "a4_printer": "private cupsd, cups-filters generic PDF queue",
        "a4_document_bytes": len(pdf),
        "a4_pages": pages,
        "receipt_p50_s": rounded(percentile(receipt_times, 50), 3),
        "receipt_p95_s": rounded(receipt_p95, 3),
        "receipt_status_p95_s": rounded(percentile(receipt_status_times, 95), 3),
        "a4_p50_s": rounded(percentile(a4_times, 50), 3),
        "a4_p95_s": rounded(a4_p95, 3),
        "target_s": TARGET_S,
        "meets_target": receipt_p95 <= TARGET_S and a4_p95 <= TARGET_S and pages == 2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.print_job", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10, help="receipts and A4 jobs, each")
    args = parser.parse_args(argv)
    return run_benchmark(lambda workdir: run(args.jobs, workdir))


if __name__ == "__main__":
    sys.exit(main())
