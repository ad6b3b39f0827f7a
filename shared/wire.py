"""The only JSON ↔ model boundary of the protocol.

Every WebSocket text frame is decoded here into one of the channel unions of
:mod:`shared.protocol`, and every outgoing model is encoded here. Handlers receive models,
never dicts; a malformed frame becomes a :class:`~shared.errors.ProtocolError` with a
code the peer can act on.

:func:`decode_frame` also hands back the frame's own text when it validated strictly, so
that a message forwarded unchanged (the signaling server's ``relay``) is not serialised a
second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.errors import ProtocolError
from shared.kiosk_protocol import AgentToPage, PageToAgent
from shared.protocol import (
    BoothToServer,
    ErrorCode,
    PeerData,
    RelayPayload,
    ServerToBooth,
    ServerToStaff,
    StaffToServer,
)

MAX_MESSAGE_BYTES: Final = 128 * 1024

T = TypeVar("T")

booth_to_server: Final[TypeAdapter[BoothToServer]] = TypeAdapter(BoothToServer)
server_to_booth: Final[TypeAdapter[ServerToBooth]] = TypeAdapter(ServerToBooth)
staff_to_server: Final[TypeAdapter[StaffToServer]] = TypeAdapter(StaffToServer)
server_to_staff: Final[TypeAdapter[ServerToStaff]] = TypeAdapter(ServerToStaff)
relay_payload: Final[TypeAdapter[RelayPayload]] = TypeAdapter(RelayPayload)
# The booth's local kiosk page ↔ the booth agent (shared.kiosk_protocol).
kiosk_page_to_agent: Final[TypeAdapter[PageToAgent]] = TypeAdapter(PageToAgent)
kiosk_agent_to_page: Final[TypeAdapter[AgentToPage]] = TypeAdapter(AgentToPage)
# Booth ↔ staff browser on the WebRTC data channel (shared.protocol.PeerData).
peer_data: Final[TypeAdapter[PeerData]] = TypeAdapter(PeerData)

CHANNELS: Final[dict[str, TypeAdapter[Any]]] = {
    "booth_to_server": booth_to_server,
    "server_to_booth": server_to_booth,
    "staff_to_server": staff_to_server,
    "server_to_staff": server_to_staff,
    "relay_payload": relay_payload,
    "kiosk_page_to_agent": kiosk_page_to_agent,
    "kiosk_agent_to_page": kiosk_agent_to_page,
    "peer_data": peer_data,
}


@dataclass(frozen=True, slots=True)
class Decoded(Generic[T]):
    """A decoded frame. ``frame`` is the frame's own text when it passed strict
    validation (every value of its declared JSON type, no coercion, no unknown key): it
    then means exactly what the model means, and a message that is forwarded unchanged
    (``relay``) can be sent on as this text instead of being serialised again."""

    message: T
    frame: str | None


def decode(adapter: TypeAdapter[T], data: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """Parse one frame. Raises ProtocolError(BAD_JSON | TOO_LARGE | BAD_MESSAGE)."""
    return decode_frame(adapter, data, max_bytes=max_bytes).message


def decode_frame(
    adapter: TypeAdapter[T], data: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Decoded[T]:
    """Parse one frame, keeping its text when it validates strictly (see :class:`Decoded`).

    Fast path: pydantic parses and validates the JSON text in one pass, in strict mode.
    A frame that fails it goes through the lenient path (``json.loads``, then validation
    with pydantic's usual conversions), which also produces the error the peer gets;
    either way the model is the same. Raises ProtocolError(BAD_JSON | TOO_LARGE |
    BAD_MESSAGE)."""
    size = _byte_size(data)
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"message of {size} bytes exceeds the limit of {max_bytes}"
        )
    try:
        strict = adapter.validate_json(data, strict=True)
    except ValidationError:
        pass
    else:
        return Decoded(strict, data if isinstance(data, str) else None)
    return Decoded(_decode_lenient(adapter, data), None)


def _byte_size(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    return len(data) if data.isascii() else len(data.encode())


def _decode_lenient(adapter: TypeAdapter[T], data: str | bytes) -> T:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(ErrorCode.BAD_JSON, "message is not valid JSON") from err
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "message must be a JSON object")
    ref = raw.get("type") if isinstance(raw.get("type"), str) else None
    try:
        return adapter.validate_python(raw)
    except ValidationError as err:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, _summarise(err), ref=ref[:50] if ref else None
        ) from err


def encode(message: BaseModel) -> str:
    """Serialise one model to a frame (compact JSON, UTF-8 kept as is)."""
    return message.model_dump_json()


def _summarise(err: ValidationError) -> str:
    """A short, safe description of what was wrong (no echo of the offending values)."""
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "message"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - len(parts)
    text = "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
    return text[:200]
