"""The matching core: presence, queue, offers and sessions, without any I/O.

:class:`Dispatcher` holds every booth (online or not), every staff member (state, skills,
idle order, missed offers in a row, current offer), the waiting requests (oldest first) and
the sessions. Each event is a method that takes the current time ``now`` (seconds since the
epoch) and returns a list of :data:`Action` values: a message for a booth or a staff member,
or a record to persist. The caller (``signaling.server``) performs them in order.

Time only moves when the caller says so: :meth:`Dispatcher.tick` expires ring timeouts and
reconnect grace periods that are due at ``now``, and :meth:`Dispatcher.next_deadline` says
when the next one is due, so the server needs a single timer.

Events that are valid messages but arrive at the wrong moment raise
:class:`~shared.errors.ProtocolError` (``out_of_order``, ``not_in_session`` …) *before*
changing any state, so a rejected event never leaves the core half-updated.

Queue fan-out (QueueStatus, QueueSnapshot, BoothsSnapshot) is not sent on every change:
changes mark the affected queues dirty and :meth:`Dispatcher.collect_pushes` returns the
messages whose content changed since they were last sent. The server calls it on a short
interval so that a busy queue costs one push per interval, not one per event.
"""

from __future__ import annotations

import heapq
import itertools
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from shared.config import SignalingConfig
from shared.errors import ProtocolError
from shared.protocol import (
    BoothInfo,
    BoothsSnapshot,
    BoothState,
    BoothStatus,
    BoothWelcome,
    CallStarted,
    Department,
    DeviceReport,
    EndReason,
    ErrorCode,
    IceServer,
    Offer,
    OfferWithdrawn,
    QueueEntry,
    QueueSnapshot,
    QueueStatus,
    Relay,
    RequestClosed,
    ServerToBooth,
    ServerToStaff,
    SessionEnded,
    Skill,
    StaffInfo,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WithdrawReason,
)

SkillKey = tuple[str, str]  # (department, language)


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchingRules:
    """The timing and queue rules of the core (taken from :class:`SignalingConfig`)."""

    ring_timeout_s: float = 20.0
    max_missed_offers: int = 3
    decline_cooldown_s: float = 30.0
    booth_reconnect_grace_s: float = 60.0
    staff_reconnect_grace_s: float = 20.0
    wait_estimate_samples: int = 20
    wait_estimate_min_samples: int = 3
    heartbeat_s: float = 10.0
    queue_snapshot_max_entries: int = 100
    # Record signaling_lost / signaling_resumed in the timeline when a party of an open
    # session loses its connection and gets it back (several nodes: a node or the leader
    # died while media went on).
    record_gaps: bool = False

    @classmethod
    def from_config(cls, config: SignalingConfig) -> MatchingRules:
        return cls(
            ring_timeout_s=config.ring_timeout_s,
            max_missed_offers=config.max_missed_offers,
            decline_cooldown_s=config.decline_cooldown_s,
            booth_reconnect_grace_s=config.booth_reconnect_grace_s,
            staff_reconnect_grace_s=config.staff_reconnect_grace_s,
            wait_estimate_samples=config.wait_estimate_samples,
            wait_estimate_min_samples=config.wait_estimate_min_samples,
            heartbeat_s=config.heartbeat_s,
            queue_snapshot_max_entries=config.queue_snapshot_max_entries,
            record_gaps=bool(config.redis_url),
        )


# --------------------------------------------------------------------------------------
# Records (what the store persists) and actions (what the caller performs)
# --------------------------------------------------------------------------------------


class EventKind(StrEnum):
    """Kinds of rows in ``session_events``: the timeline of one request."""

    REQUESTED = "requested"
    OFFERED = "offered"
    DECLINED = "declined"
    MISSED = "missed"
    ACCEPTED = "accepted"
    CONNECTED = "connected"
    ENDED = "ended"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    # A party of an open session lost its signaling connection (detail: booth or staff)
    # and got it back: the gap in the timeline. Media between the peers may go on.
    SIGNALING_LOST = "signaling_lost"
    SIGNALING_RESUMED = "signaling_resumed"


class RequestStatus(StrEnum):
    WAITING = "waiting"
    MATCHED = "matched"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A help request entering the queue. The server stores it durably before the core
    sees it, so :meth:`Dispatcher.request_help` does not emit it."""

    request_id: str
    booth_id: str
    department: str
    language: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RequestStatusChanged:
    request_id: str
    status: RequestStatus
    at: datetime


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    request_id: str
    kind: EventKind
    at: datetime
    session_id: str | None = None
    staff_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    request_id: str
    booth_id: str
    staff_id: str
    department: str
    language: str
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class SessionConnected:
    session_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionClosed:
    session_id: str
    at: datetime
    outcome: EndReason


@dataclass(frozen=True, slots=True)
class SessionNoteSaved:
    session_id: str
    note: str


Record = (
    NewRequest
    | RequestStatusChanged
    | TimelineEvent
    | SessionOpened
    | SessionConnected
    | SessionClosed
    | SessionNoteSaved
)


@dataclass(frozen=True, slots=True)
class ToBooth:
    booth_id: str
    message: ServerToBooth


@dataclass(frozen=True, slots=True)
class ToStaff:
    staff_id: str
    message: ServerToStaff


@dataclass(frozen=True, slots=True)
class Persist:
    record: Record


Action = ToBooth | ToStaff | Persist


class Side(StrEnum):
    """Which end of a session a peer is."""

    BOOTH = "booth"
    STAFF = "staff"


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class OfferState:
    offer_id: str
    request_id: str
    staff_id: str
    deadline: float


@dataclass(slots=True)
class BoothEntry:
    info: BoothInfo
    online: bool = False
    offline_since: float | None = None
    state: BoothState = BoothState.OFFLINE
    state_since: float = 0.0
    request_id: str | None = None
    session_id: str | None = None
    devices: tuple[DeviceReport, ...] = ()  # the last device report, kept while offline


FAILED_DEVICE_STATES = frozenset({"paper_out", "offline", "error"})


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """Devices of one booth that failed or recovered with its latest report (for the log)."""

    failed: tuple[DeviceReport, ...] = ()
    recovered: tuple[DeviceReport, ...] = ()


@dataclass(slots=True)
class StaffMember:
    info: StaffInfo
    role: StaffRole
    site_id: str | None
    skills: frozenset[SkillKey]
    state: StaffState = StaffState.OFFLINE
    connected: bool = False
    idle_order: int = 0  # smaller = available longer
    available_since: float = 0.0
    missed_in_row: int = 0
    offer: OfferState | None = None
    session_id: str | None = None  # in call or wrap-up
    lost_since: float | None = None  # connection lost during a call
    last_snapshot: tuple[object, ...] | None = None

    @property
    def staff_id(self) -> str:
        return self.info.staff_id

    @property
    def takes_calls(self) -> bool:
        return self.role is StaffRole.HQ

    @property
    def signed_in(self) -> bool:
        """Counted in ``staff_online``: connected and not away."""
        return self.connected and self.state not in (StaffState.AWAY, StaffState.OFFLINE)


@dataclass(slots=True)
class WaitingRequest:
    request_id: str
    booth_id: str
    department: str
    language: str
    requested_at: datetime
    seq: int  # arrival order; smaller = older
    offer: OfferState | None = None
    cooldown: dict[str, float] = field(default_factory=dict)  # staff id -> not before
    last_status: tuple[int, int | None, int, bool] | None = None
    entry: QueueEntry | None = None  # cached snapshot entry

    @property
    def key(self) -> SkillKey:
        return (self.department, self.language)


@dataclass(slots=True)
class SessionState:
    session_id: str
    request_id: str
    booth_id: str
    staff_id: str
    department: str
    language: str
    accepted_at: float
    connected_at: float | None = None
    ended_reason: EndReason | None = None

    @property
    def active(self) -> bool:
        return self.ended_reason is None


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _default_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _out_of_order(message: str, ref: str) -> ProtocolError:
    return ProtocolError(ErrorCode.OUT_OF_ORDER, message, ref=ref)


def _not_in_session(ref: str) -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_IN_SESSION, "you are not in that session", ref=ref)


# --------------------------------------------------------------------------------------
# The dispatcher
# --------------------------------------------------------------------------------------


class Dispatcher:
    """Presence, queue, matching and sessions. Synchronous; every method is one event."""

    def __init__(
        self,
        rules: MatchingRules,
        *,
        departments: Iterable[Department] = (),
        languages: Iterable[str] = ("ja", "en"),
        ice_servers: Callable[[str], list[IceServer]] | None = None,
        new_id: Callable[[str], str] = _default_id,
    ) -> None:
        self.rules = rules
        self.departments: dict[str, Department] = {d.code: d for d in departments}
        self.languages: list[str] = list(languages)
        self._ice_servers = ice_servers or (lambda _user: [])
        self._new_id = new_id
        self.booths: dict[str, BoothEntry] = {}
        self.staff: dict[str, StaffMember] = {}
        self.waiting: dict[str, WaitingRequest] = {}  # insertion order = oldest first
        self.sessions: dict[str, SessionState] = {}  # active or awaiting wrap-up
        self._by_key: dict[SkillKey, list[WaitingRequest]] = {}
        self._available: set[str] = set()
        self._handle_times: dict[str, deque[float]] = {}
        self._seq = itertools.count(1)
        self._idle_seq = itertools.count(1)
        self._deadlines: list[float] = []
        self._dirty_keys: set[SkillKey] = set()
        self._dirty_sites: set[str] = set()

    # ---------------------------------------------------------------- directory

    def add_department(self, department: Department) -> None:
        self.departments[department.code] = department

    def upsert_booth(self, info: BoothInfo) -> None:
        booth = self.booths.get(info.booth_id)
        if booth is None:
            self.booths[info.booth_id] = BoothEntry(info=info)
        else:
            booth.info = info
        self._dirty_sites.add(info.site_id)

    def upsert_staff(
        self,
        info: StaffInfo,
        role: StaffRole,
        site_id: str | None,
        skills: Iterable[SkillKey],
    ) -> None:
        """Add a staff member or refresh their account data (role, site, skills).

        Skills only change while the member holds no offer, so a ringing offer never
        loses its skill."""
        member = self.staff.get(info.staff_id)
        new_skills = frozenset(skills)
        if member is None:
            self.staff[info.staff_id] = StaffMember(
                info=info, role=role, site_id=site_id, skills=new_skills
            )
            return
        member.info, member.site_id = info, site_id
        if member.offer is None:
            self._dirty_keys |= member.skills | new_skills
            member.role, member.skills = role, new_skills
            member.last_snapshot = None
            if not member.takes_calls:
                self._available.discard(member.staff_id)

    def add_handle_times(self, department: str, seconds: Iterable[float]) -> None:
        """Seed the wait estimate with handle times of past sessions (oldest first)."""
        samples = self._samples(department)
        samples.extend(seconds)

    def restore_request(
        self, request_id: str, booth_id: str, department: str, language: str,
        requested_at: datetime, now: float,
    ) -> None:  # fmt: skip
        """Re-queue a request that was waiting when the server stopped. Its booth counts as
        offline since ``now`` and has ``booth_reconnect_grace_s`` to come back."""
        booth = self.booths[booth_id]
        if booth.request_id is not None or request_id in self.waiting:
            return
        req = WaitingRequest(
            request_id, booth_id, department, language, requested_at, next(self._seq)
        )
        self._enqueue(req)
        booth.request_id = request_id
        booth.offline_since = now
        self._push_deadline(now + self.rules.booth_reconnect_grace_s)

    def restore_session(
        self, session_id: str, request_id: str, booth_id: str, staff_id: str,
        department: str, language: str, accepted_at: float, connected_at: float | None,
        now: float,
    ) -> list[Action]:  # fmt: skip
        """Resume a session another leader left open (several nodes: a take-over). Both
        parties count as lost since ``now`` (the gap is recorded) and have their grace
        periods to be connected again; media between them does not depend on this."""
        booth = self.booths.get(booth_id)
        member = self.staff.get(staff_id)
        out: list[Action] = []
        if (
            booth is None
            or member is None
            or session_id in self.sessions
            or booth.session_id is not None
            or member.session_id is not None
        ):
            return out
        self.sessions[session_id] = SessionState(
            session_id, request_id, booth_id, staff_id, department, language, accepted_at,
            connected_at,
        )  # fmt: skip
        booth.session_id = session_id
        booth.online = False
        booth.offline_since = now
        self._set_booth_state(booth, BoothState.OFFLINE, now)
        member.session_id = session_id
        member.connected = False
        member.state = StaffState.IN_CALL
        member.lost_since = now
        self._available.discard(staff_id)
        self._gap(session_id, EventKind.SIGNALING_LOST, Side.BOOTH, now, out)
        self._gap(session_id, EventKind.SIGNALING_LOST, Side.STAFF, now, out)
        self._push_deadline(now + self.rules.booth_reconnect_grace_s)
        self._push_deadline(now + self.rules.staff_reconnect_grace_s)
        return out

    def restore_wrap_up(self, staff_id: str, session_id: str) -> bool:
        """The staff member had not finished the wrap-up of their last session when the
        server stopped or the leader changed: they are in it again (wrap_up_done ends it)."""
        member = self.staff.get(staff_id)
        if member is None or member.session_id is not None or member.connected:
            return False
        member.state = StaffState.WRAP_UP
        member.session_id = session_id
        self._available.discard(staff_id)
        return True

    # ---------------------------------------------------------------- queries

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing pending)."""
        return self._deadlines[0] if self._deadlines else None

    def waiting_for(self, booth_id: str) -> str | None:
        booth = self.booths.get(booth_id)
        return booth.request_id if booth else None

    def estimate(self, key: SkillKey, position: int) -> int | None:
        online = self._staff_online(key)
        return self._estimate(key[0], position, online)

    def mean_handle_time(self, department: str) -> float | None:
        samples = self._handle_times.get(department)
        if not samples or len(samples) < self.rules.wait_estimate_min_samples:
            return None
        return sum(samples) / len(samples)

    # ---------------------------------------------------------------- booth events

    def booth_connected(
        self, booth_id: str, now: float, *, lost_at: float | None = None
    ) -> list[Action]:
        """The booth is connected (again). ``lost_at``: its previous connection, still
        counted as online, was lost then (it is replaced by this one)."""
        booth = self.booths[booth_id]
        out: list[Action] = []
        if booth.session_id is not None:
            if booth.online and lost_at is not None:
                self._gap(booth.session_id, EventKind.SIGNALING_LOST, Side.BOOTH, lost_at, out)
            if (not booth.online and booth.offline_since is not None) or lost_at is not None:
                self._gap(booth.session_id, EventKind.SIGNALING_RESUMED, Side.BOOTH, now, out)
        booth.online = True
        booth.offline_since = None
        if booth.session_id is not None:
            self._set_booth_state(booth, BoothState.IN_CALL, now)
        elif booth.request_id is not None:
            self._set_booth_state(booth, BoothState.WAITING, now)
        else:
            self._set_booth_state(booth, BoothState.IDLE, now)
        out.append(
            ToBooth(
                booth_id,
                BoothWelcome(
                    booth=booth.info,
                    departments=list(self.departments.values()),
                    languages=self.languages,
                    heartbeat_s=self.rules.heartbeat_s,
                    pending_request_id=booth.request_id,
                    session_id=booth.session_id,
                ),
            )
        )
        out.extend(self._started_again(booth.session_id, Side.BOOTH))
        if booth.request_id is not None:
            req = self.waiting[booth.request_id]
            req.last_status = None
            out.extend(self._queue_status_now(req))
        self._match(now, out)
        return out

    def booth_disconnected(self, booth_id: str, now: float) -> list[Action]:
        booth = self.booths[booth_id]
        out: list[Action] = []
        if not booth.online:
            return out
        booth.online = False
        booth.offline_since = now
        self._set_booth_state(booth, BoothState.OFFLINE, now)
        if booth.request_id is not None:
            req = self.waiting[booth.request_id]
            if req.offer is not None:
                member = self._withdraw(req, WithdrawReason.BOOTH_LOST, now, out, tell_staff=True)
                self._back_to_pool(member, WithdrawReason.BOOTH_LOST, now, out)
            self._push_deadline(now + self.rules.booth_reconnect_grace_s)
        if booth.session_id is not None:
            self._gap(booth.session_id, EventKind.SIGNALING_LOST, Side.BOOTH, now, out)
            self._push_deadline(now + self.rules.booth_reconnect_grace_s)
        self._match(now, out)
        return out

    def report_devices(self, booth_id: str, devices: Iterable[DeviceReport]) -> DeviceChanges:
        """Store the booth's device report (replacing the last one); the branch board of
        its site is pushed with the next fan-out when anything changed."""
        booth = self.booths[booth_id]
        new = tuple(devices)
        if new == booth.devices:
            return DeviceChanges()
        old_failed = {(d.kind, d.name) for d in booth.devices if d.state in FAILED_DEVICE_STATES}
        failed = tuple(
            d for d in new if d.state in FAILED_DEVICE_STATES and (d.kind, d.name) not in old_failed
        )
        recovered = tuple(
            d for d in new if d.state not in FAILED_DEVICE_STATES and (d.kind, d.name) in old_failed
        )
        booth.devices = new
        self._dirty_sites.add(booth.info.site_id)
        return DeviceChanges(failed, recovered)

    def check_request(self, booth_id: str, request_id: str, department: str, language: str) -> bool:
        """Validate a RequestHelp without changing state. True: the booth already has this
        very request waiting (idempotent re-send). Raises ProtocolError when refused."""
        booth = self.booths[booth_id]
        if booth.session_id is not None:
            raise _out_of_order("the booth is in a call", "request_help")
        if booth.request_id is not None:
            if booth.request_id == request_id:
                return True
            raise _out_of_order("the booth already has a waiting request", "request_help")
        if request_id in self.waiting:
            raise _out_of_order("request id already in use", "request_help")
        if department not in self.departments:
            raise ProtocolError(
                ErrorCode.UNKNOWN_DEPARTMENT, "unknown department", ref="request_help"
            )
        if language not in self.languages:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "language is not offered", ref="request_help"
            )
        return False

    def new_request_record(
        self, booth_id: str, request_id: str, department: str, language: str, now: float
    ) -> NewRequest:
        return NewRequest(request_id, booth_id, department, language, utc(now))

    def request_help(
        self, booth_id: str, request_id: str, department: str, language: str, now: float
    ) -> list[Action]:
        """A booth asks for a remote counter (already stored durably by the caller)."""
        duplicate = self.check_request(booth_id, request_id, department, language)
        booth = self.booths[booth_id]
        out: list[Action] = []
        if duplicate:
            req = self.waiting[request_id]
            req.last_status = None
            out.extend(self._queue_status_now(req))
            return out
        req = WaitingRequest(request_id, booth_id, department, language, utc(now), next(self._seq))
        self._enqueue(req)
        booth.request_id = request_id
        self._set_booth_state(booth, BoothState.WAITING, now)
        out.append(Persist(TimelineEvent(request_id, EventKind.REQUESTED, utc(now))))
        out.extend(self._queue_status_now(req))
        self._match(now, out)
        return out

    def cancel_request(self, booth_id: str, request_id: str, now: float) -> list[Action]:
        booth = self.booths[booth_id]
        if booth.request_id != request_id:
            raise _out_of_order("no such waiting request", "cancel_request")
        req = self.waiting[request_id]
        out: list[Action] = []
        if req.offer is not None:
            member = self._withdraw(req, WithdrawReason.CANCELLED, now, out, tell_staff=True)
            self._back_to_pool(member, WithdrawReason.CANCELLED, now, out)
        self._close_request(req, RequestStatus.CANCELLED, now, out)
        out.append(Persist(TimelineEvent(request_id, EventKind.CANCELLED, utc(now))))
        out.append(ToBooth(booth_id, RequestClosed(request_id=request_id, reason="cancelled")))
        self._set_booth_state(booth, BoothState.IDLE if booth.online else BoothState.OFFLINE, now)
        self._match(now, out)
        return out

    # ---------------------------------------------------------------- staff events

    def staff_connected(
        self,
        staff_id: str,
        now: float,
        *,
        lost_at: float | None = None,
        last_state: StaffState | None = None,
    ) -> list[Action]:
        """The staff member is connected (again). In a call they are back in it; else
        they are away, unless ``last_state`` (the state their connection last had, when
        another node or leader kept it) says they were taking calls. ``lost_at``: their
        previous connection, still counted as connected, was lost then."""
        member = self.staff[staff_id]
        out: list[Action] = []
        if member.state is StaffState.IN_CALL and member.session_id is not None:
            if member.connected and lost_at is not None:
                self._gap(member.session_id, EventKind.SIGNALING_LOST, Side.STAFF, lost_at, out)
            if member.lost_since is not None or lost_at is not None:
                self._gap(member.session_id, EventKind.SIGNALING_RESUMED, Side.STAFF, now, out)
        member.connected = True
        member.last_snapshot = None
        self._dirty_keys |= member.skills
        if member.state is StaffState.IN_CALL:
            member.lost_since = None
        elif member.state is not StaffState.WRAP_UP:
            if member.offer is not None:
                req = self.waiting[member.offer.request_id]
                self._withdraw(
                    req, WithdrawReason.TIMEOUT, now, out, tell_staff=False, detail="reconnected"
                )
            if last_state in (StaffState.AVAILABLE, StaffState.RINGING) and member.takes_calls:
                self._set_staff_state(member, StaffState.AVAILABLE, now, out, announce=False)
            else:
                self._set_staff_state(member, StaffState.AWAY, now, out, announce=False)
        out.append(
            ToStaff(
                staff_id,
                StaffWelcome(
                    staff=member.info,
                    role=member.role,
                    site_id=member.site_id,
                    skills=[
                        Skill(department=d, language=lang) for d, lang in sorted(member.skills)
                    ],
                    departments=list(self.departments.values()),
                    state=member.state,
                    heartbeat_s=self.rules.heartbeat_s,
                    session_id=member.session_id,
                ),
            )
        )
        if member.state is StaffState.IN_CALL:
            out.extend(self._started_again(member.session_id, Side.STAFF))
        snapshot = self._snapshot_for(member, {})
        if snapshot is not None:
            out.append(ToStaff(staff_id, snapshot))
        self._match(now, out)
        return out

    def staff_disconnected(self, staff_id: str, now: float) -> list[Action]:
        member = self.staff[staff_id]
        out: list[Action] = []
        if not member.connected:
            return out
        member.connected = False
        self._dirty_keys |= member.skills
        self._available.discard(staff_id)
        if member.state is StaffState.IN_CALL:
            member.lost_since = now
            if member.session_id is not None:
                self._gap(member.session_id, EventKind.SIGNALING_LOST, Side.STAFF, now, out)
            self._push_deadline(now + self.rules.staff_reconnect_grace_s)
        elif member.state is not StaffState.WRAP_UP:
            if member.offer is not None:
                req = self.waiting[member.offer.request_id]
                self._withdraw(
                    req, WithdrawReason.TIMEOUT, now, out, tell_staff=False, detail="disconnected"
                )
            self._set_staff_state(member, StaffState.OFFLINE, now, out, announce=False)
        self._match(now, out)
        return out

    def set_state(self, staff_id: str, state: StaffState, now: float) -> list[Action]:
        """The staff member chooses available or away (受付開始 / 離席)."""
        member = self.staff[staff_id]
        if state not in (StaffState.AVAILABLE, StaffState.AWAY):
            raise _out_of_order("only available or away can be chosen", "set_state")
        if member.state in (StaffState.IN_CALL, StaffState.WRAP_UP):
            raise _out_of_order(f"cannot change state during {member.state.value}", "set_state")
        if state is StaffState.AVAILABLE and not member.takes_calls:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "this account does not take calls", ref="set_state"
            )
        out: list[Action] = []
        if state is StaffState.AVAILABLE:
            if member.state is StaffState.AWAY:
                self._set_staff_state(member, StaffState.AVAILABLE, now, out)
            else:  # already available or ringing: confirm the current state
                out.append(ToStaff(staff_id, StaffStateChanged(state=member.state)))
        else:
            if member.offer is not None:
                req = self.waiting[member.offer.request_id]
                self._withdraw(req, WithdrawReason.DECLINED, now, out, tell_staff=True)
            self._set_staff_state(member, StaffState.AWAY, now, out, force_announce=True)
        self._match(now, out)
        return out

    def accept(self, staff_id: str, offer_id: str, now: float) -> list[Action]:
        member = self.staff[staff_id]
        offer = member.offer
        if offer is None or offer.offer_id != offer_id:
            raise _out_of_order("no such offer is ringing for you", "accept")
        req = self.waiting[offer.request_id]
        booth = self.booths[req.booth_id]
        out: list[Action] = []
        member.offer = None
        req.offer = None
        session = SessionState(
            session_id=self._new_id("s"),
            request_id=req.request_id,
            booth_id=req.booth_id,
            staff_id=staff_id,
            department=req.department,
            language=req.language,
            accepted_at=now,
        )
        self.sessions[session.session_id] = session
        self._close_request(req, RequestStatus.MATCHED, now, out)
        out.append(
            Persist(
                SessionOpened(
                    session.session_id,
                    req.request_id,
                    req.booth_id,
                    staff_id,
                    req.department,
                    req.language,
                    utc(now),
                )
            )
        )
        out.append(
            Persist(
                TimelineEvent(
                    req.request_id,
                    EventKind.ACCEPTED,
                    utc(now),
                    session_id=session.session_id,
                    staff_id=staff_id,
                )
            )
        )
        member.missed_in_row = 0
        member.session_id = session.session_id
        booth.session_id = session.session_id
        self._set_booth_state(booth, BoothState.IN_CALL, now)
        self._set_staff_state(member, StaffState.IN_CALL, now, out)
        ice = self._ice_servers(session.session_id)
        out.append(ToBooth(booth.info.booth_id, self._call_started(session, Side.BOOTH, ice)))
        out.append(ToStaff(staff_id, self._call_started(session, Side.STAFF, ice)))
        self._match(now, out)
        return out

    def _call_started(
        self, session: SessionState, side: Side, ice: list[IceServer] | None = None
    ) -> CallStarted:
        """The ``call_started`` of ``session`` for one side (the booth offers)."""
        return CallStarted(
            session_id=session.session_id,
            request_id=session.request_id,
            role="offerer" if side is Side.BOOTH else "answerer",
            booth=self.booths[session.booth_id].info,
            staff=self.staff[session.staff_id].info,
            department=session.department,
            language=session.language,
            ice_servers=self._ice_servers(session.session_id) if ice is None else ice,
        )

    def _started_again(self, session_id: str | None, side: Side) -> list[Action]:
        """After a welcome: ``call_started`` once more while the session's media has never
        connected. The party may not have heard of the session at all (a leader that
        stored a match died before it told anyone), or its offer or answer may have been
        lost with its connection; a party that knows the session goes on with it."""
        session = self.sessions.get(session_id) if session_id is not None else None
        if session is None or not session.active or session.connected_at is not None:
            return []
        started = self._call_started(session, side)
        if side is Side.BOOTH:
            return [ToBooth(session.booth_id, started)]
        return [ToStaff(session.staff_id, started)]

    def decline(self, staff_id: str, offer_id: str, now: float) -> list[Action]:
        member = self.staff[staff_id]
        offer = member.offer
        if offer is None or offer.offer_id != offer_id:
            raise _out_of_order("no such offer is ringing for you", "decline")
        out: list[Action] = []
        req = self.waiting[offer.request_id]
        self._withdraw(req, WithdrawReason.DECLINED, now, out, tell_staff=True)
        self._back_to_pool(member, WithdrawReason.DECLINED, now, out)
        self._match(now, out)
        return out

    def wrap_up_done(self, staff_id: str, session_id: str, note: str, now: float) -> list[Action]:
        member = self.staff[staff_id]
        if member.state is not StaffState.WRAP_UP or member.session_id != session_id:
            raise _out_of_order("not in wrap-up of that session", "wrap_up_done")
        out: list[Action] = [Persist(SessionNoteSaved(session_id, note))]
        self.sessions.pop(session_id, None)
        member.session_id = None
        self._set_staff_state(member, StaffState.AVAILABLE, now, out)
        self._match(now, out)
        return out

    # ---------------------------------------------------------------- session events

    def _session_of(self, side: Side, peer_id: str, session_id: str, ref: str) -> SessionState:
        session = self.sessions.get(session_id)
        if session is None or not session.active:
            raise _not_in_session(ref)
        owner = session.booth_id if side is Side.BOOTH else session.staff_id
        if owner != peer_id:
            raise _not_in_session(ref)
        return session

    def relay(self, side: Side, peer_id: str, message: Relay) -> list[Action]:
        """Forward a relay to the other peer of the sender's session, and only there."""
        session = self._session_of(side, peer_id, message.session_id, "relay")
        if side is Side.BOOTH:
            return [ToStaff(session.staff_id, message)]
        return [ToBooth(session.booth_id, message)]

    def hang_up(self, side: Side, peer_id: str, session_id: str, now: float) -> list[Action]:
        session = self._session_of(side, peer_id, session_id, "hang_up")
        out: list[Action] = []
        reason = EndReason.HANGUP_BOOTH if side is Side.BOOTH else EndReason.HANGUP_STAFF
        self._end_session(session, reason, now, out)
        self._match(now, out)
        return out

    def media_connected(
        self, side: Side, peer_id: str, session_id: str, now: float
    ) -> list[Action]:
        session = self._session_of(side, peer_id, session_id, "media_connected")
        if session.connected_at is not None:
            return []
        session.connected_at = now
        return [
            Persist(SessionConnected(session_id, utc(now))),
            Persist(
                TimelineEvent(
                    session.request_id,
                    EventKind.CONNECTED,
                    utc(now),
                    session_id=session_id,
                    staff_id=session.staff_id,
                    detail=side.value,
                )
            ),
        ]

    def media_failed(self, side: Side, peer_id: str, session_id: str, now: float) -> list[Action]:
        session = self._session_of(side, peer_id, session_id, "media_failed")
        out: list[Action] = []
        self._end_session(session, EndReason.MEDIA_FAILED, now, out)
        self._match(now, out)
        return out

    # ---------------------------------------------------------------- time

    def tick(self, now: float) -> list[Action]:
        """Expire ring timeouts and grace periods due at ``now``; re-match."""
        out: list[Action] = []
        while self._deadlines and self._deadlines[0] <= now:
            heapq.heappop(self._deadlines)
        rules = self.rules
        for member in list(self.staff.values()):
            offer = member.offer
            if offer is not None and offer.deadline <= now:
                req = self.waiting[offer.request_id]
                self._withdraw(req, WithdrawReason.TIMEOUT, now, out, tell_staff=True)
                self._back_to_pool(member, WithdrawReason.TIMEOUT, now, out)
            if (
                member.lost_since is not None
                and member.state is StaffState.IN_CALL
                and now - member.lost_since >= rules.staff_reconnect_grace_s
                and member.session_id is not None
            ):
                self._end_session(self.sessions[member.session_id], EndReason.STAFF_LOST, now, out)
        for booth in self.booths.values():
            if booth.online or booth.offline_since is None:
                continue
            if now - booth.offline_since < rules.booth_reconnect_grace_s:
                continue
            if booth.request_id is not None:
                req = self.waiting[booth.request_id]
                if req.offer is not None:  # pragma: no cover - offline booths are not offered
                    member = self._withdraw(
                        req, WithdrawReason.BOOTH_LOST, now, out, tell_staff=True
                    )
                    self._back_to_pool(member, WithdrawReason.BOOTH_LOST, now, out)
                self._close_request(req, RequestStatus.ABANDONED, now, out)
                out.append(Persist(TimelineEvent(req.request_id, EventKind.ABANDONED, utc(now))))
            if booth.session_id is not None:
                self._end_session(self.sessions[booth.session_id], EndReason.BOOTH_LOST, now, out)
            booth.offline_since = None
        self._match(now, out)
        return out

    # ---------------------------------------------------------------- fan-out

    def collect_pushes(self) -> list[Action]:
        """QueueStatus, QueueSnapshot and BoothsSnapshot messages whose content changed
        since they were last sent (call on a short interval)."""
        out: list[Action] = []
        if self._dirty_keys:
            keys, self._dirty_keys = self._dirty_keys, set()
            for key in keys:
                group = self._by_key.get(key, [])
                online = self._staff_online(key)
                for position, req in enumerate(group, 1):
                    if self.booths[req.booth_id].online:
                        out.extend(self._queue_status(req, position, online))
            cache: dict[frozenset[SkillKey], tuple[QueueSnapshot, tuple[object, ...]]] = {}
            for member in self.staff.values():
                if member.connected and member.takes_calls and not member.skills.isdisjoint(keys):
                    snap = self._snapshot_for(member, cache)
                    if snap is not None:
                        out.append(ToStaff(member.staff_id, snap))
        if self._dirty_sites:
            sites, self._dirty_sites = self._dirty_sites, set()
            site_cache: dict[str | None, BoothsSnapshot] = {}
            for member in self.staff.values():
                if not member.connected or member.takes_calls:
                    continue
                if member.role is StaffRole.BRANCH and member.site_id not in sites:
                    continue
                snap_b = self._booths_snapshot_for(member, site_cache)
                if snap_b is not None:
                    out.append(ToStaff(member.staff_id, snap_b))
        return out

    # ---------------------------------------------------------------- internals

    def _push_deadline(self, at: float) -> None:
        heapq.heappush(self._deadlines, at)

    def _samples(self, department: str) -> deque[float]:
        samples = self._handle_times.get(department)
        if samples is None:
            samples = deque(maxlen=max(1, self.rules.wait_estimate_samples))
            self._handle_times[department] = samples
        return samples

    def _enqueue(self, req: WaitingRequest) -> None:
        self.waiting[req.request_id] = req
        self._by_key.setdefault(req.key, []).append(req)
        self._dirty_keys.add(req.key)

    def _close_request(
        self, req: WaitingRequest, status: RequestStatus, now: float, out: list[Action]
    ) -> None:
        del self.waiting[req.request_id]
        group = self._by_key[req.key]
        group.remove(req)
        if not group:
            del self._by_key[req.key]
        self._dirty_keys.add(req.key)
        booth = self.booths[req.booth_id]
        if booth.request_id == req.request_id:
            booth.request_id = None
        out.append(Persist(RequestStatusChanged(req.request_id, status, utc(now))))

    def _staff_online(self, key: SkillKey) -> int:
        return sum(
            1 for m in self.staff.values() if m.takes_calls and m.signed_in and key in m.skills
        )

    def _estimate(self, department: str, position: int, online: int) -> int | None:
        mean = self.mean_handle_time(department)
        if mean is None or online == 0:
            return None
        return round(math.ceil(position / max(1, online)) * mean)

    def _queue_status(self, req: WaitingRequest, position: int, online: int) -> list[Action]:
        estimate = self._estimate(req.department, position, online)
        status = (position, estimate, online, req.offer is not None)
        if status == req.last_status:
            return []
        req.last_status = status
        return [
            ToBooth(
                req.booth_id,
                QueueStatus(
                    request_id=req.request_id,
                    position=position,
                    estimated_wait_s=estimate,
                    staff_online=online,
                    ringing=req.offer is not None,
                ),
            )
        ]

    def _queue_status_now(self, req: WaitingRequest) -> list[Action]:
        group = self._by_key[req.key]
        return self._queue_status(req, group.index(req) + 1, self._staff_online(req.key))

    def _queue_entry(self, req: WaitingRequest) -> QueueEntry:
        offered_to = req.offer.staff_id if req.offer else None
        if req.entry is None or req.entry.offered_to != offered_to:
            req.entry = QueueEntry(
                request_id=req.request_id,
                booth=self.booths[req.booth_id].info,
                department=req.department,
                language=req.language,
                requested_at=req.requested_at,
                offered_to=offered_to,
            )
        return req.entry

    def _snapshot_for(
        self,
        member: StaffMember,
        cache: dict[frozenset[SkillKey], tuple[QueueSnapshot, tuple[object, ...]]],
    ) -> ServerToStaff | None:
        if not member.takes_calls:
            return self._booths_snapshot_for(member, {})
        cached = cache.get(member.skills)
        if cached is None:
            reqs: list[WaitingRequest] = []
            for key in member.skills:
                reqs.extend(self._by_key.get(key, ()))
            reqs.sort(key=lambda r: r.seq)
            entries = [self._queue_entry(r) for r in reqs[: self.rules.queue_snapshot_max_entries]]
            signature: tuple[object, ...] = tuple((e.request_id, e.offered_to) for e in entries)
            cached = cache[member.skills] = (QueueSnapshot(entries=entries), signature)
        snap, signature = cached
        if signature == member.last_snapshot:
            return None
        member.last_snapshot = signature
        return snap

    def _booths_snapshot_for(
        self, member: StaffMember, cache: dict[str | None, BoothsSnapshot]
    ) -> BoothsSnapshot | None:
        site = member.site_id if member.role is StaffRole.BRANCH else None
        snap = cache.get(site)
        if snap is None:
            statuses = []
            for booth in self.booths.values():
                if site is not None and booth.info.site_id != site:
                    continue
                session = self.sessions.get(booth.session_id) if booth.session_id else None
                statuses.append(
                    BoothStatus(
                        booth=booth.info,
                        state=booth.state,
                        since=utc(booth.state_since),
                        request_id=booth.request_id,
                        session_id=booth.session_id,
                        staff=self.staff[session.staff_id].info if session else None,
                        devices=list(booth.devices),
                    )
                )
            snap = BoothsSnapshot(booths=statuses)
            cache[site] = snap
        signature = tuple(
            (b.booth.booth_id, b.state, b.request_id, b.session_id, tuple(b.devices))
            for b in snap.booths
        )
        if signature == member.last_snapshot:
            return None
        member.last_snapshot = signature
        return snap

    def _set_booth_state(self, booth: BoothEntry, state: BoothState, now: float) -> None:
        if booth.state is not state:
            booth.state = state
            booth.state_since = now
            self._dirty_sites.add(booth.info.site_id)

    def _set_staff_state(
        self,
        member: StaffMember,
        state: StaffState,
        now: float,
        out: list[Action],
        *,
        reason: str | None = None,
        announce: bool = True,
        force_announce: bool = False,
    ) -> None:
        changed = member.state is not state
        if changed:
            was_signed_in = member.signed_in
            member.state = state
            if was_signed_in != member.signed_in:
                self._dirty_keys |= member.skills
        if state is StaffState.AVAILABLE and changed:
            member.idle_order = next(self._idle_seq)
            member.available_since = now
        if state is StaffState.AVAILABLE and member.connected and member.takes_calls:
            self._available.add(member.staff_id)
        else:
            self._available.discard(member.staff_id)
        if member.connected and announce and (changed or force_announce):
            out.append(ToStaff(member.staff_id, StaffStateChanged(state=state, reason=reason)))

    def _withdraw(
        self,
        req: WaitingRequest,
        reason: WithdrawReason,
        now: float,
        out: list[Action],
        *,
        tell_staff: bool,
        detail: str | None = None,
    ) -> StaffMember:
        """End the offer ringing for ``req``. The caller decides the staff member's next
        state (see :meth:`_back_to_pool`)."""
        offer = req.offer
        assert offer is not None
        member = self.staff[offer.staff_id]
        req.offer = None
        member.offer = None
        self._dirty_keys.add(req.key)
        if tell_staff and member.connected:
            out.append(
                ToStaff(member.staff_id, OfferWithdrawn(offer_id=offer.offer_id, reason=reason))
            )
        kind: EventKind | None = None
        if reason is WithdrawReason.DECLINED:
            kind = EventKind.DECLINED
        elif reason is WithdrawReason.TIMEOUT:
            kind = EventKind.MISSED
        if kind is not None:
            out.append(
                Persist(
                    TimelineEvent(
                        req.request_id, kind, utc(now), staff_id=member.staff_id, detail=detail
                    )
                )
            )
            until = now + self.rules.decline_cooldown_s
            req.cooldown[member.staff_id] = until
            self._push_deadline(until)
        return member

    def _back_to_pool(
        self, member: StaffMember, reason: WithdrawReason, now: float, out: list[Action]
    ) -> None:
        """After a withdrawn offer: a timeout counts as missed (and may set away), a decline
        puts them at the back of the idle order, anything else (cancelled, booth lost)
        keeps their place."""
        if reason is WithdrawReason.TIMEOUT:
            member.missed_in_row += 1
            if member.missed_in_row >= self.rules.max_missed_offers:
                missed = member.missed_in_row
                member.missed_in_row = 0
                self._set_staff_state(
                    member,
                    StaffState.AWAY,
                    now,
                    out,
                    reason=f"{missed}件続けて応答がなかったため離席にしました"
                    f" / missed {missed} offers in a row",
                )
                return
            self._set_staff_state(member, StaffState.AVAILABLE, now, out)
        elif reason is WithdrawReason.DECLINED:
            self._set_staff_state(member, StaffState.AVAILABLE, now, out)
        else:
            member.state = StaffState.AVAILABLE  # same idle_order as before the offer
            if member.connected:
                self._available.add(member.staff_id)
                out.append(ToStaff(member.staff_id, StaffStateChanged(state=StaffState.AVAILABLE)))

    def _make_offer(
        self, req: WaitingRequest, member: StaffMember, now: float, out: list[Action]
    ) -> None:
        offer = OfferState(
            self._new_id("o"), req.request_id, member.staff_id, now + self.rules.ring_timeout_s
        )
        req.offer = offer
        member.offer = offer
        self._push_deadline(offer.deadline)
        self._dirty_keys.add(req.key)
        out.append(
            ToStaff(
                member.staff_id,
                Offer(
                    offer_id=offer.offer_id,
                    request_id=req.request_id,
                    booth=self.booths[req.booth_id].info,
                    department=req.department,
                    language=req.language,
                    requested_at=req.requested_at,
                    ring_timeout_s=self.rules.ring_timeout_s,
                ),
            )
        )
        # idle_order is kept: a withdrawal that was not their doing returns them to the
        # same place in the idle order.
        member.state = StaffState.RINGING
        self._available.discard(member.staff_id)
        out.append(ToStaff(member.staff_id, StaffStateChanged(state=StaffState.RINGING)))
        out.append(
            Persist(
                TimelineEvent(
                    req.request_id,
                    EventKind.OFFERED,
                    utc(now),
                    staff_id=member.staff_id,
                    detail=offer.offer_id,
                )
            )
        )

    def _match(self, now: float, out: list[Action]) -> None:
        """Offer waiting requests, oldest first, each to the matching available staff
        member who has been idle longest (skipping their cooldowns).

        Runs after every event, so it only looks at skills that have both waiting
        requests and available staff."""
        if not self._available or not self._by_key:
            return
        by_key: dict[SkillKey, list[StaffMember]] = {}
        for staff_id in self._available:
            member = self.staff[staff_id]
            for key in member.skills:
                if key in self._by_key:
                    by_key.setdefault(key, []).append(member)
        if not by_key:
            return
        groups = [self._by_key[key] for key in by_key]
        waiting = groups[0] if len(groups) == 1 else heapq.merge(*groups, key=_by_seq)
        for req in list(waiting):
            if req.offer is not None:
                continue
            if not self.booths[req.booth_id].online:
                continue
            best: StaffMember | None = None
            for member in by_key[req.key]:
                if member.state is not StaffState.AVAILABLE:
                    continue
                until = req.cooldown.get(member.staff_id)
                if until is not None and until > now:
                    continue
                if best is None or member.idle_order < best.idle_order:
                    best = member
            if best is not None:
                self._make_offer(req, best, now, out)
                if not self._available:
                    return

    def _end_session(
        self, session: SessionState, reason: EndReason, now: float, out: list[Action]
    ) -> None:
        session.ended_reason = reason
        booth = self.booths[session.booth_id]
        member = self.staff[session.staff_id]
        message = SessionEnded(session_id=session.session_id, reason=reason)
        if booth.online:
            out.append(ToBooth(booth.info.booth_id, message))
        if member.connected:
            out.append(ToStaff(member.staff_id, message))
        out.append(Persist(SessionClosed(session.session_id, utc(now), reason)))
        out.append(
            Persist(
                TimelineEvent(
                    session.request_id,
                    EventKind.ENDED,
                    utc(now),
                    session_id=session.session_id,
                    staff_id=session.staff_id,
                    detail=reason.value,
                )
            )
        )
        self._samples(session.department).append(max(0.0, now - session.accepted_at))
        self._dirty_keys |= {k for k in self._all_keys() if k[0] == session.department}
        booth.session_id = None
        if booth.online:
            self._set_booth_state(booth, BoothState.IDLE, now)
        else:
            booth.offline_since = None if booth.request_id is None else booth.offline_since
        member.lost_since = None
        self._set_staff_state(member, StaffState.WRAP_UP, now, out)

    def _gap(
        self, session_id: str, kind: EventKind, side: Side, at: float, out: list[Action]
    ) -> None:
        session = self.sessions.get(session_id)
        if not self.rules.record_gaps or session is None or not session.active:
            return
        out.append(
            Persist(
                TimelineEvent(
                    session.request_id,
                    kind,
                    utc(at),
                    session_id=session_id,
                    staff_id=session.staff_id,
                    detail=side.value,
                )
            )
        )

    def _all_keys(self) -> set[SkillKey]:
        keys: set[SkillKey] = set(self._by_key)
        for member in self.staff.values():
            keys |= member.skills
        return keys


def _by_seq(req: WaitingRequest) -> int:
    return req.seq
