"""The kiosk protocol: messages between the resident's touch page and the booth agent.

The page runs in the booth's local Chromium and talks to the agent over a WebSocket on
127.0.0.1 (``/ws``). It only reports what the resident touched; the agent answers with a
full :class:`ScreenState` snapshot every time anything changes, so the page never keeps
state of its own beyond drawing the last snapshot. Two channels, each a discriminated
union on ``type``: :data:`PageToAgent` and :data:`AgentToPage`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from shared.protocol import (
    FormCorrectionReason,
    FormFieldIdent,
    FormIdent,
    FormLabel,
    FormRevision,
    FormSignaturePoint,
    FormViewSection,
    Ident,
    Model,
    ShortText,
)

KIOSK_PROTOCOL_VERSION = 1

KioskLanguage = Literal["ja", "en"]


class KioskScreen(StrEnum):
    START = "start"  # choose a language
    DEPARTMENT = "department"  # choose a department
    WAITING = "waiting"  # in the queue
    NO_STAFF = "no_staff"  # in the queue, but nobody who could answer is signed in
    CONNECTING = "connecting"  # staff accepted, the video call is being set up
    IN_CALL = "in_call"
    RECONNECTING = "reconnecting"  # in a call, the media path was lost and is being renewed
    CONNECTION_LOST = "connection_lost"  # the booth lost the signaling server
    ENDED = "ended"  # thank-you screen, then back to the start


# --------------------------------------------------------------------------------------
# Page → agent: what the resident touched
# --------------------------------------------------------------------------------------


class ChooseLanguage(Model):
    type: Literal["choose_language"] = "choose_language"
    language: KioskLanguage


class RequestHelpTouched(Model):
    type: Literal["request_help"] = "request_help"
    department: Ident


class CancelTouched(Model):
    """Stop waiting (the request leaves the queue) and go back to the start."""

    type: Literal["cancel"] = "cancel"


class KeepWaitingTouched(Model):
    """On the no-staff screen: stay in the queue anyway."""

    type: Literal["keep_waiting"] = "keep_waiting"


class HangUpTouched(Model):
    type: Literal["hang_up"] = "hang_up"


class BackToStartTouched(Model):
    type: Literal["back_to_start"] = "back_to_start"


class PinEntered(Model):
    """The 4 digits typed on the page's own PIN pad, sent once on 確定. The agent hands them
    to the card reader only and drops them; they are never stored, logged or echoed."""

    type: Literal["pin_entered"] = "pin_entered"
    pin: str = Field(pattern=r"^[0-9]{4}$", repr=False)


class CardCancelTouched(Model):
    """The resident stops the card read (やめる)."""

    type: Literal["card_cancel"] = "card_cancel"


class CardDismissTouched(Model):
    """The resident closes the card result (閉じる) and goes back to the call."""

    type: Literal["card_dismiss"] = "card_dismiss"


class StillTouched(Model):
    """The resident asks for a still of the document under the document camera (書類を撮影)."""

    type: Literal["still_touched"] = "still_touched"


# -- forms (書かない窓口): the filled form on the screen, corrections and the signature ------

KIOSK_STROKE_MAX_POINTS = 300
"""Points in one ``form_stroke`` message (a longer stroke is sent as several): each message
stays far below the kiosk socket's 16 KiB limit."""


class FormCorrectionTouched(Model):
    """訂正をお願いする: the reason the resident chose (and the row they touched, if any)."""

    type: Literal["form_correction"] = "form_correction"
    revision: FormRevision
    reason: FormCorrectionReason
    field_id: FormFieldIdent | None = None


class FormStroke(Model):
    """One finger stroke on the signature pad (or the next piece of a long one)."""

    type: Literal["form_stroke"] = "form_stroke"
    revision: FormRevision
    attempt: Annotated[int, Field(ge=0)]  # the pad's attempt number (see KioskForm)
    points: Annotated[
        list[FormSignaturePoint], Field(min_length=1, max_length=KIOSK_STROKE_MAX_POINTS)
    ]


class FormSignClearTouched(Model):
    """書き直す: throw the strokes away and start again."""

    type: Literal["form_sign_clear"] = "form_sign_clear"
    revision: FormRevision


class FormSignConfirmTouched(Model):
    """確定: the strokes sent so far are the signature."""

    type: Literal["form_sign_confirm"] = "form_sign_confirm"
    revision: FormRevision
    attempt: Annotated[int, Field(ge=0)]
    stroke_count: Annotated[int, Field(ge=1, le=1000)]  # what the page drew: checked
    pad_aspect_ratio: Annotated[float, Field(ge=0.2, le=10.0, allow_inf_nan=False)]


class FormSignCancelTouched(Model):
    """やめる on the signature pad: back to the form."""

    type: Literal["form_sign_cancel"] = "form_sign_cancel"
    revision: FormRevision


PageToAgent = Annotated[
    ChooseLanguage
    | RequestHelpTouched
    | CancelTouched
    | KeepWaitingTouched
    | HangUpTouched
    | BackToStartTouched
    | PinEntered
    | CardCancelTouched
    | CardDismissTouched
    | StillTouched
    | FormCorrectionTouched
    | FormStroke
    | FormSignClearTouched
    | FormSignConfirmTouched
    | FormSignCancelTouched,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------
# Agent → page
# --------------------------------------------------------------------------------------


class KioskDepartment(Model):
    code: Ident
    name_ja: ShortText
    name_en: ShortText


class KioskCardStage(StrEnum):
    WAITING_FOR_CARD = "waiting_for_card"  # マイナンバーカードを置いてください
    WAITING_FOR_PIN = "waiting_for_pin"  # the PIN pad
    READING = "reading"
    DONE = "done"  # read; the facts went to the staff member
    FAILED = "failed"


class KioskCardPrompt(Model):
    """The card read shown over the call screen (the call's video keeps running). It never
    holds the PIN or the card's contents."""

    stage: KioskCardStage
    remaining_tries: Annotated[int, Field(ge=0, le=15)] | None = None
    # set in FAILED: wrong_pin | locked | removed | no_reader | cancelled | error
    failure: Ident | None = None
    attempt: Annotated[int, Field(ge=0)] = 0  # a new number clears the page's PIN pad


class KioskFormStage(StrEnum):
    REVIEW = "review"  # the filled form, 訂正をお願いする
    SIGNING = "signing"  # the signature pad
    SIGNED = "signed"  # 職員が確認しています
    SUBMITTED = "submitted"  # the staff member accepted the application


class KioskForm(Model):
    """The form shown over the call screen (the call's video stays in a corner)."""

    form_id: FormIdent
    revision: FormRevision
    stage: KioskFormStage
    title_ja: FormLabel
    title_en: FormLabel
    declaration_ja: FormLabel = ""
    declaration_en: FormLabel = ""
    sections: list[FormViewSection]
    # the reason of the last correction asked for on this revision (shown as sent)
    correction: FormCorrectionReason | None = None
    correction_field_id: FormFieldIdent | None = None
    attempt: Annotated[int, Field(ge=0)] = 0  # a new number clears the page's signature pad
    strokes: Annotated[int, Field(ge=0)] = 0  # strokes the agent holds for this attempt


class ScreenState(Model):
    """Everything the page shows, sent whole whenever something changes."""

    type: Literal["screen"] = "screen"
    protocol: int = KIOSK_PROTOCOL_VERSION
    screen: KioskScreen
    language: KioskLanguage
    booth_name: ShortText = ""
    departments: list[KioskDepartment] = Field(default_factory=list)
    department: Ident | None = None  # the department asked for
    queue_position: Annotated[int, Field(ge=1)] | None = None  # 1 = next
    estimated_wait_s: Annotated[int, Field(ge=0)] | None = None  # None: unknown
    staff_online: Annotated[int, Field(ge=0)] | None = None
    staff_name: ShortText | None = None
    call_elapsed_s: Annotated[float, Field(ge=0)] | None = None  # at the time of sending
    request_kept: bool = False  # connection lost, but the request stays in the queue
    return_to_start_s: Annotated[float, Field(ge=0)] | None = None  # on the ended screen
    error: ShortText | None = None  # a short reason shown to the resident
    card: KioskCardPrompt | None = None  # the My Number card read, during a call
    still_busy: bool = False  # a document still is being taken or sent
    form: KioskForm | None = None  # a form to check and sign, during a call


class KioskError(Model):
    """The page sent something the agent could not use (a bug in the page, not the user)."""

    type: Literal["error"] = "error"
    message: ShortText


AgentToPage = Annotated[ScreenState | KioskError, Field(discriminator="type")]
