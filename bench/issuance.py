"""Issuance benchmark: staff press 発行 → the certificate is printed at the booth.

Real components: ``python -m signaling``, ``python -m hq_console`` (issuing with a local
test CA made for the run) and ``python -m booth`` (trusting that CA, its A4 printer a queue
of a private cupsd with cups-filters' generic PDF model) as separate processes; this
process is the staff member's browser (HTTP to the console, signed in as ``sato``) and the
call's staff peer (:class:`bench.staff_peer.AutoStaff`). Must run as root in a network
namespace that has only loopback (cupsd), e.g. ``unshare --net``.

Per run (a one-page 住民票の写し of a one-person household): the clock starts before
``POST /api/sessions/{id}/issuance/documents`` (the console reads the register, renders
the PDF, signs it, stores it and appends the audit record); staff send the returned
``print_job`` (a fetch token, no document) on the data channel; the booth fetches the PDF,
checks its SHA-256 and signature and spools it; the clock stops when staff receive
``print_job_status`` ``printed``, which the booth sends only after CUPS reports the job
completed. Key ``p95_s`` (target ≤ 3 s).

Separately, in this process: rendering + signing one certificate (``render_s``,
``sign_s``, ``render_sign_*``), the console's part of every issue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from bench._call import Params, run_benchmark, running_booth
from bench._load import ChildProcess, free_port, percentile, rounded
from hq_console.issuance.certificates import ResidentRecordRequest, fee_for, gather_content
from hq_console.issuance.codes import new_code
from hq_console.issuance.render import IssueStamp, render_certificate
from hq_console.issuance.service import IssuerSettings
from hq_console.issuance.signing import CertificateSigner, LocalCaFiles, make_test_ca
from hq_console.issuance.simulated import DEFAULT_REGISTER, SimulatedRegister
from shared.config import ConsoleConfig
from shared.protocol import PrintJobRequest, PrintJobStatus
from tests.cups_support import running_cupsd

log = logging.getLogger("bench.issuance")

TARGET_S = 3.0
# 﨑山 ゆり: a household of one (one page), as her card reads.
RESIDENT = {
    "name": "﨑山 ゆり",
    "address": "東京都多摩市永山三丁目4番地5",
    "birth_date": "1949-12-01",
    "sex": "female",
}
REQUEST = {"kind": "resident_record", "scope": "household", "show_relationship": True}
PASSWORD = "bench-password"  # bench._call seeds the demo staff with it


async def _render_and_sign(ca: LocalCaFiles, runs: int) -> dict[str, Any]:
    config = ConsoleConfig(token_secret="x" * 32)
    settings = IssuerSettings.from_config(config)
    register = SimulatedRegister.from_file(DEFAULT_REGISTER)
    signer = CertificateSigner(ca.issuing_key, ca.issuing_cert, list(ca.chain), location="多摩市")
    request = ResidentRecordRequest.model_validate(REQUEST)
    render_times: list[float] = []
    sign_times: list[float] = []
    size = 0
    try:
        for i in range(runs):
            content = await gather_content(register, request, "r-3001")
            stamp = IssueStamp(
                document_number=f"JR-20250401-{i:05d}",
                issued_on=date(2025, 4, 1),
                verification_code=new_code(),
                verify_page=settings.verify_page,
                fee=fee_for(request.kind, 1, settings.fees_yen),
            )
            started = time.perf_counter()
            unsigned = await asyncio.to_thread(render_certificate, content, stamp, settings.issuer)
            rendered = time.perf_counter()
            signed = await signer.sign(unsigned)
            render_times.append(rendered - started)
            sign_times.append(time.perf_counter() - rendered)
            size = len(signed)
    finally:
        await register.aclose()
    totals = [r + s for r, s in zip(render_times, sign_times, strict=True)]
    return {
        "render_p50_s": rounded(percentile(render_times, 50), 3),
        "render_p95_s": rounded(percentile(render_times, 95), 3),
        "sign_p50_s": rounded(percentile(sign_times, 50), 3),
        "sign_p95_s": rounded(percentile(sign_times, 95), 3),
        "render_sign_p50_s": rounded(percentile(totals, 50), 3),
        "render_sign_p95_s": rounded(percentile(totals, 95), 3),
        "document_bytes": size,
    }


async def _sign_in(http: aiohttp.ClientSession, base: str) -> None:
    async with http.post(
        f"{base}/login",
        data={"login": "sato", "password": PASSWORD},
        headers={"Origin": base},
        allow_redirects=False,
    ) as resp:
        if resp.status != 303:
            raise RuntimeError(f"sign-in to the console failed ({resp.status})")


async def _post(http: aiohttp.ClientSession, base: str, path: str, body: Any) -> Any:
    async with http.post(f"{base}{path}", json=body, headers={"Origin": base}) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"POST {path}: {resp.status} {data}")
        return data


async def run(runs: int, workdir: Path) -> dict[str, Any]:
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # one line per subset table
    ca = make_test_ca(workdir / "ca")
    offline = await _render_and_sign(ca, runs)
    params = Params(width=320, height=240, fps=15)
    console_port = free_port()
    base = f"http://127.0.0.1:{console_port}"
    times: list[float] = []
    with running_cupsd() as cups:
        cups.add_pdf_queue("a4", cups.root / "out" / "a4.pdf")
        devices = {
            "receipt_printer": "simulated",
            "a4_printer": f"cups:a4@{cups.server}",
            "spool_path": str(workdir / "spool.sqlite3"),
        }
        booth_env = {
            "EKICHIKA_BOOTH_CONSOLE_URL": base,
            "EKICHIKA_BOOTH_ISSUING_CA_PATHS": json.dumps([str(ca.root_cert)]),
        }
        async with running_booth(workdir, params, devices, booth_env) as booth:
            db_url = f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
            (workdir / "console.toml").write_text(
                f'host = "127.0.0.1"\nport = {console_port}\n'
                f"database_url = {json.dumps(db_url)}\n"
                f'token_secret = "{"c" * 32}"\nauto_migrate = false\n'
                f"public_base_url = {json.dumps(base)}\n"
                f"issuing_key_path = {json.dumps(str(ca.issuing_key))}\n"
                f"issuing_cert_path = {json.dumps(str(ca.issuing_cert))}\n"
                f"issuing_chain_paths = {json.dumps([str(p) for p in ca.chain])}\n",
                encoding="utf-8",
            )
            console = ChildProcess(
                "hq_console",
                [sys.executable, "-m", "hq_console", "--config", str(workdir / "console.toml")],
                workdir / "console.log",
            )
            try:
                await console.start()
                await console.wait_listening("127.0.0.1", console_port, 30)
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    await _sign_in(http, base)
                    staff = booth.staff
                    session = (await booth.start_call()).session_id
                    match = await _post(
                        http, base, f"/api/sessions/{session}/issuance/match", RESIDENT
                    )
                    if match.get("result") != "match":
                        raise RuntimeError(f"the resident did not match: {match}")
                    for i in range(runs):
                        started = time.monotonic()
                        issued = await _post(
                            http, base, f"/api/sessions/{session}/issuance/documents", REQUEST
                        )
                        job = PrintJobRequest.model_validate(issued["print_job"])
                        staff.send_peer_data(session, job)
                        status = await staff.print_status(
                            session, job.job_id, "printed", "failed", timeout_s=60
                        )
                        if not isinstance(status, PrintJobStatus) or status.state != "printed":
                            raise RuntimeError(f"certificate {i}: {status}")
                        times.append(time.monotonic() - started)
                        log.info("certificate %d: %.3f s", i + 1, times[-1])
            finally:
                await console.aclose()
        completed = cups.run("lpstat", "-W", "completed", "-o", "a4").splitlines()
    p95 = percentile(times, 95)
    return {
        "scenario": "issuance",
        "runs": len(times),
        "certificate": "住民票の写し, one page, signed (test CA), fetched and checked by the booth",
        "a4_printer": "private cupsd, cups-filters generic PDF queue",
        "cups_jobs_completed": len(completed),
        "p50_s": rounded(percentile(times, 50), 3),
        "p95_s": rounded(p95, 3),
        "max_s": rounded(max(times), 3),
        **offline,
        "target_s": TARGET_S,
        "meets_target": p95 <= TARGET_S and len(completed) == len(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.issuance", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="certificates issued and printed")
    args = parser.parse_args(argv)
    return run_benchmark(lambda workdir: run(args.runs, workdir))


if __name__ == "__main__":
    sys.exit(main())
