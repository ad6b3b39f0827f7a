"""The HQ console web app: staff sign-in, the HQ call page and the branch booth board.

Routes
  GET  /                       → /console (HQ) or /branch (branch staff), or /login
  GET  /login, POST /login     sign-in form; POST creates a console session cookie
  POST /logout                 revokes the session
  GET  /console                HQ staff page (static, talks to signaling itself)
  GET  /branch                 branch staff page
  GET  /api/me                 the signed-in staff member and the signaling URL
  POST /api/signaling-token    a short-lived staff token for one signaling connection
  GET  /api/documents/test-a4.pdf  the 2-page A4 test document staff can print at a booth
  POST /api/sessions/{session_id}/stills  保存: store a document still of the staff
                               member's own call session (JPEG body, X-Still-SHA256 header)
  GET  /healthz                liveness and database check
  GET  /static/...             page assets and the protocol JSON Schema
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Final

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from yarl import URL

from hq_console import forms_api, pages
from hq_console.auth import (
    LoginThrottle,
    SignedInStaff,
    check_login,
    open_session,
    record_failed_login,
    resolve_session,
    revoke_session,
)
from hq_console.booth_auth import BOOTH_API_PREFIX, authenticated_booth
from hq_console.issuance import setup_issuance
from hq_console.metrics import setup_metrics
from hq_console.still_relay import RelayRefusal, RelayRefused, RelayUpload, StillRelay
from shared.config import ConsoleConfig
from shared.documents import a4_test_document
from shared.protocol import StaffRole
from shared.security import issue_staff_token
from shared.store.audit import append_audit
from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import CallSession, DocumentStill

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

CONFIG: Final = web.AppKey("config", ConsoleConfig)
ENGINE: Final = web.AppKey("engine", AsyncEngine)
SESSIONS: Final = web.AppKey("sessions", async_sessionmaker[AsyncSession])
THROTTLE: Final = web.AppKey("throttle", LoginThrottle)
COOKIE_NAME: Final = web.AppKey("cookie_name", str)
CSP: Final = web.AppKey("csp", str)
STILL_RELAY: Final = web.AppKey("still_relay", StillRelay)
BOOTH_THROTTLE: Final = web.AppKey("booth_throttle", LoginThrottle)

STAFF: Final = web.RequestKey("staff", SignedInStaff)  # cached by current_staff

UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HQ_ROLES: Final = frozenset({StaffRole.HQ, StaffRole.ADMIN})
BRANCH_ROLES: Final = frozenset({StaffRole.BRANCH, StaffRole.ADMIN})

# A saved document still: the booth's stills are JPEGs of a few MB (3508x2480: ~2.7 MB).
MAX_STILL_BYTES: Final = 32 * 1024 * 1024
STILL_MIMES: Final = frozenset({"image/jpeg"})
_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
_JPEG_MAGIC: Final = b"\xff\xd8\xff"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _signaling_origin(signaling_url: str) -> str:
    url = URL(signaling_url)
    if url.scheme not in ("ws", "wss") or not url.host:
        return ""
    return str(url.origin())


def staff_signaling_urls(config: ConsoleConfig) -> list[str]:
    """The signaling WebSocket URLs the staff page tries, in order."""
    return list(config.signaling_urls) or [config.signaling_url]


def content_security_policy(config: ConsoleConfig) -> str:
    """Own origin only, plus the signaling WebSockets; media elements play MediaStreams."""
    origins = dict.fromkeys(_signaling_origin(u) for u in staff_signaling_urls(config))
    connect = " ".join(x for x in ("'self'", *origins) if x)
    return (
        "default-src 'none'; "
        "script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; "
        f"connect-src {connect}; media-src 'self' blob: mediastream:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _same_origin(request: web.Request, config: ConsoleConfig) -> bool:
    """The Origin header names this server (CSRF defence for every unsafe method)."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    url = URL(origin)
    if url.scheme not in ("http", "https") or not url.raw_host:
        return False
    if config.secure_cookies and url.scheme != "https":
        return False
    authority = url.raw_host.lower() + (f":{url.explicit_port}" if url.explicit_port else "")
    host = request.host.lower()
    default_port = ":443" if url.scheme == "https" else ":80"
    host = host.removesuffix(default_port)
    return authority == host


@web.middleware
async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    if (
        request.method in UNSAFE_METHODS
        and not request.path.startswith(BOOTH_API_PREFIX)  # no cookies there: Basic auth
        and not _same_origin(request, request.app[CONFIG])
    ):
        log.warning("refused %s %s: foreign or missing Origin", request.method, request.path)
        if _is_api(request):
            return _json_error(403, "bad_origin", "request origin not allowed")
        return web.Response(
            status=403,
            content_type="text/html",
            text=pages.message_page(
                "要求を受け付けられません",
                "Request refused",
                "別のサイトからの送信は受け付けません。ページを開き直してください。",
                "Requests from other sites are not accepted. Please reload the page.",
            ),
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", request.app[CSP])
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    # "same-origin" (not "no-referrer"): with no-referrer, browsers send "Origin: null" on
    # form posts, which the CSRF check would refuse.
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    headers.setdefault(
        "Permissions-Policy", "camera=(self), microphone=(self), geolocation=(), payment=()"
    )
    if request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-cache")
    else:
        headers.setdefault("Cache-Control", "no-store")
    if request.app[CONFIG].secure_cookies:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")


async def current_staff(request: web.Request) -> SignedInStaff | None:
    if STAFF in request:
        return request[STAFF]
    token = request.cookies.get(request.app[COOKIE_NAME])
    if not token:
        return None
    staff = await resolve_session(request.app[SESSIONS], token)
    if staff is not None:
        request[STAFF] = staff
    return staff


# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    staff = await current_staff(request)
    if staff is None:
        raise web.HTTPSeeOther("/login")
    raise web.HTTPSeeOther("/branch" if staff.role == StaffRole.BRANCH else "/console")


async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_staff(request) is not None:
        raise web.HTTPSeeOther("/")
    return web.Response(content_type="text/html", text=pages.login_page())


async def login_submit(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    throttle = request.app[THROTTLE]
    form = await request.post()
    login = str(form.get("login", "")).strip()[:100]
    password = str(form.get("password", ""))[:200]
    if throttle.is_blocked(login):
        log.warning("sign-in refused: too many failures")
        return web.Response(
            status=429,
            content_type="text/html",
            text=pages.login_page(
                error=pages.LOGIN_THROTTLED, error_en=pages.LOGIN_THROTTLED_EN, login=login
            ),
        )
    check = await check_login(request.app[SESSIONS], login, password) if login else None
    staff = check.staff if check is not None and check.ok else None
    if staff is None:
        throttle.record_failure(login)
        log.info("sign-in failed")
        if check is not None:
            await record_failed_login(request.app[SESSIONS], check)
        return web.Response(
            status=401,
            content_type="text/html",
            text=pages.login_page(
                error=pages.LOGIN_FAILED, error_en=pages.LOGIN_FAILED_EN, login=login
            ),
        )
    throttle.record_success(login)
    token, _expires = await open_session(request.app[SESSIONS], staff, config.session_ttl_s)
    log.info("staff %s signed in", staff.id)
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        request.app[COOKIE_NAME],
        token,
        max_age=int(config.session_ttl_s),
        path="/",
        httponly=True,
        secure=config.secure_cookies,
        samesite="Strict",
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    cookie_name = request.app[COOKIE_NAME]
    token = request.cookies.get(cookie_name)
    if token and await revoke_session(request.app[SESSIONS], token):
        log.info("console session signed out")
    response = web.HTTPSeeOther("/login")
    response.del_cookie(
        cookie_name,
        path="/",
        secure=request.app[CONFIG].secure_cookies,
        httponly=True,
        samesite="Strict",
    )
    raise response


def _page(filename: str, roles: frozenset[StaffRole]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        staff = await current_staff(request)
        if staff is None:
            raise web.HTTPSeeOther("/login")
        if staff.role not in roles:
            return web.Response(status=403, content_type="text/html", text=pages.forbidden_page())
        return web.FileResponse(STATIC_DIR / filename, headers={"Content-Type": "text/html"})

    return handler


# --------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------


async def _api_staff(request: web.Request) -> SignedInStaff:
    staff = await current_staff(request)
    if staff is None:
        raise web.HTTPUnauthorized(
            text='{"error":"unauthenticated","message":"sign in first"}',
            content_type="application/json",
        )
    return staff


async def api_me(request: web.Request) -> web.StreamResponse:
    staff = await _api_staff(request)
    return web.json_response(
        {
            "staff_id": staff.staff_id,
            "display_name": staff.display_name,
            "role": staff.role.value,
            "site_id": staff.site_id,
            "skills": [s.model_dump() for s in staff.skills],
            "signaling_url": request.app[CONFIG].signaling_url,
            "signaling_urls": staff_signaling_urls(request.app[CONFIG]),
            "ice_relay_only": request.app[CONFIG].ice_relay_only,
        }
    )


async def api_signaling_token(request: web.Request) -> web.StreamResponse:
    staff = await _api_staff(request)
    config = request.app[CONFIG]
    now = time.time()
    token = issue_staff_token(
        config.token_secret, staff.staff_id, staff.role, config.token_ttl_s, now=now
    )
    return web.json_response({"token": token, "expires_at": now + config.token_ttl_s})


async def api_test_a4_document(request: web.Request) -> web.StreamResponse:
    """The A4 test document (2 pages, no personal data), rendered now for printing."""
    await _api_staff(request)
    printed_at = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    pdf = await asyncio.to_thread(a4_test_document, printed_at)
    return web.Response(
        body=pdf,
        content_type="application/pdf",
        headers={"Cache-Control": "no-store"},
    )


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it exceeds ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    parts: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def api_save_still(request: web.Request) -> web.StreamResponse:
    """保存: store a document still with the call session it was taken in. Only the staff
    member of that session may; the body must match the SHA-256 the booth announced."""
    staff = await _api_staff(request)
    if staff.role not in HQ_ROLES:
        return _json_error(403, "forbidden", "HQ staff only")
    session_id = request.match_info["session_id"]
    mime = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if mime not in STILL_MIMES:
        return _json_error(415, "unsupported_type", "a JPEG still is expected")
    expected = request.headers.get("X-Still-SHA256", "").strip().lower()
    if not _SHA256_HEX.match(expected):
        return _json_error(400, "bad_sha256", "X-Still-SHA256 must be 64 hex digits")
    sessions = request.app[SESSIONS]
    async with sessions() as db:
        call = await db.get(CallSession, session_id)
        if call is None or call.staff_id != staff.staff_id:
            log.warning("still refused: staff %s is not in session %s", staff.staff_id, session_id)
            return _json_error(403, "not_your_session", "not a session of this staff member")
        booth_id = call.booth_id
    data = await _read_limited(request, MAX_STILL_BYTES)
    if data is None:
        return _json_error(413, "too_large", "the still is too large")
    if not data or not data.startswith(_JPEG_MAGIC):
        return _json_error(400, "not_jpeg", "the body is not a JPEG")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        log.warning("still refused: SHA-256 mismatch for session %s", session_id)
        return _json_error(400, "sha256_mismatch", "the still does not match its SHA-256")
    still_id = uuid.uuid4().hex
    async with sessions() as db, db.begin():
        db.add(
            DocumentStill(
                id=still_id,
                session_id=session_id,
                staff_id=staff.staff_id,
                sha256=actual,
                size=len(data),
                mime=mime,
                data=data,
            )
        )
        await append_audit(
            db,
            action="still_saved",
            staff_id=staff.staff_id,
            booth_id=booth_id,
            session_id=session_id,
            object_id=still_id,
            detail={"sha256": actual, "size": len(data)},
        )
    log.info("still %s saved to session %s by staff %s", still_id[:8], session_id, staff.staff_id)
    return web.json_response({"id": still_id, "sha256": actual, "size": len(data)}, status=201)


_RELAY_TOKEN: Final = re.compile(r"^[0-9a-f]{64}$")
_IDENT: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_RELAY_STATUS: Final = {
    RelayRefusal.BUSY: 503,
    RelayRefusal.TAKEN: 409,
    RelayRefusal.SESSION_MISMATCH: 409,
    RelayRefusal.NO_PARTNER: 504,
    RelayRefusal.PARTNER_GONE: 502,
    RelayRefusal.TOO_LARGE: 413,
}


def _relay_error(err: RelayRefused) -> web.Response:
    return _json_error(_RELAY_STATUS[err.refusal], err.refusal.value, str(err))


async def _live_call(request: web.Request, session_id: str) -> CallSession | None:
    async with request.app[SESSIONS]() as db:
        call = await db.get(CallSession, session_id)
    return call if call is not None and call.ended_at is None else None


_RELAY_UPLOAD: Final = web.RequestKey("relay_upload", RelayUpload)


async def claim_still_upload(request: web.Request) -> web.StreamResponse | None:
    """Check a booth's still upload and wait for the staff download before the body comes:
    the route's ``Expect: 100-continue`` handler (and the start of the upload without it)."""
    booth_id = await authenticated_booth(
        request, request.app[SESSIONS], request.app[BOOTH_THROTTLE]
    )
    session_id, token = request.match_info["session_id"], request.match_info["token"]
    if not _RELAY_TOKEN.match(token):
        return _json_error(400, "bad_token", "the relay token must be 64 hex digits")
    call = await _live_call(request, session_id)
    if call is None or call.booth_id != booth_id:
        log.warning("still relay refused: booth %s is not in session %s", booth_id, session_id)
        return _json_error(403, "not_your_session", "not a live session of this booth")
    size = request.content_length
    if size is None:
        return _json_error(411, "length_required", "Content-Length is required")
    try:
        request[_RELAY_UPLOAD] = await request.app[STILL_RELAY].claim_upload(
            token, session_id, size
        )
    except RelayRefused as err:
        log.warning("still relay for session %s refused: %s", session_id, err.refusal.value)
        return _relay_error(err)
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def api_booth_still_upload(request: web.Request) -> web.StreamResponse:
    """The booth streams a sealed still into the relay (see hq_console.still_relay)."""
    claimed = request.get(_RELAY_UPLOAD)
    if claimed is None:  # no Expect: 100-continue
        refusal = await claim_still_upload(request)
        if refusal is not None:
            request.protocol.force_close()  # answer, then close: no lingering over the body
            return refusal
        claimed = request[_RELAY_UPLOAD]
    session_id = request.match_info["session_id"]
    try:
        copied = await claimed.copy(request.content.iter_chunked(256 * 1024))
    except RelayRefused as err:
        log.warning("still relay for session %s failed: %s", session_id, err.refusal.value)
        request.protocol.force_close()  # answer, then close: no lingering over the body
        return _relay_error(err)
    log.info("still relayed for session %s (%d bytes)", session_id, copied)
    return web.json_response({"bytes": copied})


async def api_booth_card_read(request: web.Request) -> web.StreamResponse:
    """The booth read a My Number card for the staff member of a live session: the audit
    log's ``card_data_read`` (the request id only; the facts went peer to peer)."""
    booth_id = await authenticated_booth(
        request, request.app[SESSIONS], request.app[BOOTH_THROTTLE]
    )
    session_id = request.match_info["session_id"]
    try:
        body = await request.json()
        request_id = str(body["request_id"]) if isinstance(body, dict) else ""
    except (ValueError, KeyError):
        request_id = ""
    if not _IDENT.match(request_id):
        return _json_error(400, "bad_request", "request_id is required")
    sessions = request.app[SESSIONS]
    async with sessions() as db, db.begin():
        call = await db.get(CallSession, session_id)
        if call is None or call.ended_at is not None or call.booth_id != booth_id:
            log.warning("card read record refused: booth %s, session %s", booth_id, session_id)
            return _json_error(403, "not_your_session", "not a live session of this booth")
        record = await append_audit(
            db,
            action="card_data_read",
            staff_id=call.staff_id,
            booth_id=booth_id,
            session_id=session_id,
            object_id=request_id,
        )
    return web.json_response({"audit_id": record.id}, status=201)


async def api_still_relay_download(request: web.Request) -> web.StreamResponse:
    """The staff member of the session takes a sealed still from the relay."""
    staff = await _api_staff(request)
    session_id, token = request.match_info["session_id"], request.match_info["token"]
    if not _RELAY_TOKEN.match(token):
        return _json_error(400, "bad_token", "the relay token must be 64 hex digits")
    call = await _live_call(request, session_id)
    if call is None or call.staff_id != staff.staff_id:
        log.warning(
            "still relay refused: staff %s is not in session %s", staff.staff_id, session_id
        )
        return _json_error(403, "not_your_session", "not a live session of this staff member")
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
    )
    try:
        async with request.app[STILL_RELAY].download(token, session_id) as transfer:
            response.content_length = transfer.size
            await response.prepare(request)
            await transfer.run(response.write)
    except RelayRefused as err:
        if not response.prepared:
            return _relay_error(err)
        # Headers are out: cut the connection so that the browser sees a failed download.
        log.warning("still relay for session %s cut: %s", session_id, err.refusal.value)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.StreamResponse:
    try:
        async with request.app[ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        log.exception("health check: database unreachable")
        return web.json_response({"status": "error", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok"})


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.auto_migrate:
        await migrate(config.database_url)
    engine = create_engine(config.database_url)
    app[ENGINE] = engine
    app[SESSIONS] = session_factory(engine)
    try:
        yield
    finally:
        await engine.dispose()


def create_app(config: ConsoleConfig, *, throttle: LoginThrottle | None = None) -> web.Application:
    app = web.Application(middlewares=[origin_check], client_max_size=64 * 1024)
    app[CONFIG] = config
    app[THROTTLE] = throttle or LoginThrottle()
    # The __Host- prefix pins the cookie to this origin; browsers accept it only if Secure.
    app[COOKIE_NAME] = "__Host-ekichika_session" if config.secure_cookies else "ekichika_session"
    app[CSP] = content_security_policy(config)
    app[STILL_RELAY] = StillRelay(wait_s=config.still_relay_wait_s)
    app[BOOTH_THROTTLE] = LoginThrottle()
    app.cleanup_ctx.append(_database)
    app.on_response_prepare.append(_security_headers)

    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/console", _page("console.html", HQ_ROLES))
    app.router.add_get("/branch", _page("branch.html", BRANCH_ROLES))
    app.router.add_get("/api/me", api_me)
    app.router.add_post("/api/signaling-token", api_signaling_token)
    app.router.add_get("/api/documents/test-a4.pdf", api_test_a4_document)
    app.router.add_post("/api/sessions/{session_id}/stills", api_save_still)
    app.router.add_get("/api/sessions/{session_id}/stills/relay/{token}", api_still_relay_download)
    app.router.add_post(BOOTH_API_PREFIX + "sessions/{session_id}/card-reads", api_booth_card_read)
    app.router.add_post(
        BOOTH_API_PREFIX + "sessions/{session_id}/stills/relay/{token}",
        api_booth_still_upload,
        expect_handler=claim_still_upload,
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    setup_issuance(app)
    forms_api.setup_forms(app)
    setup_metrics(app)
    return app
