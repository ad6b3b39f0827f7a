"""Booths calling the console's booth API (``/api/booth/...``) with HTTP Basic credentials.

The user name is the booth id and the password the booth's credential, the same one the
booth uses with signaling (only its SHA-256 is stored, in ``booths``). The booth API uses no
cookies, so it is outside the console's Origin (CSRF) check. Failures are throttled per
booth id and source address, and logged with the booth id only.
"""

from __future__ import annotations

import base64
import binascii
import logging

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hq_console.auth import LoginThrottle
from shared.security import check_booth_credential
from shared.store.models import Booth

log = logging.getLogger(__name__)

BOOTH_API_PREFIX = "/api/booth/"


def _refuse(status: int, code: str, message: str) -> web.HTTPException:
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPTooManyRequests
    headers = {"WWW-Authenticate": 'Basic realm="ekichika-booth"'} if status == 401 else None
    return cls(
        text=f'{{"error":"{code}","message":"{message}"}}',
        content_type="application/json",
        headers=headers,
    )


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    booth_id, sep, credential = decoded.partition(":")
    if not sep or not booth_id or not credential or len(booth_id) > 64:
        return None
    return booth_id, credential


async def authenticated_booth(
    request: web.Request,
    sessions: async_sessionmaker[AsyncSession],
    throttle: LoginThrottle,
) -> str:
    """The id of the booth that signed this request; raises 401 (or 429 when throttled)."""
    found = _basic_credentials(request)
    if found is None:
        raise _refuse(401, "unauthenticated", "booth credentials required")
    booth_id, credential = found
    key = f"booth:{booth_id}@{request.remote}"
    if throttle.is_blocked(key):
        log.warning("booth %s refused: too many failed attempts", booth_id)
        raise _refuse(429, "throttled", "too many failed attempts; wait and retry")
    async with sessions() as db:
        booth = await db.get(Booth, booth_id)
    if booth is None or not check_booth_credential(credential, booth.credential_hash):
        throttle.record_failure(key)
        log.warning("booth %s refused: wrong credentials", booth_id)
        raise _refuse(401, "auth_failed", "wrong booth id or credential")
    throttle.record_success(key)
    return booth_id
