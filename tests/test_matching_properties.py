"""The matching core under random event sequences (hypothesis) and in worked examples."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ProtocolError
from shared.protocol import (
    BoothInfo,
    BoothsSnapshot,
    BoothWelcome,
    CallStarted,
    Department,
    EndReason,
    ErrorCode,
    IcePayload,
    Offer,
    OfferWithdrawn,
    QueueStatus,
    Relay,
    RequestClosed,
    ServerToBooth,
    ServerToStaff,
    SessionEnded,
    StaffInfo,
    StaffRole,
    StaffState,
    StaffStateChanged,
    StaffWelcome,
    WithdrawReason,
)
from signaling.matching import (
    Action,
    Dispatcher,
    EventKind,
    MatchingRules,
    Persist,
    Side,
    SkillKey,
    TimelineEvent,
    ToBooth,
    ToStaff,
)

RULES = MatchingRules(
    ring_timeout_s=5.0,
    max_missed_offers=2,
    decline_cooldown_s=7.0,
    booth_reconnect_grace_s=10.0,
    staff_reconnect_grace_s=6.0,
    wait_estimate_samples=3,
    wait_estimate_min_samples=2,
)
DEPARTMENTS = [
    Department(code="shimin", name_ja="市民課", name_en="Citizen Services"),
    Department(code="hoken", name_ja="保険年金課", name_en="Health Insurance"),
]
KEYS: list[SkillKey] = [("shimin", "ja"), ("shimin", "en"), ("hoken", "ja")]
BOOTHS = ["b1", "b2", "b3", "b4"]
STAFF = ["s1", "s2", "s3", "s4"]
T0 = 1_800_000_000.0


def make_dispatcher(
    skills: dict[str, frozenset[SkillKey]], *, rules: MatchingRules = RULES
) -> Dispatcher:
    counter = itertools.count(1)
    d = Dispatcher(
        rules,
        departments=DEPARTMENTS,
        languages=["ja", "en"],
        new_id=lambda prefix: f"{prefix}{next(counter)}",
    )
    for i, booth_id in enumerate(BOOTHS):
        site = "seiseki" if i % 2 == 0 else "tamacenter"
        d.upsert_booth(BoothInfo(booth_id=booth_id, name=booth_id, site_id=site, site_name=site))
    for staff_id, keys in skills.items():
        d.upsert_staff(
            StaffInfo(staff_id=staff_id, display_name=staff_id), StaffRole.HQ, None, keys
        )
    d.upsert_staff(
        StaffInfo(staff_id="branch", display_name="branch"), StaffRole.BRANCH, "seiseki", ()
    )
    return d


def messages_to_staff(actions: list[Action], staff_id: str) -> list[ServerToStaff]:
    return [a.message for a in actions if isinstance(a, ToStaff) and a.staff_id == staff_id]


def messages_to_booth(actions: list[Action], booth_id: str) -> list[ServerToBooth]:
    return [a.message for a in actions if isinstance(a, ToBooth) and a.booth_id == booth_id]


def offers(actions: list[Action]) -> list[tuple[str, Offer]]:
    return [
        (a.staff_id, a.message)
        for a in actions
        if isinstance(a, ToStaff) and isinstance(a.message, Offer)
    ]


# --------------------------------------------------------------------------------------
# Random event sequences
# --------------------------------------------------------------------------------------

_request = st.tuples(st.just("request"), st.sampled_from(BOOTHS), st.sampled_from(KEYS))
_available = st.tuples(st.just("available"), st.sampled_from(STAFF))
_accept = st.tuples(st.just("accept"), st.sampled_from(STAFF), st.booleans())
event_strategy = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=8.0)),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=2.0)),
    st.tuples(st.just("connect_booth"), st.sampled_from(BOOTHS)),
    st.tuples(st.just("disconnect_booth"), st.sampled_from(BOOTHS)),
    st.tuples(st.just("connect_staff"), st.sampled_from([*STAFF, "branch"])),
    st.tuples(st.just("disconnect_staff"), st.sampled_from(STAFF)),
    _request,
    _request,
    _request,
    st.tuples(st.just("cancel"), st.sampled_from(BOOTHS)),
    _available,
    _available,
    _available,
    st.tuples(st.just("away"), st.sampled_from(STAFF)),
    _accept,
    _accept,
    st.tuples(st.just("decline"), st.sampled_from(STAFF)),
    st.tuples(st.just("hang_up"), st.sampled_from(["booth", "staff"]), st.integers(0, 3)),
    st.tuples(st.just("media"), st.sampled_from(["connected", "failed"]), st.integers(0, 3)),
    st.tuples(st.just("wrap_up"), st.sampled_from(STAFF)),
    st.tuples(st.just("wrap_up"), st.sampled_from(STAFF)),
    st.tuples(st.just("relay"), st.sampled_from([*BOOTHS, *STAFF]), st.integers(0, 3)),
    st.tuples(st.just("push")),
)

skills_strategy = st.fixed_dictionaries(
    {s: st.frozensets(st.sampled_from(KEYS), min_size=1) for s in STAFF}
)


@dataclass
class Model:
    """What the test remembers across steps to judge the core."""

    key_of: dict[str, SkillKey] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    missed: dict[str, int] = field(default_factory=dict)
    request_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def run_event(d: Dispatcher, model: Model, event: tuple[object, ...], now: float) -> list[Action]:
    kind = event[0]
    if kind == "connect_booth":
        return d.booth_connected(str(event[1]), now)
    if kind == "disconnect_booth":
        return d.booth_disconnected(str(event[1]), now)
    if kind == "connect_staff":
        return d.staff_connected(str(event[1]), now)
    if kind == "disconnect_staff":
        return d.staff_disconnected(str(event[1]), now)
    if kind == "request":
        booth_id = str(event[1])
        if not d.booths[booth_id].online:
            return []
        key = event[2]
        assert isinstance(key, tuple)
        request_id = f"r{next(model.request_ids)}"
        actions = d.request_help(booth_id, request_id, key[0], key[1], now)
        model.key_of[request_id] = (key[0], key[1])
        return actions
    if kind == "cancel":
        booth_id = str(event[1])
        request_id = d.booths[booth_id].request_id or "nothing"
        actions = d.cancel_request(booth_id, request_id, now)
        model.cancelled.add(request_id)
        return actions
    if kind in ("available", "away"):
        return d.set_state(str(event[1]), StaffState(kind), now)
    if kind in ("accept", "decline"):
        member = d.staff[str(event[1])]
        genuine = event[2] if kind == "accept" else True
        offer_id = member.offer.offer_id if member.offer and genuine else "o-bogus"
        if kind == "accept":
            return d.accept(member.staff_id, offer_id, now)
        return d.decline(member.staff_id, offer_id, now)
    sessions = sorted(d.sessions)
    if kind in ("hang_up", "media", "relay"):
        index = event[2]
        assert isinstance(index, int)
        session_id = sessions[index] if index < len(sessions) else "s-none"
        session = d.sessions.get(session_id)
        if kind == "relay":
            peer = str(event[1])
            side = Side.BOOTH if peer.startswith("b") else Side.STAFF
            return d.relay(
                side, peer, Relay(session_id=session_id, payload=IcePayload(candidate=None))
            )
        side = Side.BOOTH if event[1] in ("booth", "connected") else Side.STAFF
        peer = (session.booth_id if side is Side.BOOTH else session.staff_id) if session else "b1"
        if kind == "hang_up":
            return d.hang_up(side, peer, session_id, now)
        if event[1] == "connected":
            return d.media_connected(side, peer, session_id, now)
        return d.media_failed(side, peer, session_id, now)
    if kind == "wrap_up":
        member = d.staff[str(event[1])]
        return d.wrap_up_done(member.staff_id, member.session_id or "s-none", "memo", now)
    if kind == "push":
        return d.collect_pushes()
    assert kind == "advance"
    return []


def check_invariants(d: Dispatcher, model: Model, actions: list[Action], now: float) -> None:
    offered_staff: set[str] = set()
    for req in d.waiting.values():
        if req.offer is not None:
            member = d.staff[req.offer.staff_id]
            assert member.offer is req.offer
            assert member.staff_id not in offered_staff, "a staff member holds two offers"
            offered_staff.add(member.staff_id)
            assert req.key in member.skills
            assert d.booths[req.booth_id].online
    active_by_staff: dict[str, int] = {}
    active_by_booth: dict[str, int] = {}
    for session in d.sessions.values():
        if session.active:
            active_by_staff[session.staff_id] = active_by_staff.get(session.staff_id, 0) + 1
            active_by_booth[session.booth_id] = active_by_booth.get(session.booth_id, 0) + 1
            assert d.staff[session.staff_id].state is StaffState.IN_CALL
    assert all(n == 1 for n in active_by_staff.values()), "staff in two calls"
    assert all(n == 1 for n in active_by_booth.values()), "booth in two calls"
    for member in d.staff.values():
        if member.offer is not None:
            assert member.state is StaffState.RINGING
            assert member.connected and member.role is StaffRole.HQ
            assert member.staff_id not in active_by_staff
            assert member.session_id is None
        if member.state is StaffState.RINGING:
            assert member.offer is not None
        if member.state in (StaffState.IN_CALL, StaffState.WRAP_UP):
            assert member.session_id is not None
    for booth in d.booths.values():
        assert not (booth.request_id and booth.session_id)

    def eligible(member_id: str, req_key: SkillKey, cooldown: dict[str, float]) -> bool:
        m = d.staff[member_id]
        return (
            m.state is StaffState.AVAILABLE
            and m.connected
            and m.role is StaffRole.HQ
            and req_key in m.skills
            and cooldown.get(member_id, 0.0) <= now
        )

    # Work-conserving: nothing waits unoffered while a matching staff member is free.
    for req in d.waiting.values():
        if req.offer is None and d.booths[req.booth_id].online:
            for staff_id in d.staff:
                assert not eligible(staff_id, req.key, req.cooldown), (
                    f"{req.request_id} waits while {staff_id} is free"
                )

    for staff_id, offer in offers(actions):
        member = d.staff[staff_id]
        key = model.key_of[offer.request_id]
        assert key in member.skills, "offered without the skill"
        assert offer.request_id not in model.cancelled, "a cancelled request was offered"
        req = d.waiting[offer.request_id]
        # Oldest first: no older matching request was left unoffered for this member.
        for other in d.waiting.values():
            if other.seq < req.seq and other.offer is None and other.key in member.skills:
                assert not d.booths[other.booth_id].online or (
                    other.cooldown.get(staff_id, 0.0) > now
                ), f"{other.request_id} is older than {req.request_id}"
        # Idle longest: no free matching staff member has waited longer.
        for other_id, other_member in d.staff.items():
            if other_id != staff_id and eligible(other_id, req.key, req.cooldown):
                assert other_member.idle_order > member.idle_order

    for action in actions:
        if isinstance(action, ToStaff) and isinstance(action.message, CallStarted):
            model.missed[action.staff_id] = 0
        if (
            isinstance(action, ToStaff)
            and isinstance(action.message, OfferWithdrawn)
            and action.message.reason is WithdrawReason.TIMEOUT
        ):
            count = model.missed.get(action.staff_id, 0) + 1
            if count >= RULES.max_missed_offers:
                assert d.staff[action.staff_id].state is StaffState.AWAY
                reasons = [
                    m.reason
                    for m in messages_to_staff(actions, action.staff_id)
                    if isinstance(m, StaffStateChanged) and m.state is StaffState.AWAY
                ]
                assert reasons and reasons[-1], "away without a reason"
                count = 0
            model.missed[action.staff_id] = count
        if isinstance(action, ToStaff | ToBooth) and isinstance(action.message, Relay):
            session = d.sessions[action.message.session_id]
            if isinstance(action, ToStaff):
                assert action.staff_id == session.staff_id
            else:
                assert action.booth_id == session.booth_id


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    skills=skills_strategy,
    prelude=st.lists(st.sampled_from([*BOOTHS, *STAFF]), unique=True, min_size=5),
    events=st.lists(event_strategy, min_size=30, max_size=100),
)
def test_random_event_sequences_keep_the_invariants(
    skills: dict[str, frozenset[SkillKey]], prelude: list[str], events: list[tuple[object, ...]]
) -> None:
    d = make_dispatcher(skills)
    model = Model()
    now = T0
    for peer in prelude:  # some booths and staff are already connected
        if peer in d.booths:
            d.booth_connected(peer, now)
        else:
            d.staff_connected(peer, now)
    for event in events:
        if event[0] == "advance":
            dt = event[1]
            assert isinstance(dt, float)
            now += dt
        actions = d.tick(now)
        check_invariants(d, model, actions, now)
        try:
            actions = run_event(d, model, event, now)
        except ProtocolError as err:
            assert err.code in (
                ErrorCode.OUT_OF_ORDER,
                ErrorCode.NOT_IN_SESSION,
                ErrorCode.FORBIDDEN,
            )
            actions = []
        check_invariants(d, model, actions, now)
        deadline = d.next_deadline()
        assert deadline is None or deadline > now or d.tick(now) is not None


miss_events = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.sampled_from(BOOTHS), st.sampled_from(KEYS[:2])),
        st.tuples(st.just("advance"), st.floats(min_value=0.5, max_value=6.0)),
        st.tuples(st.just("available"), st.sampled_from(STAFF[:2])),
        st.tuples(st.just("accept"), st.sampled_from(STAFF[:2]), st.booleans()),
        st.tuples(st.just("cancel"), st.sampled_from(BOOTHS)),
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events=miss_events)
def test_missed_offers_in_a_row_set_away(events: list[tuple[object, ...]]) -> None:
    """A narrower alphabet that makes ring timeouts common."""
    d = make_dispatcher({s: frozenset(KEYS[:2]) for s in STAFF[:2]})
    model = Model()
    now = T0
    online(d, STAFF[:2])
    for event in events:
        if event[0] == "advance":
            dt = event[1]
            assert isinstance(dt, float)
            now += dt
        actions = d.tick(now)
        check_invariants(d, model, actions, now)
        try:
            actions = run_event(d, model, event, now)
        except ProtocolError as err:
            assert err.code is ErrorCode.OUT_OF_ORDER
            actions = []
        check_invariants(d, model, actions, now)


# --------------------------------------------------------------------------------------
# Worked examples of each rule
# --------------------------------------------------------------------------------------


def online(d: Dispatcher, staff: list[str], now: float = T0) -> None:
    for booth_id in BOOTHS:
        d.booth_connected(booth_id, now)
    for staff_id in staff:
        d.staff_connected(staff_id, now)


def test_staff_start_away_and_the_longest_idle_gets_the_offer() -> None:
    d = make_dispatcher({s: frozenset({("shimin", "ja")}) for s in ("s1", "s2", "s3")})
    online(d, ["s1", "s2", "s3"])
    assert d.staff["s1"].state is StaffState.AWAY
    d.set_state("s2", StaffState.AVAILABLE, T0 + 1)
    d.set_state("s3", StaffState.AVAILABLE, T0 + 2)
    d.set_state("s1", StaffState.AVAILABLE, T0 + 3)
    actions = d.request_help("b1", "r1", "shimin", "ja", T0 + 4)
    assert [(s, o.request_id) for s, o in offers(actions)] == [("s2", "r1")]
    assert d.staff["s2"].state is StaffState.RINGING
    # QueueStatus first, then the offer: position 1, one ringing.
    statuses = [m for m in messages_to_booth(actions, "b1") if isinstance(m, QueueStatus)]
    assert statuses[0].position == 1 and statuses[0].staff_online == 3


def test_requests_are_served_oldest_first() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d, ["s1"])
    d.request_help("b1", "r1", "shimin", "ja", T0 + 1)
    d.request_help("b2", "r2", "shimin", "ja", T0 + 2)
    actions = d.set_state("s1", StaffState.AVAILABLE, T0 + 3)
    assert [o.request_id for _, o in offers(actions)] == ["r1"]


def test_ring_timeout_moves_the_offer_to_the_next_staff_member() -> None:
    d = make_dispatcher({s: frozenset({("shimin", "ja")}) for s in ("s1", "s2")})
    online(d, ["s1", "s2"])
    d.set_state("s1", StaffState.AVAILABLE, T0 + 1)
    d.set_state("s2", StaffState.AVAILABLE, T0 + 2)
    first = offers(d.request_help("b1", "r1", "shimin", "ja", T0 + 3))
    assert [s for s, _ in first] == ["s1"]
    assert d.next_deadline() == T0 + 3 + RULES.ring_timeout_s
    assert d.tick(T0 + 7.9) == []
    actions = d.tick(T0 + 3 + RULES.ring_timeout_s)
    withdrawn = messages_to_staff(actions, "s1")
    assert OfferWithdrawn(offer_id=first[0][1].offer_id, reason=WithdrawReason.TIMEOUT) in withdrawn
    assert [(s, o.request_id) for s, o in offers(actions)] == [("s2", "r1")]
    assert d.staff["s1"].state is StaffState.AVAILABLE
    assert d.staff["s1"].missed_in_row == 1
    kinds = [
        a.record.kind
        for a in actions
        if isinstance(a, Persist) and isinstance(a.record, TimelineEvent)
    ]
    assert kinds == [EventKind.MISSED, EventKind.OFFERED]


def test_missing_offers_in_a_row_sets_away_with_a_reason_and_accept_resets() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d, ["s1"])
    d.set_state("s1", StaffState.AVAILABLE, T0)
    now = T0
    for n in range(RULES.max_missed_offers):
        d.request_help(f"b{n + 1}", f"r{n}", "shimin", "ja", now)
        now += RULES.ring_timeout_s
        actions = d.tick(now)
    changed = [m for m in messages_to_staff(actions, "s1") if isinstance(m, StaffStateChanged)]
    assert changed[-1].state is StaffState.AWAY
    assert changed[-1].reason is not None and "2" in changed[-1].reason
    assert d.staff["s1"].state is StaffState.AWAY
    # One miss, then an accept: the count starts again.
    d2 = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d2, ["s1"])
    d2.set_state("s1", StaffState.AVAILABLE, T0)
    d2.request_help("b1", "r1", "shimin", "ja", T0)
    d2.tick(T0 + RULES.ring_timeout_s)
    assert d2.staff["s1"].missed_in_row == 1
    d2.request_help("b2", "r2", "shimin", "ja", T0 + 6)
    offer = d2.staff["s1"].offer
    assert offer is not None and offer.request_id == "r2"  # r1 is in s1's cooldown
    d2.accept("s1", offer.offer_id, T0 + 6.5)
    assert d2.staff["s1"].missed_in_row == 0


def test_decline_withdraws_and_the_same_request_is_not_reoffered_during_cooldown() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d, ["s1"])
    d.set_state("s1", StaffState.AVAILABLE, T0)
    ((_, offer),) = offers(d.request_help("b1", "r1", "shimin", "ja", T0))
    actions = d.decline("s1", offer.offer_id, T0 + 1)
    assert OfferWithdrawn(offer_id=offer.offer_id, reason=WithdrawReason.DECLINED) in (
        messages_to_staff(actions, "s1")
    )
    assert offers(actions) == []
    assert d.staff["s1"].state is StaffState.AVAILABLE
    # Another request can reach them meanwhile, the declined one cannot.
    assert [
        o.request_id for _, o in offers(d.request_help("b2", "r2", "shimin", "ja", T0 + 2))
    ] == ["r2"]
    d.decline("s1", d.staff["s1"].offer.offer_id if d.staff["s1"].offer else "", T0 + 3)
    assert offers(d.tick(T0 + 1 + RULES.decline_cooldown_s - 0.1)) == []
    after = offers(d.tick(T0 + 1 + RULES.decline_cooldown_s))
    assert [(s, o.request_id) for s, o in after] == [("s1", "r1")]


def test_cancel_while_ringing_withdraws_at_once_and_is_never_offered_again() -> None:
    d = make_dispatcher({s: frozenset({("shimin", "ja")}) for s in ("s1", "s2")})
    online(d, ["s1", "s2"])
    d.set_state("s1", StaffState.AVAILABLE, T0)
    ((_, offer),) = offers(d.request_help("b1", "r1", "shimin", "ja", T0 + 1))
    actions = d.cancel_request("b1", "r1", T0 + 2)
    assert OfferWithdrawn(offer_id=offer.offer_id, reason=WithdrawReason.CANCELLED) in (
        messages_to_staff(actions, "s1")
    )
    assert RequestClosed(request_id="r1", reason="cancelled") in messages_to_booth(actions, "b1")
    actions = d.set_state("s2", StaffState.AVAILABLE, T0 + 3) + d.tick(T0 + 100)
    assert offers(actions) == []
    assert "r1" not in d.waiting


def test_offline_booth_is_not_offered_and_is_abandoned_after_the_grace() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d, ["s1"])
    d.request_help("b1", "r1", "shimin", "ja", T0)
    d.booth_disconnected("b1", T0 + 1)
    assert offers(d.set_state("s1", StaffState.AVAILABLE, T0 + 2)) == []
    # Back within the grace: welcome names the pending request, and it is offered.
    actions = d.booth_connected("b1", T0 + 5)
    welcome = messages_to_booth(actions, "b1")[0]
    assert getattr(welcome, "pending_request_id", None) == "r1"
    assert [o.request_id for _, o in offers(actions)] == ["r1"]
    d.booth_disconnected("b1", T0 + 6)
    actions = d.tick(T0 + 6 + RULES.booth_reconnect_grace_s)
    kinds = [
        a.record.kind
        for a in actions
        if isinstance(a, Persist) and isinstance(a.record, TimelineEvent)
    ]
    assert EventKind.ABANDONED in kinds
    assert "r1" not in d.waiting


def test_call_flow_hang_up_wrap_up_and_relay_only_to_the_other_peer() -> None:
    d = make_dispatcher({s: frozenset({("shimin", "ja")}) for s in ("s1", "s2")})
    online(d, ["s1", "s2"])
    d.set_state("s1", StaffState.AVAILABLE, T0)
    ((_, offer),) = offers(d.request_help("b1", "r1", "shimin", "ja", T0))
    actions = d.accept("s1", offer.offer_id, T0 + 1)
    started_booth = messages_to_booth(actions, "b1")[-1]
    started_staff = next(m for m in messages_to_staff(actions, "s1") if isinstance(m, CallStarted))
    assert isinstance(started_booth, CallStarted) and started_booth.role == "offerer"
    assert started_staff.role == "answerer"
    session_id = started_staff.session_id
    relay = Relay(session_id=session_id, payload=IcePayload(candidate=None))
    assert d.relay(Side.BOOTH, "b1", relay) == [ToStaff("s1", relay)]
    assert d.relay(Side.STAFF, "s1", relay) == [ToBooth("b1", relay)]
    for side, peer in ((Side.STAFF, "s2"), (Side.BOOTH, "b2")):
        try:
            d.relay(side, peer, relay)
        except ProtocolError as err:
            assert err.code is ErrorCode.NOT_IN_SESSION
        else:
            raise AssertionError("relay from outside the session was forwarded")
    actions = d.hang_up(Side.BOOTH, "b1", session_id, T0 + 61)
    ended = SessionEnded(session_id=session_id, reason=EndReason.HANGUP_BOOTH)
    assert ended in messages_to_booth(actions, "b1") and ended in messages_to_staff(actions, "s1")
    assert d.staff["s1"].state is StaffState.WRAP_UP
    assert d.booths["b1"].state.value == "idle"
    try:
        d.wrap_up_done("s1", "s-other", "", T0 + 62)
    except ProtocolError as err:
        assert err.code is ErrorCode.OUT_OF_ORDER
    actions = d.wrap_up_done("s1", session_id, "転入届を案内", T0 + 62)
    assert StaffStateChanged(state=StaffState.AVAILABLE) in messages_to_staff(actions, "s1")


def test_call_started_is_told_again_after_a_reconnect_until_the_media_connects() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    online(d, ["s1"])
    d.set_state("s1", StaffState.AVAILABLE, T0)
    ((_, offer),) = offers(d.request_help("b1", "r1", "shimin", "ja", T0))
    first = messages_to_booth(d.accept("s1", offer.offer_id, T0 + 1), "b1")[-1]
    assert isinstance(first, CallStarted)

    # Signaling drops before the media connected: the offer may have been lost with it.
    d.booth_disconnected("b1", T0 + 2)
    welcome, again = messages_to_booth(d.booth_connected("b1", T0 + 3), "b1")[:2]
    assert isinstance(welcome, BoothWelcome) and welcome.session_id == first.session_id
    assert isinstance(again, CallStarted)
    assert (again.session_id, again.request_id, again.role) == (first.session_id, "r1", "offerer")
    d.staff_disconnected("s1", T0 + 4)
    told = messages_to_staff(d.staff_connected("s1", T0 + 5), "s1")
    assert [type(m) for m in told[:2]] == [StaffWelcome, CallStarted]
    assert isinstance(told[1], CallStarted) and told[1].role == "answerer"

    # Once the media is connected, a reconnect only names the session.
    d.media_connected(Side.BOOTH, "b1", first.session_id, T0 + 6)
    d.booth_disconnected("b1", T0 + 7)
    told_booth = messages_to_booth(d.booth_connected("b1", T0 + 8), "b1")
    assert not any(isinstance(m, CallStarted) for m in told_booth)
    d.staff_disconnected("s1", T0 + 9)
    told = messages_to_staff(d.staff_connected("s1", T0 + 10), "s1")
    assert not any(isinstance(m, CallStarted) for m in told)


def test_a_resumed_session_nobody_was_told_of_is_started_when_they_connect() -> None:
    """A leader stored a match and died before it sent call_started: the new leader
    resumes the session, and each party hears of it when it connects."""
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    d.restore_session("sess-1", "r1", "b1", "s1", "shimin", "ja", T0, None, T0 + 1)
    booth = messages_to_booth(d.booth_connected("b1", T0 + 2), "b1")
    assert isinstance(booth[0], BoothWelcome) and booth[0].session_id == "sess-1"
    assert booth[0].pending_request_id is None
    started = [m for m in booth if isinstance(m, CallStarted)]
    assert [(m.session_id, m.request_id, m.role) for m in started] == [("sess-1", "r1", "offerer")]
    staff = messages_to_staff(d.staff_connected("s1", T0 + 3), "s1")
    assert isinstance(staff[0], StaffWelcome) and staff[0].state is StaffState.IN_CALL
    started = [m for m in staff if isinstance(m, CallStarted)]
    assert [(m.session_id, m.role, m.booth.booth_id) for m in started] == [
        ("sess-1", "answerer", "b1")
    ]
    relay = Relay(session_id="sess-1", payload=IcePayload(candidate=None))
    assert d.relay(Side.BOOTH, "b1", relay) == [ToStaff("s1", relay)]


def test_estimate_is_unknown_with_too_few_samples_and_computed_with_enough() -> None:
    skills = {s: frozenset({("shimin", "ja")}) for s in ("s1", "s2")}
    d = make_dispatcher(skills)
    online(d, ["s1", "s2"])
    d.add_handle_times("shimin", [300.0])  # one sample; the minimum is two
    for n, booth_id in enumerate(BOOTHS[:3]):
        d.request_help(booth_id, f"r{n}", "shimin", "ja", T0 + n)
    # Staff are away: not counted as online, so no estimate either way.
    assert d.estimate(("shimin", "ja"), 1) is None
    d2 = make_dispatcher(skills)
    online(d2, ["s1", "s2"])
    d2.add_handle_times("shimin", [300.0])
    d2.set_state("s1", StaffState.AVAILABLE, T0)
    d2.set_state("s2", StaffState.AVAILABLE, T0)
    assert d2.estimate(("shimin", "ja"), 1) is None  # too few samples
    d2.add_handle_times("shimin", [200.0, 400.0, 600.0])  # window of 3: 200, 400, 600
    # Three waiting, two staff online: ceil(3 / 2) * 400 = 800 seconds for the third.
    assert d2.estimate(("shimin", "ja"), 3) == 800
    assert d2.estimate(("shimin", "ja"), 1) == 400
    actions = []
    for n, booth_id in enumerate(BOOTHS[:3]):
        actions = d2.request_help(booth_id, f"r{n}", "shimin", "ja", T0 + n)
    status = [m for m in messages_to_booth(actions, "b3") if isinstance(m, QueueStatus)]
    assert status == [
        QueueStatus(
            request_id="r2", position=3, estimated_wait_s=800, staff_online=2, ringing=False
        )
    ]
    # The queue moves: r0 is cancelled, r2 is now second (same estimate band: ceil(2/2)).
    d2.cancel_request("b1", "r0", T0 + 5)
    pushes = d2.collect_pushes()
    status = [m for m in messages_to_booth(pushes, "b3") if isinstance(m, QueueStatus)]
    assert [(m.position, m.estimated_wait_s) for m in status] == [(2, 400)]
    assert d2.collect_pushes() == []  # nothing changed since: nothing is sent
    # A session ends: its handle time joins the window (200 drops out).
    offer = d2.staff["s1"].offer
    assert offer is not None
    d2.accept("s1", offer.offer_id, T0 + 10)
    session_id = d2.staff["s1"].session_id
    assert session_id is not None
    d2.hang_up(Side.STAFF, "s1", session_id, T0 + 10 + 500)
    assert d2.mean_handle_time("shimin") == 500.0


def test_branch_staff_get_booth_snapshots_of_their_site_and_no_offers() -> None:
    d = make_dispatcher({"s1": frozenset({("shimin", "ja")})})
    actions = d.staff_connected("branch", T0)
    snapshot = messages_to_staff(actions, "branch")[-1]
    assert isinstance(snapshot, BoothsSnapshot)
    assert {b.booth.booth_id for b in snapshot.booths} == {"b1", "b3"}
    try:
        d.set_state("branch", StaffState.AVAILABLE, T0)
    except ProtocolError as err:
        assert err.code is ErrorCode.FORBIDDEN
    else:
        raise AssertionError("branch staff became available")
    d.booth_connected("b1", T0 + 1)
    d.booth_connected("b2", T0 + 1)
    pushes = messages_to_staff(d.collect_pushes(), "branch")
    assert len(pushes) == 1
    assert isinstance(pushes[0], BoothsSnapshot)
    states = {b.booth.booth_id: b.state.value for b in pushes[0].booths}
    assert states == {"b1": "idle", "b3": "offline"}
