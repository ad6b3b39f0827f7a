"""The My Number card reader: BER parsing by hand-made bytes, the simulator, and the PC/SC
driver against a real pcscd with vpcd and the virtual card of :mod:`tests.vcard`.

Nothing mocks pyscard: every PC/SC test goes through libpcsclite, pcscd and vpcd to the
virtual card's socket.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from booth.devices import mynumber
from booth.devices.base import DeviceState, DeviceStatus
from booth.devices.card import (
    CardEvent,
    CardLocked,
    CardPresence,
    CardReaderOwner,
    CardRemoved,
    InvalidPin,
    NoCard,
    PcscCardReader,
    ReaderOffline,
    Sex,
    SimulatedCardReader,
    WrongPin,
    demo_card,
    open_card_reader,
)
from booth.devices.mynumber import CardDataError, Tlv
from shared.errors import ConfigError
from tests.pcsc_support import READERS, VPCD_PORTS, PcscDaemon
from tests.pcsc_support import pcscd_session as pcscd_session  # the "pcscd" fixture
from tests.vcard import CardProfile, VirtualMyNumberCard, encode_basic_info

ROOT = Path(__file__).resolve().parent.parent

# -- BER-TLV and APDUs, by hand-made bytes ---------------------------------------------------


def test_tlv_short_and_long_form_lengths() -> None:
    assert mynumber.parse_tlv(bytes([0xDF, 0x22, 0x03, 0x41, 0x42, 0x43])) == (
        Tlv(0xDF22, b"ABC"),
        6,
    )
    value = bytes(range(200))
    item, end = mynumber.parse_tlv(bytes([0xDF, 0x23, 0x81, 0xC8]) + value + b"\xff\xff")
    assert item == Tlv(0xDF23, value) and end == 204
    value = bytes(300)
    item, end = mynumber.parse_tlv(bytes([0xFF, 0x20, 0x82, 0x01, 0x2C]) + value)
    assert item == Tlv(0xFF20, value) and end == 305
    assert mynumber.parse_tlvs(bytes([0x01, 0x01, 0xAA, 0xDF, 0x25, 0x00])) == [
        Tlv(0x01, b"\xaa"),
        Tlv(0xDF25, b""),
    ]
    # A tag of three bytes: the second byte has bit 8 set, so one more follows.
    assert mynumber.parse_tlv(bytes([0x5F, 0x81, 0x01, 0x01, 0x07]))[0] == Tlv(0x5F8101, b"\x07")


def test_tlv_total_length_from_the_header_only() -> None:
    assert mynumber.tlv_total_length(bytes([0xFF, 0x20, 0x7F, 0x00, 0x00])) == 3 + 0x7F
    assert mynumber.tlv_total_length(bytes([0xFF, 0x20, 0x81, 0xF0, 0xDF])) == 4 + 0xF0
    assert mynumber.tlv_total_length(bytes([0xFF, 0x20, 0x82, 0x01, 0x2C])) == 5 + 300
    assert mynumber.tlv_total_length(bytes([0xFF, 0x10, 0x0C, 0x31, 0x32])) == 15


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([0xDF]),  # tag cut short
        bytes([0xDF, 0x22]),  # no length
        bytes([0xDF, 0x22, 0x05, 0x41]),  # value cut short
        bytes([0xDF, 0x22, 0x82, 0x01]),  # long length cut short
        bytes([0xDF, 0x22, 0x80, 0x41, 0x00, 0x00]),  # indefinite length
        bytes([0xDF, 0x22, 0x83, 0x00, 0x00, 0x01, 0x41]),  # three length bytes
    ],
)
def test_tlv_rejects_broken_data(data: bytes) -> None:
    with pytest.raises(CardDataError):
        mynumber.parse_tlv(data)


def _basic_info_bytes(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return (
        bytes([0xFF, 0x20, 0x81, len(body)]) + body
        if len(body) > 0x7F
        else (bytes([0xFF, 0x20, len(body)]) + body)
    )


def test_parse_basic_info_by_hand() -> None:
    name = "髙橋 𠮷子".encode()
    address = "東京都多摩市落合一丁目".encode()
    data = _basic_info_bytes(
        bytes([0xDF, 0x21, 0x02, 0x00, 0x01]),
        bytes([0xDF, 0x22, len(name)]) + name,
        bytes([0xDF, 0x23, len(address)]) + address,
        bytes([0xDF, 0x24, 0x08]) + b"19991231",
        bytes([0xDF, 0x25, 0x01]) + b"1",
    )
    info = mynumber.parse_basic_info(data + b"\xff" * 40)  # padding after the TLV
    assert info.name == "髙橋 𠮷子"
    assert info.address == "東京都多摩市落合一丁目"
    assert info.birth_date == datetime.date(1999, 12, 31)
    assert info.sex is Sex.MALE
    assert info.to_json_dict() == {
        "name": "髙橋 𠮷子",
        "address": "東京都多摩市落合一丁目",
        "birth_date": "1999-12-31",
        "sex": "male",
    }
    assert "髙橋" not in repr(info)


@pytest.mark.parametrize(
    ("code", "sex"), [(b"2", Sex.FEMALE), (b"3", Sex.OTHER), (b"9", Sex.UNKNOWN)]
)
def test_sex_codes(code: bytes, sex: Sex) -> None:
    data = _basic_info_bytes(
        b"\xdf\x22\x01A", b"\xdf\x23\x01B", b"\xdf\x24\x0820000229", b"\xdf\x25\x01" + code
    )
    info = mynumber.parse_basic_info(data)
    assert (info.sex, info.birth_date) == (sex, datetime.date(2000, 2, 29))


@pytest.mark.parametrize(
    "data",
    [
        _basic_info_bytes(b"\xdf\x22\x01A", b"\xdf\x24\x0819990101", b"\xdf\x25\x011"),
        _basic_info_bytes(
            b"\xdf\x22\x01A", b"\xdf\x23\x01B", b"\xdf\x24\x0819990230", b"\xdf\x25\x011"
        ),
        _basic_info_bytes(
            b"\xdf\x22\x02\xe9\xab", b"\xdf\x23\x01B", b"\xdf\x24\x0819990101", b"\xdf\x25\x011"
        ),
        bytes([0xFF, 0x10, 0x03]) + b"abc",
    ],
    ids=["no address", "30 February", "cut UTF-8", "wrong outer tag"],
)
def test_parse_basic_info_rejects(data: bytes) -> None:
    with pytest.raises(CardDataError):
        mynumber.parse_basic_info(data)


def test_individual_number_and_check_digit() -> None:
    assert mynumber.parse_individual_number(b"\xff\x10\x0c123456789018\xff\xff") == "123456789018"
    with pytest.raises(CardDataError, match="check digit"):
        mynumber.parse_individual_number(b"\xff\x10\x0c123456789017")
    with pytest.raises(CardDataError):
        mynumber.parse_individual_number(b"\xff\x10\x0b12345678901")


def test_apdus() -> None:
    assert mynumber.select_ap().hex() == "00a4040c0ad3921000310001010408"
    assert mynumber.select_ef(0x0011).hex() == "00a4020c020011"
    assert mynumber.verify_status().hex() == "00200080"
    assert mynumber.verify(b"1234").hex() == "002000800431323334"
    assert mynumber.read_binary(0x0105, 0xFF).hex() == "00b00105ff"
    assert mynumber.read_binary(0, 256).hex() == "00b0000000"


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "１２３４", "", " 123", "1234\n"])
def test_pin_must_be_four_ascii_digits(pin: str) -> None:
    with pytest.raises(InvalidPin):
        mynumber.validate_pin(pin)
    assert mynumber.validate_pin("0907") == b"0907"


def test_factory_specs() -> None:
    assert isinstance(open_card_reader("simulated"), SimulatedCardReader)
    first = open_card_reader("pcsc")
    assert isinstance(first, PcscCardReader) and first.name == "PC/SC (first reader)"
    assert open_card_reader("pcsc:Virtual PCD 00 01").name == "Virtual PCD 00 01"
    for bad in ("pcsc:", "felica", ""):
        with pytest.raises(ConfigError):
            open_card_reader(bad)


# -- the simulator ---------------------------------------------------------------------------


@dataclass
class Recorder:
    states: list[DeviceState]
    events: list[CardEvent]

    @classmethod
    def attach(cls, owner: CardReaderOwner) -> Recorder:
        recorder = cls([], [])
        owner.add_listener(lambda status: recorder.states.append(status.state))
        owner.add_card_listener(recorder.events.append)
        return recorder


async def wait_state(owner: CardReaderOwner, state: DeviceState, within: float = 5.0) -> None:
    reached = asyncio.Event()

    def check(status: DeviceStatus) -> None:
        if status.state is state:
            reached.set()

    owner.add_listener(check)
    try:
        check(owner.status)
        await asyncio.wait_for(reached.wait(), within)
    finally:
        owner.remove_listener(check)


async def test_simulator_demo_card_and_pin_counter() -> None:
    reader = SimulatedCardReader(demo_card(), latency_s=0.01)
    owner = CardReaderOwner(reader, poll_s=0.05)
    recorder = Recorder.attach(owner)
    await owner.start()
    try:
        assert owner.status.state is DeviceState.CARD_PRESENT
        await owner.wait_for_card(1)
        assert await owner.remaining_pin_tries() == 3
        info = await owner.read_basic_info("1234")
        assert info.name == "髙橋 𠮷子" and "多摩市" in info.address
        assert (info.birth_date, info.sex) == (datetime.date(1985, 4, 1), Sex.FEMALE)
        assert await owner.read_individual_number("1234") == "123456789018"
        with pytest.raises(WrongPin) as wrong:
            await owner.read_basic_info("0000")
        assert wrong.value.remaining == 2 and await owner.remaining_pin_tries() == 2
        with pytest.raises(WrongPin) as wrong:
            await owner.read_basic_info("0000")
        assert wrong.value.remaining == 1
        with pytest.raises(CardLocked, match="市区町村の窓口"):
            await owner.read_basic_info("0000")
        with pytest.raises(CardLocked):
            await owner.read_basic_info("1234")
        assert await owner.remaining_pin_tries() == 0
        assert owner.status.state is DeviceState.CARD_PRESENT  # the reader is fine

        reader.remove()
        await wait_state(owner, DeviceState.READY)
        with pytest.raises(NoCard):
            await owner.read_basic_info("1234")
        reader.insert(demo_card())
        await owner.wait_for_card(1)
        assert (await owner.read_basic_info("1234")).name == "髙橋 𠮷子"
    finally:
        await owner.aclose()
        await owner.aclose()
    assert recorder.events == [CardEvent.REMOVED, CardEvent.INSERTED]
    assert recorder.states[:3] == [
        DeviceState.CARD_PRESENT,
        DeviceState.BUSY,
        DeviceState.CARD_PRESENT,
    ]
    assert DeviceState.READY in recorder.states
    assert DeviceState.ERROR not in recorder.states


async def test_simulator_card_removed_mid_read() -> None:
    reader = SimulatedCardReader(demo_card(), latency_s=0.2)
    read = asyncio.create_task(reader.read_basic_info("1234"))
    await asyncio.sleep(0.3)  # past the PIN check, during the read
    reader.remove()
    with pytest.raises(CardRemoved):
        await read
    with pytest.raises(NoCard):
        await reader.wait_for_card(0.1)


# -- PC/SC: pcscd + vpcd + the virtual card --------------------------------------------------


class Cards:
    """Virtual cards put on the vpcd readers; all taken away (and seen gone) at the end."""

    def __init__(self) -> None:
        self.inserted: list[VirtualMyNumberCard] = []

    def insert(
        self,
        profile: CardProfile | None = None,
        *,
        slot: int = 0,
        remove_on_read_binary: int | None = None,
    ) -> VirtualMyNumberCard:
        card = VirtualMyNumberCard(
            profile or CardProfile(),
            port=VPCD_PORTS[slot],
            remove_on_read_binary=remove_on_read_binary,
        )
        card.insert()
        self.inserted.append(card)
        return card

    async def remove_all(self) -> None:
        for card in self.inserted:
            card.remove()
        # pcscd takes a moment to notice; a card put on before that would look like the old one.
        for name in READERS:
            reader = PcscCardReader(name)
            try:
                async with asyncio.timeout(5):
                    presence = await reader.presence()
                    while presence is CardPresence.PRESENT:
                        presence = await reader.wait_for_change(presence, 0.5)
            finally:
                await reader.aclose()


@pytest.fixture
async def cards(pcscd: PcscDaemon) -> AsyncIterator[Cards]:
    cards = Cards()
    try:
        yield cards
    finally:
        await cards.remove_all()


@pytest.fixture
async def owner(pcscd: PcscDaemon) -> AsyncIterator[CardReaderOwner]:
    owner = CardReaderOwner(PcscCardReader(READERS[0], poll_s=0.1), poll_s=0.1)
    try:
        await owner.start()
        yield owner
    finally:
        await owner.aclose()


def verifies_with_pin(card: VirtualMyNumberCard) -> list[bytes]:
    return [c for c in card.commands if c[:4] == bytes.fromhex("00200080") and len(c) > 4]


async def test_read_basic_info_through_pcscd(cards: Cards, owner: CardReaderOwner) -> None:
    recorder = Recorder.attach(owner)
    assert owner.status.state is DeviceState.READY
    card = cards.insert()
    await owner.wait_for_card(5)
    await wait_state(owner, DeviceState.CARD_PRESENT)

    assert await owner.remaining_pin_tries() == 3
    assert verifies_with_pin(card) == []  # the counter was read without sending a PIN
    assert bytes.fromhex("00200080") in card.commands

    info = await owner.read_basic_info("1234")
    assert info.name == "髙橋 𠮷子"
    assert info.address == "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号"
    assert info.birth_date == datetime.date(1985, 4, 1)
    assert info.sex is Sex.FEMALE
    assert verifies_with_pin(card) == [bytes.fromhex("002000800431323334")]
    # 個人番号 stays on the card unless asked for by its own call.
    assert mynumber.select_ef(0x0001) not in card.commands
    assert await owner.read_individual_number("1234") == "123456789018"
    assert mynumber.select_ef(0x0001) in card.commands

    card.remove()
    await wait_state(owner, DeviceState.READY)
    assert recorder.events == [CardEvent.INSERTED, CardEvent.REMOVED]
    assert recorder.states == [
        DeviceState.CARD_PRESENT,
        DeviceState.BUSY,
        DeviceState.CARD_PRESENT,
        DeviceState.BUSY,
        DeviceState.CARD_PRESENT,
        DeviceState.BUSY,
        DeviceState.CARD_PRESENT,
        DeviceState.READY,
    ]


async def test_wrong_pin_counts_down_and_locks(cards: Cards, owner: CardReaderOwner) -> None:
    card = cards.insert()
    await owner.wait_for_card(5)
    assert await owner.remaining_pin_tries() == 3
    for expected in (2, 1):
        with pytest.raises(WrongPin) as wrong:
            await owner.read_basic_info("9999")
        assert wrong.value.remaining == expected
        assert f"{expected} tr" in wrong.value.reason
        assert await owner.remaining_pin_tries() == expected
    with pytest.raises(CardLocked, match="市区町村の窓口"):
        await owner.read_basic_info("9999")
    assert await owner.remaining_pin_tries() == 0
    with pytest.raises(CardLocked):  # even the right PIN opens nothing now
        await owner.read_basic_info("1234")
    assert card.tries_left == 0
    assert len(verifies_with_pin(card)) == 4  # one VERIFY per call: nothing retried
    assert mynumber.select_ef(0x0002) not in card.commands
    assert owner.status.state is DeviceState.CARD_PRESENT


async def test_right_pin_restores_the_counter(cards: Cards, owner: CardReaderOwner) -> None:
    card = cards.insert(CardProfile(tries_left=2))
    await owner.wait_for_card(5)
    assert await owner.remaining_pin_tries() == 2
    assert (await owner.read_basic_info("1234")).sex is Sex.FEMALE
    assert await owner.remaining_pin_tries() == 3
    assert card.tries_left == 3


async def test_locked_card(cards: Cards, owner: CardReaderOwner) -> None:
    card = cards.insert(CardProfile(tries_left=0))
    await owner.wait_for_card(5)
    assert await owner.remaining_pin_tries() == 0
    with pytest.raises(CardLocked) as locked:
        await owner.read_basic_info("1234")
    assert "city office" in locked.value.reason and locked.value.remaining == 0
    with pytest.raises(CardLocked):
        await owner.read_individual_number("1234")
    assert mynumber.select_ef(0x0002) not in card.commands
    assert owner.status.state is DeviceState.CARD_PRESENT


async def test_invalid_pin_is_never_sent(cards: Cards, owner: CardReaderOwner) -> None:
    card = cards.insert()
    await owner.wait_for_card(5)
    for pin in ("123", "12345", "abcd", "１２３４"):
        with pytest.raises(InvalidPin):
            await owner.read_basic_info(pin)
        with pytest.raises(InvalidPin):
            await owner.driver.read_individual_number(pin)
    assert card.commands == []
    assert card.tries_left == 3


async def test_card_removed_mid_read(cards: Cards, owner: CardReaderOwner) -> None:
    recorder = Recorder.attach(owner)
    card = cards.insert(remove_on_read_binary=2)  # after the header, during the body
    await owner.wait_for_card(5)
    result: list[object] = []
    with pytest.raises(CardRemoved):
        result.append(await owner.read_basic_info("1234"))
    assert result == []
    assert card.gone.is_set()
    assert sum(1 for c in card.commands if c[1] == 0xB0) == 2
    await wait_state(owner, DeviceState.READY)
    assert recorder.events == [CardEvent.INSERTED, CardEvent.REMOVED]
    assert DeviceState.ERROR not in recorder.states

    # Put back (once pcscd has seen it go), the next read works.
    await cards.remove_all()
    cards.insert()
    await owner.wait_for_card(5)
    assert (await owner.read_basic_info("1234")).name == "髙橋 𠮷子"


@pytest.mark.parametrize("address_chars", [70, 120], ids=["DF23 0x81", "DF23 0x82"])
async def test_long_address_and_rare_kanji(
    cards: Cards, owner: CardReaderOwner, address_chars: int
) -> None:
    name = "𠮷野 髙﨑 〆子"  # outside JIS X 0208: U+20BB7 (4 UTF-8 bytes), U+9AD9, U+FA11
    address = ("東京都多摩市鶴牧三丁目５番地３　多摩センター駅前" * 10)[:address_chars]
    profile = CardProfile(name=name, address=address, birth="20010911", sex="3")
    encoded = encode_basic_info(profile.name, profile.address, profile.birth, profile.sex)
    address_bytes = len(address.encode())
    assert address_bytes > 200 and encoded[2] == 0x82  # the outer length is long form
    df23 = encoded.index(b"\xdf\x23")
    assert encoded[df23 + 2] == (0x81 if address_bytes <= 0xFF else 0x82)
    cards.insert(profile)
    await owner.wait_for_card(5)
    info = await owner.read_basic_info("1234")
    assert info.name == name
    assert info.address == address
    assert (info.birth_date, info.sex) == (datetime.date(2001, 9, 11), Sex.OTHER)


async def test_two_readers_by_name(cards: Cards) -> None:
    cards.insert(CardProfile(name="髙橋 𠮷子"), slot=0)
    second = cards.insert(
        CardProfile(
            name="佐藤 太郎",
            address="東京都多摩市関戸四丁目７２番地",
            birth="19700102",
            sex="1",
            individual_number="987654321018",
            pin="4321",
        ),
        slot=1,
    )
    first_reader = open_card_reader("pcsc")  # the first reader pcscd lists
    by_name = open_card_reader(f"pcsc:{READERS[1]}")
    try:
        await first_reader.wait_for_card(5)
        await by_name.wait_for_card(5)
        assert (await first_reader.read_basic_info("1234")).name == "髙橋 𠮷子"
        info = await by_name.read_basic_info("4321")
        assert (info.name, info.sex) == ("佐藤 太郎", Sex.MALE)
        assert await by_name.read_individual_number("4321") == "987654321018"
        with pytest.raises(WrongPin):
            await by_name.read_basic_info("1234")
        assert second.tries_left == 2
        assert await first_reader.remaining_pin_tries() == 3
    finally:
        await first_reader.aclose()
        await by_name.aclose()


async def test_other_card_is_an_error_until_removed(cards: Cards, owner: CardReaderOwner) -> None:
    recorder = Recorder.attach(owner)
    card = cards.insert(CardProfile(has_ap=False))
    await owner.wait_for_card(5)
    with pytest.raises(CardDataError, match="My Number card"):
        await owner.remaining_pin_tries()
    assert owner.status.state is DeviceState.ERROR
    assert owner.status.reason is not None and "My Number card" in owner.status.reason
    assert card.commands == [mynumber.select_ap()]
    card.remove()
    await wait_state(owner, DeviceState.READY)
    assert recorder.states == [
        DeviceState.CARD_PRESENT,
        DeviceState.BUSY,
        DeviceState.ERROR,
        DeviceState.READY,
    ]


async def test_unknown_reader_is_offline(pcscd: PcscDaemon) -> None:
    owner = CardReaderOwner(PcscCardReader("No Such Reader", poll_s=0.1), poll_s=0.1)
    try:
        await owner.start()
        status: DeviceStatus = owner.status
        assert status.state is DeviceState.OFFLINE
        assert status.reason is not None and "No Such Reader" in status.reason
        with pytest.raises(ReaderOffline):
            await owner.driver.wait_for_card(1)
        with pytest.raises(ReaderOffline):
            await owner.remaining_pin_tries()
        assert owner.status.state is DeviceState.OFFLINE
    finally:
        await owner.aclose()


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.args!r} {record.exc_text or ''}")


@pytest.fixture
def all_logs() -> Iterator[_Everything]:
    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_pin_is_never_logged(cards: Cards, all_logs: _Everything, pcscd: PcscDaemon) -> None:
    card = cards.insert(CardProfile(pin="7391"))
    owner = CardReaderOwner(PcscCardReader(READERS[0], poll_s=0.1), poll_s=0.1)
    try:
        await owner.start()
        await owner.wait_for_card(5)
        with pytest.raises(WrongPin) as wrong:
            await owner.read_basic_info("7390")
        assert await owner.read_basic_info("7391") is not None
        card.remove()
        await wait_state(owner, DeviceState.READY)
    finally:
        await owner.aclose()
    assert verifies_with_pin(card)[-1].endswith(b"7391")  # the PIN did reach the card
    logged = "\n".join(all_logs.lines) + pcscd.log_tail(1000)
    assert "card inserted" in logged and "card removed" in logged  # logging was on
    for secret in ("7391", "7390", "37 33 39 31", "37333931"):
        assert secret not in logged
        assert secret not in str(wrong.value)


# -- the card-read command -------------------------------------------------------------------


async def card_read(
    pin: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "booth",
        "card-read",
        "--pin-stdin",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(f"{pin}\n".encode()), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_card_read_command(cards: Cards, pcscd: PcscDaemon) -> None:
    cards.insert(slot=0)
    second = cards.insert(CardProfile(tries_left=2), slot=1)
    no_pcscd = {**pcscd.env, "PCSCLITE_CSOCK_NAME": str(ROOT / "var" / "no-such-pcscd.comm")}
    ok, wrong, bad_pin, offline = await asyncio.gather(
        card_read("1234", "--reader", READERS[0], "--json", env=pcscd.env),
        card_read("0000", "--reader", READERS[1], "--json", env=pcscd.env),
        card_read("12", "--reader", READERS[0], "--json", env=pcscd.env),
        card_read("1234", "--reader", "pcsc", env=no_pcscd),
    )
    code, out, err = ok
    assert code == 0, err
    assert json.loads(out) == {
        "reader": READERS[0],
        "name": "髙橋 𠮷子",
        "address": "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号",
        "birth_date": "1985-04-01",
        "sex": "female",
    }
    assert "PIN tries left: 3" in err
    code, out, err = wrong
    assert code == 4
    assert "PIN tries left: 2" in err  # shown before the PIN was sent
    assert json.loads(out)["error"] == "wrong_pin" and json.loads(out)["remaining_tries"] == 1
    code, out, _err = bad_pin
    assert code == 2 and json.loads(out)["error"] == "invalid_pin"
    code, _out, err = offline
    assert code == 3 and "pcscd" in err

    code, out, err = await card_read("0000", "--reader", READERS[1], env=pcscd.env)
    assert code == 5 and "市区町村の窓口" in err
    assert second.tries_left == 0
    assert "1234" not in err and "0000" not in err
