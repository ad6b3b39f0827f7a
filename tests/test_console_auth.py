"""Console sign-in against a real aiohttp server, real Argon2 and a seeded SQLite file."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hq_console.__main__ import main as console_main
from hq_console.app import create_app
from hq_console.auth import LoginThrottle
from shared.config import ConsoleConfig
from shared.protocol import StaffRole
from shared.security import verify_staff_token
from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import ConsoleSession, Staff, StaffSkill
from shared.store.seed import seed_demo

PASSWORD = "sakura-2024-demo"
TOKEN_SECRET = "token-secret-for-tests-0123456789"
SIGNALING_URL = "ws://127.0.0.1:8765/ws/staff"


@dataclass
class Console:
    base: str
    origin: str
    sessions: async_sessionmaker[AsyncSession]
    config: ConsoleConfig


async def _start(
    tmp_path: Path,
    *,
    throttle: LoginThrottle | None = None,
    secure: bool = False,
    still_relay_wait_s: float = 20.0,
    signaling_urls: list[str] | None = None,
) -> AsyncIterator[Console]:
    url = f"sqlite+aiosqlite:///{tmp_path}/console.sqlite3"
    await migrate(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    await seed_demo(sessions, {}, PASSWORD)
    config = ConsoleConfig(
        database_url=url,
        token_secret=TOKEN_SECRET,
        signaling_url=SIGNALING_URL,
        token_ttl_s=120,
        secure_cookies=secure,
        still_relay_wait_s=still_relay_wait_s,
        signaling_urls=signaling_urls or [],
    )
    runner = web.AppRunner(create_app(config, throttle=throttle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Console(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", sessions, config)
    finally:
        await runner.cleanup()
        await engine.dispose()


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in _start(tmp_path):
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the jar must accept cookies from an IP address host (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def _login(
    http: aiohttp.ClientSession, console: Console, login: str, password: str = PASSWORD
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{console.base}/login",
        data={"login": login, "password": password},
        headers={"Origin": console.origin},
        allow_redirects=False,
    ) as resp:
        await resp.read()
        return resp


def _cookie_value(http: aiohttp.ClientSession) -> str:
    values = [c.value for c in http.cookie_jar if c.key == "ekichika_session"]
    assert len(values) == 1
    return values[0]


async def _console_sessions(console: Console) -> list[ConsoleSession]:
    async with console.sessions() as s:
        return list((await s.execute(select(ConsoleSession))).scalars())


async def test_login_page_is_japanese_first_and_self_contained(
    console: Console, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{console.base}/login") as resp:
        assert resp.status == 200
        body = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert "職員ログイン" in body and "Sign in" in body
    assert body.index("ログインID") < body.index("Login<")
    assert 'action="/login"' in body
    # No external resources: every src/href is a path on this server.
    assert "http://" not in body and "https://" not in body
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "connect-src 'self' ws://127.0.0.1:8765" in csp
    assert "media-src 'self' blob:" in csp


async def test_sign_in_creates_hashed_session_and_issues_signaling_tokens(
    console: Console, http: aiohttp.ClientSession
) -> None:
    resp = await _login(http, console, "sato")
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    set_cookie = SimpleCookie(resp.headers["Set-Cookie"])["ekichika_session"]
    assert set_cookie["httponly"] is True
    assert set_cookie["samesite"] == "Strict"
    assert not set_cookie["secure"]

    token = _cookie_value(http)
    rows = await _console_sessions(console)
    assert len(rows) == 1
    assert rows[0].staff_id == "sato"
    assert rows[0].id == hashlib.sha256(token.encode()).hexdigest()
    assert token not in rows[0].id
    assert rows[0].revoked_at is None

    async with http.get(f"{console.base}/", allow_redirects=False) as home:
        assert home.status == 303
        assert home.headers["Location"] == "/console"
    async with http.get(f"{console.base}/console") as page:
        assert page.status == 200
        html = await page.text()
        assert 'src="/static/console.js"' in html

    async with http.get(f"{console.base}/api/me") as me:
        assert me.status == 200
        info = await me.json()
    assert info["staff_id"] == "sato"
    assert info["display_name"] == "佐藤 花子"
    assert info["role"] == "hq"
    assert info["site_id"] is None
    assert {"department": "hoken", "language": "en"} in info["skills"]
    assert len(info["skills"]) == 4
    assert info["signaling_url"] == SIGNALING_URL

    before = time.time()
    tokens = []
    for _ in range(2):
        async with http.post(
            f"{console.base}/api/signaling-token", headers={"Origin": console.origin}
        ) as issued:
            assert issued.status == 200
            tokens.append(await issued.json())
    assert tokens[0]["token"] != tokens[1]["token"]  # a fresh token for every connect
    claims = verify_staff_token(TOKEN_SECRET, tokens[0]["token"])
    assert claims.staff_id == "sato"
    assert claims.role == StaffRole.HQ
    assert before + 120 - 5 <= claims.expires_at <= time.time() + 120 + 1
    assert abs(tokens[0]["expires_at"] - claims.expires_at) < 1


async def test_logout_revokes_the_session_everywhere(
    console: Console, http: aiohttp.ClientSession
) -> None:
    await _login(http, console, "sato")
    token = _cookie_value(http)

    async with http.post(
        f"{console.base}/logout", headers={"Origin": console.origin}, allow_redirects=False
    ) as out:
        assert out.status == 303
        assert out.headers["Location"] == "/login"
    rows = await _console_sessions(console)
    assert len(rows) == 1 and rows[0].revoked_at is not None

    # A copy of the old cookie (e.g. another tab or a stolen value) is dead as well.
    async with aiohttp.ClientSession() as other:
        headers = {"Cookie": f"ekichika_session={token}", "Origin": console.origin}
        async with other.get(f"{console.base}/api/me", headers=headers) as me:
            assert me.status == 401
            assert (await me.json())["error"] == "unauthenticated"
        async with other.post(f"{console.base}/api/signaling-token", headers=headers) as tok:
            assert tok.status == 401
        async with other.get(
            f"{console.base}/console", headers=headers, allow_redirects=False
        ) as page:
            assert page.status == 303
            assert page.headers["Location"] == "/login"


async def test_wrong_password_and_unknown_login_get_the_same_answer(
    console: Console, http: aiohttp.ClientSession
) -> None:
    wrong = await _login(http, console, "sato", "not-the-password")
    async with http.post(
        f"{console.base}/login",
        data={"login": "nobody", "password": PASSWORD},
        headers={"Origin": console.origin},
    ) as unknown:
        unknown_text = await unknown.text()
        assert unknown.status == 401
    async with http.post(
        f"{console.base}/login",
        data={"login": "sato", "password": "not-the-password"},
        headers={"Origin": console.origin},
    ) as again:
        wrong_text = await again.text()
    assert wrong.status == 401
    assert "ログインIDまたはパスワードが正しくありません。" in wrong_text
    assert wrong_text.replace("sato", "") == unknown_text.replace("nobody", "")
    assert "Set-Cookie" not in wrong.headers
    assert await _console_sessions(console) == []


async def test_inactive_account_is_refused_and_its_sessions_end(
    console: Console, http: aiohttp.ClientSession
) -> None:
    await _login(http, console, "suzuki")
    async with http.get(f"{console.base}/api/me") as me:
        assert me.status == 200

    async with console.sessions.begin() as s:
        await s.execute(update(Staff).where(Staff.id == "suzuki").values(active=False))

    async with http.get(f"{console.base}/api/me") as me:
        assert me.status == 401
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as fresh:
        resp = await _login(fresh, console, "suzuki")
        assert resp.status == 401
        assert not [c for c in fresh.cookie_jar if c.key == "ekichika_session"]
    assert len(await _console_sessions(console)) == 1  # only the first one


async def test_repeated_failures_lock_that_login_only(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async for console in _start(tmp_path, throttle=LoginThrottle(max_failures=3, window_s=60)):
        for _ in range(3):
            assert (await _login(http, console, "sato", "guess")).status == 401
        # Even the right password is refused while the login is locked …
        locked = await _login(http, console, "SATO ")
        assert locked.status == 429
        assert await _console_sessions(console) == []
        # … but other accounts are not affected.
        assert (await _login(http, console, "suzuki")).status == 303


async def test_posts_from_other_origins_are_refused(
    console: Console, http: aiohttp.ClientSession
) -> None:
    for headers in ({"Origin": "http://evil.example"}, {}, {"Origin": "null"}):
        async with http.post(
            f"{console.base}/login",
            data={"login": "sato", "password": PASSWORD},
            headers=headers,
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
            assert "別のサイトからの送信は受け付けません" in await resp.text()
    assert await _console_sessions(console) == []

    await _login(http, console, "sato")
    # Same host, different port: a different origin.
    foreign = console.origin.rsplit(":", 1)[0] + ":1"
    async with http.post(f"{console.base}/api/signaling-token", headers={"Origin": foreign}) as tok:
        assert tok.status == 403
        assert (await tok.json())["error"] == "bad_origin"
    async with http.post(
        f"{console.base}/logout", headers={"Origin": "http://evil.example"}
    ) as out:
        assert out.status == 403
    rows = await _console_sessions(console)
    assert rows[0].revoked_at is None


async def test_api_without_cookie_is_401_json(
    console: Console, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{console.base}/api/me") as me:
        assert me.status == 401
        assert me.content_type == "application/json"
        assert (await me.json())["error"] == "unauthenticated"
    async with http.post(
        f"{console.base}/api/signaling-token", headers={"Origin": console.origin}
    ) as tok:
        assert tok.status == 401
        assert (await tok.json())["error"] == "unauthenticated"
    for path in ("/", "/console", "/branch"):
        async with http.get(f"{console.base}{path}", allow_redirects=False) as page:
            assert page.status == 303
            assert page.headers["Location"] == "/login"


async def test_roles_pick_their_page(console: Console, http: aiohttp.ClientSession) -> None:
    await _login(http, console, "takahashi")
    async with http.get(f"{console.base}/", allow_redirects=False) as home:
        assert home.headers["Location"] == "/branch"
    async with http.get(f"{console.base}/branch") as page:
        assert page.status == 200
        assert 'src="/static/branch.js"' in await page.text()
    async with http.get(f"{console.base}/console") as page:
        assert page.status == 403
        assert "権限がありません" in await page.text()
    async with http.get(f"{console.base}/api/me") as me:
        info = await me.json()
    assert info["role"] == "branch" and info["site_id"] == "seiseki" and info["skills"] == []
    async with http.post(
        f"{console.base}/api/signaling-token", headers={"Origin": console.origin}
    ) as tok:
        claims = verify_staff_token(TOKEN_SECRET, (await tok.json())["token"])
    assert claims.role == StaffRole.BRANCH

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as hq:
        await _login(hq, console, "sato")
        async with hq.get(f"{console.base}/branch") as page:
            assert page.status == 403


async def test_secure_cookies_use_host_prefix(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async for console in _start(tmp_path, secure=True):
        # secure_cookies also demands an https Origin (the site sits behind TLS).
        port = console.base.rsplit(":", 1)[1]
        async with http.post(
            f"{console.base}/login",
            data={"login": "sato", "password": PASSWORD},
            headers={"Origin": f"https://127.0.0.1:{port}"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            morsel = SimpleCookie(resp.headers["Set-Cookie"])["__Host-ekichika_session"]
            assert morsel["secure"] is True
            assert morsel["path"] == "/"
            assert "Strict-Transport-Security" in resp.headers
        refused = await _login(http, console, "sato")  # plain-http Origin
        assert refused.status == 403


async def test_healthz_and_static_schema(console: Console, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{console.base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with http.get(f"{console.base}/static/protocol.schema.json") as resp:
        assert resp.status == 200
        schema = await resp.json()
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "staff_to_server" in schema["channels"]


def test_add_staff_command_creates_an_account_that_can_sign_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.sqlite3"
    args = [
        "add-staff",
        "--database-url",
        url,
        "--login",
        "tanaka",
        "--name",
        "田中 太郎",
        "--role",
        "hq",
        "--skill",
        "kazei:ja",
        "--skill",
        "kazei:en",
        "--password-stdin",
    ]
    # Departments come from the reference data; an empty database knows none.
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    assert console_main(args) == 2
    assert "unknown department 'kazei'" in capsys.readouterr().err

    import asyncio

    async def seed_reference() -> None:
        from shared.store.seed import seed_reference_data

        engine = create_engine(url)
        try:
            await seed_reference_data(session_factory(engine))
        finally:
            await engine.dispose()

    asyncio.run(seed_reference())
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    assert console_main(args) == 0
    assert "created staff account tanaka" in capsys.readouterr().out

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert console_main(args) == 2

    async def stored() -> tuple[Staff, list[tuple[str, str]]]:
        from shared.security import check_password

        engine = create_engine(url)
        try:
            async with session_factory(engine)() as s:
                staff = await s.get(Staff, "tanaka")
                assert staff is not None
                assert check_password("long-enough-pw", staff.password_hash)
                skills = (
                    await s.execute(select(StaffSkill).where(StaffSkill.staff_id == "tanaka"))
                ).scalars()
                return staff, sorted((k.department, k.language) for k in skills)
        finally:
            await engine.dispose()

    staff, skills = asyncio.run(stored())
    assert staff.display_name == "田中 太郎" and staff.role == "hq" and staff.active
    assert skills == [("kazei", "en"), ("kazei", "ja")]


async def test_the_page_learns_every_signaling_node_and_may_connect_to_each(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Several signaling nodes: /api/me lists them in order and the CSP allows each."""
    nodes = ["wss://sig-a.city.example/ws/staff", "wss://sig-b.city.example:8443/ws/staff"]
    async for console in _start(tmp_path, signaling_urls=nodes):
        assert (await _login(http, console, "sato")).status == 303
        async with http.get(f"{console.base}/api/me") as resp:
            me = await resp.json()
            csp = resp.headers["Content-Security-Policy"]
        assert me["signaling_urls"] == nodes
        connect = next(d for d in csp.split("; ") if d.startswith("connect-src"))
        assert connect.split()[1:] == [
            "'self'",
            "wss://sig-a.city.example",
            "wss://sig-b.city.example:8443",
        ]
