"""The My Number card reader: interface, PC/SC driver, simulator, factory and owner.

``card_reader`` in the device configuration picks the implementation:

- ``"simulated"``: no hardware and no pcscd. A demo card lies on the reader:
  氏名 ``髙橋 𠮷子``, 住所 in 多摩市, **PIN 1234**, 3 tries (three wrong PINs lock it
  like a real card; a new simulator starts unlocked).
- ``"pcsc"``: the first PC/SC reader pcscd reports; ``"pcsc:<reader name>"``: that reader
  (exact name, or the one reader whose name starts with it).

The flow a service point follows: wait for the card, show :meth:`remaining_pin_tries`
*before* asking for the PIN, then :meth:`read_basic_info` with the PIN the resident typed.
A wrong PIN raises :class:`WrongPin` with the tries left; nothing here ever retries a PIN.
Zero tries raises :class:`CardLocked`: only the city office (市区町村の窓口) can reset it.
個人番号 is read only by the separate :meth:`read_individual_number`.

The PIN is never logged or stored; reader names are logged, card contents never.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from booth.devices import mynumber
from booth.devices.base import DeviceKind, DeviceOwner, DeviceState, DeviceWorker
from booth.devices.mynumber import (
    BasicInfo,
    CardDataError,
    CardLocked,
    CardRemoved,
    InvalidPin,
    NoCard,
    Sex,
    WrongPin,
)
from shared.errors import ConfigError, DeviceError

__all__ = [
    "BasicInfo",
    "CardDataError",
    "CardEvent",
    "CardLocked",
    "CardPresence",
    "CardReader",
    "CardReaderOwner",
    "CardRemoved",
    "InvalidPin",
    "NoCard",
    "PcscCardReader",
    "ReaderOffline",
    "Sex",
    "SimulatedCard",
    "SimulatedCardReader",
    "WrongPin",
    "demo_card",
    "open_card_reader",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEMO_PIN = "1234"


class ReaderOffline(DeviceError):
    """No reader to talk to: pcscd is not running, or the reader is not connected."""


class CardPresence(enum.StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    NO_READER = "no_reader"  # the reader is not connected
    NO_SERVICE = "no_service"  # pcscd is not running


class CardEvent(enum.StrEnum):
    INSERTED = "inserted"
    REMOVED = "removed"


CardListener = Callable[[CardEvent], None]


class CardReader(Protocol):
    """One My Number card reader. Every method may raise :class:`DeviceError`."""

    @property
    def name(self) -> str: ...

    async def presence(self) -> CardPresence:
        """Whether a card lies on the reader now (or why that cannot be known)."""
        ...

    async def wait_for_change(self, known: CardPresence, timeout_s: float) -> CardPresence:
        """Return as soon as the presence differs from ``known``; ``known`` after the timeout."""
        ...

    async def wait_for_card(self, timeout_s: float | None = None) -> None:
        """Return when a card is present. :class:`NoCard` after the timeout,
        :class:`ReaderOffline` at once when there is no reader or no pcscd."""
        ...

    async def remaining_pin_tries(self) -> int:
        """PIN tries left (3 on a healthy card, 0 when locked). Sends no PIN."""
        ...

    async def read_basic_info(self, pin: str) -> BasicInfo:
        """VERIFY ``pin`` once, then read 基本4情報."""
        ...

    async def read_individual_number(self, pin: str) -> str:
        """VERIFY ``pin`` once, then read 個人番号 (12 digits)."""
        ...

    async def aclose(self) -> None: ...


def _offline_reason(presence: CardPresence, reader: str) -> str | None:
    if presence is CardPresence.NO_SERVICE:
        return "the PC/SC service (pcscd) is not running; start it (systemctl start pcscd)"
    if presence is CardPresence.NO_READER:
        return f"card reader {reader!r} is not connected; check its USB cable"
    return None


async def _wait_for_card(reader: CardReader, timeout_s: float | None, poll_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    presence = await reader.presence()
    while presence is not CardPresence.PRESENT:
        reason = _offline_reason(presence, reader.name)
        if reason is not None:
            raise ReaderOffline(reason)
        left = poll_s if deadline is None else min(poll_s, deadline - loop.time())
        if left <= 0:
            raise NoCard(reader.name)
        presence = await reader.wait_for_change(presence, left)


# -- PC/SC (pyscard) --------------------------------------------------------------------------


def _scard() -> Any:
    """pyscard's PC/SC module, imported only when a real reader is used."""
    try:
        from smartcard import scard  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ReaderOffline(
            "pyscard is not installed; install the booth with its dependencies"
        ) from err
    return scard


class _Pcsc:
    """One PC/SC context, used from one thread only (one per worker)."""

    def __init__(self, wanted: str | None) -> None:
        self.sc = _scard()
        self.wanted = wanted
        self.context: Any = None

    def code(self, hresult: int) -> int:
        return int(hresult) & 0xFFFFFFFF

    def message(self, hresult: int) -> str:
        return f"{self.sc.SCardGetErrorMessage(hresult)} (0x{self.code(hresult):08X})"

    def drop(self) -> None:
        if self.context is not None:
            with contextlib.suppress(Exception):
                self.sc.SCardReleaseContext(self.context)
            self.context = None

    def established(self) -> Any:
        if self.context is None:
            hresult, context = self.sc.SCardEstablishContext(self.sc.SCARD_SCOPE_USER)
            if self.code(hresult) != self.sc.SCARD_S_SUCCESS:
                raise ReaderOffline(_offline_reason(CardPresence.NO_SERVICE, "") or "")
            self.context = context
        return self.context

    def fail(self, hresult: int, what: str, reader: str) -> DeviceError:
        """The project's error for a failed PC/SC call."""
        sc, code = self.sc, self.code(hresult)
        if code in (sc.SCARD_E_NO_SERVICE, sc.SCARD_E_SERVICE_STOPPED, sc.SCARD_E_INVALID_HANDLE):
            self.drop()  # the daemon restarted or stopped: a new context is needed
            return ReaderOffline(_offline_reason(CardPresence.NO_SERVICE, reader) or "")
        if code in (
            sc.SCARD_E_NO_READERS_AVAILABLE,
            sc.SCARD_E_UNKNOWN_READER,
            sc.SCARD_E_READER_UNAVAILABLE,
        ):
            return ReaderOffline(_offline_reason(CardPresence.NO_READER, reader) or "")
        if code in (sc.SCARD_E_NO_SMARTCARD, sc.SCARD_W_REMOVED_CARD) and what == "connect":
            return NoCard(reader)
        if code in (
            sc.SCARD_W_REMOVED_CARD,
            sc.SCARD_E_NO_SMARTCARD,
            sc.SCARD_E_NOT_TRANSACTED,
            sc.SCARD_F_COMM_ERROR,
            sc.SCARD_E_COMM_DATA_LOST,
            sc.SCARD_W_UNPOWERED_CARD,
        ):
            return CardRemoved()
        if code == sc.SCARD_W_UNRESPONSIVE_CARD:
            return DeviceError(
                "the card does not respond; lay it flat on the reader (is it a My Number card?)"
            )
        if code == sc.SCARD_W_RESET_CARD:
            return DeviceError("another program reset the card during the read; try again")
        if code == sc.SCARD_E_SHARING_VIOLATION:
            return DeviceError("another program is using the card reader; close it and try again")
        return DeviceError(f"card reader {reader!r}: {what} failed: {self.message(hresult)}")

    def reader(self) -> str:
        """The reader to use: the configured one, or the first one pcscd lists."""
        hresult, readers = self.sc.SCardListReaders(self.established(), [])
        wanted = self.wanted or "first PC/SC reader"
        if self.code(hresult) != self.sc.SCARD_S_SUCCESS:
            raise self.fail(hresult, "list readers", wanted)
        names = [str(r) for r in readers]
        if self.wanted is None:
            if names:
                return names[0]
        elif self.wanted in names:
            return self.wanted
        else:
            matches = [n for n in names if n.startswith(self.wanted)]
            if len(matches) == 1:
                return matches[0]
        raise ReaderOffline(_offline_reason(CardPresence.NO_READER, wanted) or "")

    def session(self, operation: Callable[[mynumber.Transmit], T], *, reset: bool) -> T:
        """Connect, run ``operation`` in a transaction, disconnect (resetting the card when
        a PIN was verified, so that its security state does not outlive the session)."""
        sc = self.sc
        reader = self.reader()
        hresult, card, protocol = sc.SCardConnect(
            self.established(),
            reader,
            sc.SCARD_SHARE_SHARED,
            sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1,
        )
        if self.code(hresult) != sc.SCARD_S_SUCCESS:
            raise self.fail(hresult, "connect", reader)

        def transmit(apdu: bytes) -> mynumber.Response:
            result, response = sc.SCardTransmit(card, protocol, list(apdu))
            if self.code(result) != sc.SCARD_S_SUCCESS:
                raise self.fail(result, "transmit", reader)
            if len(response) < 2:  # contact lost mid-command (vpcd reports it so, too)
                raise CardRemoved()
            return bytes(response[:-2]), (response[-2] << 8) | response[-1]

        disposition = sc.SCARD_RESET_CARD if reset else sc.SCARD_LEAVE_CARD
        try:
            hresult = sc.SCardBeginTransaction(card)
            if self.code(hresult) != sc.SCARD_S_SUCCESS:
                raise self.fail(hresult, "begin transaction", reader)
            try:
                return operation(transmit)
            except CardRemoved:
                # Nothing to reset. A failed reset would make pcscd report the reader empty
                # before its own poll has seen the card go, and then miss the next card.
                disposition = sc.SCARD_LEAVE_CARD
                raise
            finally:
                with contextlib.suppress(Exception):
                    sc.SCardEndTransaction(card, sc.SCARD_LEAVE_CARD)
        finally:
            with contextlib.suppress(Exception):
                sc.SCardDisconnect(card, disposition)

    def presence_of(self, event_state: int) -> CardPresence:
        sc = self.sc
        if event_state & (sc.SCARD_STATE_UNKNOWN | sc.SCARD_STATE_UNAVAILABLE):
            return CardPresence.NO_READER
        if event_state & sc.SCARD_STATE_PRESENT:
            return CardPresence.PRESENT
        return CardPresence.ABSENT

    def status_change(self, reader: str, known_state: int, timeout_ms: int) -> int | None:
        """The reader's new event state, or ``None`` on timeout."""
        hresult, states = self.sc.SCardGetStatusChange(
            self.established(), timeout_ms, [(reader, known_state)]
        )
        code = self.code(hresult)
        if code in (self.sc.SCARD_E_TIMEOUT, self.sc.SCARD_E_CANCELLED):
            return None
        if code != self.sc.SCARD_S_SUCCESS:
            raise self.fail(hresult, "watch", reader)
        return int(states[0][1]) & ~int(self.sc.SCARD_STATE_CHANGED)


class PcscCardReader:
    """A reader behind pcscd, through pyscard. Blocking calls run on two worker threads:
    one for card sessions, one for watching the reader."""

    def __init__(self, reader_name: str | None = None, *, poll_s: float = 0.5) -> None:
        self._wanted = reader_name
        self._poll_s = poll_s
        self._ops = DeviceWorker("card")
        self._watcher = DeviceWorker("card-watch")
        self._ops_pcsc: _Pcsc | None = None
        self._watch_pcsc: _Pcsc | None = None
        self._stop = threading.Event()
        self._closed = False

    @property
    def name(self) -> str:
        return self._wanted or "PC/SC (first reader)"

    # Both helpers run on their own worker thread.
    def _ops_context(self) -> _Pcsc:
        if self._ops_pcsc is None:
            self._ops_pcsc = _Pcsc(self._wanted)
        return self._ops_pcsc

    def _watch_context(self) -> _Pcsc:
        if self._watch_pcsc is None:
            self._watch_pcsc = _Pcsc(self._wanted)
        return self._watch_pcsc

    def _current(self, pcsc: _Pcsc) -> tuple[CardPresence, str | None, int]:
        try:
            reader = pcsc.reader()
            state = pcsc.status_change(reader, pcsc.sc.SCARD_STATE_UNAWARE, 0)
        except ReaderOffline:
            return self._offline_presence(pcsc), None, 0
        if state is None:
            return CardPresence.NO_READER, None, 0
        return pcsc.presence_of(state), reader, state

    def _offline_presence(self, pcsc: _Pcsc) -> CardPresence:
        return CardPresence.NO_SERVICE if pcsc.context is None else CardPresence.NO_READER

    async def presence(self) -> CardPresence:
        def run() -> CardPresence:
            return self._current(self._ops_context())[0]

        return await self._ops.run(run)

    async def wait_for_change(self, known: CardPresence, timeout_s: float) -> CardPresence:
        def run() -> CardPresence:
            pcsc = self._watch_context()
            presence, reader, state = self._current(pcsc)
            if presence is not known:
                return presence
            if reader is None:  # still no reader or no pcscd: wait before asking again
                self._stop.wait(timeout_s)
                return presence
            try:
                new_state = pcsc.status_change(reader, state, int(timeout_s * 1000))
            except ReaderOffline:
                return self._offline_presence(pcsc)
            return known if new_state is None else pcsc.presence_of(new_state)

        return await self._watcher.run(run)

    async def wait_for_card(self, timeout_s: float | None = None) -> None:
        await _wait_for_card(self, timeout_s, self._poll_s)

    async def _session(self, operation: Callable[[mynumber.Transmit], T], *, reset: bool) -> T:
        return await self._ops.run(lambda: self._ops_context().session(operation, reset=reset))

    async def remaining_pin_tries(self) -> int:
        return await self._session(mynumber.remaining_pin_tries, reset=False)

    async def read_basic_info(self, pin: str) -> BasicInfo:
        mynumber.validate_pin(pin)
        return await self._session(lambda t: mynumber.read_basic_info(t, pin), reset=True)

    async def read_individual_number(self, pin: str) -> str:
        mynumber.validate_pin(pin)
        return await self._session(lambda t: mynumber.read_individual_number(t, pin), reset=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        watch = self._watch_pcsc
        if watch is not None and watch.context is not None:
            with contextlib.suppress(Exception):
                watch.sc.SCardCancel(watch.context)  # wakes a waiting SCardGetStatusChange
        for worker, pcsc in ((self._watcher, watch), (self._ops, self._ops_pcsc)):
            if pcsc is not None:
                with contextlib.suppress(DeviceError):
                    await worker.run(pcsc.drop)
        await asyncio.to_thread(self._watcher.close)
        await asyncio.to_thread(self._ops.close)


# -- simulator --------------------------------------------------------------------------------


@dataclass
class SimulatedCard:
    """A card for the simulator. ``tries_left`` counts down like a real card's."""

    info: BasicInfo
    individual_number: str
    pin: str = DEMO_PIN
    tries_left: int = mynumber.MAX_PIN_TRIES

    def __repr__(self) -> str:
        return f"SimulatedCard(tries_left={self.tries_left})"


def demo_card() -> SimulatedCard:
    """The demo card: PIN 1234. The data is made up."""
    return SimulatedCard(
        info=BasicInfo(
            name="髙橋 𠮷子",
            address="東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号",
            birth_date=datetime.date(1985, 4, 1),
            sex=Sex.FEMALE,
        ),
        individual_number="123456789018",
    )


class SimulatedCardReader:
    """Behaves like :class:`PcscCardReader` with no hardware: same errors, same PIN counter,
    same presence changes. :meth:`insert` and :meth:`remove` play the resident's hand."""

    def __init__(
        self,
        card: SimulatedCard | None = None,
        *,
        name: str = "Simulated card reader",
        latency_s: float = 0.05,
    ) -> None:
        self._name = name
        self._card = card
        self._latency_s = latency_s
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def card(self) -> SimulatedCard | None:
        return self._card

    def insert(self, card: SimulatedCard) -> None:
        self._card = card
        self._signal()

    def remove(self) -> None:
        self._card = None
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _now(self) -> CardPresence:
        return CardPresence.ABSENT if self._card is None else CardPresence.PRESENT

    async def presence(self) -> CardPresence:
        return self._now()

    async def wait_for_change(self, known: CardPresence, timeout_s: float) -> CardPresence:
        if self._now() is known:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self._now()

    async def wait_for_card(self, timeout_s: float | None = None) -> None:
        await _wait_for_card(self, timeout_s, 0.5)

    async def _step(self, card: SimulatedCard) -> None:
        """One exchange with the card; it may be taken away meanwhile."""
        if self._closed:
            raise DeviceError("the card reader is closed")
        await asyncio.sleep(self._latency_s)
        if self._card is not card:
            raise CardRemoved()

    def _present_card(self) -> SimulatedCard:
        if self._card is None:
            raise NoCard(self._name)
        return self._card

    async def remaining_pin_tries(self) -> int:
        card = self._present_card()
        await self._step(card)
        return card.tries_left

    async def _verify(self, pin: str) -> SimulatedCard:
        mynumber.validate_pin(pin)
        card = self._present_card()
        await self._step(card)
        if card.tries_left == 0:
            raise CardLocked()
        if pin != card.pin:
            card.tries_left -= 1
            if card.tries_left == 0:
                raise CardLocked()
            raise WrongPin(card.tries_left)
        card.tries_left = mynumber.MAX_PIN_TRIES
        await self._step(card)
        return card

    async def read_basic_info(self, pin: str) -> BasicInfo:
        return (await self._verify(pin)).info

    async def read_individual_number(self, pin: str) -> str:
        return (await self._verify(pin)).individual_number

    async def aclose(self) -> None:
        self._closed = True


# -- factory ----------------------------------------------------------------------------------


def open_card_reader(spec: str) -> CardReader:
    """The reader named by ``DeviceConfig.card_reader``: ``simulated``, ``pcsc`` or
    ``pcsc:<reader name>``. Opening touches no hardware; use :meth:`CardReader.presence`."""
    if spec == "simulated":
        return SimulatedCardReader(demo_card())
    if spec == "pcsc":
        return PcscCardReader(None)
    if spec.startswith("pcsc:") and spec[5:].strip():
        return PcscCardReader(spec[5:].strip())
    raise ConfigError(
        f"card_reader {spec!r} is not valid; use 'simulated', 'pcsc' or 'pcsc:<reader name>'"
    )


# -- owner ------------------------------------------------------------------------------------

# Outcomes of the resident's own actions: the reader itself is fine.
_CARD_OUTCOMES = (InvalidPin, WrongPin, CardLocked, CardRemoved, NoCard)


class CardReaderOwner(DeviceOwner[CardReader]):
    """Owns the booth's card reader: watches the card, serialises reads, publishes
    ``ready`` (no card), ``card_present``, ``busy``, ``offline`` (no reader or no pcscd)
    and ``error``; tells card listeners when a card is inserted or removed."""

    def __init__(self, driver: CardReader, *, poll_s: float = 0.5) -> None:
        super().__init__(DeviceKind.CARD_READER, driver.name, driver)
        self._poll_s = poll_s
        self._presence: CardPresence | None = None
        self._card_present = asyncio.Event()
        self._card_listeners: list[CardListener] = []
        self._busy = False
        # The state and reason of the last failed operation, until a card comes or goes.
        self._failure: tuple[DeviceState, str] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def presence(self) -> CardPresence | None:
        return self._presence

    def add_card_listener(self, listener: CardListener) -> None:
        self._card_listeners.append(listener)

    def remove_card_listener(self, listener: CardListener) -> None:
        if listener in self._card_listeners:
            self._card_listeners.remove(listener)

    async def start(self) -> None:
        """Read the reader's state and keep watching it. Idempotent."""
        if self._watch_task is not None:
            return
        try:
            self._apply(await self.driver.presence())
        except DeviceError as err:
            self.set_state(DeviceState.ERROR, err.reason)
        self._watch_task = asyncio.create_task(self._watch(), name=f"card-watch {self.name}")

    async def _watch(self) -> None:
        while True:
            try:
                known = self._presence or CardPresence.NO_READER
                self._apply(await self.driver.wait_for_change(known, self._poll_s))
            except DeviceError as err:
                if not self._busy:
                    self.set_state(DeviceState.ERROR, err.reason)
                await asyncio.sleep(self._poll_s)

    def _apply(self, presence: CardPresence) -> None:
        old = self._presence
        self._presence = presence
        if presence is CardPresence.PRESENT:
            self._card_present.set()
        else:
            self._card_present.clear()
        if old is not None and old is not presence:
            event = None
            if presence is CardPresence.PRESENT:
                event = CardEvent.INSERTED
            elif old is CardPresence.PRESENT:
                event = CardEvent.REMOVED
            if event is not None:
                logger.info("card reader %s: card %s", self.name, event.value)
                self._failure = None  # a new card, or none: the last read's failure is over
                for listener in list(self._card_listeners):
                    try:
                        listener(event)
                    except Exception:
                        logger.exception("card listener failed")
        if not self._busy:
            self._publish()

    def _publish(self) -> None:
        presence = self._presence
        reason = None if presence is None else _offline_reason(presence, self.name)
        if reason is not None:
            self.set_state(DeviceState.OFFLINE, reason)
        elif self._failure is not None:
            self.set_state(*self._failure)
        elif presence is CardPresence.PRESENT:
            self.set_state(DeviceState.CARD_PRESENT)
        else:
            self.set_state(DeviceState.READY)

    async def wait_for_card(self, timeout_s: float | None = None) -> None:
        """Return when a card is on the reader; :class:`NoCard` after the timeout."""
        try:
            await asyncio.wait_for(self._card_present.wait(), timeout_s)
        except TimeoutError as err:
            raise NoCard(self.name) from err

    async def _operation(self, operation: Callable[[CardReader], Awaitable[T]]) -> T:
        async def run(driver: CardReader) -> T:
            self._busy = True
            self.set_state(DeviceState.BUSY)
            try:
                result = await operation(driver)
            except _CARD_OUTCOMES:
                self._failure = None
                raise
            except ReaderOffline as err:
                self._failure = (DeviceState.OFFLINE, err.reason)
                raise
            except DeviceError as err:
                self._failure = (DeviceState.ERROR, err.reason)
                raise
            else:
                self._failure = None
                return result
            finally:
                self._busy = False
                self._publish()

        return await self.use(run)

    async def remaining_pin_tries(self) -> int:
        return await self._operation(lambda d: d.remaining_pin_tries())

    async def read_basic_info(self, pin: str) -> BasicInfo:
        mynumber.validate_pin(pin)  # before the reader turns busy: nothing reaches the card
        return await self._operation(lambda d: d.read_basic_info(pin))

    async def read_individual_number(self, pin: str) -> str:
        mynumber.validate_pin(pin)
        return await self._operation(lambda d: d.read_individual_number(pin))

    async def aclose(self) -> None:
        """Stop watching and close the driver. Idempotent."""
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.driver.aclose()
