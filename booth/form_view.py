"""書かない窓口 at the booth: the form the staff member filled, shown for checking and signing.

The staff page sends ``form_show`` (a numbered revision of the filled form),
``form_sign_request`` and ``form_close`` on the call's data channel. This flow keeps the
form for the kiosk page (:class:`~shared.kiosk_protocol.KioskForm` in the screen snapshot)
and sends back what the resident does, through an explicit state machine::

    IDLE ─form_show→ REVIEW ─form_sign_request→ SIGNING ─確定→ SIGNED
    SIGNING ─やめる→ REVIEW            any ─form_show (newer revision)→ REVIEW
    any ─form_close→ IDLE (or SUBMITTED for a few seconds when the application went in)

A signature belongs to the revision it was drawn on: a newer ``form_show`` throws away the
strokes of an older one, and the strokes of an older revision's pad are refused. The
strokes arrive from the kiosk page one at a time (``form_stroke``), because the local
socket carries small messages; 確定 sends them all as one ``form_signature``. Nothing of
the form outlives the call.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Final, Protocol

from pydantic import ValidationError

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
    FORM_SIGNATURE_MAX_POINTS,
    FORM_SIGNATURE_MAX_STROKES,
    FormClose,
    FormCorrectionReason,
    FormCorrectionRequest,
    FormShow,
    FormSignature,
    FormSignatureStrokes,
    FormSignCancelled,
    FormSignRequest,
    Model,
)

logger = logging.getLogger(__name__)

FORM_MESSAGES: Final = (FormShow, FormSignRequest, FormClose)
"""The data channel messages staff send to this flow."""

FORM_TOUCHES: Final = (
    FormCorrectionTouched,
    FormStroke,
    FormSignClearTouched,
    FormSignConfirmTouched,
    FormSignCancelTouched,
)
"""The kiosk page's messages for this flow."""

SUBMITTED_SCREEN_S: Final = 6.0
"""How long 受け付けました stays on the screen after the application went in."""


class FormViewState(enum.Enum):
    IDLE = "idle"
    REVIEW = "review"
    SIGNING = "signing"
    SIGNED = "signed"
    SUBMITTED = "submitted"


_STAGES: Final = {
    FormViewState.REVIEW: KioskFormStage.REVIEW,
    FormViewState.SIGNING: KioskFormStage.SIGNING,
    FormViewState.SIGNED: KioskFormStage.SIGNED,
    FormViewState.SUBMITTED: KioskFormStage.SUBMITTED,
}


class FormChannel(Protocol):
    """Where the flow's messages go: the call's data channel."""

    def send_peer_data(self, message: Model) -> bool: ...


class FormViewFlow:
    """The form of the booth's current call, at most one at a time."""

    def __init__(
        self, *, on_change: Callable[[], None], submitted_screen_s: float = SUBMITTED_SCREEN_S
    ) -> None:
        self._on_change = on_change
        self._submitted_screen_s = submitted_screen_s
        self.state = FormViewState.IDLE
        self.transitions: list[tuple[FormViewState, FormViewState]] = []
        self.form: FormShow | None = None
        self.correction: FormCorrectionTouched | None = None
        self.strokes: list[FormStroke] = []
        self.attempt = 0
        self.sent: list[Model] = []  # what this flow sent in the current call (for checks)
        self._channel: FormChannel | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- wiring

    def attach(self, channel: FormChannel) -> None:
        """Use ``channel`` (the new call) from now on; any earlier form is gone."""
        self.detach()
        self._channel = channel

    def detach(self) -> None:
        """The call ended: forget the form, its corrections and strokes."""
        self._channel = None
        self.sent.clear()
        self._clear()

    async def aclose(self) -> None:
        self.detach()

    def _clear(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.form = None
        self.correction = None
        self.strokes = []
        self._set(FormViewState.IDLE)

    def _set(self, state: FormViewState) -> None:
        if state is self.state:
            return
        logger.info("form view: %s → %s", self.state.value, state.value)
        self.transitions.append((self.state, state))
        self.state = state

    def _send(self, message: Model) -> bool:
        channel = self._channel
        if channel is None or not channel.send_peer_data(message):
            logger.warning("form view: %s not sent, no data channel", message.__class__.__name__)
            return False
        self.sent.append(message)
        return True

    def _new_pad(self) -> None:
        self.strokes = []
        self.attempt += 1

    # ---------------------------------------------------------------- the screen

    def kiosk_form(self) -> KioskForm | None:
        """The form as the kiosk page draws it, or None."""
        form = self.form
        if form is None or self.state is FormViewState.IDLE:
            return None
        correction = self.correction
        return KioskForm(
            form_id=form.form_id,
            revision=form.revision,
            stage=_STAGES[self.state],
            title_ja=form.title_ja,
            title_en=form.title_en,
            declaration_ja=form.declaration_ja,
            declaration_en=form.declaration_en,
            sections=form.sections,
            correction=correction.reason if correction is not None else None,
            correction_field_id=correction.field_id if correction is not None else None,
            attempt=self.attempt,
            strokes=len(self.strokes),
        )

    # ---------------------------------------------------------------- staff

    async def on_peer_data(self, message: Model) -> None:
        match message:
            case FormShow():
                self._show(message)
            case FormSignRequest():
                self._sign_request(message)
            case FormClose():
                self._close(message)
            case _:
                return
        self._on_change()

    def _show(self, message: FormShow) -> None:
        current = self.form
        if (
            current is not None
            and current.form_id == message.form_id
            and message.revision <= current.revision
            and self.state is not FormViewState.SUBMITTED
        ):
            logger.info(
                "form view: revision %d of %s ignored (showing %d)",
                message.revision,
                message.form_id,
                current.revision,
            )
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.form = message
        self.correction = None
        self._new_pad()  # a signature of an earlier revision is gone
        self._set(FormViewState.REVIEW)

    def _is_current(self, form_id: str, revision: int) -> bool:
        form = self.form
        return form is not None and form.form_id == form_id and form.revision == revision

    def _sign_request(self, message: FormSignRequest) -> None:
        if not self._is_current(message.form_id, message.revision) or self.state not in (
            FormViewState.REVIEW,
            FormViewState.SIGNING,
            FormViewState.SIGNED,
        ):
            logger.warning(
                "form view: signature asked for revision %d of %s, not on the screen",
                message.revision,
                message.form_id,
            )
            return
        self._new_pad()
        self._set(FormViewState.SIGNING)

    def _close(self, message: FormClose) -> None:
        form = self.form
        if form is None or (message.form_id is not None and message.form_id != form.form_id):
            return
        if message.submitted:
            self._new_pad()
            self._set(FormViewState.SUBMITTED)
            if self._close_timer is not None:
                self._close_timer.cancel()
            self._close_timer = asyncio.get_running_loop().call_later(
                self._submitted_screen_s, self._submitted_screen_over
            )
        else:
            self._clear()

    def _submitted_screen_over(self) -> None:
        self._close_timer = None
        if self.state is FormViewState.SUBMITTED:
            self._clear()
            self._on_change()

    # ---------------------------------------------------------------- the resident

    def on_touch(self, message: Model) -> None:
        """What the resident touched on the form screen (the agent publishes after it)."""
        match message:
            case FormCorrectionTouched():
                self._correction(message)
            case FormStroke():
                self._stroke(message)
            case FormSignClearTouched():
                if self.state is FormViewState.SIGNING and self._same_revision(message.revision):
                    self._new_pad()
            case FormSignConfirmTouched():
                self._confirm(message)
            case FormSignCancelTouched():
                self._cancel(message)
            case _:
                pass

    def _same_revision(self, revision: int) -> bool:
        return self.form is not None and self.form.revision == revision

    def _correction(self, message: FormCorrectionTouched) -> None:
        form = self.form
        if (
            form is None
            or not self._same_revision(message.revision)
            or self.state not in (FormViewState.REVIEW, FormViewState.SIGNED)
        ):
            return
        field_id = message.field_id
        if field_id is not None and not any(
            item.field_id == field_id for section in form.sections for item in section.items
        ):
            field_id = None
        reason = message.reason
        if reason is FormCorrectionReason.FIELD and field_id is None:
            reason = FormCorrectionReason.OTHER
        request = FormCorrectionRequest(
            form_id=form.form_id, revision=form.revision, reason=reason, field_id=field_id
        )
        if self._send(request):
            self.correction = FormCorrectionTouched(
                revision=form.revision, reason=reason, field_id=field_id
            )
            if self.state is FormViewState.SIGNED:
                self._new_pad()  # the signature goes with the revision being corrected
                self._set(FormViewState.REVIEW)

    def _stroke(self, message: FormStroke) -> None:
        if (
            self.state is not FormViewState.SIGNING
            or not self._same_revision(message.revision)
            or message.attempt != self.attempt
        ):
            return  # a stroke of an earlier pad or revision
        points = sum(len(s.points) for s in self.strokes)
        if (
            len(self.strokes) >= FORM_SIGNATURE_MAX_STROKES
            or points + len(message.points) > FORM_SIGNATURE_MAX_POINTS
        ):
            logger.info("form view: signature full, stroke dropped")
            return
        self.strokes.append(message)

    def _confirm(self, message: FormSignConfirmTouched) -> None:
        form = self.form
        if (
            form is None
            or self.state is not FormViewState.SIGNING
            or not self._same_revision(message.revision)
            or message.attempt != self.attempt
        ):
            return
        if message.stroke_count != len(self.strokes) or not self.strokes:
            # The pad and the agent disagree (a stroke was lost): sign again on a clean pad.
            logger.warning(
                "form view: %d strokes drawn, %d received; the pad is cleared",
                message.stroke_count,
                len(self.strokes),
            )
            self._new_pad()
            return
        try:
            strokes = FormSignatureStrokes(
                strokes=[
                    [
                        p.model_copy(update={"x": round(p.x, 4), "y": round(p.y, 4)})
                        for p in s.points
                    ]
                    for s in self.strokes
                ],
                pad_aspect_ratio=round(message.pad_aspect_ratio, 4),
            )
        except ValidationError:
            logger.warning("form view: signature out of bounds; the pad is cleared")
            self._new_pad()
            return
        signature = FormSignature(form_id=form.form_id, revision=form.revision, signature=strokes)
        if self._send(signature):
            self._set(FormViewState.SIGNED)

    def _cancel(self, message: FormSignCancelTouched) -> None:
        form = self.form
        if (
            form is None
            or self.state is not FormViewState.SIGNING
            or not self._same_revision(message.revision)
        ):
            return
        self._send(FormSignCancelled(form_id=form.form_id, revision=form.revision))
        self._new_pad()
        self._set(FormViewState.REVIEW)
