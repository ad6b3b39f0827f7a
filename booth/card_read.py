"""Reading the My Number card during a call, when the staff member asks for it.

The staff page sends ``card_read_request`` on the call's data channel; this flow drives
the kiosk through an explicit state machine::

    IDLE ─request→ WAITING_FOR_CARD ─card on the reader→ WAITING_FOR_PIN
    WAITING_FOR_PIN ─PIN typed on the kiosk→ READING ─card_basic_info→ DONE
    any running state ─wrong PIN / locked / card removed / cancel / error→ FAILED

The remaining PIN tries are read (without sending a PIN) and shown *before* the PIN pad;
a wrong PIN ends the read with the tries left and nothing is ever retried by itself. The
PIN goes from the kiosk page to :meth:`CardReaderOwner.read_basic_info` and nowhere else:
it is not kept in any state, screen, message or log. Only the 4 basic facts leave the
booth, on the data channel (peer to peer), and only when the whole read succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Final, Protocol

from booth.devices.base import DeviceState, DeviceStatus
from booth.devices.card import (
    CardEvent,
    CardLocked,
    CardPresence,
    CardReaderOwner,
    CardRemoved,
    NoCard,
    ReaderOffline,
    WrongPin,
)
from shared.errors import DeviceError
from shared.kiosk_protocol import KioskCardPrompt, KioskCardStage
from shared.protocol import (
    CardBasicInfo,
    CardReadCancel,
    CardReaderState,
    CardReadFailed,
    CardReadFailure,
    CardReadProgress,
    CardReadRequest,
    CardReadStage,
    CardStatus,
    Model,
)

logger = logging.getLogger(__name__)


class CardReadState(enum.Enum):
    IDLE = "idle"
    WAITING_FOR_CARD = "waiting_for_card"
    WAITING_FOR_PIN = "waiting_for_pin"
    READING = "reading"
    DONE = "done"
    FAILED = "failed"


RUNNING_STATES: Final = frozenset(
    {CardReadState.WAITING_FOR_CARD, CardReadState.WAITING_FOR_PIN, CardReadState.READING}
)

# What the staff member reads in the card panel when a read fails.
STAFF_FAILURE_TEXT: Final[dict[CardReadFailure, str]] = {
    CardReadFailure.WRONG_PIN: "暗証番号が違います。住民の方に暗証番号をご確認いただいてください。",
    CardReadFailure.LOCKED: (
        "暗証番号がロックされています。お住まいの市区町村の窓口で暗証番号の再設定が必要です。"
    ),
    CardReadFailure.REMOVED: "読み取り中にカードが取り外されました。データは受け取っていません。",
    CardReadFailure.NO_READER: "ブースのカードリーダーが使えません。",
    CardReadFailure.CANCELLED: "読み取りを中止しました。",
    CardReadFailure.ERROR: "カードを読み取れませんでした。もう一度お試しください。",
}

_READER_STATES: Final[dict[DeviceState, CardReaderState]] = {
    DeviceState.READY: CardReaderState.READY,
    DeviceState.CARD_PRESENT: CardReaderState.CARD_PRESENT,
    DeviceState.BUSY: CardReaderState.BUSY,
    DeviceState.OFFLINE: CardReaderState.OFFLINE,
}


class PeerChannel(Protocol):
    """Where the flow's messages go: the call's data channel."""

    def send_peer_data(self, message: Model) -> bool: ...


class CardReadFlow:
    """One card read at a time for the booth's current call."""

    def __init__(
        self,
        owner: Callable[[], CardReaderOwner | None],
        *,
        on_change: Callable[[], None],
        on_read: Callable[[str], None] | None = None,
    ) -> None:
        self._owner = owner
        self._on_change = on_change
        self._on_read = on_read  # a read reached staff (the request id), for the audit log
        self.state = CardReadState.IDLE
        self.transitions: list[tuple[CardReadState, CardReadState]] = []
        self.request_id: str | None = None
        self.remaining_tries: int | None = None
        self.failure: CardReadFailure | None = None
        self._attempt = 0
        self._channel: PeerChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._pin: asyncio.Future[str] | None = None
        self._removed = asyncio.Event()
        self._watched: CardReaderOwner | None = None
        self._last_status: CardStatus | None = None

    # ---------------------------------------------------------------- wiring

    def attach(self, channel: PeerChannel) -> None:
        """Use ``channel`` (the new call) from now on; any earlier read is over."""
        self.detach()
        self._channel = channel
        self._watch_reader()

    def detach(self) -> None:
        """The call ended: stop a running read and forget everything about it."""
        self._channel = None
        self._stop_task()
        self._last_status = None
        self._set(CardReadState.IDLE)
        self.request_id = None
        self.remaining_tries = None
        self.failure = None

    def channel_open(self) -> None:
        """The data channel opened: tell the staff page about the reader."""
        self._last_status = None
        self._send_status()

    async def aclose(self) -> None:
        self._channel = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watched is not None:
            self._watched.remove_listener(self._reader_status)
            self._watched.remove_card_listener(self._card_event)
            self._watched = None

    def _watch_reader(self) -> None:
        owner = self._owner()
        if owner is None or owner is self._watched:
            return
        owner.add_listener(self._reader_status)
        owner.add_card_listener(self._card_event)
        self._watched = owner

    # ---------------------------------------------------------------- what the kiosk shows

    def prompt(self) -> KioskCardPrompt | None:
        if self.state is CardReadState.IDLE:
            return None
        return KioskCardPrompt(
            stage=KioskCardStage(self.state.value),
            remaining_tries=self.remaining_tries,
            failure=self.failure.value if self.failure is not None else None,
            attempt=self._attempt,
        )

    def _set(self, new: CardReadState) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        self.transitions.append((old, new))
        logger.info("card read %s: %s -> %s", self.request_id, old.value, new.value)
        self._on_change()

    # ---------------------------------------------------------------- from the staff page

    async def on_peer_data(self, message: Model) -> None:
        match message:
            case CardReadRequest():
                self._start(message.request_id)
            case CardReadCancel():
                if self.state in RUNNING_STATES and message.request_id in (None, self.request_id):
                    self._cancel("staff")
            case _:
                logger.info("ignored %s on the data channel", type(message).__name__)

    def _start(self, request_id: str) -> None:
        if self.state in RUNNING_STATES:
            self._cancel("a new request")
        self._stop_task()
        self.request_id = request_id
        self.failure = None
        self._task = asyncio.get_running_loop().create_task(
            self._read(request_id), name=f"card read {request_id}"
        )

    # ---------------------------------------------------------------- from the resident

    def pin_entered(self, pin: str) -> None:
        """The PIN from the kiosk page; used only while the PIN pad is shown."""
        future = self._pin
        waiting = self.state is CardReadState.WAITING_FOR_PIN
        if waiting and future is not None and not future.done():
            future.set_result(pin)
        # otherwise dropped: nothing asked for it

    def resident_cancel(self) -> None:
        if self.state in RUNNING_STATES:
            self._cancel("resident")

    def dismiss(self) -> None:
        if self.state in (CardReadState.DONE, CardReadState.FAILED):
            self.failure = None
            self._set(CardReadState.IDLE)

    # ---------------------------------------------------------------- the read

    async def _read(self, request_id: str) -> None:
        owner = self._owner()
        try:
            if owner is None or owner.status.state is DeviceState.OFFLINE:
                self._fail(CardReadFailure.NO_READER)
                return
            self._watch_reader()
            if owner.presence is not CardPresence.PRESENT:
                self._progress(CardReadState.WAITING_FOR_CARD)
                await owner.wait_for_card()
            self._removed.clear()
            tries = await owner.remaining_pin_tries()
            self.remaining_tries = tries
            if tries == 0:
                self._fail(CardReadFailure.LOCKED)
                return
            pin = await self._ask_pin()
            if pin is None:
                self._fail(CardReadFailure.REMOVED)
                return
            self._progress(CardReadState.READING)
            try:
                info = await owner.read_basic_info(pin)
            finally:
                del pin
            self.remaining_tries = None
            self._send(
                CardBasicInfo(
                    request_id=request_id,
                    name=info.name,
                    address=info.address,
                    birth_date=info.birth_date,
                    sex=info.sex.value,
                )
            )
            del info
            self._set(CardReadState.DONE)
            if self._on_read is not None:
                self._on_read(request_id)
        except WrongPin as err:
            self.remaining_tries = err.remaining
            self._fail(CardReadFailure.WRONG_PIN)
        except CardLocked:
            self.remaining_tries = 0
            self._fail(CardReadFailure.LOCKED)
        except (CardRemoved, NoCard):
            self._fail(CardReadFailure.REMOVED)
        except ReaderOffline:
            self._fail(CardReadFailure.NO_READER)
        except DeviceError as err:
            logger.warning("card read %s failed: %s", request_id, err.reason)
            self._fail(CardReadFailure.ERROR)
        finally:
            self._pin = None
            self._send_status()

    async def _ask_pin(self) -> str | None:
        """The PIN the resident typed, or None when the card left the reader first."""
        self._attempt += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pin = future
        self._progress(CardReadState.WAITING_FOR_PIN)
        removed: asyncio.Future[object] = asyncio.ensure_future(self._removed.wait())
        waiting: set[asyncio.Future[object]] = {future, removed}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            removed.cancel()
            self._pin = None
        if not future.done():
            future.cancel()
            return None
        return future.result()

    def _progress(self, state: CardReadState) -> None:
        self._set(state)
        request_id = self.request_id
        if request_id is not None:
            self._send(
                CardReadProgress(
                    request_id=request_id,
                    stage=CardReadStage(state.value),
                    remaining_tries=(
                        self.remaining_tries
                        if state is not CardReadState.WAITING_FOR_CARD
                        else None
                    ),
                )
            )

    def _fail(self, reason: CardReadFailure, *, show: bool = True) -> None:
        """Tell staff why the read ended; ``show`` keeps the reason on the kiosk."""
        request_id = self.request_id
        if request_id is not None:
            remaining = self.remaining_tries
            if reason is CardReadFailure.LOCKED:
                remaining = 0
            self._send(
                CardReadFailed(
                    request_id=request_id,
                    reason=reason,
                    remaining_tries=remaining,
                    message=STAFF_FAILURE_TEXT[reason],
                )
            )
        if show:
            self.failure = reason
            self._set(CardReadState.FAILED)
        else:
            self.failure = None
            self._set(CardReadState.IDLE)

    def _cancel(self, by: str) -> None:
        logger.info("card read %s cancelled by %s", self.request_id, by)
        self._stop_task()
        self._fail(CardReadFailure.CANCELLED, show=False)

    def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        self._pin = None

    # ---------------------------------------------------------------- the reader

    def _card_event(self, event: CardEvent) -> None:
        if event is CardEvent.REMOVED:
            self._removed.set()
            if self.state is CardReadState.DONE:
                self._set(CardReadState.IDLE)  # the resident took the card back

    def _reader_status(self, _status: DeviceStatus) -> None:
        self._send_status()

    def status(self) -> CardStatus:
        owner = self._owner()
        if owner is None:
            return CardStatus(reader=CardReaderState.NONE, card_present=False)
        return CardStatus(
            reader=_READER_STATES.get(owner.status.state, CardReaderState.ERROR),
            card_present=owner.presence is CardPresence.PRESENT,
            remaining_tries=self.remaining_tries,
        )

    def _send_status(self) -> None:
        status = self.status()
        if status != self._last_status and self._send(status):
            self._last_status = status

    def _send(self, message: Model) -> bool:
        channel = self._channel
        return channel is not None and channel.send_peer_data(message)
