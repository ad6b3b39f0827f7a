"""The signaling protocol: every message that crosses a WebSocket, as pydantic models.

Three channels, each a discriminated union on the ``type`` field:

* booth ↔ signaling server: :data:`BoothToServer`, :data:`ServerToBooth`
* staff browser ↔ signaling server: :data:`StaffToServer`, :data:`ServerToStaff`
* peer ↔ peer, relayed by the server inside a ``relay`` message: :data:`RelayPayload`
* booth ↔ staff browser on the WebRTC data channel (never via the server): :data:`PeerData`

:mod:`shared.wire` is the only place that turns JSON into these models and back.
``docs/protocol.md`` describes the flow; ``python -m shared.schema`` exports the JSON
Schema the browser code is checked against.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 1

# Identifiers are short ASCII tokens; free text has explicit limits so that no message
# can make the server hold unbounded data.
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Language = Annotated[
    str, Field(min_length=2, max_length=16, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)*$")
]
ShortText = Annotated[str, Field(max_length=200)]
Note = Annotated[str, Field(max_length=4000)]
Sdp = Annotated[str, Field(min_length=1, max_length=65536)]


class Model(BaseModel):
    """Base of every protocol model: unknown fields are an error, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------


class StaffState(StrEnum):
    OFFLINE = "offline"
    AVAILABLE = "available"
    RINGING = "ringing"
    IN_CALL = "in_call"
    WRAP_UP = "wrap_up"
    AWAY = "away"


class BoothState(StrEnum):
    OFFLINE = "offline"
    IDLE = "idle"
    WAITING = "waiting"
    IN_CALL = "in_call"


class StaffRole(StrEnum):
    HQ = "hq"  # takes calls
    BRANCH = "branch"  # watches the booths of a site
    ADMIN = "admin"


class EndReason(StrEnum):
    HANGUP_BOOTH = "hangup_booth"
    HANGUP_STAFF = "hangup_staff"
    BOOTH_LOST = "booth_lost"  # the booth's connection dropped and did not come back
    STAFF_LOST = "staff_lost"
    # a peer reported that WebRTC could not connect, or that the media path stayed lost
    # longer than the booth's media_outage_limit_s
    MEDIA_FAILED = "media_failed"
    SERVER_RESTART = "server_restart"


class WithdrawReason(StrEnum):
    CANCELLED = "cancelled"  # the resident cancelled
    TIMEOUT = "timeout"  # nobody answered within the ring time
    DECLINED = "declined"
    BOOTH_LOST = "booth_lost"
    TAKEN = "taken"


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"  # not JSON, or not a JSON object
    BAD_MESSAGE = "bad_message"  # JSON, but not a valid message of this channel
    TOO_LARGE = "too_large"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    AUTH_REQUIRED = "auth_required"  # first message was not hello
    AUTH_FAILED = "auth_failed"  # wrong credential, forged token
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"  # e.g. a branch account trying to take calls
    OUT_OF_ORDER = "out_of_order"  # valid message, wrong moment (accept without offer…)
    NOT_IN_SESSION = "not_in_session"  # relay/hang-up for a session the sender is not in
    UNKNOWN_DEPARTMENT = "unknown_department"
    DUPLICATE_CONNECTION = "duplicate_connection"  # same booth/staff connected elsewhere
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


# --------------------------------------------------------------------------------------
# Shared parts
# --------------------------------------------------------------------------------------


class IceServer(Model):
    urls: list[Annotated[str, Field(max_length=300)]]
    username: str | None = None
    credential: str | None = None


class BoothInfo(Model):
    booth_id: Ident
    name: ShortText
    site_id: Ident
    site_name: ShortText


class StaffInfo(Model):
    staff_id: Ident
    display_name: ShortText


class Skill(Model):
    department: Ident
    language: Language


class Department(Model):
    code: Ident
    name_ja: ShortText
    name_en: ShortText


class QueueEntry(Model):
    request_id: Ident
    booth: BoothInfo
    department: Ident
    language: Language
    requested_at: datetime
    offered_to: Ident | None = None  # staff id currently ringing for it, if any


DeviceKindName = Literal[
    "card_reader",
    "document_camera",
    "receipt_printer",
    "a4_printer",
    "camera",
    "microphone",
    "speaker",
]
DeviceStateName = Literal["ready", "busy", "card_present", "paper_out", "offline", "error"]


class DeviceReport(Model):
    """One device of a booth as the booth sees it. ``reason`` says what is wrong in
    words an installer can act on; it never holds personal data."""

    kind: DeviceKindName
    name: ShortText  # e.g. "receipt (socket://10.0.0.5:9100)", "camera v4l2:/dev/video0"
    state: DeviceStateName
    since: datetime
    reason: ShortText | None = None


class BoothStatus(Model):
    booth: BoothInfo
    state: BoothState
    since: datetime
    request_id: Ident | None = None
    session_id: Ident | None = None
    staff: StaffInfo | None = None
    # The booth's last device report (kept while the booth is offline).
    devices: list[DeviceReport] = []


class ErrorMessage(Model):
    """Sent on every channel. ``ref`` echoes the ``type`` of the offending message."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: ShortText
    ref: ShortText | None = None
    fatal: bool = False  # the server closes the connection after a fatal error


# --------------------------------------------------------------------------------------
# Peer ↔ peer (relayed verbatim by the server between the two peers of one session)
# --------------------------------------------------------------------------------------


# Which negotiation of the session a payload belongs to. The booth's first offer is
# generation 0; each renegotiation after a lost media path (a fresh peer connection, see
# docs/protocol.md "Renegotiation") takes the next number. An answer or a candidate of
# another generation than the current one is ignored.
Generation = Annotated[int, Field(ge=0, le=1_000_000)]


class SdpPayload(Model):
    """An offer or an answer. An offer of a newer ``generation`` replaces the peer
    connection: the answerer closes its old one and answers with a fresh one."""

    type: Literal["sdp"] = "sdp"
    sdp_type: Literal["offer", "answer"]
    sdp: Sdp
    generation: Generation = 0


class IcePayload(Model):
    """A trickled ICE candidate; ``candidate`` None means end of candidates."""

    type: Literal["ice"] = "ice"
    candidate: Annotated[str, Field(max_length=1000)] | None
    sdp_mid: Annotated[str, Field(max_length=64)] | None = None
    sdp_mline_index: Annotated[int, Field(ge=0, le=64)] | None = None
    generation: Generation = 0


class MediaStatePayload(Model):
    """What a peer tells the other about its own media (shown on the other screen)."""

    type: Literal["media_state"] = "media_state"
    audio: Literal["on", "muted", "none"]
    video: Literal["on", "off", "none"]


RelayPayload = Annotated[SdpPayload | IcePayload | MediaStatePayload, Field(discriminator="type")]


class Relay(Model):
    """Either peer → server → the other peer of ``session_id``."""

    type: Literal["relay"] = "relay"
    session_id: Ident
    payload: RelayPayload


class HangUp(Model):
    type: Literal["hang_up"] = "hang_up"
    session_id: Ident


class MediaConnected(Model):
    """A peer's RTCPeerConnection reached ``connected`` (recorded in the timeline)."""

    type: Literal["media_connected"] = "media_connected"
    session_id: Ident


class MediaFailed(Model):
    type: Literal["media_failed"] = "media_failed"
    session_id: Ident
    detail: ShortText = ""


class SessionEnded(Model):
    type: Literal["session_ended"] = "session_ended"
    session_id: Ident
    reason: EndReason


# --------------------------------------------------------------------------------------
# Booth ↔ server
# --------------------------------------------------------------------------------------


class BoothHello(Model):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    booth_id: Ident
    credential: Annotated[str, Field(min_length=8, max_length=200)]


class RequestHelp(Model):
    """The resident asks for a remote counter. ``request_id`` is chosen by the booth so
    that a request re-sent after a reconnect is recognised, not duplicated."""

    type: Literal["request_help"] = "request_help"
    request_id: Ident
    department: Ident
    language: Language


class CancelRequest(Model):
    type: Literal["cancel_request"] = "cancel_request"
    request_id: Ident


class DeviceStatusReport(Model):
    """The state of every device of the booth; sent after each welcome and whenever a
    device changes. Each report replaces the previous one."""

    type: Literal["device_status"] = "device_status"
    devices: Annotated[list[DeviceReport], Field(max_length=32)]


BoothToServer = Annotated[
    BoothHello
    | RequestHelp
    | CancelRequest
    | Relay
    | HangUp
    | MediaConnected
    | MediaFailed
    | DeviceStatusReport,
    Field(discriminator="type"),
]


class BoothWelcome(Model):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    booth: BoothInfo
    departments: list[Department]
    languages: list[Language]
    heartbeat_s: float
    # After a reconnect: the request still waiting for this booth, if any, or the
    # session it is still in (the media may have survived a signaling drop).
    pending_request_id: Ident | None = None
    session_id: Ident | None = None


class QueueStatus(Model):
    """Sent when a request is accepted into the queue and whenever the queue moves."""

    type: Literal["queue_status"] = "queue_status"
    request_id: Ident
    position: Annotated[int, Field(ge=1)]  # 1 = next to be served
    estimated_wait_s: Annotated[int, Field(ge=0)] | None  # None: not enough data to say
    staff_online: Annotated[int, Field(ge=0)]  # staff with the skill who are signed in
    ringing: bool = False  # an offer is ringing at a staff member right now


class RequestClosed(Model):
    """The request left the queue without a call (cancelled, or abandoned by the server)."""

    type: Literal["request_closed"] = "request_closed"
    request_id: Ident
    reason: Literal["cancelled", "abandoned"]


class CallStarted(Model):
    """Sent to both peers when staff accept. The booth creates the WebRTC offer."""

    type: Literal["call_started"] = "call_started"
    session_id: Ident
    request_id: Ident
    role: Literal["offerer", "answerer"]
    booth: BoothInfo
    staff: StaffInfo
    department: Ident
    language: Language
    ice_servers: list[IceServer]


ServerToBooth = Annotated[
    BoothWelcome | QueueStatus | RequestClosed | CallStarted | Relay | SessionEnded | ErrorMessage,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------
# Staff ↔ server
# --------------------------------------------------------------------------------------


class StaffHello(Model):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    token: Annotated[str, Field(min_length=10, max_length=2000)]


class SetState(Model):
    """Staff choose between available and away; the other states are the server's."""

    type: Literal["set_state"] = "set_state"
    state: Literal["available", "away"]


class AcceptOffer(Model):
    type: Literal["accept"] = "accept"
    offer_id: Ident


class DeclineOffer(Model):
    type: Literal["decline"] = "decline"
    offer_id: Ident


class WrapUpDone(Model):
    """Ends wrap-up with the note for the session; the staff member becomes available."""

    type: Literal["wrap_up_done"] = "wrap_up_done"
    session_id: Ident
    note: Note = ""


StaffToServer = Annotated[
    StaffHello
    | SetState
    | AcceptOffer
    | DeclineOffer
    | WrapUpDone
    | Relay
    | HangUp
    | MediaConnected
    | MediaFailed,
    Field(discriminator="type"),
]


class StaffWelcome(Model):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    staff: StaffInfo
    role: StaffRole
    site_id: Ident | None = None  # branch staff: the site they watch
    skills: list[Skill]
    departments: list[Department]
    state: StaffState
    heartbeat_s: float
    # After a reconnect during a call, the session it was in (the page rejoins it).
    session_id: Ident | None = None


class StaffStateChanged(Model):
    type: Literal["state"] = "state"
    state: StaffState
    reason: ShortText | None = None  # e.g. "missed 3 offers in a row"


class ServiceNotice(Model):
    """Several signaling nodes: the node this staff member is connected to cannot reach
    the others (Redis) — ``degraded``: calls go on, what they send is handled once it is
    back; ``ok``: it is back."""

    type: Literal["service"] = "service"
    state: Literal["degraded", "ok"]


class QueueSnapshot(Model):
    """The waiting requests this staff member could take (their skills), oldest first."""

    type: Literal["queue"] = "queue"
    entries: list[QueueEntry]


class Offer(Model):
    """A request rings at this staff member for ``ring_timeout_s`` seconds."""

    type: Literal["offer"] = "offer"
    offer_id: Ident
    request_id: Ident
    booth: BoothInfo
    department: Ident
    language: Language
    requested_at: datetime
    ring_timeout_s: float


class OfferWithdrawn(Model):
    type: Literal["offer_withdrawn"] = "offer_withdrawn"
    offer_id: Ident
    reason: WithdrawReason


class BoothsSnapshot(Model):
    """Live state of booths (branch staff: their site; HQ staff: all sites)."""

    type: Literal["booths"] = "booths"
    booths: list[BoothStatus]


ServerToStaff = Annotated[
    StaffWelcome
    | StaffStateChanged
    | QueueSnapshot
    | Offer
    | OfferWithdrawn
    | CallStarted
    | Relay
    | SessionEnded
    | BoothsSnapshot
    | ServiceNotice
    | ErrorMessage,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------
# Peer data channel (booth ↔ staff browser, peer to peer; never through the server)
# --------------------------------------------------------------------------------------

# The booth (the offerer) creates one reliable, ordered RTCDataChannel with this label
# before createOffer; the staff page receives it with ``ondatachannel``. Card data (基本4情報)
# travels only here, DTLS-encrypted between the two peers. The PIN never leaves the booth
# and 個人番号 is never read in this flow.
DATA_CHANNEL_LABEL = "ekichika"


class CardReaderState(StrEnum):
    READY = "ready"  # a reader, no card
    CARD_PRESENT = "card_present"
    BUSY = "busy"  # talking to the card
    OFFLINE = "offline"  # no reader connected, or no PC/SC service
    ERROR = "error"
    NONE = "none"  # the booth has no card reader configured


class CardReadStage(StrEnum):
    WAITING_FOR_CARD = "waiting_for_card"
    WAITING_FOR_PIN = "waiting_for_pin"  # the resident types the PIN on the booth screen
    READING = "reading"


class CardReadFailure(StrEnum):
    WRONG_PIN = "wrong_pin"  # remaining_tries says how many are left (1 or 2)
    LOCKED = "locked"  # no tries left: the PIN must be reset at the city office
    REMOVED = "removed"  # the card left the reader; nothing was read
    NO_READER = "no_reader"
    CANCELLED = "cancelled"  # by staff or by the resident
    ERROR = "error"


class CardReadRequest(Model):
    """Staff → booth: ask the resident for the card's 4 basic facts."""

    type: Literal["card_read_request"] = "card_read_request"
    request_id: Ident


class CardReadCancel(Model):
    """Staff → booth: stop the read (the kiosk leaves the card screens)."""

    type: Literal["card_read_cancel"] = "card_read_cancel"
    request_id: Ident | None = None  # None: whatever read is running


class CardStatus(Model):
    """Booth → staff: the card reader now (sent when the channel opens and on changes)."""

    type: Literal["card_status"] = "card_status"
    reader: CardReaderState
    card_present: bool
    remaining_tries: Annotated[int, Field(ge=0, le=15)] | None = None  # when known


class CardReadProgress(Model):
    type: Literal["card_read_progress"] = "card_read_progress"
    request_id: Ident
    stage: CardReadStage
    remaining_tries: Annotated[int, Field(ge=0, le=15)] | None = None  # from waiting_for_pin


class CardBasicInfo(Model):
    """Booth → staff: 基本4情報 as printed on the card. Personal data: shown, never stored."""

    type: Literal["card_basic_info"] = "card_basic_info"
    request_id: Ident
    name: Annotated[str, Field(max_length=400)]  # 氏名
    address: Annotated[str, Field(max_length=1000)]  # 住所 (can exceed 200 bytes)
    birth_date: date  # 生年月日, ISO 8601 on the wire
    sex: Literal["male", "female", "other", "unknown"]  # 性別


class CardReadFailed(Model):
    """Booth → staff: the read ended without data (nothing partial is ever sent)."""

    type: Literal["card_read_failed"] = "card_read_failed"
    request_id: Ident
    reason: CardReadFailure
    remaining_tries: Annotated[int, Field(ge=0, le=15)] | None = None
    message: ShortText = ""  # for staff, in Japanese


# Document camera stills (書画カメラ): full-resolution pictures of a document, booth → staff.
# ``still_offer`` announces one still (size, SHA-256 of the JPEG, picture size) on the call's
# data channel. Two ways carry the bytes:
# * relay (when the booth knows the console's URL): the booth encrypts the JPEG with a fresh
#   AES-256-GCM key, streams the ciphertext over HTTPS into the console's still relay, which
#   hands it on to the staff member's download as it arrives and keeps nothing. The key, the
#   nonce and the one-time relay token travel only in ``still_offer.relay``, on the data
#   channel (DTLS, peer to peer): the server never sees the picture. The booth sends no
#   ``still_done``; if the upload fails it sends ``still_offer`` again with the same
#   ``still_id`` and no relay, and the data channel path follows.
# * data channel: binary frames (STILL_CHUNK_HEADER: the 16 bytes of ``still_id`` in hex,
#   then the 4-byte big-endian offset, then the data), then ``still_done``.
# Staff check size and SHA-256 before showing it, and ignore a second offer for a still they
# already have. The still is stored only when the staff member saves it to the case.
STILL_ID_BYTES = 16
STILL_CHUNK_HEADER = STILL_ID_BYTES + 4
StillId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RelayToken = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Base64Url = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)]


class StillRequest(Model):
    """Staff → booth: take a full-resolution still with the document camera."""

    type: Literal["still_request"] = "still_request"
    request_id: Ident


class StillRelayTicket(Model):
    """How to fetch and open a still from the console's still relay (see above)."""

    token: RelayToken  # one-time: GET /api/sessions/{session_id}/stills/relay/{token}
    key: Base64Url  # AES-256-GCM key, 32 bytes
    nonce: Base64Url  # 12 bytes; the ciphertext is the JPEG's size plus a 16-byte tag


class StillOffer(Model):
    """Booth → staff: a still follows, by relay or in binary frames (for every still)."""

    type: Literal["still_offer"] = "still_offer"
    still_id: StillId
    request_id: Ident | None = None  # the staff request, None when the resident asked
    origin: Literal["staff", "resident"]
    size: Annotated[int, Field(gt=0, le=64 * 1024 * 1024)]  # bytes
    sha256: Sha256Hex
    width: Annotated[int, Field(gt=0, le=20000)]
    height: Annotated[int, Field(gt=0, le=20000)]
    mime: Literal["image/jpeg"] = "image/jpeg"
    relay: StillRelayTicket | None = None  # None: binary frames on the data channel follow


class StillDone(Model):
    """Booth → staff: every byte of ``still_id`` has been sent."""

    type: Literal["still_done"] = "still_done"
    still_id: StillId


class StillFailed(Model):
    """Booth → staff: no still (no document camera, or the camera failed)."""

    type: Literal["still_failed"] = "still_failed"
    request_id: Ident | None = None
    message: ShortText = ""  # for staff, in Japanese


# -- printing at the booth (HQ sends the document, the booth's print spool prints it) ---------

# Each data-channel message stays well under both wire.MAX_MESSAGE_BYTES and the 64 KiB
# SCTP message size every WebRTC stack accepts: an A4 PDF travels in base64 chunks of at
# most PRINT_CHUNK_BYTES raw bytes.
PRINT_CHUNK_BYTES = 36 * 1024
PRINT_MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_PRINT_MAX_CHUNK_B64 = (PRINT_CHUNK_BYTES + 2) // 3 * 4
ReceiptAlign = Literal["left", "center", "right"]


class ReceiptText(Model):
    kind: Literal["text"] = "text"
    text: Annotated[str, Field(max_length=1000)]
    size: Annotated[int, Field(ge=8, le=128)] = 28  # dots (24 ≈ 3 mm at 203 dpi)
    bold: bool = False
    align: ReceiptAlign = "left"


class ReceiptQr(Model):
    kind: Literal["qr"] = "qr"
    data: Annotated[str, Field(min_length=1, max_length=500)]
    module: Annotated[int, Field(ge=1, le=16)] = 6
    align: ReceiptAlign = "center"


class ReceiptRule(Model):
    kind: Literal["rule"] = "rule"
    thickness: Annotated[int, Field(ge=1, le=32)] = 2


class ReceiptSpace(Model):
    kind: Literal["space"] = "space"
    dots: Annotated[int, Field(ge=1, le=400)] = 16


ReceiptBlock = Annotated[
    ReceiptText | ReceiptQr | ReceiptRule | ReceiptSpace, Field(discriminator="kind")
]


class ReceiptDocument(Model):
    """A receipt as blocks laid out top to bottom (``booth.devices.receipt.Receipt``)."""

    title: ShortText = "receipt"
    blocks: Annotated[list[ReceiptBlock], Field(min_length=1, max_length=64)]


class PrintJobState(StrEnum):
    QUEUED = "queued"  # waiting for the printer (``reason`` says why, when it waits)
    PRINTING = "printing"
    PRINTED = "printed"
    FAILED = "failed"  # may be on paper or not: only a reprint command prints it again
    CANCELLED = "cancelled"


class DocumentFetch(Model):
    """Where the booth fetches an A4 document instead of receiving it in chunks: a one-time
    token for ``GET /api/booth/documents/{token}`` on the HQ console (short-lived, bound to
    the document, this booth and this session). Issued certificates travel this way."""

    token: RelayToken


class PrintJobRequest(Model):
    """Staff → booth: print a document. ``job_id`` is chosen by staff (a UUID): the same id
    again never prints twice. ``title`` names the job in print queues and logs and never
    holds personal data. ``receipt``: the receipt itself (target ``receipt``); for ``a4``
    the PDF follows in ``print_job_chunk`` messages, or, with ``fetch``, the booth fetches
    it from the console; either way it must match ``size`` and ``sha256``."""

    type: Literal["print_job"] = "print_job"
    job_id: Ident
    target: Literal["receipt", "a4"]
    title: ShortText
    receipt: ReceiptDocument | None = None
    size: Annotated[int, Field(ge=1, le=PRINT_MAX_DOCUMENT_BYTES)] | None = None
    sha256: Sha256Hex | None = None
    fetch: DocumentFetch | None = None  # a4 only: no chunks follow


class PrintJobChunk(Model):
    """Staff → booth: one piece of an A4 job's PDF, in order from ``seq`` 0."""

    type: Literal["print_job_chunk"] = "print_job_chunk"
    job_id: Ident
    seq: Annotated[int, Field(ge=0, le=10_000)]
    data_b64: Annotated[str, Field(max_length=_PRINT_MAX_CHUNK_B64)]
    last: bool = False


class PrintJobCommand(Model):
    """Staff → booth: reprint a job (it may already be on paper: staff confirm first) or
    cancel one that has not started printing."""

    type: Literal["print_job_command"] = "print_job_command"
    job_id: Ident
    action: Literal["reprint", "cancel"]
    # An authorised reprint of a fetched document: ``reprint_no`` counts the reprints HQ
    # authorised (1, 2 …); the booth prints once per number, never again for a repeat of
    # the same command. ``fetch``: where to get the document if the booth no longer has it.
    reprint_no: Annotated[int, Field(ge=1, le=1000)] | None = None
    fetch: DocumentFetch | None = None


class PrintJobStatus(Model):
    """Booth → staff: a job of this session changed state (also sent for each of the
    session's jobs when the data channel opens, and in answer to a repeated request)."""

    type: Literal["print_job_status"] = "print_job_status"
    job_id: Ident
    state: PrintJobState
    reason: ShortText | None = None
    attempts: Annotated[int, Field(ge=0)] = 0
    reprints: Annotated[int, Field(ge=0)] = 0
    updated_at: datetime


class PrintJobRejected(Model):
    """Booth → staff: a request or command could not be carried out (the document did not
    arrive whole, the booth has no such printer, a job being printed cannot be cancelled…);
    the job's state, if it has one, is unchanged."""

    type: Literal["print_job_rejected"] = "print_job_rejected"
    job_id: Ident
    reason: ShortText


# -- forms (書かない窓口): the staff member's filled form, checked and signed at the booth --------

# The staff member fills the form in the console; the console stores each shown state as a
# numbered revision (``POST /api/sessions/{sid}/forms/{form_id}/show``) and sends it as
# ``form_show``. The booth shows it, the resident asks for a correction or signs. A signature
# belongs to the revision it was made on: a new ``form_show`` (the staff member edited after
# a correction) makes any older signature worthless, and the console refuses to submit one.
FORM_MAX_SECTIONS = 30
FORM_MAX_ITEMS = 120
FORM_SIGNATURE_MAX_STROKES = 64
FORM_SIGNATURE_MAX_STROKE_POINTS = 1000
FORM_SIGNATURE_MAX_POINTS = 1500
"""A whole signature stays under 64 KiB of JSON (about 34 bytes a point at 4 decimals)."""
FormIdent = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$")]
FormFieldIdent = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9_]*$")]
FormRevision = Annotated[int, Field(ge=1, le=1_000_000)]
FormText = Annotated[str, Field(max_length=2000)]
FormLabel = Annotated[str, Field(max_length=600)]


class FormViewItem(Model):
    """One field as the resident sees it (``shared.forms.DisplayItem`` without the type)."""

    field_id: FormFieldIdent
    label_ja: FormLabel
    label_en: FormLabel
    value_ja: FormText  # "" when empty; dates in both calendars, choices by label
    value_en: FormText
    required: bool = False
    filled: bool = False


class FormViewSection(Model):
    section_id: FormFieldIdent
    title_ja: FormLabel
    title_en: FormLabel
    items: Annotated[list[FormViewItem], Field(max_length=FORM_MAX_ITEMS)]


class FormShow(Model):
    """Staff → booth: show this revision of the form for checking (replaces any earlier
    one; a signature of an earlier revision is dropped)."""

    type: Literal["form_show"] = "form_show"
    form_id: FormIdent
    revision: FormRevision
    title_ja: FormLabel
    title_en: FormLabel
    declaration_ja: FormLabel = ""
    declaration_en: FormLabel = ""
    sections: Annotated[list[FormViewSection], Field(max_length=FORM_MAX_SECTIONS)]


class FormSignRequest(Model):
    """Staff → booth: ask the resident to sign ``revision`` (the one on the screen)."""

    type: Literal["form_sign_request"] = "form_sign_request"
    form_id: FormIdent
    revision: FormRevision


class FormClose(Model):
    """Staff → booth: take the form off the screen (submitted, or abandoned)."""

    type: Literal["form_close"] = "form_close"
    form_id: FormIdent | None = None  # None: whatever form is shown
    submitted: bool = False  # the application was accepted (the kiosk says so)


class FormCorrectionReason(StrEnum):
    """What the resident chose on the kiosk (no typing at the booth)."""

    NAME = "name"  # 氏名が違う
    ADDRESS = "address"  # 住所が違う
    BIRTH_DATE = "birth_date"  # 生年月日が違う
    FIELD = "field"  # この項目が違う (with field_id)
    OTHER = "other"  # その他（職員に口頭で伝える）


class FormCorrectionRequest(Model):
    """Booth → staff: the resident asks for a correction of ``revision``."""

    type: Literal["form_correction_request"] = "form_correction_request"
    form_id: FormIdent
    revision: FormRevision
    reason: FormCorrectionReason
    field_id: FormFieldIdent | None = None  # the row the resident touched, if any


class FormSignaturePoint(Model):
    """A point of the pad: x to the right, y down, both 0..1; ``t`` ms since the first."""

    x: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    y: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    t: Annotated[int, Field(ge=0, le=3_600_000)]


FormSignatureStroke = Annotated[
    list[FormSignaturePoint], Field(min_length=1, max_length=FORM_SIGNATURE_MAX_STROKE_POINTS)
]


class FormSignatureStrokes(Model):
    """The finger strokes, as ``shared.forms.Signature`` takes them (same field names)."""

    strokes: Annotated[
        list[FormSignatureStroke], Field(min_length=1, max_length=FORM_SIGNATURE_MAX_STROKES)
    ]
    pad_aspect_ratio: Annotated[float, Field(ge=0.2, le=10.0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _bounded(self) -> FormSignatureStrokes:
        total = sum(len(s) for s in self.strokes)
        if total > FORM_SIGNATURE_MAX_POINTS:
            raise ValueError(
                f"a signature has at most {FORM_SIGNATURE_MAX_POINTS} points (got {total})"
            )
        return self


class FormSignature(Model):
    """Booth → staff: the resident signed ``revision`` and pressed 確定."""

    type: Literal["form_signature"] = "form_signature"
    form_id: FormIdent
    revision: FormRevision
    signature: FormSignatureStrokes


class FormSignCancelled(Model):
    """Booth → staff: the resident left the signature pad without signing (やめる)."""

    type: Literal["form_sign_cancelled"] = "form_sign_cancelled"
    form_id: FormIdent
    revision: FormRevision


PeerData = Annotated[
    CardReadRequest
    | CardReadCancel
    | CardStatus
    | CardReadProgress
    | CardBasicInfo
    | CardReadFailed
    | StillRequest
    | StillOffer
    | StillDone
    | StillFailed
    | PrintJobRequest
    | PrintJobChunk
    | PrintJobCommand
    | PrintJobStatus
    | PrintJobRejected
    | FormShow
    | FormSignRequest
    | FormClose
    | FormCorrectionRequest
    | FormSignature
    | FormSignCancelled,
    Field(discriminator="type"),
]
