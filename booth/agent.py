"""The booth agent: owns the signaling connection, the media devices and the current call,
and turns all of it into the screen the resident sees.

The kiosk page only reports touches (:data:`shared.kiosk_protocol.PageToAgent`); the agent
decides what happens and publishes a full :class:`~shared.kiosk_protocol.ScreenState`
snapshot to every listener whenever anything changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Callable

from booth.call import MEDIA_STATES, WAITING_STATES, CallState, RemoteCounterCall
from booth.card_read import CardReadFlow
from booth.console_client import ConsoleClient, ConsoleUnavailable
from booth.device_report import DeviceStatusReporter
from booth.devices.hub import BoothDevices
from booth.document_camera import DocumentCamera
from booth.document_check import DocumentCheck
from booth.document_still import DocumentStillFlow
from booth.form_view import FORM_MESSAGES, FORM_TOUCHES, FormViewFlow
from booth.ice import restrict_host_addresses
from booth.media import BoothMedia, FrameBuffer, open_media
from booth.print_jobs import PRINT_MESSAGES, PrintJobFlow
from booth.signaling_client import BoothSignalingClient
from shared.config import BoothConfig, DeviceConfig
from shared.kiosk_protocol import (
    BackToStartTouched,
    CancelTouched,
    CardCancelTouched,
    CardDismissTouched,
    ChooseLanguage,
    HangUpTouched,
    KeepWaitingTouched,
    KioskDepartment,
    KioskLanguage,
    KioskScreen,
    PageToAgent,
    PinEntered,
    RequestHelpTouched,
    ScreenState,
    StillTouched,
)
from shared.protocol import (
    BoothWelcome,
    CallStarted,
    CancelRequest,
    ErrorMessage,
    HangUp,
    MediaFailed,
    Model,
    QueueStatus,
    Relay,
    RequestClosed,
    ServerToBooth,
    SessionEnded,
    StillRequest,
)

logger = logging.getLogger(__name__)

ScreenListener = Callable[[ScreenState], None]


class VisitPhase(enum.Enum):
    """Where the resident is in one visit to the booth."""

    START = "start"
    DEPARTMENT = "department"
    CALL = "call"  # a request or call exists (see the call's own state)
    ENDED = "ended"  # thank-you screen


class BoothAgent:
    def __init__(self, config: BoothConfig, *, media: BoothMedia | None = None) -> None:
        self.config = config
        self.signaling = BoothSignalingClient(config, self)
        self.media = media
        self.devices = BoothDevices(_with_spool_path(config))
        self.device_reporter: DeviceStatusReporter | None = None  # created by start()
        self.staff_video = FrameBuffer()
        self.self_video = FrameBuffer()
        self.phase = VisitPhase.START
        self.language: KioskLanguage = config.default_language
        self.call: RemoteCounterCall | None = None
        self.calls: list[RemoteCounterCall] = []  # every call of this run, oldest first
        self.keep_waiting = False
        self.error: str | None = None
        self._listeners: list[ScreenListener] = []
        self._last_screen: ScreenState | None = None
        self._ended_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()
        # The My Number card read staff ask for during a call (booth/card_read.py).
        self.card_read = CardReadFlow(
            lambda: self.devices.card, on_change=self._publish, on_read=self._card_read_done
        )
        self._background: set[asyncio.Task[None]] = set()
        # The document camera (書画カメラ): the call's second video and its stills.
        self.document_camera: DocumentCamera | None = None  # opened by start()
        # The HQ console's booth API (the still relay), when the booth knows the console.
        self.console: ConsoleClient | None = None
        if config.console_url:
            self.console = ConsoleClient(
                config.console_url,
                config.booth_id,
                config.credential,
                timeout_s=config.console_timeout_s,
            )
        self.stills = DocumentStillFlow(
            lambda: self.document_camera, console=self.console, on_change=self._publish
        )
        # The form the staff member filled, checked and signed here (booth/form_view.py).
        self.forms = FormViewFlow(on_change=self._publish)
        # Print jobs HQ sends during a call, into the print spool (booth/print_jobs.py).
        # Certificates HQ issues are fetched from the console and checked before printing.
        self.printing = PrintJobFlow(
            lambda: self.devices.spool,
            console=self.console,
            check=DocumentCheck.from_paths(config.issuing_ca_paths),
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the devices and connect to signaling (in the background). Idempotent."""
        if self._started:
            return
        self._started = True
        if self.config.ice_host_addresses:
            restrict_host_addresses(self.config.ice_host_addresses)
        if self.media is None:
            caption = f"SIMULATED CAMERA {self.config.booth_id}"
            self.media = open_media(self.config.devices, caption=caption)
        for line in self.media.describe():
            logger.info("booth %s: %s", self.config.booth_id, line)
        await self.devices.start()
        # The device hub owns the document camera (its state goes to the branch board).
        self.document_camera = self.devices.document_camera
        for status in self.devices.statuses():
            logger.info(
                "booth %s: %s %s: %s",
                self.config.booth_id,
                status.kind.value,
                status.name,
                status.state.value,
            )
        self.device_reporter = DeviceStatusReporter(self.devices, self.media, self.signaling)
        await self.signaling.start()
        self._publish()

    async def run(self) -> None:
        """Run until cancelled, then close."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ended_timer is not None:
            self._ended_timer.cancel()
        await self.card_read.aclose()
        await self.stills.aclose()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.console is not None:
            await self.console.aclose()
        await self.printing.aclose()
        await self.forms.aclose()
        if self.call is not None:
            await self.call.aclose()
        if self.device_reporter is not None:
            await self.device_reporter.aclose()
        await self.signaling.aclose()
        await self.devices.aclose()
        if self.media is not None:
            await self.media.aclose()
        if self.document_camera is not None:
            await self.document_camera.aclose()
        self._listeners.clear()

    # ---------------------------------------------------------------- the screen

    def add_listener(self, listener: ScreenListener) -> None:
        """Call ``listener`` with each new screen snapshot (and the current one now)."""
        self._listeners.append(listener)
        listener(self.screen())

    def remove_listener(self, listener: ScreenListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def departments(self) -> list[KioskDepartment]:
        welcome = self.signaling.welcome
        if welcome is None:
            return []
        return [
            KioskDepartment(code=d.code, name_ja=d.name_ja, name_en=d.name_en)
            for d in welcome.departments
        ]

    def screen(self) -> ScreenState:
        """The snapshot the kiosk page draws."""
        welcome = self.signaling.welcome
        call = self.call
        connected = self.signaling.connected
        fields: dict[str, object] = {
            "language": self.language,
            "booth_name": welcome.booth.name if welcome else "",
            "departments": self.departments(),
            "error": self.error,
        }
        if call is not None:
            fields["department"] = call.department
            fields["staff_name"] = call.staff_name
            if call.queue is not None:
                fields["queue_position"] = call.queue.position
                fields["estimated_wait_s"] = call.queue.estimated_wait_s
                fields["staff_online"] = call.queue.staff_online
            fields["call_elapsed_s"] = call.elapsed_s()

        screen: KioskScreen
        if self.phase is VisitPhase.ENDED:
            screen = KioskScreen.ENDED
            fields["return_to_start_s"] = self.config.ended_screen_s
        elif call is not None and self.phase is VisitPhase.CALL and call.state in MEDIA_STATES:
            screen = _MEDIA_SCREENS[call.state]
            fields["card"] = self.card_read.prompt()
            fields["still_busy"] = self.stills.busy
            fields["form"] = self.forms.kiosk_form()
        elif not connected:
            screen = KioskScreen.CONNECTION_LOST
            fields["request_kept"] = (
                self.phase is VisitPhase.CALL and call is not None and call.state in WAITING_STATES
            )
        elif self.phase is VisitPhase.CALL and call is not None:
            no_staff = call.queue is not None and call.queue.staff_online == 0
            screen = (
                KioskScreen.NO_STAFF if no_staff and not self.keep_waiting else KioskScreen.WAITING
            )
        elif self.phase is VisitPhase.DEPARTMENT:
            screen = KioskScreen.DEPARTMENT
        else:
            screen = KioskScreen.START
        return ScreenState.model_validate({"screen": screen, **fields})

    def _publish(self) -> None:
        if self._closed:
            return
        state = self.screen()
        if state == self._last_screen:
            return
        self._last_screen = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("screen listener failed")

    # ---------------------------------------------------------------- the resident

    async def handle_touch(self, message: PageToAgent) -> None:
        """Act on what the resident touched on the kiosk page."""
        async with self._lock:
            await self._handle_touch(message)
        self._publish()

    async def _handle_touch(self, message: PageToAgent) -> None:
        call = self.call
        match message:
            case ChooseLanguage():
                self.language = message.language
                self.error = None
                if self.phase in (VisitPhase.START, VisitPhase.DEPARTMENT):
                    self.phase = VisitPhase.DEPARTMENT
            case RequestHelpTouched():
                await self._request_help(message.department)
            case CancelTouched():
                if call is not None and call.state in WAITING_STATES:
                    await call.cancel()
                self._go_to_start()
            case KeepWaitingTouched():
                self.keep_waiting = True
            case HangUpTouched():
                if call is not None and call.state in MEDIA_STATES:
                    await call.hang_up()
            case PinEntered():
                self.card_read.pin_entered(message.pin)  # the PIN goes nowhere else
            case CardCancelTouched():
                self.card_read.resident_cancel()
            case CardDismissTouched():
                self.card_read.dismiss()
            case StillTouched():
                if call is not None and call.state is CallState.IN_CALL:
                    self.stills.resident_request()
            case _ if isinstance(message, FORM_TOUCHES):
                self.forms.on_touch(message)
            case BackToStartTouched():
                if call is not None and call.state in WAITING_STATES:
                    await call.cancel()
                elif call is not None and call.state in MEDIA_STATES:
                    await call.hang_up()
                self._go_to_start()

    async def _request_help(self, department: str) -> None:
        if self.phase is VisitPhase.CALL and self.call is not None and not self.call.finished:
            return  # already asking
        known = {d.code for d in self.departments()}
        if known and department not in known:
            logger.warning("kiosk asked for unknown department %s", department)
            return
        assert self.media is not None, "start() opens the media"
        call = RemoteCounterCall(
            request_id=f"{self.config.booth_id[:40]}-{secrets.token_hex(6)}",
            department=department,
            language=self.language,
            signaling=self.signaling,
            media=self.media,
            staff_video=self.staff_video,
            self_video=self.self_video,
            connect_timeout_s=self.config.call_connect_timeout_s,
            on_change=self._on_call_change,
            document_camera=self.document_camera,
            relay_only=self.config.ice_relay_only,
            turn_transport=self.config.ice_turn_transport,
            media_loss_grace_s=self.config.media_loss_grace_s,
            restart_attempt_s=self.config.media_restart_attempt_s,
            outage_limit_s=self.config.media_outage_limit_s,
        )
        self.call = call
        self.calls.append(call)
        call.on_peer_data = self._on_peer_data
        call.on_channel_open = self._on_channel_open
        self.card_read.attach(call)
        self.stills.attach(call)
        self.printing.attach(call)
        self.forms.attach(call)
        self.phase = VisitPhase.CALL
        self.keep_waiting = False
        self.error = None
        self.staff_video.clear()
        self.self_video.clear()
        await call.request()

    def _card_read_done(self, request_id: str) -> None:
        """Record the read in the console's audit log (best effort; identifiers only)."""
        call, console = self.call, self.console
        if console is None or call is None or call.session_id is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._record_card_read(console, call.session_id, request_id)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _record_card_read(console: ConsoleClient, session_id: str, request_id: str) -> None:
        try:
            await console.record_card_read(session_id, request_id)
        except ConsoleUnavailable as err:
            logger.warning("card read %s not recorded at the console: %s", request_id, err)

    async def _on_peer_data(self, message: Model) -> None:
        if isinstance(message, PRINT_MESSAGES):
            await self.printing.on_peer_data(message)
        elif isinstance(message, StillRequest):
            await self.stills.on_peer_data(message)
        elif isinstance(message, FORM_MESSAGES):
            await self.forms.on_peer_data(message)
        else:
            await self.card_read.on_peer_data(message)

    def _on_channel_open(self) -> None:
        self.card_read.channel_open()
        self.printing.channel_open()

    def _go_to_start(self) -> None:
        if self._ended_timer is not None:
            self._ended_timer.cancel()
            self._ended_timer = None
        self.phase = VisitPhase.START
        self.language = self.config.default_language
        self.call = None
        self.keep_waiting = False
        self.error = None
        self.staff_video.clear()
        self.self_video.clear()
        self._publish()

    def _on_call_change(self, call: RemoteCounterCall) -> None:
        if call is not self.call:
            return
        if call.finished:
            self.card_read.detach()  # nothing of the read outlives the call
            self.stills.detach()
            self.printing.detach()  # the spool keeps the call's jobs and their states
            self.forms.detach()
        if call.finished and self.phase is VisitPhase.CALL:
            if call.closed_reason == "cancelled" and call.started is None:
                pass  # cancelled by the resident: _go_to_start follows
            else:
                if call.state is CallState.FAILED:
                    self.error = _failure_text(call, self.language)
                self._show_ended()
        self._publish()

    def _show_ended(self) -> None:
        self.phase = VisitPhase.ENDED
        if self._ended_timer is not None:
            self._ended_timer.cancel()
        self._ended_timer = asyncio.get_running_loop().call_later(
            self.config.ended_screen_s, self._ended_screen_over
        )

    def _ended_screen_over(self) -> None:
        self._ended_timer = None
        if self.phase is VisitPhase.ENDED:
            self._go_to_start()

    # ---------------------------------------------------------------- signaling

    async def on_welcome(self, welcome: BoothWelcome) -> None:
        call = self.call
        if call is not None and call.state in MEDIA_STATES:
            if welcome.session_id is None or welcome.session_id != call.session_id:
                await call.lose_session("the call ended while the booth was disconnected")
            else:
                call.on_signaling_back()  # a lost media path is renegotiated at once
        elif welcome.session_id is not None and call is not None and call.state in WAITING_STATES:
            # Matched while the booth was disconnected (or its call_started was lost with a
            # signaling node): the server sends call_started after this welcome.
            logger.info("session %s of the waiting request follows", welcome.session_id)
        elif welcome.session_id is not None:
            lost = next(
                (c for c in self.calls if c.session_id == welcome.session_id and c.media_lost),
                None,
            )
            if lost is not None:
                # The media path stayed lost past the limit while signaling was down too:
                # the server learns it now, so that the session records why it ended.
                logger.info("ending session %s: media lost", welcome.session_id)
                detail = (lost.failure or "media lost")[:200]
                await self.signaling.send(MediaFailed(session_id=welcome.session_id, detail=detail))
            else:
                # The server still holds a call this booth no longer has (the agent restarted).
                logger.info("ending session %s left from before", welcome.session_id)
                await self.signaling.send(HangUp(session_id=welcome.session_id))
        ours = call.request_id if call is not None and call.state in WAITING_STATES else None
        stale = welcome.pending_request_id
        if stale is not None and stale != ours:
            # Queued before the agent restarted: nobody at the booth waits for it any more.
            # Cancel it first, so that a request of ours can be sent after it.
            logger.info("cancelling request %s left from before", stale)
            await self.signaling.send(CancelRequest(request_id=stale))
        if self.device_reporter is not None:
            await self.device_reporter.send_now()  # the server keeps only the last report
        self._publish()

    async def on_disconnected(self, reason: str) -> None:
        self._publish()

    async def on_message(self, message: ServerToBooth) -> None:
        call = self.call
        match message:
            case QueueStatus():
                if call is not None:
                    call.on_queue_status(message)
            case RequestClosed():
                if call is not None:
                    call.on_request_closed(message)
            case CallStarted():
                if call is not None and call.request_id == message.request_id:
                    await call.on_call_started(message)
                else:
                    # nobody at this booth is waiting for it (e.g. after a restart)
                    logger.warning("call %s started for no waiting request", message.session_id)
                    await self.signaling.send(HangUp(session_id=message.session_id))
            case Relay():
                if call is not None:
                    await call.on_relay(message)
            case SessionEnded():
                if call is not None:
                    await call.on_session_ended(message)
            case ErrorMessage():
                # logged by the client; a refused request must not leave the resident
                # looking at "受付しています…" for ever
                if call is not None and message.ref == "request_help":
                    call.on_request_refused(message)
            case _:
                pass
        self._publish()

    # ---------------------------------------------------------------- for diagnostics

    def status(self) -> dict[str, object]:
        call = self.call
        return {
            "booth_id": self.config.booth_id,
            "signaling": self.signaling.state.value,
            "signaling_error": self.signaling.last_error,
            "phase": self.phase.value,
            "call_state": call.state.value if call else None,
            "session_id": call.session_id if call else None,
            "staff_frames": self.staff_video.frames,
            "devices": [
                {
                    "kind": d.kind.value,
                    "name": d.name,
                    "state": d.state.value,
                    "since": d.since,
                    "reason": d.reason,
                }
                for d in self.devices.statuses()
            ],
            "time": time.time(),
        }


def _with_spool_path(config: BoothConfig) -> DeviceConfig:
    """The device settings, with the print spool beside the booth's other state: one
    spool file per booth id unless the configuration names one."""
    devices = config.devices
    if devices.spool_path:
        return devices
    return devices.model_copy(update={"spool_path": f"var/spool-{config.booth_id}.sqlite3"})


_MEDIA_SCREENS: dict[CallState, KioskScreen] = {
    CallState.CONNECTING: KioskScreen.CONNECTING,
    CallState.IN_CALL: KioskScreen.IN_CALL,
    CallState.RECONNECTING: KioskScreen.RECONNECTING,
}


def _failure_text(call: RemoteCounterCall, language: str) -> str:
    if call.media_lost:
        if language == "ja":
            return "通信が途切れたまま回復しなかったため、通話を終了しました。"
        return "The connection was lost and did not come back, so the call has ended."
    if call.closed_reason == "refused":
        if language == "ja":
            return "受付できませんでした。お手数ですが、もう一度お試しください。"
        return "Your request could not be accepted. Please try again."
    if call.closed_reason == "abandoned":
        if language == "ja":
            return "受付を続けられませんでした。お手数ですが、もう一度お試しください。"
        return "Your request could not be kept. Please try again."
    if language == "ja":
        return "映像通話がつながりませんでした。もう一度お試しください。"
    return "The video call could not be connected. Please try again."
