"""The tables. Times are timezone-aware UTC. Identifiers are strings (UUID hex or codes)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes; SQLite gives them back naive, so reattach UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Site(Base):
    """A service point (出張所・駅前行政サービスセンター) where booths stand."""

    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name_ja: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    booths: Mapped[list[Booth]] = relationship(back_populates="site")


class Department(Base):
    """A department (課) of city hall that takes remote-counter calls."""

    __tablename__ = "departments"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name_ja: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    sort_order: Mapped[int] = mapped_column(Integer, default=0)


class Booth(Base):
    __tablename__ = "booths"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    name: Mapped[str] = mapped_column(String(200))
    credential_hash: Mapped[str] = mapped_column(String(128))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    site: Mapped[Site] = relationship(back_populates="booths")


class Staff(Base):
    """An account of the HQ console: HQ staff take calls, branch staff watch a site."""

    __tablename__ = "staff"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    login: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16))  # shared.protocol.StaffRole
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    active: Mapped[bool] = mapped_column(default=True)
    skills: Mapped[list[StaffSkill]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class StaffSkill(Base):
    __tablename__ = "staff_skills"
    __table_args__ = (UniqueConstraint("staff_id", "department", "language"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    department: Mapped[str] = mapped_column(ForeignKey("departments.code"))
    language: Mapped[str] = mapped_column(String(16))


class HelpRequest(Base):
    """A resident's request for a remote counter. ``status``: waiting, matched,
    cancelled, abandoned. Waiting requests are reloaded when signaling restarts."""

    __tablename__ = "help_requests"
    __table_args__ = (Index("ix_help_requests_status", "status"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    booth_id: Mapped[str] = mapped_column(ForeignKey("booths.id"))
    department: Mapped[str] = mapped_column(ForeignKey("departments.code"))
    language: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CallSession(Base):
    """One remote-counter call between a booth and a staff member."""

    __tablename__ = "call_sessions"
    __table_args__ = (Index("ix_call_sessions_staff", "staff_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("help_requests.id"), unique=True)
    booth_id: Mapped[str] = mapped_column(ForeignKey("booths.id"))
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    department: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)  # EndReason
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # wrap-up note


class SignalingLeader(Base):
    """The leadership term of several signaling nodes (one row, ``id`` 1): the newest
    epoch. A leader claims it when its term starts, and every batch of records it writes
    checks it under a share lock, so that a leader whose term has ended (it was paused or
    cut off while another took over) cannot write any more."""

    __tablename__ = "signaling_leader"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    node_id: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SessionEvent(Base):
    """The timeline of a request and its session: requested, offered, declined, missed,
    accepted, connected, ended, cancelled, abandoned."""

    __tablename__ = "session_events"
    __table_args__ = (Index("ix_session_events_request", "request_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("help_requests.id"))
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    staff_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(String(200), nullable=True)


class ConsoleSession(Base):
    """A signed-in browser of the HQ console. The cookie holds a random token; only its
    SHA-256 is stored. Logout sets ``revoked_at``."""

    __tablename__ = "console_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DocumentStill(Base):
    """A document camera still a staff member saved (保存) to a call session. Stills reach
    staff peer to peer; only a saved one rests here, with the session it belongs to."""

    __tablename__ = "document_stills"
    __table_args__ = (Index("ix_document_stills_session", "session_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # UUID hex
    session_id: Mapped[str] = mapped_column(ForeignKey("call_sessions.id"))
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    mime: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRecord(Base):
    """Who did what to which object, and when. Identifiers only, never personal data.

    Append-only and hash-chained: ``hash`` is the SHA-256 of the record's canonical encoding
    (every field, ``prev_hash`` included), ``prev_hash`` the hash of the record before it
    (64 zeros for the first). Ids run 1, 2, 3... without gaps. Write only through
    ``shared.store.audit.append_audit``; ``verify_audit_chain`` proves the chain."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_session", "session_id"),
        # One successor per record: two appends that raced past the lock cannot fork the chain.
        Index("ux_audit_log_prev_hash", "prev_hash", unique=True),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    staff_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    booth_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))  # e.g. "still_saved", "login"
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    object_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class IssuedDocument(Base):
    """A certificate HQ issued (住民票の写し, 印鑑登録証明書, 課税・所得証明書).

    Personal data lives only inside the signed PDF; the row holds what the public
    verification page may show (kind, document number, issue time, status) and identifiers.
    The verification code printed on the paper is stored as its SHA-256 only. ``status``:
    issued or revoked (revoked_at and revoke_reason set)."""

    __tablename__ = "issued_documents"
    __table_args__ = (
        Index("ix_issued_documents_session", "session_id"),
        Index("ux_issued_documents_code", "code_sha256", unique=True),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # UUID hex
    document_number: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # hq_console.issuance CertificateKind
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON, no personal data
    copies: Mapped[int] = mapped_column(Integer, default=1)
    fee_per_copy_yen: Mapped[int] = mapped_column(Integer)
    fee_total_yen: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("call_sessions.id"), nullable=True)
    booth_id: Mapped[str | None] = mapped_column(ForeignKey("booths.id"), nullable=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    code_sha256: Mapped[str] = mapped_column(String(64))
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="issued")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FormDraft(Base):
    """The values a staff member has entered so far in one form of a call session
    (書かない窓口), kept until the application is submitted. One draft per session and form."""

    __tablename__ = "form_drafts"
    __table_args__ = (
        UniqueConstraint("session_id", "form_id", name="ux_form_drafts_session_form"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # UUID hex
    session_id: Mapped[str] = mapped_column(ForeignKey("call_sessions.id"))
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    form_id: Mapped[str] = mapped_column(String(64))
    values: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Application(Base):
    """A signed application (申請書) as the resident signed it at the booth: the PDF and its
    SHA-256, with who took it, where and when."""

    __tablename__ = "applications"
    __table_args__ = (Index("ix_applications_session", "session_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # UUID hex
    session_id: Mapped[str] = mapped_column(ForeignKey("call_sessions.id"))
    booth_id: Mapped[str | None] = mapped_column(ForeignKey("booths.id"), nullable=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    form_id: Mapped[str] = mapped_column(String(64))
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
