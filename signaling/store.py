"""Persistence of the signaling server (SQLAlchemy async, tables of :mod:`shared.store`).

Reads (directory, waiting requests, recent handle times) are plain queries. Writes go
through one writer task that takes every record queued since its last round and commits
them in a single transaction (one statement per kind of record), so the hot path only
appends to a queue: a new request is matched while its row is being written.

Several signaling nodes: the leader passes its epoch with each record, and a batch of
records of an epoch is written only while ``signaling_leader`` still holds that epoch
(checked under a share lock in the batch's own transaction, so a new leader's claim waits
for a batch in progress and every later batch sees it). Records of an ended term are
dropped, and :attr:`SignalingStore.on_fenced` is told.

A request the database refuses (its id was used before) is reported through the future
:meth:`SignalingStore.insert_request` returns; every later record about that request is
dropped instead of being attached to the older row. A crash between matching and the
commit loses nothing either: a booth keeps its request and sends it again after any
reconnect until it is matched or closed.

:meth:`SignalingStore.aclose` writes everything still queued before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, cast

from sqlalchemy import Table, bindparam, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from shared.errors import EkichikaError
from shared.protocol import BoothInfo, Department, EndReason, StaffInfo, StaffRole
from shared.store import (
    Base,
    Booth,
    CallSession,
    HelpRequest,
    SessionEvent,
    SignalingLeader,
    Site,
    Staff,
    create_engine,
    session_factory,
)
from shared.store import Department as DepartmentRow
from signaling.matching import (
    NewRequest,
    Record,
    RequestStatus,
    RequestStatusChanged,
    SessionClosed,
    SessionConnected,
    SessionNoteSaved,
    SessionOpened,
    SkillKey,
    TimelineEvent,
)

log = logging.getLogger(__name__)

MAX_BATCH: Final = 500


class RequestIdTaken(EkichikaError):
    """A help request with this id is already stored."""


class Fenced(EkichikaError):
    """A newer leadership term has started: records of the older one are not written."""


@dataclass(frozen=True, slots=True)
class BoothAccount:
    info: BoothInfo
    credential_hash: str


@dataclass(frozen=True, slots=True)
class StaffAccount:
    info: StaffInfo
    role: StaffRole
    site_id: str | None
    active: bool
    skills: tuple[SkillKey, ...]


@dataclass(frozen=True, slots=True)
class PendingRequest:
    request_id: str
    booth_id: str
    department: str
    language: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OpenSession:
    """A session with no end stored (several nodes: a new leader resumes it)."""

    session_id: str
    request_id: str
    booth_id: str
    staff_id: str
    department: str
    language: str
    accepted_at: datetime
    connected_at: datetime | None


@dataclass(slots=True)
class _Item:
    record: Record | None  # None: a flush barrier
    done: asyncio.Future[None] | None
    epoch: int | None = None  # several nodes: the leadership term the record is of


class SignalingStore:
    """The signaling server's view of the database. Start with :meth:`start`."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_engine(database_url)
        self._sessions = session_factory(self._engine)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        # requests (and their sessions) whose row was refused: later records are dropped
        self._refused = _Refused()
        # Called with the epoch when records of an ended leadership term were dropped.
        self.on_fenced: Callable[[int], None] | None = None

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="signaling-store-writer")

    async def aclose(self) -> None:
        """Write what is queued, stop the writer and release the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self._engine.dispose()

    # ------------------------------------------------------------------ reads

    async def departments(self) -> list[Department]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(DepartmentRow).order_by(DepartmentRow.sort_order, DepartmentRow.code)
            )
            return [Department(code=r.code, name_ja=r.name_ja, name_en=r.name_en) for r in rows]

    async def booths(self) -> list[BoothAccount]:
        async with self._sessions() as s:
            rows = await s.execute(select(Booth, Site).join(Site, Booth.site_id == Site.id))
            return [_booth_account(b, site) for b, site in rows]

    async def booth_account(self, booth_id: str) -> BoothAccount | None:
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(Booth, Site)
                    .join(Site, Booth.site_id == Site.id)
                    .where(Booth.id == booth_id)
                )
            ).first()
            return _booth_account(row[0], row[1]) if row else None

    async def staff_accounts(self) -> list[StaffAccount]:
        async with self._sessions() as s:
            return [_staff_account(r) for r in await s.scalars(select(Staff))]

    async def staff_account(self, staff_id: str) -> StaffAccount | None:
        async with self._sessions() as s:
            row = await s.get(Staff, staff_id)
            return _staff_account(row) if row else None

    async def waiting_requests(self) -> list[PendingRequest]:
        """Requests still waiting (after a restart), oldest first."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(HelpRequest)
                .where(HelpRequest.status == RequestStatus.WAITING.value)
                .order_by(HelpRequest.created_at)
            )
            return [
                PendingRequest(r.id, r.booth_id, r.department, r.language, r.created_at)
                for r in rows
            ]

    async def recent_handle_times(self, per_department: int) -> dict[str, list[float]]:
        """Handle times (accepted → ended, seconds) of the latest sessions of each
        department, oldest first."""
        out: dict[str, list[float]] = defaultdict(list)
        async with self._sessions() as s:
            rows = await s.execute(
                select(CallSession.department, CallSession.accepted_at, CallSession.ended_at)
                .where(CallSession.ended_at.is_not(None))
                .order_by(CallSession.ended_at.desc())
            )
            for department, accepted, ended in rows:
                samples = out[department]
                if len(samples) < per_department and ended is not None:
                    samples.append(max(0.0, (ended - accepted).total_seconds()))
        return {d: list(reversed(v)) for d, v in out.items()}

    async def open_sessions(self) -> list[OpenSession]:
        """Sessions with no end stored, oldest first."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(CallSession)
                .where(CallSession.ended_at.is_(None))
                .order_by(CallSession.accepted_at)
            )
            return [
                OpenSession(
                    r.id,
                    r.request_id,
                    r.booth_id,
                    r.staff_id,
                    r.department,
                    r.language,
                    r.accepted_at,
                    r.connected_at,
                )
                for r in rows
            ]

    async def pending_wrap_ups(self, since: datetime) -> list[tuple[str, str]]:
        """(staff id, session id) of each staff member whose latest session ended at or
        after ``since`` with no wrap-up note stored yet."""
        later = aliased(CallSession)
        async with self._sessions() as s:
            rows = await s.execute(
                select(CallSession.staff_id, CallSession.id)
                .where(
                    CallSession.ended_at >= since,
                    CallSession.note.is_(None),
                    ~exists().where(
                        later.staff_id == CallSession.staff_id,
                        later.accepted_at > CallSession.accepted_at,
                    ),
                )
                .order_by(CallSession.ended_at)
            )
            return [(staff_id, session_id) for staff_id, session_id in rows]

    async def close_interrupted_sessions(self, at: datetime) -> int:
        """Sessions left open by a previous run end with ``server_restart``."""
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(CallSession)
                .where(CallSession.ended_at.is_(None))
                .values(ended_at=at, outcome=EndReason.SERVER_RESTART.value)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    # ------------------------------------------------------------------ writes

    def insert_request(self, record: NewRequest, epoch: int | None = None) -> asyncio.Future[None]:
        """Queue a new help request; the future completes when it is committed, or fails
        with :class:`RequestIdTaken` when the id is already used (:class:`Fenced` when
        ``epoch`` has ended)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(_Item(record, done, epoch))
        return done

    def record(self, record: Record, epoch: int | None = None) -> None:
        """Queue a record; it is committed with the next batch (only while the leadership
        term ``epoch`` lasts, when given)."""
        if self._writer is None or self._closed:
            log.warning("store closed; dropped a %s record", type(record).__name__)
            return
        self._put(_Item(record, None, epoch))

    async def flush(self) -> None:
        """Return once everything queued before the call is committed."""
        if self._writer is None or self._writer.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(None, done))
        await done

    def _put(self, item: _Item) -> None:
        if self._writer is None or self._closed:
            raise EkichikaError("the signaling store is not running")
        self._queue.put_nowait(item)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for epoch, run in _by_epoch(batch):
                await self._write_batch(run, epoch)

    async def _write_batch(self, batch: list[_Item], epoch: int | None = None) -> None:
        items = [i for i in batch if i.record is not None]
        failures: dict[int, BaseException] = {}
        try:
            async with self._engine.begin() as conn:
                await _check_fence(conn, epoch)
                failures = await _apply_all(conn, items, self._refused)
        except Fenced as err:
            log.error("%s; %d records of that term dropped", err, len(items))
            failures = dict.fromkeys(range(len(items)), err)
            if self.on_fenced is not None and epoch is not None:
                self.on_fenced(epoch)
        except Exception:
            log.exception("batch of %d records failed; writing them one by one", len(items))
            failures = {}
            for index, item in enumerate(items):
                try:
                    async with self._engine.begin() as conn:
                        await _check_fence(conn, epoch)
                        error = (await _apply_all(conn, [item], self._refused)).get(0)
                    if error is not None:
                        failures[index] = error
                except Exception as err:
                    log.error("dropped a %s record: %s", type(item.record).__name__, err)
                    failures[index] = err
        for index, item in enumerate(items):
            if item.done is not None and not item.done.done():
                failure = failures.get(index)
                if failure is None:
                    item.done.set_result(None)
                else:
                    item.done.set_exception(failure)
        for item in batch:
            if item.record is None and item.done is not None and not item.done.done():
                item.done.set_result(None)


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


_REQUESTS = _table(HelpRequest)
_LEADER = _table(SignalingLeader)
_SESSIONS = _table(CallSession)
_EVENTS = _table(SessionEvent)

_SET_REQUEST_STATUS = (
    update(_REQUESTS)
    .where(_REQUESTS.c.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), closed_at=bindparam("b_at"))
)
_SET_CONNECTED = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("b_id"), _SESSIONS.c.connected_at.is_(None))
    .values(connected_at=bindparam("b_at"))
)
_SET_CLOSED = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("b_id"))
    .values(ended_at=bindparam("b_at"), outcome=bindparam("b_outcome"))
)
_SET_NOTE = (
    update(_SESSIONS).where(_SESSIONS.c.id == bindparam("b_id")).values(note=bindparam("b_note"))
)


_FENCE = select(_LEADER.c.epoch).where(_LEADER.c.id == 1).with_for_update(read=True)


async def _check_fence(conn: AsyncConnection, epoch: int | None) -> None:
    """Fenced unless the leadership term ``epoch`` (None: no term) is still the newest; the
    share lock keeps a new leader from claiming the term until this transaction ends."""
    if epoch is None:
        return
    newest = (await conn.execute(_FENCE)).scalar()
    if newest != epoch:
        raise Fenced(f"leadership epoch {epoch} has ended (the newest is {newest})")


def _by_epoch(batch: list[_Item]) -> list[tuple[int | None, list[_Item]]]:
    """The batch as runs of records of the same leadership term, in order (a flush barrier
    goes with the run before it)."""
    runs: list[tuple[int | None, list[_Item]]] = []
    for item in batch:
        if runs and (item.record is None or item.epoch == runs[-1][0]):
            runs[-1][1].append(item)
        else:
            runs.append((item.epoch, [item]))
    return runs


@dataclass(slots=True)
class _Refused:
    requests: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)

    def drops(self, rec: Record) -> bool:
        if isinstance(rec, NewRequest):
            return False
        if isinstance(rec, SessionOpened):
            if rec.request_id in self.requests:
                self.sessions.add(rec.session_id)
                return True
            return False
        if isinstance(rec, TimelineEvent | RequestStatusChanged):
            return rec.request_id in self.requests
        return rec.session_id in self.sessions


async def _apply_all(
    conn: AsyncConnection, items: list[_Item], refused: _Refused
) -> dict[int, BaseException]:
    """Write a batch with one statement per kind of record (executemany), in the order
    the records depend on each other: new requests, new sessions, timeline events, then
    the updates. Returns the records that could not be written, by index."""
    failures: dict[int, BaseException] = {}
    new_requests: list[tuple[int, NewRequest]] = []
    for index, item in enumerate(items):
        if isinstance(item.record, NewRequest):
            new_requests.append((index, item.record))

    if new_requests:
        ids = [r.request_id for _, r in new_requests]
        taken = set(
            (await conn.execute(select(_REQUESTS.c.id).where(_REQUESTS.c.id.in_(ids)))).scalars()
        )
        rows = []
        for index, r in new_requests:
            if r.request_id in taken:
                failures[index] = RequestIdTaken(f"request id {r.request_id} is already used")
                refused.requests.add(r.request_id)
                continue
            taken.add(r.request_id)
            rows.append(
                {
                    "id": r.request_id,
                    "booth_id": r.booth_id,
                    "department": r.department,
                    "language": r.language,
                    "status": RequestStatus.WAITING.value,
                    "created_at": r.created_at,
                }
            )
        if rows:
            await conn.execute(insert(_REQUESTS), rows)

    by_kind: dict[type, list[tuple[int, Record]]] = defaultdict(list)
    for index, item in enumerate(items):
        rec = item.record
        if rec is not None and not isinstance(rec, NewRequest) and not refused.drops(rec):
            by_kind[type(rec)].append((index, rec))

    opened = [r for _, r in by_kind[SessionOpened] if isinstance(r, SessionOpened)]
    if opened:
        await conn.execute(
            insert(_SESSIONS),
            [
                {
                    "id": r.session_id,
                    "request_id": r.request_id,
                    "booth_id": r.booth_id,
                    "staff_id": r.staff_id,
                    "department": r.department,
                    "language": r.language,
                    "accepted_at": r.accepted_at,
                }
                for r in opened
            ],
        )
    events = [r for _, r in by_kind[TimelineEvent] if isinstance(r, TimelineEvent)]
    if events:
        await conn.execute(
            insert(_EVENTS),
            [
                {
                    "request_id": r.request_id,
                    "session_id": r.session_id,
                    "kind": r.kind.value,
                    "at": r.at,
                    "staff_id": r.staff_id,
                    "detail": r.detail[:200] if r.detail else None,
                }
                for r in events
            ],
        )
    statuses = [r for _, r in by_kind[RequestStatusChanged] if isinstance(r, RequestStatusChanged)]
    if statuses:
        await conn.execute(
            _SET_REQUEST_STATUS,
            [{"b_id": r.request_id, "b_status": r.status.value, "b_at": r.at} for r in statuses],
        )
    connected = [r for _, r in by_kind[SessionConnected] if isinstance(r, SessionConnected)]
    if connected:
        await conn.execute(
            _SET_CONNECTED, [{"b_id": r.session_id, "b_at": r.at} for r in connected]
        )
    closed = [r for _, r in by_kind[SessionClosed] if isinstance(r, SessionClosed)]
    if closed:
        await conn.execute(
            _SET_CLOSED,
            [{"b_id": r.session_id, "b_at": r.at, "b_outcome": r.outcome.value} for r in closed],
        )
    notes = [r for _, r in by_kind[SessionNoteSaved] if isinstance(r, SessionNoteSaved)]
    if notes:
        await conn.execute(_SET_NOTE, [{"b_id": r.session_id, "b_note": r.note} for r in notes])
    return failures


def _booth_account(booth: Booth, site: Site) -> BoothAccount:
    return BoothAccount(
        BoothInfo(booth_id=booth.id, name=booth.name, site_id=site.id, site_name=site.name_ja),
        booth.credential_hash,
    )


def _staff_account(row: Staff) -> StaffAccount:
    return StaffAccount(
        info=StaffInfo(staff_id=row.id, display_name=row.display_name),
        role=StaffRole(row.role),
        site_id=row.site_id,
        active=row.active,
        skills=tuple(sorted((k.department, k.language) for k in row.skills)),
    )
