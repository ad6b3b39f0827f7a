"""The My Number card's 券面事項入力補助AP: APDUs, status words, BER-TLV and the read sequence.

Nothing here talks to a reader. The sequences take a ``transmit`` function (command APDU in,
response data and status word out), so the PC/SC driver and any other transport share them.

The AP holds three files that matter here:

- ``0011`` the 4-digit PIN (3 tries; three wrong PINs lock the card until the resident has
  it reset at the city office, 市区町村の窓口),
- ``0002`` 基本4情報: ``FF 20 <len> { DF21 header, DF22 氏名, DF23 住所, DF24 生年月日
  (YYYYMMDD), DF25 性別 }``, UTF-8, lengths in short or long form (0x81 / 0x82),
- ``0001`` 個人番号: ``FF 10 0C`` and 12 ASCII digits. It is read only by an explicit,
  separate call (:func:`read_individual_number`).

The PIN goes into one VERIFY APDU and nowhere else: no error message, log line or
exception here contains it.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shared.errors import DeviceError

AP_AID: Final = bytes.fromhex("D3921000310001010408")
EF_INDIVIDUAL_NUMBER: Final = 0x0001
EF_BASIC_INFO: Final = 0x0002
EF_PIN: Final = 0x0011

TAG_BASIC_INFO: Final = 0xFF20
TAG_HEADER: Final = 0xDF21
TAG_NAME: Final = 0xDF22
TAG_ADDRESS: Final = 0xDF23
TAG_BIRTH_DATE: Final = 0xDF24
TAG_SEX: Final = 0xDF25
TAG_INDIVIDUAL_NUMBER: Final = 0xFF10

PIN_LENGTH: Final = 4
MAX_PIN_TRIES: Final = 3
HEADER_READ: Final = 5  # enough for a two-byte tag and a 0x82 length
MAX_CHUNK: Final = 0xFF  # READ BINARY Le per command

SW_OK: Final = 0x9000

# (data, status word) for one command APDU.
Response = tuple[bytes, int]
Transmit = Callable[[bytes], Response]


# -- errors ---------------------------------------------------------------------------------


class InvalidPin(DeviceError):
    """The PIN is not exactly four ASCII digits; nothing was sent to the card."""

    def __init__(self) -> None:
        super().__init__("the PIN must be exactly 4 digits (0-9)")


class WrongPin(DeviceError):
    """The card refused the PIN. ``remaining`` tries are left (1 or 2)."""

    def __init__(self, remaining: int) -> None:
        super().__init__(
            f"wrong PIN; {remaining} {'try' if remaining == 1 else 'tries'} left before the "
            "card locks. Do not guess: ask the resident to check the PIN"
        )
        self.remaining = remaining


class CardLocked(DeviceError):
    """No PIN tries left: only the city office can reset the PIN."""

    def __init__(self) -> None:
        super().__init__(
            "the card's PIN is locked after 3 wrong PINs; the resident must have it reset "
            "at the city office (市区町村の窓口) with the card and identification"
        )
        self.remaining = 0


class CardRemoved(DeviceError):
    """The card left the reader (or lost contact) during an operation; no data was kept."""

    def __init__(self) -> None:
        super().__init__(
            "the card was removed during the read; put it back on the reader and try again"
        )


class NoCard(DeviceError):
    """There is no card on the reader."""

    def __init__(self, reader: str) -> None:
        super().__init__(f"no card on reader {reader!r}; put the My Number card on the reader")


class CardDataError(DeviceError):
    """The card answered, but not as a My Number card does."""


# -- the data -------------------------------------------------------------------------------


class Sex(enum.StrEnum):
    MALE = "male"  # code 1
    FEMALE = "female"  # code 2
    OTHER = "other"  # code 3
    UNKNOWN = "unknown"  # any other code


_SEX_CODES: Final = {"1": Sex.MALE, "2": Sex.FEMALE, "3": Sex.OTHER}


@dataclass(frozen=True)
class BasicInfo:
    """基本4情報 as printed on the card. Personal data: never log it."""

    name: str  # 氏名
    address: str  # 住所
    birth_date: datetime.date  # 生年月日
    sex: Sex  # 性別

    def to_json_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "address": self.address,
            "birth_date": self.birth_date.isoformat(),
            "sex": self.sex.value,
        }

    def __repr__(self) -> str:  # keep personal data out of reprs in tracebacks and logs
        return "BasicInfo(<personal data>)"


# -- BER-TLV --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise CardDataError("card data ends before a tag")
    first = data[pos]
    tag = first
    pos += 1
    if first & 0x1F == 0x1F:  # more tag bytes follow, the last one has bit 8 clear
        while True:
            if pos >= len(data):
                raise CardDataError("card data ends inside a tag")
            tag = (tag << 8) | data[pos]
            pos += 1
            if not data[pos - 1] & 0x80:
                break
            if tag > 0xFFFFFF:
                raise CardDataError("card data has a tag longer than 3 bytes")
    return tag, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise CardDataError("card data ends before a length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 2:  # indefinite form and 0x83+ never occur on the card
        raise CardDataError(f"card data has an unsupported BER length byte 0x{first:02X}")
    if pos + count > len(data):
        raise CardDataError("card data ends inside a length")
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


def tlv_total_length(head: bytes) -> int:
    """Total size (tag, length and value) of the TLV that ``head`` starts with.

    ``head`` must hold at least the tag and length bytes (5 bytes always do).
    """
    _tag, pos = _read_tag(head, 0)
    length, pos = _read_length(head, pos)
    return pos + length


def parse_tlv(data: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """One TLV starting at ``pos``, and the position after it."""
    tag, pos = _read_tag(data, pos)
    length, pos = _read_length(data, pos)
    end = pos + length
    if end > len(data):
        raise CardDataError(
            f"card data is truncated: tag 0x{tag:X} needs {length} bytes, {len(data) - pos} present"
        )
    return Tlv(tag, bytes(data[pos:end])), end


def parse_tlvs(data: bytes) -> list[Tlv]:
    """Every TLV of ``data``, in order (one level)."""
    items: list[Tlv] = []
    pos = 0
    while pos < len(data):
        item, pos = parse_tlv(data, pos)
        items.append(item)
    return items


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CardDataError(f"the {what} on the card is not valid UTF-8") from err


def parse_basic_info(data: bytes) -> BasicInfo:
    """Parse the content of EF ``0002`` (``FF 20 ...``), trailing padding ignored."""
    outer, _end = parse_tlv(data)
    if outer.tag != TAG_BASIC_INFO:
        raise CardDataError(f"expected 基本4情報 (tag FF20), found tag 0x{outer.tag:X}")
    fields = {item.tag: item.value for item in parse_tlvs(outer.value)}
    for tag in (TAG_NAME, TAG_ADDRESS, TAG_BIRTH_DATE, TAG_SEX):
        if tag not in fields:
            raise CardDataError(f"基本4情報 lacks tag 0x{tag:X}")
    birth = _utf8(fields[TAG_BIRTH_DATE], "birth date")
    try:
        if len(birth) != 8 or not birth.isascii() or not birth.isdigit():
            raise ValueError(birth)
        birth_date = datetime.date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
    except ValueError as err:
        raise CardDataError("the birth date on the card is not a YYYYMMDD date") from err
    sex_code = _utf8(fields[TAG_SEX], "sex code").strip()
    return BasicInfo(
        name=_utf8(fields[TAG_NAME], "name"),
        address=_utf8(fields[TAG_ADDRESS], "address"),
        birth_date=birth_date,
        sex=_SEX_CODES.get(sex_code, Sex.UNKNOWN),
    )


def individual_number_check_digit(first11: str) -> int:
    """Check digit of a 個人番号 (the rule of the 行政手続番号法 ordinance)."""
    digits = [int(c) for c in reversed(first11)]  # P1 is the digit left of the check digit
    total = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(digits, start=1))
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def parse_individual_number(data: bytes) -> str:
    """Parse the content of EF ``0001`` (``FF 10 0C`` + 12 digits) and check it."""
    item, _end = parse_tlv(data)
    if item.tag != TAG_INDIVIDUAL_NUMBER:
        raise CardDataError(f"expected 個人番号 (tag FF10), found tag 0x{item.tag:X}")
    number = item.value.decode("ascii", errors="replace")
    if len(number) != 12 or not number.isdigit() or not number.isascii():
        raise CardDataError("個人番号 on the card is not 12 digits")
    if individual_number_check_digit(number[:11]) != int(number[11]):
        raise CardDataError("個人番号 on the card has a wrong check digit")
    return number


# -- APDUs ----------------------------------------------------------------------------------


def validate_pin(pin: str) -> bytes:
    """The PIN as VERIFY data. Raises :class:`InvalidPin` unless exactly 4 ASCII digits."""
    if len(pin) != PIN_LENGTH or not pin.isascii() or not pin.isdigit():
        raise InvalidPin()
    return pin.encode("ascii")


def select_ap() -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x0C, len(AP_AID)]) + AP_AID


def select_ef(fid: int) -> bytes:
    return bytes([0x00, 0xA4, 0x02, 0x0C, 0x02]) + fid.to_bytes(2, "big")


def verify_status() -> bytes:
    """Case-1 VERIFY: no data; the card answers with the remaining tries."""
    return bytes([0x00, 0x20, 0x00, 0x80])


def verify(pin_bytes: bytes) -> bytes:
    return bytes([0x00, 0x20, 0x00, 0x80, len(pin_bytes)]) + pin_bytes


def read_binary(offset: int, length: int) -> bytes:
    if not 0 <= offset <= 0x7FFF or not 1 <= length <= 256:
        raise ValueError("READ BINARY offset 0..32767, length 1..256")
    return bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, length & 0xFF])


def get_response(length: int) -> bytes:
    return bytes([0x00, 0xC0, 0x00, 0x00, length & 0xFF])


# -- sequences ------------------------------------------------------------------------------


def _exchange(transmit: Transmit, apdu: bytes) -> Response:
    """Send one APDU; fetch a T=0 response left waiting (``61 XX``)."""
    data, sw = transmit(apdu)
    collected = bytearray(data)
    while sw >> 8 == 0x61:
        more, sw = transmit(get_response(sw & 0xFF))
        collected += more
    return bytes(collected), sw


def _expect_ok(sw: int, what: str) -> None:
    if sw == SW_OK:
        return
    if sw in (0x6A82, 0x6A86, 0x6A87):
        raise CardDataError(f"{what}: not found on the card; is it a My Number card? (SW {sw:04X})")
    if sw == 0x6982:
        raise CardDataError(f"{what}: the card wants a verified PIN first (SW 6982)")
    raise CardDataError(f"{what}: the card answered SW {sw:04X}")


def _pin_result(sw: int) -> int | None:
    """Tries left from a VERIFY status word; ``None`` when the PIN is verified."""
    if sw == SW_OK:
        return None
    if sw & 0xFFF0 == 0x63C0:
        return sw & 0x0F
    if sw in (0x6983, 0x6984):  # authentication method blocked / reference data invalidated
        return 0
    raise CardDataError(f"PIN check: the card answered SW {sw:04X}")


def _select_pin(transmit: Transmit) -> None:
    _data, sw = _exchange(transmit, select_ap())
    _expect_ok(sw, "券面事項入力補助AP")
    _data, sw = _exchange(transmit, select_ef(EF_PIN))
    _expect_ok(sw, "PIN file")


def remaining_pin_tries(transmit: Transmit) -> int:
    """How many PIN tries are left (case-1 VERIFY). Sends no PIN."""
    _select_pin(transmit)
    _data, sw = _exchange(transmit, verify_status())
    tries = _pin_result(sw)
    return MAX_PIN_TRIES if tries is None else tries


def verify_pin(transmit: Transmit, pin: str) -> None:
    """VERIFY once. Raises :class:`WrongPin` or :class:`CardLocked`; never retries."""
    pin_bytes = validate_pin(pin)
    _select_pin(transmit)
    _data, sw = _exchange(transmit, verify(pin_bytes))
    tries = _pin_result(sw)
    if tries is None:
        return
    if tries == 0:
        raise CardLocked()
    raise WrongPin(tries)


def read_tlv_file(transmit: Transmit, fid: int, what: str) -> bytes:
    """Select EF ``fid`` and read the TLV it holds: the header, then the rest in chunks."""
    _data, sw = _exchange(transmit, select_ef(fid))
    _expect_ok(sw, what)
    head, sw = _exchange(transmit, read_binary(0, HEADER_READ))
    _expect_ok(sw, what)
    total = tlv_total_length(head)
    content = bytearray(head[:total])
    while len(content) < total:
        chunk_len = min(MAX_CHUNK, total - len(content))
        chunk, sw = _exchange(transmit, read_binary(len(content), chunk_len))
        _expect_ok(sw, what)
        if not chunk:
            raise CardDataError(f"{what}: the card returned no data at offset {len(content)}")
        content += chunk[:chunk_len]
    return bytes(content)


def read_basic_info(transmit: Transmit, pin: str) -> BasicInfo:
    """VERIFY the PIN, then read and parse 基本4情報."""
    verify_pin(transmit, pin)
    return parse_basic_info(read_tlv_file(transmit, EF_BASIC_INFO, "基本4情報"))


def read_individual_number(transmit: Transmit, pin: str) -> str:
    """VERIFY the PIN, then read 個人番号. Call it only when the service needs the number."""
    verify_pin(transmit, pin)
    return parse_individual_number(read_tlv_file(transmit, EF_INDIVIDUAL_NUMBER, "個人番号"))
