"""The append-only, hash-chained audit log.

Every record carries ``prev_hash``, the hash of the record before it (64 zeros for the
first), and ``hash``, the SHA-256 of its own canonical encoding: a compact JSON array of a
format tag and every field (id, ``at`` as ISO 8601 UTC with microseconds, staff, booth,
action, session, object, detail as canonical JSON, prev_hash). Ids run 1, 2, 3... with no
gaps. Changing a field breaks that record's hash; deleting or inserting a record breaks the
id sequence and the link of the record after it. ``verify_audit_chain`` walks the chain and
names the first broken record.

Appends are serialised so that the chain never forks: on SQLite by the database's single
writer (a write statement takes the write lock before the last record is read), on
PostgreSQL by a transaction-level advisory lock taken before the last record is read. A
unique index on ``prev_hash`` refuses a fork in any case.

Records hold identifiers only (staff, booth, session and object ids, outcome codes), never
personal data.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.store.models import AuditRecord, utcnow

GENESIS_HASH: Final = "0" * 64
FORMAT: Final = "ekichika.audit.v1"
# pg_advisory_xact_lock key of audit appends: the first 8 bytes of SHA-256("ekichika.audit_log")
# as a signed 64-bit integer.
ADVISORY_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"ekichika.audit_log").digest()[:8], "big", signed=True
)

MAX_ID_LENGTH: Final = 64
MAX_DETAIL_KEYS: Final = 16
MAX_DETAIL_VALUE_LENGTH: Final = 200
_ACTION: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_DETAIL_KEY: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_VERIFY_BATCH: Final = 1000

DetailValue = str | int | bool | None


class AuditBreak(enum.StrEnum):
    """Why a record does not belong to an intact chain."""

    HASH_MISMATCH = "hash_mismatch"  # the record's fields do not give its stored hash
    BROKEN_LINK = "broken_link"  # prev_hash is not the hash of the record before it
    ID_GAP = "id_gap"  # records are missing before this one (ids are not consecutive)


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The result of walking the chain. ``records_checked`` counts the records read, the
    broken one included; ``last_hash`` is the hash of the newest record (the chain's head)
    when the chain is intact."""

    records_checked: int
    ok: bool
    first_broken_id: int | None = None
    reason: AuditBreak | None = None
    message: str = ""
    last_hash: str | None = None


def canonical_detail(detail: Mapping[str, DetailValue] | None) -> str:
    """The canonical JSON of a detail mapping (sorted keys, no spaces, ASCII). Keys are
    short snake_case names; values are identifiers, codes, numbers, booleans or null."""
    items = dict(detail or {})
    if len(items) > MAX_DETAIL_KEYS:
        raise ValueError(f"audit detail has more than {MAX_DETAIL_KEYS} keys")
    for key, value in items.items():
        if not isinstance(key, str) or not _DETAIL_KEY.match(key):
            raise ValueError(f"bad audit detail key {key!r}")
        if value is not None and not isinstance(value, str | int | bool):
            raise TypeError(f"audit detail {key!r}: {type(value).__name__} is not allowed")
        if isinstance(value, str) and len(value) > MAX_DETAIL_VALUE_LENGTH:
            raise ValueError(f"audit detail {key!r} is longer than {MAX_DETAIL_VALUE_LENGTH}")
    return json.dumps(items, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def format_at(at: datetime) -> str:
    """``at`` as it enters the hash: ISO 8601 UTC with microseconds, e.g.
    2026-11-30T01:02:03.000004Z."""
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(
    *,
    record_id: int,
    at: datetime,
    staff_id: str | None,
    booth_id: str | None,
    action: str,
    session_id: str | None,
    object_id: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical encoding of a record; ``detail`` is its stored JSON."""
    fields = [
        FORMAT,
        record_id,
        format_at(at),
        staff_id,
        booth_id,
        action,
        session_id,
        object_id,
        detail,
        prev_hash,
    ]
    encoded = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _hash_of(record: AuditRecord) -> str:
    return record_hash(
        record_id=record.id,
        at=record.at,
        staff_id=record.staff_id,
        booth_id=record.booth_id,
        action=record.action,
        session_id=record.session_id,
        object_id=record.object_id,
        detail=record.detail,
        prev_hash=record.prev_hash,
    )


def _check_id(name: str, value: str | None) -> None:
    if value is not None and not (0 < len(value) <= MAX_ID_LENGTH):
        raise ValueError(f"audit {name} must be 1-{MAX_ID_LENGTH} characters")


async def _lock_chain(db: AsyncSession) -> None:
    """Serialise appends until the caller's transaction ends."""
    connection = await db.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        )
    elif dialect == "sqlite":
        # A write statement (matching no row) makes this transaction SQLite's one writer
        # before the last record is read; other writers wait (busy timeout) until it ends.
        await connection.execute(text("UPDATE audit_log SET id = id WHERE 1 = 0"))
    else:
        raise NotImplementedError(f"audit log on {dialect}")


async def append_audit(
    db: AsyncSession,
    *,
    action: str,
    staff_id: str | None,
    booth_id: str | None = None,
    session_id: str | None = None,
    object_id: str | None = None,
    detail: Mapping[str, str | int | bool | None] | None = None,
) -> AuditRecord:
    """Append a record to the chain within the caller's transaction (which the caller
    commits; a rollback takes the record with it). ``detail`` holds identifiers only.

    Take no snapshot of the audit log earlier in the same transaction (SQLite: no read
    before the first write; PostgreSQL: READ COMMITTED), so the last record read here is
    the newest one."""
    if not _ACTION.match(action):
        raise ValueError(f"bad audit action {action!r}")
    for name, value in (
        ("staff_id", staff_id),
        ("booth_id", booth_id),
        ("session_id", session_id),
        ("object_id", object_id),
    ):
        _check_id(name, value)
    detail_json = canonical_detail(detail)

    await _lock_chain(db)
    last = (
        await db.execute(
            select(AuditRecord.id, AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)
        )
    ).one_or_none()
    record_id = 1 if last is None else last.id + 1
    prev_hash = GENESIS_HASH if last is None else last.hash
    at = utcnow()
    record = AuditRecord(
        id=record_id,
        at=at,
        staff_id=staff_id,
        booth_id=booth_id,
        action=action,
        session_id=session_id,
        object_id=object_id,
        detail=detail_json,
        prev_hash=prev_hash,
    )
    record.hash = _hash_of(record)
    db.add(record)
    await db.flush()
    return record


async def verify_audit_chain(db: AsyncSession) -> AuditVerification:
    """Walk the whole chain in id order and report the first broken record, if any."""
    checked = 0
    expected_id = 1
    prev_hash = GENESIS_HASH
    after = 0
    while True:
        batch = (
            await db.scalars(
                select(AuditRecord)
                .where(AuditRecord.id > after)
                .order_by(AuditRecord.id)
                .limit(_VERIFY_BATCH)
            )
        ).all()
        if not batch:
            break
        for record in batch:
            checked += 1
            broken: tuple[AuditBreak, str] | None = None
            if record.id != expected_id:
                missing = (
                    f"record {expected_id}"
                    if record.id == expected_id + 1
                    else f"records {expected_id}-{record.id - 1}"
                )
                broken = (AuditBreak.ID_GAP, f"{missing} missing before record {record.id}")
            elif _hash_of(record) != record.hash:
                broken = (AuditBreak.HASH_MISMATCH, "its fields do not match its hash")
            elif record.prev_hash != prev_hash:
                broken = (
                    AuditBreak.BROKEN_LINK,
                    "its prev_hash is not the hash of the record before it",
                )
            if broken is not None:
                return AuditVerification(
                    records_checked=checked,
                    ok=False,
                    first_broken_id=record.id,
                    reason=broken[0],
                    message=broken[1],
                )
            prev_hash = record.hash
            expected_id += 1
        after = batch[-1].id
    return AuditVerification(
        records_checked=checked,
        ok=True,
        last_hash=None if checked == 0 else prev_hash,
    )
