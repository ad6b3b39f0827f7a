"""Certificates issued during a call reach the booth's printer by a one-time fetch.

Real components: signaling, the HQ console app (issuing with a local test CA) and the
booth agent share one seeded SQLite file; the automated staff peer is in the call; the
booth's A4 printer is a queue of a private cupsd. The staff member's HTTP calls go to the
console as a signed-in browser would; the data-channel messages go from the staff peer.

Issue 住民票の写し → the booth fetches the PDF with its token, checks SHA-256 and signature,
prints it once (one completed CUPS job whose text holds the document number); a reprint is
recorded in the audit log and prints exactly once more, a repeated command prints nothing;
a spent, expired or foreign token, and a document altered after issuing, print nothing;
the booth agent restarted while CUPS holds the job prints it exactly once.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select, update

from bench.staff_peer import AutoStaff
from booth.agent import BoothAgent
from booth.console_client import ConsoleClient, ConsoleUnavailable
from booth.spool import JobState
from hq_console.app import create_app
from hq_console.issuance.api import ISSUANCE_DESK
from hq_console.issuance.signing import LocalCaFiles, make_test_ca
from shared.config import BoothConfig, ConsoleConfig
from shared.protocol import PrintJobCommand, PrintJobRejected, PrintJobRequest, PrintJobStatus
from shared.store.db import create_engine, session_factory
from shared.store.models import AuditRecord, CallSession, IssuedDocument
from shared.store.seed import upsert_booth
from tests.call_support import booth_config, start_call
from tests.call_support import signaling as signaling
from tests.call_support import staff as staff
from tests.cups_support import CupsServer, running_cupsd
from tests.signaling_support import DEMO_PASSWORD, TOKEN_SECRET, RunningSignaling, sqlite_url

# The register's 𠮷田 太郎 (household of three), as his card reads.
YOSHIDA = {
    "name": "𠮷田 太郎",
    "address": "東京都多摩市関戸1-2-3",
    "birth_date": "1958-04-12",
    "sex": "male",
}
RESIDENT_RECORD = {"kind": "resident_record", "scope": "household", "show_relationship": True}


@pytest.fixture(scope="module")
def cups() -> Iterator[CupsServer]:
    with running_cupsd() as server:
        yield server


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCaFiles:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@dataclass
class Desk:
    """The console, a staff member signed in to it, the booth and the call."""

    console: web.AppRunner
    base: str
    http: aiohttp.ClientSession
    booth: BoothAgent
    booth_config: BoothConfig
    staff: AutoStaff
    session_id: str
    queue: str
    output: Path
    database_url: str

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.base}{path}", json=body, headers={"Origin": self.base}
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.base}{path}") as resp:
            return resp.status, await resp.json()

    async def identify(self) -> None:
        status, body = await self.post(f"/api/sessions/{self.session_id}/issuance/match", YOSHIDA)
        assert status == 200 and body["result"] == "match", body

    async def issue(self, request: dict[str, Any] = RESIDENT_RECORD) -> dict[str, Any]:
        status, body = await self.post(
            f"/api/sessions/{self.session_id}/issuance/documents", request
        )
        assert status == 201, body
        return dict(body)

    def send(self, message: dict[str, Any], model: type[PrintJobRequest | PrintJobCommand]) -> Any:
        decoded = model.model_validate(message)
        self.staff.send_peer_data(self.session_id, decoded)
        return decoded

    def updates(self, job_id: str) -> int:
        return len(self.staff.print_updates(self.session_id, job_id))

    async def outcome(
        self, job_id: str, *states: str, after: int = 0
    ) -> PrintJobStatus | PrintJobRejected:
        return await self.staff.print_status(
            self.session_id, job_id, *states, after=after, timeout_s=40
        )

    def completed_jobs(self, cups: CupsServer) -> list[str]:
        out = cups.run("lpstat", "-W", "completed", "-o", self.queue)
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issuing_console_config(
    signaling: RunningSignaling, ca: LocalCaFiles, tmp_path: Path, **fields: Any
) -> ConsoleConfig:
    """The console on a free loopback port, over the signaling server's SQLite file, issuing
    with the test CA; ``fields`` are further ConsoleConfig fields."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    return ConsoleConfig(
        host="127.0.0.1",
        port=port,
        database_url=sqlite_url(tmp_path / "signaling.sqlite3"),
        token_secret=TOKEN_SECRET,
        signaling_url=f"{signaling.ws_url}/ws/staff",
        issuing_key_path=str(ca.issuing_key),
        issuing_cert_path=str(ca.issuing_cert),
        issuing_chain_paths=[str(p) for p in ca.chain],
        public_base_url=base,
        **fields,
    )


async def _open_booth(config: BoothConfig) -> BoothAgent:
    agent = BoothAgent(config)
    await agent.start()
    spool = agent.devices.spool
    assert spool is not None
    spool.retry_min_s, spool.retry_max_s = 0.2, 0.5
    deadline = time.monotonic() + 10
    while not agent.signaling.connected:
        assert time.monotonic() < deadline, "booth did not come online"
        await asyncio.sleep(0.05)
    return agent


@pytest.fixture
async def desk_factory(
    signaling: RunningSignaling,
    staff: AutoStaff,
    cups: CupsServer,
    ca: LocalCaFiles,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Desk] = []

    async def make(*, trust_ca: bool = True, token_ttl_s: float = 120.0) -> Desk:
        config = issuing_console_config(signaling, ca, tmp_path, document_token_ttl_s=token_ttl_s)
        port, base, database_url = config.port, config.public_base_url, config.database_url
        runner = web.AppRunner(create_app(config), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        queue = f"cert{len(opened)}{port}"
        output = cups.root / "out" / f"{queue}.pdf"
        cups.add_pdf_queue(queue, output)
        config_booth = booth_config(
            signaling,
            tmp_path,
            receipt_printer="simulated",
            a4_printer=f"cups:{queue}@{cups.server}",
        ).model_copy(
            update={
                "console_url": base,
                "issuing_ca_paths": [str(ca.root_cert)] if trust_ca else [],
            }
        )
        agent = await _open_booth(config_booth)
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with http.post(
            f"{base}/login",
            data={"login": "sato", "password": DEMO_PASSWORD},
            headers={"Origin": base},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        record = await start_call(agent, staff)
        desk = Desk(
            runner,
            base,
            http,
            agent,
            config_booth,
            staff,
            record.session_id,
            queue,
            output,
            database_url,
        )
        opened.append(desk)
        return desk

    yield make
    for desk in opened:
        await desk.http.close()
        await desk.booth.aclose()
        await desk.console.cleanup()


async def _audit(database_url: str, action: str, object_id: str) -> list[AuditRecord]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as db:
            rows = await db.scalars(
                select(AuditRecord)
                .where(AuditRecord.action == action, AuditRecord.object_id == object_id)
                .order_by(AuditRecord.id)
            )
            return list(rows)
    finally:
        await engine.dispose()


def _pdftotext(path: Path, tmp_path: Path) -> str:
    data = path.read_bytes()
    start, end = data.rindex(b"%PDF-"), data.rindex(b"%%EOF")
    extracted = tmp_path / f"{path.stem}-extracted.pdf"
    extracted.write_bytes(data[start : end + 5])
    tool = shutil.which("pdftotext")
    assert tool is not None, "pdftotext (poppler-utils) is needed"
    return subprocess.run(
        [tool, "-layout", str(extracted), "-"], capture_output=True, text=True, check=True
    ).stdout


async def _completed(desk: Desk, cups: CupsServer, count: int) -> list[str]:
    deadline = time.monotonic() + 20
    while True:
        jobs = await asyncio.to_thread(desk.completed_jobs, cups)
        if len(jobs) >= count or time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(0.1)


async def test_issued_certificate_is_fetched_checked_printed_and_reprinted_once(
    desk_factory: Callable[..., Any], cups: CupsServer, tmp_path: Path
) -> None:
    desk: Desk = await desk_factory()
    await desk.identify()
    issued = await desk.issue()
    document, job = issued["document"], issued["print_job"]
    assert job["job_id"] == document["id"] and job["fetch"]["token"]
    assert job["size"] == document["size"] and job["sha256"] == document["sha256"]
    assert "data_b64" not in str(job) and len(str(job)) < 400  # a reference, not the PDF

    desk.send(job, PrintJobRequest)
    done = await desk.outcome(job["job_id"], "printed", "failed")
    assert isinstance(done, PrintJobStatus) and done.state.value == "printed", done
    states = [
        u.state.value
        for u in desk.staff.print_updates(desk.session_id, job["job_id"])
        if isinstance(u, PrintJobStatus)
    ]
    assert states == ["queued", "printing", "printed"]
    jobs = await _completed(desk, cups, 1)
    assert len(jobs) == 1
    text = _pdftotext(desk.output, tmp_path)
    assert document["document_number"] in text and "住民票の写し" in text
    assert "𠮷田 太郎" in text

    # The same message again (a resend): the token is spent, but the booth already has the
    # job and says where it is; nothing more is printed.
    before = desk.updates(job["job_id"])
    desk.send(job, PrintJobRequest)
    again = await desk.outcome(job["job_id"], "printed", after=before)
    assert isinstance(again, PrintJobStatus) and again.attempts == 1

    # 再印刷 needs the staff member's confirmation.
    reprint_url = f"/api/issuance/documents/{document['id']}/reprint"
    status, body = await desk.post(reprint_url, {"confirm": False})
    assert status == 400 and body["error"] == "confirmation_required"
    assert await _audit(desk.database_url, "certificate_reprinted", document["id"]) == []
    status, body = await desk.post(reprint_url, {"confirm": True})
    assert status == 200, body
    command = body["print_job_command"]
    assert command["action"] == "reprint" and command["reprint_no"] == 1
    (audit,) = await _audit(desk.database_url, "certificate_reprinted", document["id"])
    assert audit.staff_id == "sato" and audit.session_id == desk.session_id
    assert '"reprint_no":1' in audit.detail and document["document_number"] in audit.detail

    before = desk.updates(job["job_id"])
    desk.send(command, PrintJobCommand)
    done = await desk.outcome(job["job_id"], "printed", "failed", after=before)
    assert isinstance(done, PrintJobStatus) and done.state.value == "printed", done
    assert done.reprints == 1 and done.attempts == 2
    assert len(await _completed(desk, cups, 2)) == 2

    # The same reprint command again (a resend) prints nothing more.
    before = desk.updates(job["job_id"])
    desk.send(command, PrintJobCommand)
    same = await desk.outcome(job["job_id"], "printed", "queued", after=before)
    assert isinstance(same, PrintJobStatus) and same.state.value == "printed"
    assert same.reprints == 1
    await asyncio.sleep(0.5)
    assert len(await asyncio.to_thread(desk.completed_jobs, cups)) == 2

    # The session's documents list the certificate with its reprint.
    status, body = await desk.get(f"/api/sessions/{desk.session_id}/issuance/documents")
    assert status == 200
    (listed,) = body["documents"]
    assert listed["id"] == document["id"] and listed["reprints"] == 1


async def test_spent_expired_and_foreign_tokens_and_altered_documents_print_nothing(
    desk_factory: Callable[..., Any],
    cups: CupsServer,
    ca: LocalCaFiles,
    signaling: RunningSignaling,
) -> None:
    desk: Desk = await desk_factory()
    await desk.identify()
    credential = signaling.booth_credentials["seiseki-1"]
    me = ConsoleClient(desk.base, "seiseki-1", credential, timeout_s=10)
    await upsert_booth_in(desk.database_url, "tamacenter-1", "t" * 32)
    other = ConsoleClient(desk.base, "tamacenter-1", "t" * 32, timeout_s=10)
    spool = desk.booth.devices.spool
    assert spool is not None
    try:
        # 1. A token already used (here by someone holding the booth's credential).
        job = (await desk.issue())["print_job"]
        fetched = await me.fetch_document(job["fetch"]["token"], max_bytes=10**7)
        assert fetched.startswith(b"%PDF-")
        with pytest.raises(ConsoleUnavailable) as spent:
            await me.fetch_document(job["fetch"]["token"], max_bytes=10**7)
        assert (spent.value.status, spent.value.code) == (410, "token_used")
        desk.send(job, PrintJobRequest)
        failed = await desk.outcome(job["job_id"], "failed", "printed")
        assert isinstance(failed, PrintJobStatus) and failed.state.value == "failed"
        assert "すでに使われています" in (failed.reason or "") and "印刷していません" in (
            failed.reason or ""
        )
        assert await spool.job(job["job_id"]) is None

        # 2. Another booth cannot use a token of this booth (and it stays good here).
        job = (await desk.issue())["print_job"]
        with pytest.raises(ConsoleUnavailable) as foreign:
            await other.fetch_document(job["fetch"]["token"], max_bytes=10**7)
        assert (foreign.value.status, foreign.value.code) == (403, "other_booth")

        # 3. An expired token.
        desk_state = desk.console.app[ISSUANCE_DESK]
        desk_state.tokens.ttl_s = 0.3
        expired_job = (await desk.issue())["print_job"]
        desk_state.tokens.ttl_s = 120.0
        await asyncio.sleep(0.5)
        desk.send(expired_job, PrintJobRequest)
        failed = await desk.outcome(expired_job["job_id"], "failed", "printed")
        assert isinstance(failed, PrintJobStatus) and "有効期限" in (failed.reason or "")
        assert await spool.job(expired_job["job_id"]) is None

        # 4. A document whose bytes were changed after signing (the stored digest changed
        # with it): the signature check refuses it.
        altered = await desk.issue()
        await _tamper(desk.database_url, altered["document"]["id"], keep_digest=False)
        status, body = await desk.post(
            f"/api/issuance/documents/{altered['document']['id']}/print", {}
        )
        assert status == 200
        desk.send(body["print_job"], PrintJobRequest)
        failed = await desk.outcome(altered["document"]["id"], "failed", "printed")
        assert isinstance(failed, PrintJobStatus) and "電子署名が無効" in (failed.reason or "")
        assert await spool.job(altered["document"]["id"]) is None

        # 5. Changed bytes under the announced digest: the SHA-256 check refuses them.
        changed = await desk.issue()
        await _tamper(desk.database_url, changed["document"]["id"], keep_digest=True)
        desk.send(changed["print_job"], PrintJobRequest)
        failed = await desk.outcome(changed["document"]["id"], "failed", "printed")
        assert isinstance(failed, PrintJobStatus) and "一致しません" in (failed.reason or "")
        assert await spool.job(changed["document"]["id"]) is None

        # The foreign-token job of step 2 is still good for this booth: the one print.
        desk.send(job, PrintJobRequest)
        done = await desk.outcome(job["job_id"], "printed", "failed")
        assert isinstance(done, PrintJobStatus) and done.state.value == "printed", done
        assert len(await _completed(desk, cups, 1)) == 1
        assert [r.job_id for r in await spool.jobs()] == [job["job_id"]]

        # 6. After the call, no token opens anything.
        late = (await desk.issue())["print_job"]
        await desk.staff.hang_up(desk.session_id)
        await _session_ended(desk.database_url, desk.session_id)
        with pytest.raises(ConsoleUnavailable) as ended:
            await me.fetch_document(late["fetch"]["token"], max_bytes=10**7)
        assert (ended.value.status, ended.value.code) == (409, "session_ended")
        assert len(await asyncio.to_thread(desk.completed_jobs, cups)) == 1
    finally:
        await me.aclose()
        await other.aclose()


async def _session_ended(database_url: str, session_id: str) -> None:
    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            async with session_factory(engine)() as db:
                call = await db.get(CallSession, session_id)
                if call is not None and call.ended_at is not None:
                    return
            assert time.monotonic() < deadline, "the session did not end"
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


async def upsert_booth_in(database_url: str, booth_id: str, credential: str) -> None:
    engine = create_engine(database_url)
    try:
        await upsert_booth(
            session_factory(engine), booth_id, "tamacenter", "多摩センター 1", credential
        )
    finally:
        await engine.dispose()


async def _tamper(database_url: str, document_id: str, *, keep_digest: bool) -> None:
    """Change bytes of a stored certificate inside its page content (not the signature)."""
    import hashlib

    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as db, db.begin():
            document = await db.get(IssuedDocument, document_id)
            assert document is not None
            pdf = bytearray(document.pdf)
            at = pdf.index(b"stream") + 40
            pdf[at] ^= 0x01
            values: dict[str, Any] = {"pdf": bytes(pdf)}
            if not keep_digest:
                values["pdf_sha256"] = hashlib.sha256(bytes(pdf)).hexdigest()
            await db.execute(
                update(IssuedDocument).where(IssuedDocument.id == document_id).values(**values)
            )
    finally:
        await engine.dispose()


async def test_booth_restarted_while_cups_holds_the_certificate_prints_it_once(
    desk_factory: Callable[..., Any], cups: CupsServer
) -> None:
    desk: Desk = await desk_factory()
    await desk.identify()
    cups.run("cupsdisable", desk.queue)
    job = (await desk.issue())["print_job"]
    desk.send(job, PrintJobRequest)
    spool = desk.booth.devices.spool
    assert spool is not None
    deadline = time.monotonic() + 20
    while True:
        record = await spool.job(job["job_id"])
        if record is not None and record.device_ref is not None:
            break
        assert time.monotonic() < deadline, "the job never reached CUPS"
        await asyncio.sleep(0.05)
    assert record.state is JobState.PRINTING
    await desk.booth.aclose()  # the agent stops mid-print

    desk.booth = await _open_booth(desk.booth_config)
    reopened = desk.booth.devices.spool
    assert reopened is not None
    await asyncio.sleep(0.3)
    waiting = await reopened.job(job["job_id"])
    assert waiting is not None and waiting.state is JobState.PRINTING
    cups.run("cupsenable", desk.queue)
    async with asyncio.timeout(30):
        done = await reopened.wait_for(job["job_id"], [JobState.PRINTED, JobState.FAILED])
    assert done.state is JobState.PRINTED and done.attempts == 1
    assert done.device_ref == record.device_ref
    jobs = await _completed(desk, cups, 1)
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(desk.completed_jobs, cups) == jobs == [record.device_ref]
