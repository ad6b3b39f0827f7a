"""The whole counter visit with real components: card → 本人確認 → 住民票の写し → paper.

Real components, one process: the signaling server, the HQ console app (issuing with a
local test CA) and the booth agent share one seeded SQLite file; the booth reads the My
Number card through pcscd and vsmartcard's vpcd from the virtual card of
:mod:`tests.vcard` (髙橋 𠮷子 of the simulated register); the resident's touches go over the
booth's kiosk WebSocket as the kiosk page sends them; the automated staff peer is in a
real aiortc call; the booth's A4 printer is a PDF queue of a private cupsd.

Staff ask for the card on the data channel, the resident puts the card on the reader and
types the PIN at the kiosk, the 4 facts reach staff; staff post exactly those facts to the
console's 本人確認 API (a signed-in session, as the console page does), issue a 住民票の写し
of the matched resident and send the print job on the data channel; the booth fetches the
PDF with its one-time token, checks it and prints it: one completed CUPS job whose text
holds the document number and the name with 𠮷. The facts crossed neither the signaling
server nor any log, and the audit log holds ``card_data_read`` and ``certificate_issued``
for the session with identifiers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from bench._call import BenchBooth, KioskDriver
from bench.card_read import _card_stage
from bench.staff_peer import AutoStaff
from booth.kiosk import create_kiosk_app
from hq_console.app import create_app
from hq_console.issuance.signing import LocalCaFiles
from shared import wire
from shared.kiosk_protocol import KioskCardStage, PinEntered
from shared.protocol import CardBasicInfo, CardReadProgress, PrintJobRequest, PrintJobStatus
from shared.store.db import create_engine, session_factory
from shared.store.models import AuditRecord
from tests.call_support import booth_config
from tests.call_support import signaling as signaling
from tests.call_support import staff as staff
from tests.cups_support import CupsServer
from tests.pcsc_support import READERS, PcscDaemon
from tests.pcsc_support import pcscd_session as pcscd_session  # the "pcscd" fixture
from tests.signaling_support import DEMO_PASSWORD, RunningSignaling
from tests.test_card_in_call import Booth
from tests.test_card_reader import Cards
from tests.test_card_reader import cards as cards
from tests.test_issuance_delivery import (
    Desk,
    _completed,
    _free_port,
    _open_booth,
    _pdftotext,
    issuing_console_config,
)
from tests.test_issuance_delivery import ca as ca
from tests.test_issuance_delivery import cups as cups
from tests.vcard import CardProfile

# The card on the reader: the register's 髙橋 𠮷子 (r-6001), as CardProfile's defaults hold.
CARD = CardProfile()
RESIDENT_ID = "r-6001"
NAME = "髙橋 𠮷子"
ADDRESS = "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号"
BIRTH_DATE = datetime.date(1985, 4, 1)
PIN = "1234"


class CardDesk:
    """A booth with the PC/SC reader and its kiosk socket, the console with a signed-in
    staff member, and (once :meth:`call` ran) the call between them."""

    def __init__(
        self, desk: Desk, booth: Booth, kiosk: BenchBooth, kiosk_runner: web.AppRunner
    ) -> None:
        self.desk = desk
        self.booth = booth
        self.kiosk = kiosk
        self.kiosk_runner = kiosk_runner


@pytest.fixture
async def card_desk(
    signaling: RunningSignaling,
    staff: AutoStaff,
    cups: CupsServer,
    ca: LocalCaFiles,
    cards: Cards,
    pcscd: PcscDaemon,
    tmp_path: Path,
) -> AsyncIterator[CardDesk]:
    console_config = issuing_console_config(signaling, ca, tmp_path)
    port, base = console_config.port, console_config.public_base_url
    database_url = console_config.database_url
    console = web.AppRunner(create_app(console_config), shutdown_timeout=1.0)
    await console.setup()
    await web.TCPSite(console, "127.0.0.1", port).start()
    queue = f"cardflow{port}"
    output = cups.root / "out" / f"{queue}.pdf"
    cups.add_pdf_queue(queue, output)
    config = booth_config(
        signaling,
        tmp_path,
        card_reader=f"pcsc:{READERS[0]}",
        receipt_printer="simulated",
        a4_printer=f"cups:{queue}@{cups.server}",
    ).model_copy(update={"console_url": base, "issuing_ca_paths": [str(ca.root_cert)]})
    agent = await _open_booth(config)
    booth = Booth(agent)  # spies on every frame the booth sends to signaling
    kiosk_port = _free_port()
    kiosk_runner = web.AppRunner(create_kiosk_app(agent), shutdown_timeout=1.0)
    await kiosk_runner.setup()
    await web.TCPSite(kiosk_runner, "127.0.0.1", kiosk_port).start()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    kiosk_ws = await http.ws_connect(f"http://127.0.0.1:{kiosk_port}/ws")
    kiosk = KioskDriver(kiosk_ws)
    kiosk_reader = asyncio.create_task(kiosk.read())
    try:
        async with http.post(
            f"{base}/login",
            data={"login": "sato", "password": DEMO_PASSWORD},
            headers={"Origin": base},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        desk = Desk(console, base, http, agent, config, staff, "", queue, output, database_url)
        yield CardDesk(
            desk,
            booth,
            BenchBooth(http, f"http://127.0.0.1:{kiosk_port}/healthz", kiosk, staff),
            kiosk_runner,
        )
    finally:
        kiosk_reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kiosk_reader
        await kiosk_ws.close()
        await http.close()
        await kiosk_runner.cleanup()
        await agent.aclose()
        await console.cleanup()


async def _session_audit(database_url: str, session_id: str) -> list[AuditRecord]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as db:
            rows = await db.scalars(
                select(AuditRecord)
                .where(AuditRecord.session_id == session_id)
                .order_by(AuditRecord.id)
            )
            return list(rows)
    finally:
        await engine.dispose()


def _cups_logs(cups: CupsServer) -> str:
    return "\n".join(
        p.read_text(errors="replace") for p in sorted((cups.root / "log").iterdir()) if p.is_file()
    )


async def test_card_read_at_the_booth_to_a_certificate_printed_once(
    card_desk: CardDesk,
    cards: Cards,
    cups: CupsServer,
    pcscd: PcscDaemon,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    desk, kiosk, staff = card_desk.desk, card_desk.kiosk, card_desk.desk.staff

    # The resident asks for 市民課 at the kiosk; staff answer; the call is up.
    await staff.set_available()
    record = await kiosk.start_call()
    desk.session_id = record.session_id

    # Staff ask for the card; the kiosk asks the resident to put it on the reader.
    asked = time.monotonic()
    await staff.request_card_read(record.session_id, "card-1")
    await _card_stage(kiosk.kiosk, KioskCardStage.WAITING_FOR_CARD, asked)
    card = await asyncio.to_thread(cards.insert, CARD)
    await _card_stage(kiosk.kiosk, KioskCardStage.WAITING_FOR_PIN, asked)
    pad = [s.card for _, s in kiosk.kiosk.screens if s.card is not None]
    assert pad[-1].stage is KioskCardStage.WAITING_FOR_PIN and pad[-1].remaining_tries == 3

    # The resident types the PIN on the kiosk: the page's message on the kiosk socket.
    await kiosk.kiosk.ws.send_str(wire.encode(PinEntered(pin=PIN)))
    facts = await staff.card_read_result(record.session_id, "card-1")
    assert facts == CardBasicInfo(
        request_id="card-1", name=NAME, address=ADDRESS, birth_date=BIRTH_DATE, sex="female"
    )
    verifies = [c for c in card.commands if c[:4] == bytes.fromhex("00200080") and len(c) > 4]
    assert verifies == [bytes.fromhex("0020008004") + PIN.encode()]  # one VERIFY, this PIN
    stages = [m.stage.value for m in record.peer_data if isinstance(m, CardReadProgress)]
    assert stages == ["waiting_for_card", "waiting_for_pin", "reading"]

    # 本人確認: exactly the card's facts, as the console page posts them.
    sent_facts = {
        k: v
        for k, v in facts.model_dump(mode="json").items()
        if k in ("name", "address", "birth_date", "sex")
    }
    status, match = await desk.post(f"/api/sessions/{record.session_id}/issuance/match", sent_facts)
    assert status == 200 and match["result"] == "match", match
    (me,) = [m for m in match["members"] if m["self"]]
    assert (me["id"], me["name"]) == (RESIDENT_ID, NAME)

    # 住民票の写し of the resident herself, then the print job on the data channel.
    issued = await desk.issue(
        {
            "kind": "resident_record",
            "scope": "members",
            "member_ids": [me["id"]],
            "show_relationship": True,
        }
    )
    document, job = issued["document"], issued["print_job"]
    assert job["job_id"] == document["id"] and job["sha256"] == document["sha256"]
    assert NAME not in json.dumps(job, ensure_ascii=False)  # a reference, not the content
    desk.send(job, PrintJobRequest)
    done = await desk.outcome(job["job_id"], "printed", "failed")
    assert isinstance(done, PrintJobStatus) and done.state.value == "printed", done
    assert done.attempts == 1
    states = [
        u.state.value
        for u in staff.print_updates(record.session_id, job["job_id"])
        if isinstance(u, PrintJobStatus)
    ]
    assert states == ["queued", "printing", "printed"]

    # CUPS completed the job exactly once; the paper holds the number and the name with 𠮷.
    jobs = await _completed(desk, cups, 1)
    assert len(jobs) == 1
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(desk.completed_jobs, cups) == jobs
    text = _pdftotext(desk.output, tmp_path)
    assert document["document_number"] in text and "住民票の写し" in text
    assert NAME in text and "𠮷" in text
    assert "髙橋 陽斗" not in text  # the members chosen, not the household

    # The audit log: the card read (by the booth) and the issue, identifiers only.
    audit = await _session_audit(desk.database_url, record.session_id)
    assert [(r.action, r.staff_id, r.booth_id, r.object_id) for r in audit] == [
        ("card_data_read", "sato", "seiseki-1", "card-1"),
        ("certificate_issued", "sato", "seiseki-1", document["id"]),
    ]
    issued_detail = json.loads(audit[1].detail)
    assert issued_detail["document_number"] == document["document_number"]
    assert issued_detail["kind"] == "resident_record"

    # The facts went peer to peer only: not through signaling, not into any log or record.
    secrets = (NAME, "髙橋", "𠮷子", ADDRESS, "駅近ハイツ", BIRTH_DATE.isoformat(), CARD.birth)
    frames = [f for _, f in staff.signaling_frames] + card_desk.booth.signaling_sent
    assert any('"relay"' in f for f in frames), "the spies saw the call's relays"
    audit_text = repr([vars(r) for r in audit])
    logs = caplog.text
    assert "card read card-1" in logs and document["document_number"] in logs
    elsewhere = "\n".join([logs, pcscd.log_tail(10_000), _cups_logs(cups)])
    for secret in secrets:
        assert not any(secret in f for f in frames), f"{secret!r} crossed signaling"
        assert secret not in elsewhere, f"{secret!r} is in a log"
        assert secret not in audit_text, f"{secret!r} is in the audit log"
    # The PIN went from the kiosk socket to the card only (the WebRTC libraries' DEBUG
    # lines carry RTP numbers in which any four digits turn up by chance; left out here).
    pin = re.compile(rf"(?<![0-9]){PIN}(?![0-9])")
    ours = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("aiortc", "aioice"))
    )
    assert not pin.search(ours), "the PIN is in the log"
    assert not any(pin.search(f) for f in frames)

    elapsed = time.monotonic() - started
    logging.getLogger(__name__).info("card to paper in %.1f s", elapsed)
    assert elapsed < 45, f"the flow took {elapsed:.1f} s"
