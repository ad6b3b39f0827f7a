"""Run a real signaling server in tests, and talk to it with typed WebSocket clients.

Start a server on a fresh SQLite file (migrated and seeded with the demo data)::

    async with running_signaling(tmp_path) as (config, ws_url, booth_credentials, token):
        async with connect_booth(ws_url, "seiseki-1", booth_credentials["seiseki-1"]) as booth:
            await booth.send(RequestHelp(request_id="r1", department="shimin", language="ja"))
            status = await booth.expect(QueueStatus)
        async with connect_staff(ws_url, token("sato")) as staff:
            await staff.send(SetState(state="available"))
            offer = await staff.expect(Offer)

Known test data (from :mod:`shared.store.seed`):

* booths ``seiseki-1`` (site seiseki) and ``tamacenter-1`` (site tamacenter), with the
  credentials in :data:`BOOTH_CREDENTIALS`;
* staff ``sato`` (HQ: shimin ja/en, hoken ja/en), ``suzuki`` (HQ: shimin ja, kosodate ja,
  kazei ja) and ``takahashi`` (branch, site seiseki); every password is
  :data:`DEMO_PASSWORD`;
* tokens are signed with :data:`TOKEN_SECRET` (``config.token_secret``).

Timing values are shrunk for tests (:data:`TEST_TIMINGS`); pass overrides as keyword
arguments to :func:`running_signaling`. The server listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, Generic, NamedTuple, TypeVar

import aiohttp
from pydantic import BaseModel, TypeAdapter
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import SignalingConfig
from shared.protocol import (
    BoothHello,
    BoothWelcome,
    ErrorMessage,
    ServerToBooth,
    ServerToStaff,
    StaffHello,
    StaffRole,
    StaffWelcome,
)
from shared.security import issue_staff_token
from shared.store import create_engine, migrate, session_factory
from shared.store.seed import seed_demo
from shared.wire import decode, encode
from signaling.app import create_app

BOOTH_CREDENTIALS: Final[dict[str, str]] = {
    "seiseki-1": "seiseki-1-test-credential",
    "tamacenter-1": "tamacenter-1-test-credential",
}
DEMO_PASSWORD: Final = "test-password"
TOKEN_SECRET: Final = "test-token-secret-0123456789abcdef"
STAFF_ROLES: Final[dict[str, StaffRole]] = {
    "sato": StaffRole.HQ,
    "suzuki": StaffRole.HQ,
    "takahashi": StaffRole.BRANCH,
}
TEST_TIMINGS: Final[dict[str, Any]] = {
    "heartbeat_s": 5.0,
    "hello_timeout_s": 2.0,
    "ring_timeout_s": 2.0,
    "decline_cooldown_s": 2.0,
    "booth_reconnect_grace_s": 5.0,
    "staff_reconnect_grace_s": 5.0,
    "queue_push_interval_s": 0.05,
}

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class StaffTokenFactory:
    """``token("sato")`` → a signed staff token; ``ttl_s`` < 0 gives an expired one."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(
        self, staff_id: str, *, ttl_s: float = 300.0, role: StaffRole | None = None
    ) -> str:
        return issue_staff_token(
            self.secret, staff_id, role or STAFF_ROLES.get(staff_id, StaffRole.HQ), ttl_s
        )


class RunningSignaling(NamedTuple):
    """What :func:`running_signaling` yields (unpack it, or use the names)."""

    config: SignalingConfig
    ws_url: str  # "ws://127.0.0.1:PORT"; endpoints are ws_url + "/ws/booth", "/ws/staff"
    booth_credentials: dict[str, str]
    staff_token: StaffTokenFactory


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def prepare_database(
    database_url: str,
    *,
    booth_credentials: dict[str, str] = BOOTH_CREDENTIALS,
    password: str = DEMO_PASSWORD,
) -> None:
    """Migrate to the newest schema and seed the demo data (idempotent)."""
    await migrate(database_url)
    engine = create_engine(database_url)
    try:
        await seed_demo(session_factory(engine), booth_credentials, password)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def open_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database, for assertions on stored rows."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def running_signaling(
    directory: Path,
    *,
    database_path: Path | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningSignaling]:
    """A signaling server on 127.0.0.1 (free port) over a seeded SQLite file.

    ``database_path`` defaults to ``directory / "signaling.sqlite3"``; pass the same path
    to a second server to simulate a restart. ``overrides`` are SignalingConfig fields."""
    db_path = database_path or directory / "signaling.sqlite3"
    url = sqlite_url(db_path)
    await prepare_database(url)
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "database_url": url,
        "token_secret": TOKEN_SECRET,
        **TEST_TIMINGS,
        **overrides,
    }
    config = SignalingConfig(**settings)
    app = create_app(config)
    runner = aiohttp.web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        config = config.model_copy(update={"port": port})
        yield RunningSignaling(
            config,
            f"ws://127.0.0.1:{port}",
            dict(BOOTH_CREDENTIALS),
            StaffTokenFactory(TOKEN_SECRET),
        )
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------
# Typed WebSocket clients
# --------------------------------------------------------------------------------------


class ConnectionClosed(AssertionError):
    """The server closed the connection while a message was expected."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"connection closed (code {code})")
        self.code = code


class ProtocolClient(Generic[T]):
    """One WebSocket to the signaling server; decodes every frame into a model.

    ``history`` keeps every message received, in order (also the ones :meth:`expect`
    skipped)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        adapter: TypeAdapter[T],
    ) -> None:
        self.session = session
        self.ws = ws
        self.adapter = adapter
        self.history: list[T] = []
        self._pending: list[T] = []

    async def send(self, message: BaseModel) -> None:
        await self.ws.send_str(encode(message))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive(self, within: float = 5.0) -> T:
        """The next message (raises ConnectionClosed or TimeoutError)."""
        if self._pending:
            return self._pending.pop(0)
        msg = await self.ws.receive(timeout=within)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            raise ConnectionClosed(self.ws.close_code)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"unexpected frame {msg.type!r}")
        message = decode(self.adapter, msg.data, max_bytes=1 << 24)
        self.history.append(message)
        return message

    async def expect(self, kind: type[M], within: float = 5.0) -> M:
        """Skip messages of other types until one of ``kind`` arrives."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind.__name__} within {within} s")
            message = await self.receive(remaining)
            if isinstance(message, kind):
                return message

    async def expect_error(self, within: float = 5.0) -> ErrorMessage:
        return await self.expect(ErrorMessage, within)

    async def expect_none(self, kind: type[BaseModel], within: float) -> None:
        """Assert that no message of ``kind`` arrives within ``within`` seconds; other
        messages are kept for later :meth:`receive` calls."""
        deadline = time.monotonic() + within
        kept: list[T] = []
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    message = await self.receive(remaining)
                except TimeoutError:
                    break
                if isinstance(message, kind):
                    raise AssertionError(f"unexpected {message!r}")
                kept.append(message)
        finally:
            self._pending.extend(kept)

    async def expect_closed(self, within: float = 5.0) -> int | None:
        """Read until the server closes; returns the close code."""
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            msg = await self.ws.receive(timeout=remaining)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code
        raise TimeoutError("the connection stayed open")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.session.close()


BoothClient = ProtocolClient[ServerToBooth]
StaffClient = ProtocolClient[ServerToStaff]


async def open_booth(ws_url: str) -> BoothClient:
    """A booth WebSocket with no hello sent yet."""
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(ws_url + "/ws/booth", autoping=True)
    except BaseException:
        await session.close()
        raise
    return ProtocolClient(session, ws, TypeAdapter(ServerToBooth))


async def open_staff(ws_url: str, *, origin: str | None = None) -> StaffClient:
    """A staff WebSocket with no hello sent yet."""
    session = aiohttp.ClientSession()
    headers = {"Origin": origin} if origin else None
    try:
        ws = await session.ws_connect(ws_url + "/ws/staff", headers=headers)
    except BaseException:
        await session.close()
        raise
    return ProtocolClient(session, ws, TypeAdapter(ServerToStaff))


@contextlib.asynccontextmanager
async def connect_booth(ws_url: str, booth_id: str, credential: str) -> AsyncIterator[BoothClient]:
    """A booth that said hello; its BoothWelcome is ``client.history[0]``."""
    client = await open_booth(ws_url)
    try:
        await client.send(BoothHello(booth_id=booth_id, credential=credential))
        await client.expect(BoothWelcome)
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def connect_staff(ws_url: str, token: str) -> AsyncIterator[StaffClient]:
    """A staff member who said hello; their StaffWelcome is ``client.history[0]``."""
    client = await open_staff(ws_url)
    try:
        await client.send(StaffHello(token=token))
        await client.expect(StaffWelcome)
        yield client
    finally:
        await client.aclose()


async def eventually(
    probe: Callable[[], Any], *, within: float = 5.0, interval: float = 0.05
) -> Any:
    """Await ``probe()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
