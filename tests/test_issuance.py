"""Certificate issuance: the simulated city register, certificate PDFs (text layer, pyHanko
signature), issuance records and the public verification page, on a real console server
with SQLite brought up through the real migrations."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hq_console.app import create_app
from hq_console.issuance import (
    ISSUANCE,
    IssuanceService,
    LookupThrottle,
    ResidentRecordRequest,
    SealCertificateRequest,
    TaxCertificateRequest,
    Verdict,
    certificate_request,
)
from hq_console.issuance.codes import canonical, code_digest
from hq_console.issuance.connector import (
    NoResidentMatch,
    ResidentFacts,
    ResidentMatch,
    SeveralResidentMatches,
    normalize_address,
)
from hq_console.issuance.errors import RegisterError
from hq_console.issuance.signing import LocalCaFiles, check_signature, make_test_ca
from hq_console.issuance.simulated import SimulatedRegister
from shared.config import ConsoleConfig
from shared.protocol import CardBasicInfo
from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import AuditRecord, CallSession, HelpRequest, IssuedDocument
from shared.store.seed import seed_demo

LONG_ADDRESS = (
    "東京都多摩市落合一丁目15番地2　多摩ニュータウン落合グリーンヒルズ南街区第三住宅共同住宅"
    "　十七号棟　一二〇三号室（落合グリーンヒルズ管理事務所内郵便受け）"
)


@pytest.fixture
async def register() -> SimulatedRegister:
    return await SimulatedRegister.open()


async def test_register_matches_by_the_four_facts(register: SimulatedRegister) -> None:
    # As a card gives them: full-width digits and a different way of writing the block.
    card = CardBasicInfo(
        request_id="r1",
        name="𠮷田　太郎",
        address="東京都多摩市関戸１丁目２番３号",
        birth_date=date(1958, 4, 12),
        sex="male",
    )
    assert await register.find_resident(ResidentFacts.from_card(card)) == ResidentMatch(
        "r-1001", "h-yoshida"
    )
    takahashi = ResidentFacts("髙橋 一郎", LONG_ADDRESS, date(1975, 7, 7), "male")
    assert len(LONG_ADDRESS.encode()) > 200
    assert await register.find_resident(takahashi) == ResidentMatch("r-2001", "h-takahashi")
    sakiyama = ResidentFacts("﨑山 ゆり", "東京都多摩市永山3-4-5", date(1949, 12, 1), "female")
    assert await register.find_resident(sakiyama) == ResidentMatch("r-3001", "h-sakiyama")

    # One fact off → no match: the common 高 for 髙, another birth date, another sex.
    for facts in (
        ResidentFacts("高橋 一郎", LONG_ADDRESS, date(1975, 7, 7), "male"),
        ResidentFacts("髙橋 一郎", LONG_ADDRESS, date(1975, 7, 8), "male"),
        ResidentFacts("髙橋 一郎", LONG_ADDRESS, date(1975, 7, 7), "female"),
        ResidentFacts("髙橋 一郎", "東京都多摩市落合一丁目15番地2", date(1975, 7, 7), "male"),
    ):
        assert await register.find_resident(facts) == NoResidentMatch()

    # Two residents share all 4 facts: the register says so instead of picking one.
    tanaka = ResidentFacts("田中 翔", "東京都多摩市鶴牧2-6", date(1995, 5, 5), "male")
    assert await register.find_resident(tanaka) == SeveralResidentMatches(2)


async def test_register_records_and_errors(register: SimulatedRegister) -> None:
    household = await register.household("r-1002")
    assert household.head_name == "𠮷田 太郎"
    assert [m.name for m in household.members] == ["𠮷田 太郎", "𠮷田 花子", "𠮷田 健太"]
    seal = await register.seal_registration("r-3001")
    assert (seal.name, seal.seal_text) == ("﨑山 ゆり", "﨑山")
    assert await register.tax_years("r-1001") == (2025, 2024)
    tax = await register.tax_record("r-2001", 2025)
    assert tax.address == LONG_ADDRESS and tax.annual_tax == 195000 + 3500 + 130000 + 1500

    with pytest.raises(RegisterError) as no_seal:
        await register.seal_registration("r-1002")
    assert no_seal.value.message == "この方は印鑑登録をしていません。"
    with pytest.raises(RegisterError) as no_year:
        await register.tax_record("r-3001", 2024)
    assert "2024年度の課税情報がありません" in no_year.value.message
    with pytest.raises(RegisterError):
        await register.household("r-9999")


async def test_a_broken_register_file_is_reported_in_japanese(tmp_path: Path) -> None:
    bad = tmp_path / "register.json"
    bad.write_text('{"households": [{"id": "h"}]}', encoding="utf-8")
    with pytest.raises(RegisterError) as err:
        await SimulatedRegister.open(bad)
    assert "模擬データを読み取れませんでした" in err.value.message
    with pytest.raises(RegisterError) as missing:
        await SimulatedRegister.open(tmp_path / "missing.json")
    assert "接続できないか" in missing.value.message


def test_address_normalization() -> None:
    assert normalize_address("東京都多摩市関戸一丁目2番3号") == "東京都多摩市関戸1-2-3"
    assert normalize_address("東京都多摩市関戸１－２－３") == "東京都多摩市関戸1-2-3"
    assert normalize_address("東京都多摩市永山三丁目4番地5") == "東京都多摩市永山3-4-5"


async def test_migrations_create_the_issuance_tables(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.sqlite3"
    await migrate(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert {"issued_documents", "form_drafts", "applications"} <= tables


# --------------------------------------------------------------------------------------
# Issuing on a real console (SQLite through the migrations, test CA from make_test_ca)
# --------------------------------------------------------------------------------------

CODE_PATTERN = re.compile(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}")
SESSION_ID = "sess-issue"


@dataclass
class Console:
    base: str
    sessions: async_sessionmaker[AsyncSession]
    service: IssuanceService
    ca: LocalCaFiles


async def _start_console(tmp_path: Path, *, max_lookups: int = 50) -> AsyncIterator[Console]:
    url = f"sqlite+aiosqlite:///{tmp_path}/console.sqlite3"
    await migrate(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    await seed_demo(sessions, {"seiseki-1": "x" * 32}, "sakura-2024-demo")
    async with sessions() as db, db.begin():
        db.add(HelpRequest(id="req-i", booth_id="seiseki-1", department="shimin", language="ja"))
        await db.flush()
        db.add(
            CallSession(
                id=SESSION_ID,
                request_id="req-i",
                booth_id="seiseki-1",
                staff_id="sato",
                department="shimin",
                language="ja",
            )
        )
    ca = await asyncio.to_thread(make_test_ca, tmp_path / "ca")
    config = ConsoleConfig(
        database_url=url,
        token_secret="token-secret-for-tests-0123456789",
        issuing_key_path=str(ca.issuing_key),
        issuing_cert_path=str(ca.issuing_cert),
        issuing_chain_paths=[str(p) for p in ca.chain],
        issuer_name="見本 一郎",
        verify_max_lookups=max_lookups,
    )
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Console(f"http://127.0.0.1:{port}", sessions, app[ISSUANCE], ca)
    finally:
        await runner.cleanup()
        await engine.dispose()


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in _start_console(tmp_path):
        yield c


async def _pdftotext(pdf: bytes, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    proc = await asyncio.create_subprocess_exec(
        "pdftotext",
        "-layout",
        "-enc",
        "UTF-8",
        str(path),
        "-",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode("utf-8")


def _flat(text: str) -> str:
    return "".join(text.split())


async def _issue(
    console: Console, request_json: dict[str, Any], resident_id: str
) -> IssuedDocument:
    return await console.service.issue(
        certificate_request.validate_python(request_json),
        resident_id=resident_id,
        staff_id="sato",
        session_id=SESSION_ID,
        booth_id="seiseki-1",
    )


async def _code_in(text: str) -> str:
    codes = {str(c) for c in CODE_PATTERN.findall(text)}
    assert len(codes) == 1, codes
    return codes.pop()


async def test_certificates_print_the_register_data(console: Console, tmp_path: Path) -> None:
    register = await SimulatedRegister.open()
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {
                "kind": "resident_record",
                "scope": "household",
                "show_relationship": True,
                "show_honseki": True,
                "copies": 2,
            },
            "r-2001",
        ),
        ({"kind": "seal_registration"}, "r-3001"),
        ({"kind": "tax_income", "fiscal_year": 2025}, "r-1001"),
        (
            {"kind": "resident_record", "scope": "members", "member_ids": ["r-1002"]},
            "r-1001",
        ),
    ]
    for number, (request_json, resident_id) in enumerate(cases):
        document = await _issue(console, request_json, resident_id)
        text = await _pdftotext(document.pdf, tmp_path, f"cert-{number}")
        flat = _flat(text)
        assert document.document_number in flat
        code = await _code_in(text)
        assert document.code_sha256 == code_digest(canonical(code) or "")
        assert "令和" in flat and "見本一郎" in flat  # issue date (和暦) and the issuer

        household = await register.household(resident_id)
        if request_json["kind"] == "resident_record":
            wanted = request_json.get("member_ids")
            shown = [m for m in household.members if wanted is None or m.resident_id in wanted]
            hidden = [m for m in household.members if m not in shown]
            assert _flat(household.address) in flat
            for m in shown:
                assert _flat(m.name) in flat and _flat(m.name_kana) in flat
            for m in hidden:
                assert _flat(m.name) not in flat
            if request_json.get("show_honseki"):
                assert _flat(shown[0].honseki) in flat
                assert "世帯全員の住民票の原本と相違ない" in flat
                assert "昭和50年7月7日" in flat  # 髙橋 一郎's birth date in 和暦
                assert flat.count(document.document_number) >= 4  # both copies
                assert "2通目／全2通" in flat
            else:
                assert "本籍" + _flat(household.members[0].honseki) not in flat
                assert "続柄妻" not in flat and "世帯主・続柄、本籍・筆頭者の記載は省略" in flat
                assert "世帯の一部" in flat and "本籍・筆頭者の記載は省略" in flat
        elif request_json["kind"] == "seal_registration":
            seal = await register.seal_registration(resident_id)
            for value in (seal.name, seal.address, seal.registration_number, seal.seal_text):
                assert _flat(value) in flat
            assert "﨑山ゆり" in flat and "昭和24年12月1日" in flat
        else:
            tax = await register.tax_record(resident_id, 2025)
            for value in (
                tax.name,
                tax.address,
                f"{tax.total_income:,}円",
                f"{tax.annual_tax:,}円",
            ):
                assert _flat(value) in flat
            assert "𠮷田太郎" in flat and "令和7年度" in flat

        # The record: fee and options without personal data; an audit record.
        assert document.fee_per_copy_yen == 300
        assert document.fee_total_yen == 300 * document.copies
        assert "1通 300円" in text
        options = json.loads(document.options)
        for m in household.members:
            assert m.name not in document.options and m.resident_id not in document.options
        assert options.get("members", 1) == len(request_json.get("member_ids", [0]))
        verification = await console.service.verify_code(code.lower())
        assert verification.verdict == Verdict.VALID
        assert verification.document_number == document.document_number

    async with console.sessions() as db:
        audits = (await db.scalars(select(AuditRecord).order_by(AuditRecord.id))).all()
        stored = (await db.scalars(select(IssuedDocument))).all()
    issued = [a for a in audits if a.action == "certificate_issued"]
    assert [a.object_id for a in issued] == [
        d.id for d in sorted(stored, key=lambda d: d.created_at)
    ]
    assert all(a.session_id == SESSION_ID and a.staff_id == "sato" for a in issued)
    assert len({d.document_number for d in stored}) == 4


async def test_signature_validates_and_a_change_breaks_it(console: Console) -> None:
    document = await _issue(console, {"kind": "seal_registration"}, "r-1001")
    root = console.ca.root_cert.read_bytes()
    check = await check_signature(document.pdf, [root])
    assert check.valid, check
    assert "多摩市長" in check.signer

    # Another CA's root: intact but not trusted.
    other = await asyncio.to_thread(make_test_ca, console.ca.root_cert.parent / "other")
    untrusted = await check_signature(document.pdf, [other.root_cert.read_bytes()])
    assert untrusted.intact and not untrusted.trusted and not untrusted.valid

    # One byte of the signed content changed (the page width, 595.28 → 595.29 pt).
    assert b"/MediaBox [0 0 595.28 841.89]" in document.pdf
    tampered = document.pdf.replace(b"595.28", b"595.29", 1)
    broken = await check_signature(tampered, [root])
    assert not broken.intact and not broken.valid

    # An incremental update appended after signing (as an editor would save it).
    writer = IncrementalPdfFileWriter(io.BytesIO(document.pdf))
    writer.root["/Lang"] = generic.TextStringObject("en")
    writer.update_root()  # type: ignore[no-untyped-call]
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]
    appended = await check_signature(out.getvalue(), [root])
    assert not appended.covers_whole_file and not appended.valid


async def test_verification_page(console: Console) -> None:
    document = await _issue(console, {"kind": "seal_registration"}, "r-3001")
    text = await _pdftotext(document.pdf, console.ca.root_cert.parent, "page")
    code = await _code_in(text)
    async with aiohttp.ClientSession() as http:

        async def page(path: str) -> tuple[int, str]:
            async with http.get(console.base + path, allow_redirects=False) as resp:
                return resp.status, await resp.text()

        status, body = await page("/verify")
        assert status == 200 and "検証コード" in body and 'action="/verify"' in body

        # The form sends ?code=… and is sent on to /verify/{code}, typed loosely.
        async with http.get(
            f"{console.base}/verify",
            params={"code": code.lower().replace("-", " ")},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"/verify/{code}"

        status, body = await page(f"/verify/{code}")
        assert status == 200
        assert "有効" in body and "Valid" in body and "失効" not in body
        assert document.document_number in body and "印鑑登録証明書" in body
        assert "多摩市役所 市民課" in body and "令和" in body
        for personal in ("﨑山", "ゆり", "永山", "東京都", "昭和24", "第1998555号"):
            assert personal not in body

        await console.service.revoke(document.id, staff_id="sato", reason="記載誤りのため再発行")
        status, body = await page(f"/verify/{code}")
        assert status == 200 and "失効" in body and "Revoked" in body
        assert "有効です" not in body and document.document_number in body
        assert "﨑山" not in body and "記載誤り" not in body

        for made_up in ("ABCD-EFGH-JKMN-PQRS", "not-a-code", "0" * 16):
            status, body = await page(f"/verify/{made_up}")
            assert status == 200 and "該当なし" in body and "Not found" in body
            assert "文書番号" not in body.split("<form")[0].split("</h1>")[1]

    async with console.sessions() as db:
        stored = await db.get(IssuedDocument, document.id)
        revoked = await db.scalar(
            select(AuditRecord).where(AuditRecord.action == "certificate_revoked")
        )
    assert stored is not None and stored.status == "revoked" and stored.revoked_at is not None
    assert revoked is not None and revoked.object_id == document.id


async def test_lookups_are_throttled_per_address(tmp_path: Path) -> None:
    async for console in _start_console(tmp_path, max_lookups=3):
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(5):
                async with http.get(f"{console.base}/verify/ABCD-EFGH-JKMN-PQRS") as resp:
                    statuses.append(resp.status)
                    body = await resp.text()
            assert statuses == [200, 200, 200, 429, 429]
            assert "しばらくお待ちください" in body and "該当なし" not in body

    throttle = LookupThrottle(max_lookups=2, window_s=60)
    assert throttle.allow("192.0.2.1", now=0) and throttle.allow("192.0.2.1", now=1)
    assert not throttle.allow("192.0.2.1", now=2)
    assert throttle.allow("192.0.2.2", now=2)  # another address
    assert throttle.allow("192.0.2.1", now=61)  # the window has passed
    # One IPv6 /64 is one source.
    assert throttle.allow("2001:db8::1", now=0) and throttle.allow("2001:db8::2", now=0)
    assert not throttle.allow("2001:db8::ffff", now=0)


async def test_issuing_refuses_what_the_register_does_not_hold(console: Console) -> None:
    with pytest.raises(RegisterError) as err:
        await _issue(console, {"kind": "seal_registration"}, "r-1002")
    assert err.value.message == "この方は印鑑登録をしていません。"
    with pytest.raises(RegisterError):
        await _issue(
            console,
            {"kind": "resident_record", "scope": "members", "member_ids": ["r-2001"]},
            "r-1001",
        )
    async with console.sessions() as db:
        assert (await db.scalars(select(IssuedDocument))).all() == []
    fee = console.service.fee(ResidentRecordRequest(copies=3))
    assert (fee.per_copy_yen, fee.total_yen) == (300, 900)
    assert SealCertificateRequest().copies == 1
    with pytest.raises(ValueError):
        TaxCertificateRequest.model_validate({"fiscal_year": 2025, "copies": 0})
