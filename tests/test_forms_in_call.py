"""書かない窓口 inside a real call: real signaling, the booth agent and the automated staff
peer on the call's data channel.

The staff side sends the ``form_show`` the console's API builds; the kiosk's screen state
carries the form; the resident's correction and finger signature come back to staff over
the data channel, strokes intact, and a signature belongs to the revision it was drawn on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TypeVar

from bench.staff_peer import AutoStaff
from booth.agent import BoothAgent
from booth.form_view import FormViewState
from hq_console.forms_api import form_show_message
from shared import wire
from shared.forms import Signature, TemplateCatalog, fill_from_card, validate_values
from shared.kiosk_protocol import (
    FormCorrectionTouched,
    FormSignCancelTouched,
    FormSignClearTouched,
    FormSignConfirmTouched,
    FormStroke,
    KioskForm,
    KioskFormStage,
)
from shared.protocol import (
    CardBasicInfo,
    FormClose,
    FormCorrectionReason,
    FormCorrectionRequest,
    FormShow,
    FormSignature,
    FormSignaturePoint,
    FormSignCancelled,
    FormSignRequest,
    Model,
)
from tests.call_support import booth_config, start_call
from tests.call_support import signaling as signaling
from tests.call_support import staff as staff
from tests.signaling_support import RunningSignaling

__all__ = ["signaling", "staff"]

M = TypeVar("M", bound=Model)

CARD = CardBasicInfo(
    request_id="card-1",
    name="𠮷田　花子",
    address="東京都多摩市関戸六丁目12番地1",
    birth_date=date(1985, 4, 1),
    sex="female",
)


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def next_of(staff: AutoStaff, session_id: str, kind: type[M], timeout_s: float = 10) -> M:
    """The next message of ``kind`` from the booth (others, like card_status, skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await staff.next_peer_data(session_id, timeout_s)
            if isinstance(message, kind):
                return message


def _form_show(revision: int, **typed: str | bool) -> FormShow:
    catalog = TemplateCatalog.load()
    template = catalog.get("juminhyo-request")
    values = fill_from_card(template, CARD).merged(
        validate_values(template, typed, complete=False).values
    )
    result = validate_values(template, values, complete=False)
    assert result.ok, result.errors
    return form_show_message(template, result.values, revision)


def _kiosk_form(agent: BoothAgent) -> KioskForm | None:
    return agent.screen().form


def _stroke(n: int, phase: float, t0: int) -> list[FormSignaturePoint]:
    return [
        FormSignaturePoint(
            x=round(0.05 + 0.9 * i / max(1, n - 1), 4),
            y=round(0.5 + 0.4 * math.sin(phase + i / 7), 4),
            t=t0 + i * 8,
        )
        for i in range(n)
    ]


async def test_form_shown_corrected_and_signed_over_the_data_channel(
    signaling: RunningSignaling, staff: AutoStaff, tmp_path: Path
) -> None:
    agent = BoothAgent(booth_config(signaling, tmp_path))
    await agent.start()
    try:
        await eventually(lambda: agent.signaling.connected, 10, "booth online")
        record = await start_call(agent, staff)
        session_id = record.session_id
        assert session_id is not None

        # ------------------------------------------------ form_show reaches the kiosk
        first = _form_show(1, applicant_kana="よしだ はなこ")
        staff.send_peer_data(session_id, first)
        await eventually(lambda: _kiosk_form(agent) is not None, 10, "the form on the kiosk")
        form = _kiosk_form(agent)
        assert form is not None
        assert (form.form_id, form.revision, form.stage) == (
            "juminhyo-request",
            1,
            KioskFormStage.REVIEW,
        )
        assert form.title_ja == "住民票の写し等交付請求書"
        items = {i.field_id: i for s in form.sections for i in s.items}
        assert items["applicant_name"].value_ja == "𠮷田　花子"
        assert items["applicant_kana"].value_ja == "ヨシダ　ハナコ"
        assert items["applicant_birth_date"].value_ja == "昭和60年4月1日（1985年4月1日）"
        assert items["applicant_birth_date"].label_en == "Date of birth"
        # The call's screen stays the call (its video keeps running under the form).
        assert agent.screen().screen.value == "in_call"

        # ------------------------------------------------ a correction comes back
        await agent.handle_touch(
            FormCorrectionTouched(
                revision=1, reason=FormCorrectionReason.FIELD, field_id="applicant_kana"
            )
        )
        correction = await next_of(staff, session_id, FormCorrectionRequest)
        assert correction == FormCorrectionRequest(
            form_id="juminhyo-request",
            revision=1,
            reason=FormCorrectionReason.FIELD,
            field_id="applicant_kana",
        )
        form = _kiosk_form(agent)
        assert form is not None and form.correction is FormCorrectionReason.FIELD
        # A field the form does not show is not passed on.
        await agent.handle_touch(
            FormCorrectionTouched(
                revision=1, reason=FormCorrectionReason.FIELD, field_id="no_such_field"
            )
        )
        correction = await next_of(staff, session_id, FormCorrectionRequest)
        assert (correction.reason, correction.field_id) == (FormCorrectionReason.OTHER, None)

        # ------------------------------------------------ revision 2 replaces revision 1
        staff.send_peer_data(session_id, _form_show(2, applicant_kana="ヨシダ　ハナエ"))
        await eventually(
            lambda: (f := _kiosk_form(agent)) is not None and f.revision == 2, 10, "revision 2"
        )
        form = _kiosk_form(agent)
        assert form is not None and form.correction is None
        items = {i.field_id: i for s in form.sections for i in s.items}
        assert items["applicant_kana"].value_ja == "ヨシダ　ハナエ"
        # An older revision arriving late does not replace it.
        staff.send_peer_data(session_id, first)
        # Signing revision 1 is not asked of the resident any more.
        staff.send_peer_data(session_id, FormSignRequest(form_id="juminhyo-request", revision=1))
        staff.send_peer_data(session_id, FormSignRequest(form_id="juminhyo-request", revision=2))
        await eventually(
            lambda: agent.forms.state is FormViewState.SIGNING, 10, "the signature pad"
        )
        form = _kiosk_form(agent)
        assert form is not None and form.revision == 2 and form.stage is KioskFormStage.SIGNING

        # ------------------------------------------------ strokes, 書き直す, 確定
        attempt = form.attempt
        scribble = _stroke(20, 0.0, 0)
        await agent.handle_touch(FormStroke(revision=2, attempt=attempt, points=scribble))
        await agent.handle_touch(FormSignClearTouched(revision=2))
        form = _kiosk_form(agent)
        assert form is not None and form.strokes == 0 and form.attempt == attempt + 1
        attempt = form.attempt
        # A stroke of the cleared pad (sent before the page saw the new attempt) is dropped.
        await agent.handle_touch(FormStroke(revision=2, attempt=attempt - 1, points=scribble))
        strokes = [_stroke(40, 0.0, 0), _stroke(25, 1.5, 700), _stroke(1, 0.0, 1300)]
        for points in strokes:
            await agent.handle_touch(FormStroke(revision=2, attempt=attempt, points=points))
        form = _kiosk_form(agent)
        assert form is not None and form.strokes == 3
        await agent.handle_touch(
            FormSignConfirmTouched(
                revision=2, attempt=attempt, stroke_count=3, pad_aspect_ratio=3.2
            )
        )
        signed = await next_of(staff, session_id, FormSignature)
        assert (signed.form_id, signed.revision) == ("juminhyo-request", 2)
        assert signed.signature.strokes == strokes
        assert signed.signature.pad_aspect_ratio == 3.2
        # What the console submits: the same strokes as the forms library's Signature.
        signature = Signature.model_validate(signed.signature.model_dump())
        assert signature.point_count == 66
        form = _kiosk_form(agent)
        assert form is not None and form.stage is KioskFormStage.SIGNED

        # ------------------------------------------------ the largest signature fits
        staff.send_peer_data(session_id, FormSignRequest(form_id="juminhyo-request", revision=2))
        await eventually(lambda: agent.forms.state is FormViewState.SIGNING, 10, "the pad again")
        form = _kiosk_form(agent)
        assert form is not None
        big = [_stroke(300, k / 3, k * 3000) for k in range(5)]  # 1500 points
        for points in big:
            await agent.handle_touch(FormStroke(revision=2, attempt=form.attempt, points=points))
        # One more point would exceed the bound: dropped.
        await agent.handle_touch(
            FormStroke(revision=2, attempt=form.attempt, points=_stroke(1, 0, 20000))
        )
        await agent.handle_touch(
            FormSignConfirmTouched(
                revision=2, attempt=form.attempt, stroke_count=5, pad_aspect_ratio=2.5
            )
        )
        signed = await next_of(staff, session_id, FormSignature)
        assert signed.signature.strokes == big
        assert len(wire.encode(signed)) < 64 * 1024

        # ------------------------------------------------ やめる on the pad
        staff.send_peer_data(session_id, FormSignRequest(form_id="juminhyo-request", revision=2))
        await eventually(lambda: agent.forms.state is FormViewState.SIGNING, 10, "pad")
        await agent.handle_touch(FormSignCancelTouched(revision=2))
        cancelled = await next_of(staff, session_id, FormSignCancelled)
        assert cancelled.revision == 2
        assert agent.forms.state is FormViewState.REVIEW

        # ------------------------------------------------ submitted, then closed
        staff.send_peer_data(session_id, FormClose(form_id="juminhyo-request", submitted=True))
        await eventually(
            lambda: (f := _kiosk_form(agent)) is not None and f.stage is KioskFormStage.SUBMITTED,
            10,
            "受け付けました",
        )
        staff.send_peer_data(session_id, FormClose())
        await eventually(lambda: _kiosk_form(agent) is None, 10, "the form closed")
        sequence = [b.value for _, b in agent.forms.transitions]
        assert sequence == [
            "review",
            "signing",
            "signed",
            "signing",
            "signed",
            "signing",
            "review",
            "submitted",
            "idle",
        ]

        # ------------------------------------------------ nothing outlives the call
        staff.send_peer_data(session_id, _form_show(3))
        await eventually(lambda: _kiosk_form(agent) is not None, 10, "a new form")
        await staff.hang_up(session_id)
        await eventually(lambda: agent.forms.state is FormViewState.IDLE, 10, "form gone")
        assert agent.forms.form is None and agent.forms.strokes == []
    finally:
        await agent.aclose()
