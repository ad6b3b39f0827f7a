"""The hash-chained audit log on real databases: SQLite files brought up by the real
migrations (and a throwaway PostgreSQL server), the real ``python -m hq_console audit
verify`` command, and the real console app for sign-in records."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.store.audit import (
    GENESIS_HASH,
    AuditBreak,
    append_audit,
    format_at,
    record_hash,
    verify_audit_chain,
)
from shared.store.db import MIGRATIONS, create_engine, migrate, session_factory
from shared.store.models import AuditRecord
from tests.postgres_support import postgres_server, postgres_url
from tests.test_console_auth import PASSWORD, TOKEN_SECRET, _cookie_value, _login, _start

REPO = Path(__file__).resolve().parent.parent

__all__ = ["postgres_server", "postgres_url"]  # fixtures (tests/postgres_support.py)


@dataclass
class Store:
    path: Path
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    path = tmp_path / "console.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    engine = create_engine(url)
    try:
        yield Store(path, url, engine, session_factory(engine))
    finally:
        await engine.dispose()


async def _append(sessions: async_sessionmaker[AsyncSession], n: int) -> list[AuditRecord]:
    records = []
    for i in range(n):
        async with sessions.begin() as db:
            records.append(
                await append_audit(
                    db,
                    action="still_saved",
                    staff_id="sato",
                    booth_id="seiseki-1",
                    session_id=f"sess-{i}",
                    object_id=f"still-{i}",
                    detail={"size": 1000 + i, "saved": True, "note": None, "kind": "jpeg"},
                )
            )
    return records


async def _rows(sessions: async_sessionmaker[AsyncSession]) -> list[AuditRecord]:
    async with sessions() as db:
        return list((await db.scalars(select(AuditRecord).order_by(AuditRecord.id))).all())


def _sql(path: Path, statement: str, *params: object) -> None:
    """Change the database behind the application's back, as someone with file access could."""
    with sqlite3.connect(path) as conn:
        conn.execute(statement, params)
    conn.close()


def _database_files(directory: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in directory.glob("console.sqlite3*")}


async def _cli_verify(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hq_console",
        "audit",
        "verify",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    assert not err.strip() or proc.returncode == 2, err.decode()
    return proc.returncode, out.decode()


def _config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "console.toml"
    path.write_text(f'database_url = "{url}"\ntoken_secret = "{TOKEN_SECRET}"\n', encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------


async def test_a_chain_of_records_verifies(store: Store, tmp_path: Path) -> None:
    appended = await _append(store.sessions, 5)
    async with store.sessions.begin() as db:
        await append_audit(db, action="login_failed", staff_id=None, detail={"reason": "x"})

    rows = await _rows(store.sessions)
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    # Stored exactly as appended; the hash is the documented canonical encoding.
    assert [(r.id, r.hash) for r in rows[:5]] == [(a.id, a.hash) for a in appended]
    third = rows[2]
    assert (third.staff_id, third.booth_id, third.session_id, third.object_id) == (
        "sato",
        "seiseki-1",
        "sess-2",
        "still-2",
    )
    assert third.detail == '{"kind":"jpeg","note":null,"saved":true,"size":1002}'
    assert third.at.tzinfo is not None and len(format_at(third.at)) == len(
        "2026-01-01T00:00:00.000000Z"
    )
    canonical = json.dumps(
        [
            "ekichika.audit.v1",
            3,
            format_at(third.at),
            "sato",
            "seiseki-1",
            "still_saved",
            "sess-2",
            "still-2",
            third.detail,
            rows[1].hash,
        ],
        separators=(",", ":"),
    )
    assert third.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert rows[5].staff_id is None and rows[5].detail == '{"reason":"x"}'

    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.records_checked, result.first_broken_id, result.reason) == (
        True,
        6,
        None,
        None,
    )
    assert result.last_hash == rows[-1].hash

    # The command, as an operator runs it: configuration file, text and JSON.
    config = _config_file(tmp_path, store.url)
    code, out = await _cli_verify("--config", str(config))
    assert code == 0
    assert "6 records, chain OK" in out and rows[-1].hash in out
    code, out = await _cli_verify("--config", str(config), "--json")
    assert code == 0
    assert json.loads(out) == {
        "ok": True,
        "records_checked": 6,
        "first_broken_id": None,
        "reason": None,
        "message": "",
        "last_hash": rows[-1].hash,
    }


async def test_an_empty_log_verifies(store: Store) -> None:
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.records_checked, result.last_hash) == (True, 0, None)


async def test_detail_holds_identifiers_only(store: Store) -> None:
    async with store.sessions.begin() as db:
        with pytest.raises(TypeError):
            await append_audit(db, action="x", staff_id="sato", detail={"v": 1.5})  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            await append_audit(db, action="x", staff_id="sato", detail={"v": "x" * 201})
        with pytest.raises(ValueError):
            await append_audit(db, action="Bad Action", staff_id="sato")
        with pytest.raises(ValueError):
            await append_audit(db, action="x", staff_id="s" * 65)
    assert await _rows(store.sessions) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("staff_id", "suzuki"),
        ("booth_id", "tamacenter-1"),
        ("action", "login"),
        ("session_id", None),
        ("object_id", "still-x"),
        ("detail", '{"kind":"jpeg","note":null,"saved":true,"size":9999}'),
        ("at", "2026-01-01 00:00:00.000000"),
        ("prev_hash", "f" * 64),
        ("hash", "e" * 64),
    ],
)
async def test_an_edited_field_breaks_that_record(store: Store, column: str, value: str) -> None:
    await _append(store.sessions, 5)
    _sql(store.path, f"UPDATE audit_log SET {column} = ? WHERE id = 3", value)
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.first_broken_id, result.reason) == (
        False,
        3,
        AuditBreak.HASH_MISMATCH,
    )
    assert result.records_checked == 3


async def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(store: Store) -> None:
    await _append(store.sessions, 5)
    row = (await _rows(store.sessions))[2]
    forged = record_hash(
        record_id=row.id,
        at=row.at,
        staff_id="suzuki",
        booth_id=row.booth_id,
        action=row.action,
        session_id=row.session_id,
        object_id=row.object_id,
        detail=row.detail,
        prev_hash=row.prev_hash,
    )
    _sql(store.path, "UPDATE audit_log SET staff_id = 'suzuki', hash = ? WHERE id = 3", forged)
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.first_broken_id, result.reason) == (
        False,
        4,
        AuditBreak.BROKEN_LINK,
    )


async def test_audit_verify_command_reports_the_edited_row(store: Store, tmp_path: Path) -> None:
    await _append(store.sessions, 6)
    config = _config_file(tmp_path, store.url)
    assert (await _cli_verify("--config", str(config)))[0] == 0

    _sql(store.path, "UPDATE audit_log SET object_id = 'still-other' WHERE id = 4")
    code, out = await _cli_verify("--config", str(config))
    assert code == 1
    assert "chain broken at record 4: hash_mismatch" in out
    code, out = await _cli_verify("--database-url", store.url, "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["ok"], report["first_broken_id"], report["reason"]) == (
        False,
        4,
        "hash_mismatch",
    )
    assert report["records_checked"] == 4 and report["last_hash"] is None


async def test_a_deleted_middle_record_is_reported(store: Store, tmp_path: Path) -> None:
    await _append(store.sessions, 6)
    _sql(store.path, "DELETE FROM audit_log WHERE id = 3")
    code, out = await _cli_verify("--config", str(_config_file(tmp_path, store.url)), "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["first_broken_id"], report["reason"]) == (4, "id_gap")
    assert report["message"] == "record 3 missing before record 4"
    code, out = await _cli_verify("--database-url", store.url)
    assert code == 1 and "chain broken at record 4: id_gap" in out

    # Closing the gap by renumbering does not help: the record's id is in its hash.
    _sql(store.path, "UPDATE audit_log SET id = id - 1 WHERE id > 3")
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.first_broken_id, result.reason) == (3, AuditBreak.HASH_MISMATCH)


async def test_a_deleted_first_record_is_reported(store: Store) -> None:
    await _append(store.sessions, 3)
    _sql(store.path, "DELETE FROM audit_log WHERE id = 1")
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.first_broken_id, result.reason) == (False, 2, AuditBreak.ID_GAP)


async def test_verify_command_on_a_database_it_cannot_read(tmp_path: Path) -> None:
    code, _ = await _cli_verify("--database-url", f"sqlite+aiosqlite:///{tmp_path}/none.db")
    assert code == 2
    assert not (tmp_path / "none.db").exists()


# --------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------


async def _contend(engines: list[AsyncEngine], tasks: int) -> None:
    """``tasks`` concurrent appends over several engines (as several processes would have);
    every fifth transaction rolls back after appending."""

    class Abandoned(Exception):
        pass

    async def one(i: int) -> None:
        sessions = session_factory(engines[i % len(engines)])
        try:
            async with sessions.begin() as db:
                await append_audit(
                    db, action="still_saved", staff_id=f"staff-{i}", object_id=f"obj-{i}"
                )
                await asyncio.sleep(0)
                if i % 5 == 4:
                    raise Abandoned
        except Abandoned:
            pass

    await asyncio.gather(*(one(i) for i in range(tasks)))


async def test_concurrent_appends_keep_one_unbroken_chain(store: Store) -> None:
    second = create_engine(store.url)
    try:
        await _contend([store.engine, second], 50)
    finally:
        await second.dispose()
    rows = await _rows(store.sessions)
    # 50 appends, 10 rolled back: 40 records, ids without gaps, one successor each.
    assert [r.id for r in rows] == list(range(1, 41))
    assert sorted(r.object_id or "" for r in rows) == sorted(
        f"obj-{i}" for i in range(50) if i % 5 != 4
    )
    assert len({r.prev_hash for r in rows}) == 40
    async with store.sessions() as db:
        result = await verify_audit_chain(db)
    assert (result.ok, result.records_checked) == (True, 40)


# --------------------------------------------------------------------------------------
# Migration 0003
# --------------------------------------------------------------------------------------


def _alembic(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def test_migration_0003_chains_existing_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(command.upgrade, _alembic(url), "0002")
    # Records as revision 0002 wrote them (no hashes); an id gap from a deleted record.
    old = [
        (1, "2026-11-24 09:00:00.000001", "sato", "still_saved", "sess-a", "still-a"),
        (2, "2026-11-24 09:05:00.250000", "sato", "still_saved", "sess-a", "still-b"),
        (4, "2026-11-25 13:30:10.999999", "suzuki", "still_saved", "sess-b", "still-c"),
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO audit_log (id, at, staff_id, action, session_id, object_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            old,
        )
    conn.close()

    await migrate(url)
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        rows = await _rows(sessions)
        assert [(r.id, r.staff_id, r.object_id, r.detail) for r in rows] == [
            (1, "sato", "still-a", "{}"),
            (2, "sato", "still-b", "{}"),
            (3, "suzuki", "still-c", "{}"),
        ]
        assert format_at(rows[2].at) == "2026-11-25T13:30:10.999999Z"
        assert rows[0].prev_hash == GENESIS_HASH
        async with sessions() as db:
            result = await verify_audit_chain(db)
        assert (result.ok, result.records_checked) == (True, 3)

        # New records continue the migrated chain.
        await _append(sessions, 2)
        async with sessions() as db:
            result = await verify_audit_chain(db)
        assert (result.ok, result.records_checked) == (True, 5)
        assert (await _rows(sessions))[3].prev_hash == rows[2].hash
    finally:
        await engine.dispose()
    code, _ = await _cli_verify("--database-url", url)
    assert code == 0


# --------------------------------------------------------------------------------------
# Sign-in records of the console
# --------------------------------------------------------------------------------------


async def test_console_records_sign_in_failures_and_sign_out(tmp_path: Path) -> None:
    wrong_password = "not-the-password-7f3a"
    unknown_login = "kimura-unregistered"
    unknown_password = "typed-by-someone-91c2"
    async for console in _start(tmp_path):
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            assert (await _login(http, console, "sato")).status == 303
            token = _cookie_value(http)
            assert (await _login(http, console, "suzuki", wrong_password)).status == 401
            assert (await _login(http, console, unknown_login, unknown_password)).status == 401
            async with http.post(
                f"{console.base}/logout",
                headers={"Origin": console.origin},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            # A second logout with the revoked cookie ends nothing and records nothing.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
                other.cookie_jar.update_cookies({"ekichika_session": token})
                async with other.post(
                    f"{console.base}/logout",
                    headers={"Origin": console.origin},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 303

        rows = await _rows(console.sessions)
        session_row_id = hashlib.sha256(token.encode()).hexdigest()
        assert [(r.action, r.staff_id, r.object_id, json.loads(r.detail)) for r in rows] == [
            ("login", "sato", session_row_id, {}),
            ("login_failed", "suzuki", None, {"reason": "wrong_password"}),
            ("login_failed", None, None, {"reason": "unknown_login"}),
            ("logout", "sato", session_row_id, {}),
        ]
        async with console.sessions() as db:
            result = await verify_audit_chain(db)
        assert (result.ok, result.records_checked) == (True, 4)

    # Neither a typed password nor the unknown login name is anywhere in the table, nor in
    # the database files at all.
    db_path = tmp_path / "console.sqlite3"
    with sqlite3.connect(db_path) as conn:
        cells = [str(c) for row in conn.execute("SELECT * FROM audit_log") for c in row]
    conn.close()
    assert len(cells) == 4 * 10
    for secret in (PASSWORD, wrong_password, unknown_login, unknown_password):
        assert not any(secret in c for c in cells), secret
        for name, content in _database_files(tmp_path).items():
            assert secret.encode() not in content, (secret, name)


# --------------------------------------------------------------------------------------
# PostgreSQL: the advisory lock
# --------------------------------------------------------------------------------------


async def test_postgresql_concurrent_appends_and_verify(postgres_url: str) -> None:
    await migrate(postgres_url)
    engines = [create_engine(postgres_url) for _ in range(2)]
    try:
        await _contend(engines, 50)
        sessions = session_factory(engines[0])
        rows = await _rows(sessions)
        assert [r.id for r in rows] == list(range(1, 41))
        async with sessions() as db:
            result = await verify_audit_chain(db)
        assert (result.ok, result.records_checked) == (True, 40)
        assert format_at(rows[0].at).endswith("Z")
    finally:
        for engine in engines:
            await engine.dispose()
    code, out = await _cli_verify("--database-url", postgres_url)
    assert code == 0 and "40 records, chain OK" in out
