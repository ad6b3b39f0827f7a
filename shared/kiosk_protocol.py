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

from shared.protocol import Ident, Model, ShortText

KIOSK_PROTOCOL_VERSION = 1

KioskLanguage = Literal["ja", "en"]


class KioskScreen(StrEnum):
    START = "start"  # choose a language
    DEPARTMENT = "department"  # choose a department
    WAITING = "waiting"  # in the queue
    NO_STAFF = "no_staff"  # in the queue, but nobody who could answer is signed in
    CONNECTING = "connecting"  # staff accepted, the video call is being set up
    IN_CALL = "in_call"
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


PageToAgent = Annotated[
    ChooseLanguage
    | RequestHelpTouched
    | CancelTouched
    | KeepWaitingTouched
    | HangUpTouched
    | BackToStartTouched,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------
# Agent → page
# --------------------------------------------------------------------------------------


class KioskDepartment(Model):
    code: Ident
    name_ja: ShortText
    name_en: ShortText


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


class KioskError(Model):
    """The page sent something the agent could not use (a bug in the page, not the user)."""

    type: Literal["error"] = "error"
    message: ShortText


AgentToPage = Annotated[ScreenState | KioskError, Field(discriminator="type")]
