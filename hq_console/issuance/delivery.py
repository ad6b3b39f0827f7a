"""One-time fetch tokens: how a booth gets an issued certificate's PDF from the console.

The console never sends a certificate over the call's data channel. Issuing (or an
authorised reprint) creates a token bound to the document, the booth and the call session;
the staff page sends the booth a ``print_job`` (or a ``print_job_command``) that carries the
token with the PDF's size and SHA-256, and the booth fetches the PDF with its own
credentials from ``GET /api/booth/documents/{token}``.

A token is 32 random bytes (64 hex digits), lives ``document_token_ttl_s`` (120 s by
default) and opens the document once. Only its SHA-256 is kept, in memory: one console
process per deployment (like the still relay); a restart forgets every token, and staff
send the job again (a fresh token). A spent or expired token is remembered for a while so
that the refusal says why.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

log = logging.getLogger(__name__)

TOKEN_BYTES: Final = 32
REMEMBER_S: Final = 600.0  # how long a spent or expired token is still recognised
MAX_TICKETS: Final = 10_000


class FetchRefusal(StrEnum):
    UNKNOWN = "unknown_token"  # never issued, or forgotten (console restarted)
    USED = "token_used"
    EXPIRED = "token_expired"
    OTHER_BOOTH = "other_booth"
    SESSION_ENDED = "session_ended"
    REVOKED = "revoked"


FETCH_STATUS: Final = {
    FetchRefusal.UNKNOWN: 404,
    FetchRefusal.USED: 410,
    FetchRefusal.EXPIRED: 410,
    FetchRefusal.OTHER_BOOTH: 403,
    FetchRefusal.SESSION_ENDED: 409,
    FetchRefusal.REVOKED: 410,
}


class FetchRefused(Exception):
    def __init__(self, refusal: FetchRefusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclass(slots=True)
class Ticket:
    """What a token opens. ``used`` once the booth has fetched with it."""

    document_id: str
    booth_id: str
    session_id: str
    expires_at: float
    used: bool = False


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class DocumentTokens:
    """The console's one-time fetch tokens (see the module docstring)."""

    def __init__(
        self,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        remember_s: float = REMEMBER_S,
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._remember_s = remember_s
        self._tickets: dict[str, Ticket] = {}

    def issue(self, document_id: str, *, booth_id: str, session_id: str) -> str:
        """A fresh token for the booth of ``session_id`` to fetch ``document_id`` once."""
        self._prune()
        token = secrets.token_hex(TOKEN_BYTES)
        self._tickets[token_key(token)] = Ticket(
            document_id, booth_id, session_id, self._clock() + self.ttl_s
        )
        return token

    def redeem(self, token: str, *, booth_id: str) -> Ticket:
        """Spend ``token`` for ``booth_id``; raises :class:`FetchRefused`. A token shown by
        another booth is refused and stays valid for its own booth."""
        ticket = self._tickets.get(token_key(token))
        if ticket is None:
            raise FetchRefused(FetchRefusal.UNKNOWN)
        if ticket.used:
            raise FetchRefused(FetchRefusal.USED)
        if self._clock() >= ticket.expires_at:
            raise FetchRefused(FetchRefusal.EXPIRED)
        if ticket.booth_id != booth_id:
            raise FetchRefused(FetchRefusal.OTHER_BOOTH)
        ticket.used = True
        return ticket

    def _prune(self) -> None:
        now = self._clock()
        stale = [k for k, t in self._tickets.items() if now >= t.expires_at + self._remember_s]
        for key in stale:
            del self._tickets[key]
        while len(self._tickets) >= MAX_TICKETS:  # bounded: forget the oldest
            del self._tickets[next(iter(self._tickets))]

    def __len__(self) -> int:
        return len(self._tickets)
