"""Staff sign-in for the console: password check, browser sessions, login throttling.

A signed-in browser holds a random cookie token; the ``console_sessions`` row is keyed by
the token's SHA-256, so a copy of the database does not reveal usable cookies. Logout sets
``revoked_at``; deactivating an account ends its sessions at the next request.

Sign-ins, failed sign-ins and sign-outs go to the audit log: ``login`` and ``logout`` in the
same transaction as the session row they create or revoke (object id: the session row's id,
the token's SHA-256), ``login_failed`` with the account's staff id when the login exists and
none otherwise, and a reason code. Neither the typed password nor an unknown login name is
ever recorded. Attempts the throttle refuses unchecked are logged, not audited: they cost
nothing to send, and each audit record is a serialised write.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.protocol import Skill, StaffRole
from shared.security import check_password, hash_password
from shared.store.audit import append_audit
from shared.store.models import ConsoleSession, Staff

log = logging.getLogger(__name__)

# Verified against when the login does not exist, so that an unknown login costs the same
# time as a wrong password and the response time does not reveal which logins exist.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


class LoginOutcome(enum.StrEnum):
    """The result of a sign-in attempt; the reason code of a ``login_failed`` record."""

    OK = "ok"
    UNKNOWN_LOGIN = "unknown_login"
    WRONG_PASSWORD = "wrong_password"
    INACTIVE = "inactive"


@dataclass(frozen=True, slots=True)
class LoginCheck:
    """A checked sign-in attempt. ``staff`` is the account of the login whenever it exists,
    also when the attempt failed (for the audit record); grant access only if ``ok``."""

    outcome: LoginOutcome
    staff: Staff | None

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK


@dataclass(frozen=True, slots=True)
class SignedInStaff:
    """The staff member behind a valid console session."""

    session_id: str
    staff_id: str
    display_name: str
    role: StaffRole
    site_id: str | None
    skills: tuple[Skill, ...]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """Refuses further attempts for a login after ``max_failures`` failures within
    ``window_s`` seconds. Kept in memory: one console process per deployment, and a
    restart merely resets the counters."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, max_tracked: int = 10_000):
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_tracked = max_tracked
        self._failures: dict[str, deque[float]] = {}

    @staticmethod
    def _key(login: str) -> str:
        return login.strip().casefold()

    def _recent(self, login: str, now: float) -> deque[float] | None:
        failures = self._failures.get(self._key(login))
        if failures is None:
            return None
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        return failures

    def is_blocked(self, login: str, *, now: float | None = None) -> bool:
        failures = self._recent(login, time.monotonic() if now is None else now)
        return failures is not None and len(failures) >= self._max_failures

    def _latest_failure(self, key: str) -> float:
        failures = self._failures[key]
        return failures[-1] if failures else 0.0

    def record_failure(self, login: str, *, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        key = self._key(login)
        if key not in self._failures and len(self._failures) >= self._max_tracked:
            # Forget the login whose latest failure is oldest; bounded memory under a spray.
            oldest = min(
                self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0.0
            )
            del self._failures[oldest]
        failures = self._failures.setdefault(key, deque(maxlen=self._max_failures))
        failures.append(at)

    def record_success(self, login: str) -> None:
        self._failures.pop(self._key(login), None)


def _signed_in(session_id: str, staff: Staff) -> SignedInStaff:
    return SignedInStaff(
        session_id=session_id,
        staff_id=staff.id,
        display_name=staff.display_name,
        role=StaffRole(staff.role),
        site_id=staff.site_id,
        skills=tuple(Skill(department=s.department, language=s.language) for s in staff.skills),
    )


async def check_login(
    sessions: async_sessionmaker[AsyncSession], login: str, password: str
) -> LoginCheck:
    """Check a login and password. Every outcome costs one password verification."""
    async with sessions() as s:
        staff = (await s.execute(select(Staff).where(Staff.login == login))).scalar_one_or_none()
    stored = staff.password_hash if staff is not None else _DUMMY_HASH
    ok = await asyncio.to_thread(check_password, password, stored)
    if staff is None:
        return LoginCheck(LoginOutcome.UNKNOWN_LOGIN, None)
    if not ok:
        return LoginCheck(LoginOutcome.WRONG_PASSWORD, staff)
    if not staff.active:
        return LoginCheck(LoginOutcome.INACTIVE, staff)
    return LoginCheck(LoginOutcome.OK, staff)


async def authenticate(
    sessions: async_sessionmaker[AsyncSession], login: str, password: str
) -> Staff | None:
    """The active account with this login and password, or None (for every kind of failure)."""
    check = await check_login(sessions, login, password)
    return check.staff if check.ok else None


async def record_failed_login(
    sessions: async_sessionmaker[AsyncSession], check: LoginCheck
) -> None:
    """Audit a failed sign-in: the account's staff id if the login exists, and the reason."""
    if check.ok:
        raise ValueError("not a failed sign-in")
    async with sessions.begin() as s:
        await append_audit(
            s,
            action="login_failed",
            staff_id=None if check.staff is None else check.staff.id,
            detail={"reason": check.outcome.value},
        )


async def open_session(
    sessions: async_sessionmaker[AsyncSession], staff: Staff, ttl_s: float
) -> tuple[str, datetime]:
    """Create a console session, audited as ``login``; returns the cookie token and its
    expiry."""
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    digest = token_digest(token)
    async with sessions.begin() as s:
        s.add(ConsoleSession(id=digest, staff_id=staff.id, expires_at=expires_at))
        await append_audit(s, action="login", staff_id=staff.id, object_id=digest)
    return token, expires_at


async def resolve_session(
    sessions: async_sessionmaker[AsyncSession], token: str
) -> SignedInStaff | None:
    """The staff member of a live session (not revoked, not expired, account active)."""
    if not token or len(token) > 200:
        return None
    digest = token_digest(token)
    now = datetime.now(UTC)
    async with sessions() as s:
        row = (
            await s.execute(
                select(ConsoleSession, Staff)
                .join(Staff, Staff.id == ConsoleSession.staff_id)
                .where(
                    ConsoleSession.id == digest,
                    ConsoleSession.revoked_at.is_(None),
                    ConsoleSession.expires_at > now,
                    Staff.active.is_(True),
                )
            )
        ).one_or_none()
        if row is None:
            return None
        console_session, staff = row
        return _signed_in(console_session.id, staff)


async def revoke_session(sessions: async_sessionmaker[AsyncSession], token: str) -> bool:
    """Mark the session of this cookie token as revoked, audited as ``logout``. True if a
    live session was ended."""
    async with sessions.begin() as s:
        row = await s.get(ConsoleSession, token_digest(token))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = datetime.now(UTC)
        await append_audit(s, action="logout", staff_id=row.staff_id, object_id=row.id)
        return True
