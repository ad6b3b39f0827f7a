"""A virtual My Number card that plugs into vpcd, the vsmartcard PC/SC reader driver.

pcscd with vpcd shows two readers, ``Virtual PCD 00 00`` and ``Virtual PCD 00 01``, which
listen on 35963 and 35964. :meth:`VirtualMyNumberCard.insert` connects to one of those
ports (the card is on the reader), :meth:`VirtualMyNumberCard.remove` closes the socket
(the card is gone). Every message is a 2-byte big-endian length and a payload: a 1-byte
payload is a control byte (00 power off, 01 power on, 02 reset, 04 get ATR; only the ATR
is answered), anything longer is a command APDU, answered with data ‖ SW1 SW2.

The card implements the 券面事項入力補助AP: SELECT of the AP and of EFs 0011 (PIN),
0002 (基本4情報) and 0001 (個人番号), VERIFY (case 1 reads the counter; 3 tries, ``63 Cx``,
locked ``69 83``) and READ BINARY (PIN required). The BER-TLV encoding here is written
independently of the booth's parser on purpose.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

ATR = bytes.fromhex("3BE000FF8131FE4514")
AP_AID = bytes.fromhex("D3921000310001010408")
JPKI_AID = bytes.fromhex("D392F000260100000001")
FIRST_PORT = 35963

EF_INDIVIDUAL_NUMBER = 0x0001
EF_BASIC_INFO = 0x0002
EF_PIN = 0x0011


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82, n >> 8, n & 0xFF])
    raise ValueError("too long for the card")


def encode_tlv(tag: int, value: bytes) -> bytes:
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    return tag_bytes + encode_length(len(value)) + value


def encode_basic_info(
    name: str, address: str, birth: str, sex: str, header: bytes = b"\x00" * 8
) -> bytes:
    body = (
        encode_tlv(0xDF21, header)
        + encode_tlv(0xDF22, name.encode("utf-8"))
        + encode_tlv(0xDF23, address.encode("utf-8"))
        + encode_tlv(0xDF24, birth.encode("ascii"))
        + encode_tlv(0xDF25, sex.encode("ascii"))
    )
    return encode_tlv(0xFF20, body)


@dataclass
class CardProfile:
    """What the card holds. ``padding`` 0xFF bytes follow each file's TLV, as on real
    cards whose files are larger than their content."""

    name: str = "髙橋 𠮷子"
    address: str = "東京都多摩市関戸一丁目１０番地１　駅近ハイツ２０１号"
    birth: str = "19850401"  # YYYYMMDD
    sex: str = "2"
    individual_number: str = "123456789018"
    pin: str = "1234"
    tries_left: int = 3
    padding: int = 32
    has_ap: bool = True  # False: some other card, without the 券面事項入力補助AP

    def files(self) -> dict[int, bytes]:
        pad = b"\xff" * self.padding
        return {
            EF_BASIC_INFO: encode_basic_info(self.name, self.address, self.birth, self.sex) + pad,
            EF_INDIVIDUAL_NUMBER: encode_tlv(0xFF10, self.individual_number.encode("ascii")) + pad,
        }


@dataclass
class _CardState:
    ap_selected: bool = False
    ef: int | None = None
    verified: bool = False


@dataclass
class VirtualMyNumberCard:
    """One virtual card on one vpcd reader slot (``port`` 35963 or 35964).

    ``remove_on_read_binary``: close the socket when that READ BINARY (1-based count)
    arrives, without answering it — the resident pulling the card away mid-read.
    ``commands`` records every APDU received, in order.
    """

    profile: CardProfile = field(default_factory=CardProfile)
    port: int = FIRST_PORT
    host: str = "127.0.0.1"
    remove_on_read_binary: int | None = None
    commands: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._state = _CardState()
        self._files = self.profile.files()
        self._read_binaries = 0
        self.gone = threading.Event()  # set when the card left the reader

    @property
    def tries_left(self) -> int:
        return self.profile.tries_left

    def insert(self, timeout_s: float = 5.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self._sock = sock
        self.gone.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"vcard-{self.port}", daemon=True
        )
        self._thread.start()

    def remove(self) -> None:
        """Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.gone.set()

    # -- the socket side ----------------------------------------------------------------

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            # Delayed ACKs would stall every APDU ~40 ms; re-arm QUICKACK before each read.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            try:
                chunk = sock.recv(n - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                head = self._recv_exact(sock, 2)
                if head is None:
                    return
                payload = self._recv_exact(sock, int.from_bytes(head, "big"))
                if payload is None:
                    return
                if len(payload) == 1:
                    if payload[0] == 0x04:
                        self._send(sock, ATR)
                    else:  # power off / on / reset: the security state is lost
                        self._state = _CardState()
                    continue
                self.commands.append(payload)
                response = self._answer(payload)
                if response is None:  # pulled away mid-command
                    self._sock = None
                    sock.close()
                    self.gone.set()
                    return
                self._send(sock, response)
        except OSError:
            return

    # -- the card -----------------------------------------------------------------------

    def _answer(self, apdu: bytes) -> bytes | None:
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if cla != 0x00:
            return b"\x6e\x00"
        if ins == 0xA4:
            return self._select(p1, body)
        if ins == 0x20 and p1 == 0x00 and p2 == 0x80:
            return self._verify(body)
        if ins == 0xB0:
            self._read_binaries += 1
            if self._read_binaries == self.remove_on_read_binary:
                return None
            return self._read_binary((p1 << 8) | p2, body)
        return b"\x6d\x00"

    def _select(self, p1: int, body: bytes) -> bytes:
        if not body or len(body) != body[0] + 1:
            return b"\x67\x00"
        target = body[1:]
        if p1 == 0x04:
            found = target == AP_AID and self.profile.has_ap
            self._state = _CardState(ap_selected=found)
            return b"\x90\x00" if found else b"\x6a\x82"
        if p1 == 0x02 and len(target) == 2 and self._state.ap_selected:
            fid = int.from_bytes(target, "big")
            if fid in (EF_PIN, *self._files):
                self._state.ef = fid
                return b"\x90\x00"
        return b"\x6a\x82"

    def _verify(self, body: bytes) -> bytes:
        if self._state.ef != EF_PIN:
            return b"\x69\x86"
        profile = self.profile
        if profile.tries_left == 0:
            return b"\x69\x83"
        if not body:  # case 1: the counter
            return b"\x90\x00" if self._state.verified else bytes([0x63, 0xC0 | profile.tries_left])
        if len(body) != body[0] + 1:
            return b"\x67\x00"
        if body[1:].decode("ascii", errors="replace") == profile.pin:
            profile.tries_left = 3
            self._state.verified = True
            return b"\x90\x00"
        profile.tries_left -= 1
        self._state.verified = False
        return bytes([0x63, 0xC0 | profile.tries_left])

    def _read_binary(self, offset: int, body: bytes) -> bytes:
        ef = self._state.ef
        if ef is None or ef not in self._files:
            return b"\x69\x86"
        if not self._state.verified:
            return b"\x69\x82"
        if len(body) != 1:
            return b"\x67\x00"
        le = body[0] or 256
        content = self._files[ef]
        if offset > len(content):
            return b"\x6b\x00"
        data = content[offset : offset + le]
        return data + (b"\x90\x00" if len(data) == le else b"\x62\x82")
