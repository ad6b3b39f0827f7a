"""hash-chained audit log: booth, detail, prev_hash and hash; existing records chained

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Existing records are chained in id order with the same canonical encoding as
``shared.store.audit`` (kept here as it stood when this revision was written, so that the
migration does not change with later code). Their ids are made consecutive first: before
the chain, nothing relied on them, and the chain's id check expects 1, 2, 3...
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
FORMAT = "ekichika.audit.v1"


def _digest(
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
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    fields = [
        FORMAT,
        record_id,
        at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
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


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("staff_id", existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column(
            "action",
            existing_type=sa.String(length=32),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
        batch_op.add_column(sa.Column("booth_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("detail", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))

    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("staff_id", sa.String()),
        sa.column("booth_id", sa.String()),
        sa.column("action", sa.String()),
        sa.column("session_id", sa.String()),
        sa.column("object_id", sa.String()),
        sa.column("detail", sa.Text()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(audit).order_by(audit.c.id)).all()
    prev = GENESIS
    for number, row in enumerate(rows, start=1):
        # Ascending order: the new id is never above the old one, nor taken by a row not yet
        # renumbered.
        if row.id != number:
            conn.execute(audit.update().where(audit.c.id == row.id).values(id=number))
        digest = _digest(
            number,
            row.at,
            row.staff_id,
            row.booth_id,
            row.action,
            row.session_id,
            row.object_id,
            row.detail,
            prev,
        )
        conn.execute(audit.update().where(audit.c.id == number).values(prev_hash=prev, hash=digest))
        prev = digest

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("ux_audit_log_prev_hash", ["prev_hash"], unique=True)


def downgrade() -> None:
    # Records of failed logins for unknown accounts have no staff id; keep them readable.
    op.execute("UPDATE audit_log SET staff_id = '' WHERE staff_id IS NULL")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ux_audit_log_prev_hash")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("detail")
        batch_op.drop_column("booth_id")
        batch_op.alter_column(
            "action",
            existing_type=sa.String(length=64),
            type_=sa.String(length=32),
            existing_nullable=False,
        )
        batch_op.alter_column("staff_id", existing_type=sa.String(length=64), nullable=False)
