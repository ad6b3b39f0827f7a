"""Certificate issuance: the simulated city register, certificate PDFs (text layer, pyHanko
signature), issuance records and the public verification page, on a real console server
with SQLite brought up through the real migrations."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import inspect

from hq_console.issuance.connector import (
    NoResidentMatch,
    ResidentFacts,
    ResidentMatch,
    SeveralResidentMatches,
    normalize_address,
)
from hq_console.issuance.errors import RegisterError
from hq_console.issuance.simulated import SimulatedRegister
from shared.protocol import CardBasicInfo
from shared.store.db import create_engine, migrate

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
