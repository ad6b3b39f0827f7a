"""A TCP receiver on 127.0.0.1 standing in for a network receipt printer (raw port 9100).

It records every connection's bytes, parses them as ESC/POS, answers the real-time status
queries (``DLE EOT n``) like an Epson TM printer when asked to, can run out of paper and can
be switched off (connections refused) and on again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

ESC, GS, DLE, EOT = 0x1B, 0x1D, 0x10, 0x04


@dataclass(frozen=True)
class Command:
    """One parsed ESC/POS command. ``name`` is e.g. "ESC @", "GS v 0", "GS V", "DLE EOT"."""

    name: str
    params: bytes = b""
    data: bytes = b""


@dataclass(frozen=True)
class RasterImage:
    """A ``GS v 0`` band: ``width`` in dots, ``height`` in rows, 1 bit per dot (1 = ink)."""

    width: int
    height: int
    data: bytes

    def to_image(self) -> Image.Image:
        """Mode "L": ink black (0), paper white (255)."""
        ink = Image.frombytes("1", (self.width, self.height), self.data)
        return ink.convert("L").point(lambda v: 0 if v else 255)


def parse_escpos(data: bytes) -> tuple[list[Command], int]:
    """Parse the commands this project sends; returns them and how many bytes were used
    (a command cut off at the end is left for the next call). Unknown bytes become
    one-byte ``"byte"`` commands."""
    commands: list[Command] = []
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == ESC:
            if i + 1 >= n:
                break
            c = data[i + 1]
            if c == 0x40:
                commands.append(Command("ESC @"))
                i += 2
                continue
            if c in (0x64, 0x61, 0x4A):  # ESC d n, ESC a n, ESC J n
                if i + 2 >= n:
                    break
                commands.append(Command(f"ESC {chr(c)}", data[i + 2 : i + 3]))
                i += 3
                continue
        elif b == GS:
            if i + 1 >= n:
                break
            c = data[i + 1]
            if c == 0x76:  # GS v 0 m xL xH yL yH d1...dk
                if i + 8 > n:
                    break
                width_bytes = int.from_bytes(data[i + 4 : i + 6], "little")
                height = int.from_bytes(data[i + 6 : i + 8], "little")
                size = width_bytes * height
                if i + 8 + size > n:
                    break
                commands.append(Command("GS v 0", data[i + 3 : i + 8], data[i + 8 : i + 8 + size]))
                i += 8 + size
                continue
            if c == 0x56:  # GS V m [n]
                if i + 2 >= n:
                    break
                m = data[i + 2]
                length = 3 if m in (0, 1, 48, 49) else 4
                if i + length > n:
                    break
                commands.append(Command("GS V", data[i + 2 : i + length]))
                i += length
                continue
        elif b == DLE:
            if i + 1 >= n:
                break
            if data[i + 1] == EOT:
                if i + 2 >= n:
                    break
                commands.append(Command("DLE EOT", data[i + 2 : i + 3]))
                i += 3
                continue
        commands.append(Command("byte", bytes([b])))
        i += 1
    return commands, i


def raster_images(data: bytes) -> list[RasterImage]:
    commands, _ = parse_escpos(data)
    images = []
    for command in commands:
        if command.name == "GS v 0":
            width_bytes = int.from_bytes(command.params[1:3], "little")
            height = int.from_bytes(command.params[3:5], "little")
            images.append(RasterImage(width_bytes * 8, height, command.data))
    return images


def printed_image(data: bytes) -> Image.Image:
    """All ``GS v 0`` bands of a job stacked into one page (mode "L")."""
    bands = [band.to_image() for band in raster_images(data)]
    if not bands:
        raise AssertionError("no raster image in the job")
    page = Image.new("L", (max(b.width for b in bands), sum(b.height for b in bands)), 255)
    y = 0
    for band in bands:
        page.paste(band, (0, y))
        y += band.height
    return page


# Epson TM status bytes: fixed bits 0x12; DLE EOT 1 bit 3 = offline; DLE EOT 2 bit 5 =
# stopped by paper end; DLE EOT 4 bits 2-3 = near end, bits 5-6 = paper end.
_STATUS_OK = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12}
_STATUS_PAPER_OUT = {1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x72}


@dataclass
class _Connection:
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False


class ReceiptPrinterEmulator:
    """A network receipt printer on ``127.0.0.1:port`` (a thread; start/stop by the test).

    ``answer_status``: answer ``DLE EOT n`` (a printer that does not answer is also common).
    ``paper_out``: report paper end. ``hold_status``: leave status queries unanswered for
    now (a printer busy with something else). ``switch_off()`` refuses connections and drops the
    open ones; ``switch_on()`` listens again on the same port.
    """

    def __init__(self, *, answer_status: bool = True, port: int = 0) -> None:
        self.answer_status = answer_status
        self.paper_out = False
        self.hold_status = False
        self.port = port
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open_sockets: set[socket.socket] = set()
        self._stopping = False

    # -- life cycle --------------------------------------------------------------------

    def switch_on(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = False
        thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def switch_off(self) -> None:
        listener, self._listener = self._listener, None
        self._stopping = True
        if listener is not None:
            listener.close()
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()

    def __enter__(self) -> ReceiptPrinterEmulator:
        self.switch_on()
        return self

    def __exit__(self, *exc: object) -> None:
        self.switch_off()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- what arrived ------------------------------------------------------------------

    def connections(self) -> list[bytes]:
        """The bytes of every connection so far, in order (status queries included)."""
        with self._lock:
            return [bytes(c.data) for c in self._connections]

    def jobs(self) -> list[bytes]:
        """The connections that carried something to print (a raster image)."""
        return [c for c in self.connections() if raster_images(c)]

    def wait_for_jobs(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until ``count`` jobs arrived completely (their connection closed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = [bytes(c.data) for c in self._connections if c.closed]
            jobs = [c for c in done if raster_images(c)]
            if len(jobs) >= count:
                return jobs
            time.sleep(0.02)
        raise AssertionError(f"{len(self.jobs())} print jobs arrived, expected {count}")

    # -- internals ---------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection = _Connection()
            with self._lock:
                self._connections.append(connection)
                self._open_sockets.add(sock)
            thread = threading.Thread(target=self._serve, args=(sock, connection), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, connection: _Connection) -> None:
        pending = b""
        try:
            sock.settimeout(0.1)
            while not self._stopping:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                with self._lock:
                    connection.data += chunk
                pending += chunk
                commands, used = parse_escpos(pending)
                pending = pending[used:]
                for command in commands:
                    if command.name == "DLE EOT" and self.answer_status and not self.hold_status:
                        table = _STATUS_PAPER_OUT if self.paper_out else _STATUS_OK
                        sock.sendall(bytes([table.get(command.params[0], 0x12)]))
        except OSError:
            pass
        finally:
            with self._lock:
                connection.closed = True
                self._open_sockets.discard(sock)
            sock.close()


@contextlib.contextmanager
def receipt_printer_emulator(*, answer_status: bool = True) -> Iterator[ReceiptPrinterEmulator]:
    emulator = ReceiptPrinterEmulator(answer_status=answer_status)
    emulator.switch_on()
    try:
        yield emulator
    finally:
        emulator.switch_off()
