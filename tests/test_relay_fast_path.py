"""The relay fast path: a ``relay`` that validates strictly goes on as the text it came in;
anything the lenient path accepts is forwarded re-encoded; nothing invalid goes through."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from shared import wire
from shared.protocol import (
    AcceptOffer,
    CallStarted,
    ErrorCode,
    ErrorMessage,
    IcePayload,
    Offer,
    Relay,
    RequestHelp,
    SdpPayload,
    SetState,
)
from tests.signaling_support import (
    BoothClient,
    StaffClient,
    connect_booth,
    connect_staff,
    running_signaling,
)

BOOTH = "seiseki-1"


def test_decode_frame_keeps_the_text_only_of_strictly_valid_frames() -> None:
    canonical = wire.encode(
        Relay(session_id="s-1", payload=SdpPayload(sdp_type="offer", sdp="v=0\r\n"))
    )
    spaced = '{ "payload": {"sdp": "v=0\\r\\n", "sdp_type": "offer", "type": "sdp"},\n'
    spaced += ' "session_id": "s-1", "type": "relay" }'
    for text in (canonical, spaced):
        decoded = wire.decode_frame(wire.booth_to_server, text)
        assert decoded.frame is text
        assert decoded.message == wire.decode(wire.booth_to_server, canonical)
    # A number as a string is converted (lenient), so the text is not kept.
    coerced = '{"type":"relay","session_id":"s-1","payload":{"type":"ice",'
    coerced += '"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdp_mline_index":"0"}}'
    decoded = wire.decode_frame(wire.booth_to_server, coerced)
    assert decoded.frame is None
    assert isinstance(decoded.message, Relay)
    assert isinstance(decoded.message.payload, IcePayload)
    assert decoded.message.payload.sdp_mline_index == 0
    # Bytes are decoded, but there is no text to forward.
    assert wire.decode_frame(wire.booth_to_server, canonical.encode()).frame is None


async def _relay_frame(staff: StaffClient, within: float = 5.0) -> str:
    """The next relay frame at staff, as the text that arrived."""
    while True:
        msg = await staff.ws.receive(timeout=within)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        text: str = msg.data
        if json.loads(text)["type"] == "relay":
            return text


async def _in_call(booth: BoothClient, staff: StaffClient) -> str:
    await staff.send(SetState(state="available"))
    await booth.send(RequestHelp(request_id="r-fast", department="shimin", language="ja"))
    offer = await staff.expect(Offer)
    await staff.send(AcceptOffer(offer_id=offer.offer_id))
    started = await booth.expect(CallStarted)
    await staff.expect(CallStarted)
    return started.session_id


async def test_relays_go_on_verbatim_or_re_encoded_and_invalid_ones_not_at_all(
    tmp_path: Path,
) -> None:
    async with (
        running_signaling(tmp_path) as (_c, ws_url, creds, token),
        connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth,
        connect_staff(ws_url, token("sato")) as staff,
    ):
        session_id = await _in_call(booth, staff)

        # Strictly valid, in its own layout: staff get exactly this text.
        sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" + "a=x\r\n" * 600
        payload = json.dumps({"sdp": sdp, "sdp_type": "offer", "type": "sdp"})
        verbatim = f'{{"session_id": "{session_id}",  "payload": {payload}, "type": "relay"}}'
        await booth.send_raw(verbatim)
        assert await _relay_frame(staff) == verbatim

        # Accepted only with a conversion: staff get the message encoded by the server.
        coerced = (
            f'{{"type":"relay","session_id":"{session_id}","payload":{{"type":"ice",'
            '"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdp_mline_index":"0"}}'
        )
        await booth.send_raw(coerced)
        expected = Relay(
            session_id=session_id,
            payload=IcePayload(
                candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host", sdp_mline_index=0
            ),
        )
        assert await _relay_frame(staff) == wire.encode(expected)

        # Unknown keys, in the envelope or the payload, are refused and not forwarded.
        for bad in (
            verbatim.replace('"type": "relay"', '"type": "relay", "to": "suzuki"'),
            verbatim.replace('"type": "sdp"', '"type": "sdp", "x": 1'),
        ):
            await booth.send_raw(bad)
            error = await booth.expect(ErrorMessage)
            assert (error.code, error.ref) == (ErrorCode.BAD_MESSAGE, "relay")
        await staff.expect_none(Relay, within=0.3)

        # And the other way round, staff → booth, the same.
        answer = wire.encode(
            Relay(session_id=session_id, payload=SdpPayload(sdp_type="answer", sdp=sdp))
        )
        await staff.send_raw(answer.replace(",", ", "))
        assert await booth.expect(Relay) == wire.decode(wire.staff_to_server, answer)
