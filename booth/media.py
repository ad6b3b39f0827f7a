"""Booth media: the camera and microphone sent to staff, the speaker and screen they reach.

Each role is a small interface with a simulated and a real implementation; one factory,
:func:`open_media`, picks between them from :class:`~shared.config.DeviceConfig`.

The simulated camera (:class:`StampedVideoTrack`) draws a machine-readable stamp into every
frame so that the receiving side can prove which frame arrived and how old it is. The layout
is fixed, because other programs (the staff peer in tests, benchmarks) read it:

* top-left, 4 rows x 16 blocks, each block 20 px wide and 16 px tall (320 x 64 px);
  white = 1, black = 0, most significant bit first;
* rows 0-1: the 32-bit frame counter; rows 2-3: wall-clock milliseconds
  (``time.time() * 1000``) modulo 2**32;
* below it, a 320 x 16 px strip: the 8-bit checksum (sum of the 8 payload bytes modulo 256)
  as 8 blocks of 40 px.

:func:`read_stamp` samples the block centres on the luma plane and verifies the checksum;
the stamp survives VP8 at 320x240 and 640x480.

The simulated microphone (:class:`ToneAudioTrack`) sends a sine tone; :func:`tone_level`
and :func:`dominant_frequency` prove that a tone arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import AudioFrame, VideoFrame
from av.frame import Frame
from av.packet import Packet
from PIL import Image, ImageDraw, ImageFont

from shared.config import DeviceConfig
from shared.errors import DeviceError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ByteArray = npt.NDArray[np.uint8]

# --------------------------------------------------------------------------------------
# The stamp
# --------------------------------------------------------------------------------------

STAMP_BLOCK_WIDTH: Final = 20
STAMP_BLOCK_HEIGHT: Final = 16
STAMP_COLUMNS: Final = 16
STAMP_ROWS: Final = 4
CHECKSUM_BLOCK_WIDTH: Final = 40
CHECKSUM_BITS: Final = 8
STAMP_WIDTH: Final = STAMP_BLOCK_WIDTH * STAMP_COLUMNS  # 320
STAMP_HEIGHT: Final = STAMP_BLOCK_HEIGHT * (STAMP_ROWS + 1)  # 64 + 16 = 80
_WHITE: Final = 235  # video-range luma
_BLACK: Final = 16
# A block centre must be clearly dark or clearly bright; anything in between is not a stamp.
_DARK_BELOW: Final = 90
_BRIGHT_ABOVE: Final = 160
_WRAP: Final = 2**32


def wall_clock_ms() -> int:
    """Wall-clock milliseconds modulo 2**32, as written into stamps."""
    return int(time.time() * 1000) % _WRAP


@dataclass(frozen=True)
class Stamp:
    frame_no: int
    sent_ms: int

    def latency_ms(self, now_ms: int | None = None) -> int:
        """Milliseconds from drawing to ``now_ms`` (default: now), modulo 2**32."""
        now = wall_clock_ms() if now_ms is None else now_ms
        return (now - self.sent_ms) % _WRAP


def _payload(frame_no: int, sent_ms: int) -> bytes:
    return (frame_no % _WRAP).to_bytes(4, "big") + (sent_ms % _WRAP).to_bytes(4, "big")


def _bits(data: bytes) -> list[int]:
    return [(byte >> (7 - i)) & 1 for byte in data for i in range(8)]


def draw_stamp(luma: ByteArray, frame_no: int, sent_ms: int) -> None:
    """Draw the stamp into the top-left 320 x 80 px of a 2-D uint8 luma (or gray) array."""
    height, width = luma.shape[:2]
    if width < STAMP_WIDTH or height < STAMP_HEIGHT:
        raise ValueError(f"a stamp needs at least {STAMP_WIDTH}x{STAMP_HEIGHT} px")
    payload = _payload(frame_no, sent_ms)
    for index, bit in enumerate(_bits(payload)):
        row, column = divmod(index, STAMP_COLUMNS)
        y = row * STAMP_BLOCK_HEIGHT
        x = column * STAMP_BLOCK_WIDTH
        luma[y : y + STAMP_BLOCK_HEIGHT, x : x + STAMP_BLOCK_WIDTH] = _WHITE if bit else _BLACK
    checksum = sum(payload) % 256
    y = STAMP_ROWS * STAMP_BLOCK_HEIGHT
    for index, bit in enumerate(_bits(bytes([checksum]))):
        x = index * CHECKSUM_BLOCK_WIDTH
        luma[y : y + STAMP_BLOCK_HEIGHT, x : x + CHECKSUM_BLOCK_WIDTH] = _WHITE if bit else _BLACK


def _luma_top(frame: VideoFrame) -> ByteArray | None:
    """The top STAMP_HEIGHT rows of the frame's luma plane."""
    if frame.width < STAMP_WIDTH or frame.height < STAMP_HEIGHT:
        return None
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12", "gray"):
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8)
        rows = rows[: plane.line_size * STAMP_HEIGHT].reshape(STAMP_HEIGHT, plane.line_size)
        return rows[:, : frame.width]
    gray = np.asarray(frame.reformat(format="gray").to_ndarray(), dtype=np.uint8)
    return gray[:STAMP_HEIGHT, :]


def read_stamp_luma(luma: ByteArray) -> Stamp | None:
    """Read a stamp from a 2-D luma array (at least 320 x 80); None if there is none."""
    if luma.shape[0] < STAMP_HEIGHT or luma.shape[1] < STAMP_WIDTH:
        return None

    def sample(y: int, x: int, half_width: int) -> int | None:
        area = luma[y - 4 : y + 4, x - half_width : x + half_width]
        value = float(area.mean())
        if value < _DARK_BELOW:
            return 0
        if value > _BRIGHT_ABOVE:
            return 1
        return None

    bits: list[int] = []
    for index in range(STAMP_ROWS * STAMP_COLUMNS):
        row, column = divmod(index, STAMP_COLUMNS)
        bit = sample(
            row * STAMP_BLOCK_HEIGHT + STAMP_BLOCK_HEIGHT // 2,
            column * STAMP_BLOCK_WIDTH + STAMP_BLOCK_WIDTH // 2,
            5,
        )
        if bit is None:
            return None
        bits.append(bit)
    checksum = 0
    for index in range(CHECKSUM_BITS):
        bit = sample(
            STAMP_ROWS * STAMP_BLOCK_HEIGHT + STAMP_BLOCK_HEIGHT // 2,
            index * CHECKSUM_BLOCK_WIDTH + CHECKSUM_BLOCK_WIDTH // 2,
            10,
        )
        if bit is None:
            return None
        checksum = (checksum << 1) | bit
    payload = bytes(
        sum(bit << (7 - i) for i, bit in enumerate(bits[n * 8 : n * 8 + 8])) for n in range(8)
    )
    if sum(payload) % 256 != checksum:
        return None
    if not any(payload):
        return None  # an all-black corner is a dark picture, not frame 0 at time 0
    return Stamp(
        frame_no=int.from_bytes(payload[:4], "big"), sent_ms=int.from_bytes(payload[4:], "big")
    )


def read_stamp(frame: VideoFrame | Frame | Packet[Any]) -> Stamp | None:
    """Read the stamp of a decoded frame; None if it has none (or it does not verify).

    Accepts anything a track's ``recv()`` returns; audio frames and packets give None.
    """
    if not isinstance(frame, VideoFrame):
        return None
    luma = _luma_top(frame)
    return None if luma is None else read_stamp_luma(luma)


# --------------------------------------------------------------------------------------
# Simulated camera
# --------------------------------------------------------------------------------------

_FONT_CANDIDATES: Final = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
)


@lru_cache(maxsize=8)
def _caption_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONT_CANDIDATES:
        if os.path.exists(path):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(path, size=size, index=0)  # index 0: JP
    return ImageFont.load_default()


class StampedVideoTrack(VideoStreamTrack):
    """A moving test picture with a stamp (frame counter, send time) in every frame."""

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        *,
        caption: str = "SIMULATED CAMERA",
        first_frame: int = 0,
    ) -> None:
        super().__init__()
        if width < STAMP_WIDTH or height < STAMP_HEIGHT + 40:
            raise ValueError(f"the picture must be at least {STAMP_WIDTH}x{STAMP_HEIGHT + 40}")
        self.width = width - width % 2
        self.height = height - height % 2
        self.fps = fps
        self.caption = caption
        self.frame_no = first_frame
        self._first_frame = first_frame
        self._period = 1.0 / fps
        self._clock_rate = 90000
        self._started: float | None = None
        self._background = self._make_background()
        self._font = _caption_font(max(12, self.height // 20))
        self._band = max(24, self.height // 12) // 2 * 2  # caption band height

    def _make_background(self) -> ByteArray:
        w, h = self.width, self.height
        yuv = np.empty((h * 3 // 2, w), dtype=np.uint8)
        ramp = np.linspace(40, 200, w, dtype=np.float64)
        yuv[:h, :] = ramp.astype(np.uint8)[None, :]
        # colour bars in the chroma planes
        bars_u = np.array([90, 160, 60, 200, 110, 140, 70, 180], dtype=np.uint8)
        bars_v = np.array([200, 90, 150, 60, 170, 80, 130, 110], dtype=np.uint8)
        cw = w // 2
        columns = (np.arange(cw) * len(bars_u) // cw).astype(np.intp)
        u = np.repeat(bars_u[columns][None, :], h // 2, axis=0)
        v = np.repeat(bars_v[columns][None, :], h // 2, axis=0)
        # yuv420p as one array: Y rows, then U and V each as h/4 rows of width w
        yuv[h : h + h // 4, :] = u.reshape(h // 4, w)
        yuv[h + h // 4 :, :] = v.reshape(h // 4, w)
        return yuv

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.time()
        if self._started is None:
            self._started = now
        else:
            due = self._started + (self.frame_no - self._first_frame) * self._period
            if due > now:
                await asyncio.sleep(due - now)
        frame = self.render(self.frame_no, wall_clock_ms())
        frame.pts = int((self.frame_no - self._first_frame) * self._period * self._clock_rate)
        frame.time_base = fractions.Fraction(1, self._clock_rate)
        self.frame_no += 1
        return frame

    def render(self, frame_no: int, sent_ms: int) -> VideoFrame:
        """One frame of the test picture carrying ``frame_no`` and ``sent_ms``."""
        w, h = self.width, self.height
        yuv = self._background.copy()
        luma = yuv[:h, :]
        # a bright box moving left and right below the stamp
        box = max(16, h // 8)
        travel = max(1, w - box)
        position = (frame_no * 8) % (2 * travel)
        x = position if position < travel else 2 * travel - position
        y0 = STAMP_HEIGHT + 16 + (h - STAMP_HEIGHT - 16 - box) // 2
        luma[y0 : y0 + box, x : x + box] = 220
        # neutral chroma under the stamp so that colour does not bleed into it
        u_rows = yuv[h : h + h // 4, :].reshape(h // 2, w // 2)
        v_rows = yuv[h + h // 4 :, :].reshape(h // 2, w // 2)
        u_rows[: STAMP_HEIGHT // 2, : STAMP_WIDTH // 2] = 128
        v_rows[: STAMP_HEIGHT // 2, : STAMP_WIDTH // 2] = 128
        u_rows[(h - self._band) // 2 :, :] = 128
        v_rows[(h - self._band) // 2 :, :] = 128
        draw_stamp(luma, frame_no, sent_ms)
        self._draw_caption(luma, frame_no, sent_ms)
        return VideoFrame.from_ndarray(yuv, format="yuv420p")

    def _draw_caption(self, luma: ByteArray, frame_no: int, sent_ms: int) -> None:
        w, h, band = self.width, self.height, self._band
        # the stamp holds the time modulo 2**32 ms; the caption shows the real clock
        now = time.time()
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        text = f"{self.caption}  #{frame_no}  {clock}.{int(now * 1000) % 1000:03d}"
        image = Image.new("L", (w, band), 16)
        ImageDraw.Draw(image).text((8, band // 8), text, fill=235, font=self._font)
        luma[h - band :, :] = np.asarray(image, dtype=np.uint8)


# --------------------------------------------------------------------------------------
# Simulated microphone, and audio analysis
# --------------------------------------------------------------------------------------

AUDIO_FRAME_S: Final = 0.020


class ToneAudioTrack(AudioStreamTrack):
    """A continuous sine tone in 20 ms frames (s16, mono), paced in real time."""

    def __init__(self, hz: float = 1000.0, sample_rate: int = 48000, amplitude: float = 0.3):
        super().__init__()
        self.hz = hz
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self.samples_sent = 0
        self._started: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = int(AUDIO_FRAME_S * self.sample_rate)
        now = time.time()
        if self._started is None:
            self._started = now
        else:
            due = self._started + self.samples_sent / self.sample_rate
            if due > now:
                await asyncio.sleep(due - now)
        t = (self.samples_sent + np.arange(samples)) / self.sample_rate
        wave = self.amplitude * 32767 * np.sin(2 * math.pi * self.hz * t)
        frame = AudioFrame.from_ndarray(
            wave.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self.samples_sent
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self.samples_sent += samples
        return frame


def audio_samples(frames: Iterable[AudioFrame]) -> FloatArray:
    """Mono samples in [-1, 1] from decoded audio frames (any channel count and format)."""
    chunks: list[FloatArray] = []
    for frame in frames:
        data = frame.to_ndarray()
        channels = max(1, len(frame.layout.channels))
        if frame.format.is_planar:
            mono = data.reshape(channels, -1).mean(axis=0)
        else:
            mono = data.reshape(-1, channels).mean(axis=1)
        if data.dtype == np.int16:
            mono = mono / 32768.0
        elif data.dtype == np.int32:
            mono = mono / 2147483648.0
        elif data.dtype == np.uint8:
            mono = (mono - 128.0) / 128.0
        chunks.append(np.asarray(mono, dtype=np.float64))
    if not chunks:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(chunks)


def _as_samples(source: Sequence[AudioFrame] | npt.NDArray[np.generic]) -> FloatArray:
    if isinstance(source, np.ndarray):
        return np.asarray(source, dtype=np.float64).reshape(-1)
    return audio_samples(source)


def tone_amplitude(
    source: Sequence[AudioFrame] | npt.NDArray[np.generic], sample_rate: int, hz: float
) -> float:
    """Amplitude of the ``hz`` component, in the units of the samples (0..1 for frames)."""
    samples = _as_samples(source)
    if samples.size == 0:
        return 0.0
    window = np.hanning(samples.size) if samples.size > 1 else np.ones(1)
    n = np.arange(samples.size)
    phasor = np.exp(-2j * math.pi * hz * n / sample_rate)
    return float(2 * abs(np.sum(samples * window * phasor)) / np.sum(window))


def tone_level(
    source: Sequence[AudioFrame] | npt.NDArray[np.generic], sample_rate: int, hz: float
) -> float:
    """How much of the signal is the ``hz`` tone: 0 (none, or silence) … 1 (a pure tone).

    Independent of the sample scale, so raw int16 samples and frames give the same figure.
    """
    samples = _as_samples(source)
    rms = rms_level(samples)
    if rms < 1e-9:
        return 0.0
    return min(1.0, tone_amplitude(samples, sample_rate, hz) / (math.sqrt(2) * rms))


def dominant_frequency(samples: Sequence[AudioFrame] | npt.NDArray[np.generic], rate: int) -> float:
    """The strongest frequency in ``samples`` (Hz), interpolated between FFT bins."""
    data = _as_samples(samples)
    if data.size < 4:
        return 0.0
    spectrum = np.abs(np.fft.rfft(data * np.hanning(data.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denominator = a - 2 * b + c
        if denominator != 0:
            offset = 0.5 * (a - c) / denominator
    return float((peak + offset) * rate / data.size)


def rms_level(samples: npt.NDArray[np.generic]) -> float:
    data = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(data**2))) if data.size else 0.0


class AudioMeter:
    """Keeps the last ``window_s`` of received audio and measures it."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.frames = 0
        self.sample_rate = 48000
        self._samples: FloatArray = np.zeros(0, dtype=np.float64)

    def add(self, frame: AudioFrame) -> None:
        self.frames += 1
        self.sample_rate = frame.sample_rate or self.sample_rate
        keep = int(self.window_s * self.sample_rate)
        self._samples = np.concatenate([self._samples, audio_samples([frame])])[-keep:]

    @property
    def samples(self) -> FloatArray:
        return self._samples

    def level(self) -> float:
        """RMS level of the window (0..1)."""
        return rms_level(self._samples)

    def tone_level(self, hz: float) -> float:
        """Share of the window that is the ``hz`` tone (0 … 1), see :func:`tone_level`."""
        return tone_level(self._samples, self.sample_rate, hz)

    def dominant_frequency(self) -> float:
        return dominant_frequency(self._samples, self.sample_rate)


# --------------------------------------------------------------------------------------
# Received video: the latest frame, for the kiosk screen
# --------------------------------------------------------------------------------------


class FrameBuffer:
    """The latest frame of a video track, with a counter and JPEG encoding for the kiosk."""

    def __init__(self) -> None:
        self.frames = 0
        self.last_stamp: Stamp | None = None
        self._frame: VideoFrame | None = None
        self._changed = asyncio.Condition()
        self._jpeg: tuple[int, bytes] | None = None

    @property
    def latest(self) -> VideoFrame | None:
        return self._frame

    def put(self, frame: VideoFrame, *, read_stamps: bool = True) -> None:
        self._frame = frame
        self.frames += 1
        if read_stamps:
            stamp = read_stamp(frame)
            if stamp is not None:
                self.last_stamp = stamp
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def clear(self) -> None:
        self._frame = None
        self._jpeg = None

    async def wait_after(self, count: int, wait_s: float) -> int:
        """Wait until more than ``count`` frames were put (at most ``wait_s``); the new count."""
        if self.frames > count:
            return self.frames
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.frames > count), wait_s)
        return self.frames

    def jpeg(self, quality: int = 80) -> bytes | None:
        """The latest frame as JPEG (cached per frame), or None before the first frame."""
        frame = self._frame
        if frame is None:
            return None
        if self._jpeg is not None and self._jpeg[0] == self.frames:
            return self._jpeg[1]
        out = io.BytesIO()
        image = frame.to_image()  # type: ignore[no-untyped-call]
        image.save(out, format="JPEG", quality=quality)
        data = out.getvalue()
        self._jpeg = (self.frames, data)
        return data


class SelfViewTrack(MediaStreamTrack):
    """Passes a video track through and copies each frame into a :class:`FrameBuffer`."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, buffer: FrameBuffer) -> None:
        super().__init__()
        self._source = source
        self._buffer = buffer

    async def recv(self) -> VideoFrame:
        frame = await self._source.recv()
        if isinstance(frame, VideoFrame):
            self._buffer.put(frame, read_stamps=False)
        return frame  # type: ignore[return-value]

    def stop(self) -> None:
        super().stop()
        self._source.stop()


# --------------------------------------------------------------------------------------
# Device interfaces
# --------------------------------------------------------------------------------------


class VideoSource(Protocol):
    """A camera. ``track()`` gives a fresh track for one call; stopping it is the caller's."""

    description: str

    def track(self) -> MediaStreamTrack: ...

    async def aclose(self) -> None: ...


class AudioSource(Protocol):
    description: str

    def track(self) -> MediaStreamTrack: ...

    async def aclose(self) -> None: ...


class AudioSink(Protocol):
    """Plays one received audio track and measures it."""

    description: str
    meter: AudioMeter

    def attach(self, track: MediaStreamTrack) -> None: ...

    async def detach(self) -> None: ...

    async def aclose(self) -> None: ...


class SimulatedCamera:
    def __init__(self, width: int, height: int, fps: int, caption: str) -> None:
        self.width, self.height, self.fps, self.caption = width, height, fps, caption
        self.description = f"simulated camera {width}x{height}@{fps}"
        self._next_frame = 0
        self._tracks: list[StampedVideoTrack] = []

    def track(self) -> MediaStreamTrack:
        # frame numbers continue across calls so that every stamp of a booth is unique
        self._tracks = [t for t in self._tracks if t.readyState == "live"]
        for old in self._tracks:
            self._next_frame = max(self._next_frame, old.frame_no)
        track = StampedVideoTrack(
            self.width, self.height, self.fps, caption=self.caption, first_frame=self._next_frame
        )
        self._next_frame += 1_000_000
        self._tracks.append(track)
        return track

    async def aclose(self) -> None:
        for track in self._tracks:
            track.stop()
        self._tracks.clear()


class SimulatedMicrophone:
    def __init__(self, hz: float) -> None:
        self.hz = hz
        self.description = f"simulated microphone ({hz:g} Hz tone)"
        self._tracks: list[ToneAudioTrack] = []

    def track(self) -> MediaStreamTrack:
        track = ToneAudioTrack(hz=self.hz)
        self._tracks = [t for t in self._tracks if t.readyState == "live"] + [track]
        return track

    async def aclose(self) -> None:
        for track in self._tracks:
            track.stop()
        self._tracks.clear()


class _PlayerSource:
    """A capture device read by aiortc's MediaPlayer, shared between calls by a relay."""

    def __init__(self, player: MediaPlayer, source: MediaStreamTrack, description: str) -> None:
        self.description = description
        self._player = player
        self._source = source
        self._relay = MediaRelay()

    def track(self) -> MediaStreamTrack:
        return self._relay.subscribe(self._source, buffered=False)

    async def aclose(self) -> None:
        self._source.stop()  # ends the relay's reader and closes the device


def _split_spec(spec: str, kinds: Sequence[str], role: str) -> tuple[str, str]:
    kind, sep, name = spec.partition(":")
    if not sep or kind not in kinds or not name:
        allowed = ", ".join(f'"{k}:…"' for k in kinds)
        raise DeviceError(f'{role} "{spec}" is not understood; use "simulated" or {allowed}')
    return kind, name


def _pyav_has(fmt: str, role: str, spec: str) -> bool:
    """Whether PyAV can open ``fmt`` itself; if not, the ``ffmpeg`` command must be there
    (the drivers in :mod:`booth.ffmpeg_devices` pipe through it). Raises DeviceError."""
    if fmt in av.formats_available:
        return True
    if shutil.which("ffmpeg") is None:
        raise DeviceError(
            f"{role} {spec}: PyAV has no {fmt} support and the ffmpeg command is missing"
            " — install the ffmpeg package"
        )
    return False


def _open_player(name: str, fmt: str, options: dict[str, str], role: str, spec: str) -> MediaPlayer:
    if fmt not in av.formats_available:
        raise DeviceError(f"{role} {spec}: this build of FFmpeg/PyAV has no {fmt} support")
    try:
        return MediaPlayer(name, format=fmt, options=options)
    except (av.FFmpegError, OSError) as err:
        raise DeviceError(f"{role} {spec} could not be opened: {err}") from err


def open_camera(spec: str, width: int = 640, height: int = 480, fps: int = 30) -> VideoSource:
    """A camera from its spec: ``"v4l2:/dev/videoN"``. Raises DeviceError.

    PyAV reads the camera when it has V4L2 support; otherwise Debian's ``ffmpeg`` does
    (:class:`booth.ffmpeg_devices.FfmpegCamera`, started when a call first reads it).
    """
    _, path = _split_spec(spec, ("v4l2",), "camera")
    if not Path(path).exists():
        raise DeviceError(f"camera {spec}: {path} does not exist (is the camera plugged in?)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise DeviceError(
            f"camera {spec}: not allowed to open {path} — is the kiosk user in the video group?"
        )
    if not _pyav_has("v4l2", "camera", spec):
        from booth.ffmpeg_devices import FfmpegCamera, v4l2_input

        return FfmpegCamera(
            v4l2_input(path, width, height, fps),
            width,
            height,
            fps,
            description=f"camera {spec} {width}x{height}@{fps} (ffmpeg)",
        )
    options = {"video_size": f"{width}x{height}", "framerate": str(fps)}
    player = _open_player(path, "v4l2", options, "camera", spec)
    if player.video is None:
        raise DeviceError(f"camera {spec} delivers no video")
    return _PlayerSource(player, player.video, f"camera {spec}")


def open_microphone(spec: str) -> AudioSource:
    """A microphone from its spec: ``"pulse:NAME"`` or ``"alsa:NAME"``. Raises DeviceError.

    PyAV reads it when it has the format; otherwise Debian's ``ffmpeg`` does
    (:class:`booth.ffmpeg_devices.FfmpegMicrophone`, started when a call first reads it).
    """
    kind, name = _split_spec(spec, ("pulse", "alsa"), "microphone")
    if not _pyav_has(kind, "microphone", spec):
        from booth.ffmpeg_devices import FfmpegMicrophone, audio_input

        return FfmpegMicrophone(audio_input(kind, name), description=f"microphone {spec} (ffmpeg)")
    player = _open_player(name, kind, {}, "microphone", spec)
    if player.audio is None:
        raise DeviceError(f"microphone {spec} delivers no audio")
    return _PlayerSource(player, player.audio, f"microphone {spec}")


class NullSpeaker:
    """Consumes received audio and measures it without playing it."""

    def __init__(self, description: str = "no speaker (level meter only)") -> None:
        self.description = description
        self.meter = AudioMeter()
        self._task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        self._cancel()
        self.meter = AudioMeter()
        self._task = asyncio.get_running_loop().create_task(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    self.meter.add(frame)
                    await self._play(frame)
        except MediaStreamError:
            return

    async def _play(self, frame: AudioFrame) -> None:
        return None

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def detach(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        await self.detach()


class DeviceSpeaker(NullSpeaker):
    """Plays received audio on a PulseAudio or ALSA output through PyAV."""

    def __init__(self, spec: str) -> None:
        super().__init__(f"speaker {spec}")
        kind, name = _split_spec(spec, ("pulse", "alsa"), "speaker")
        if kind not in av.formats_available:
            raise DeviceError(f"speaker {spec}: this build of FFmpeg/PyAV has no {kind} support")
        try:
            self._container = av.open(name, mode="w", format=kind)
            self._stream = self._container.add_stream("pcm_s16le", rate=48000, layout="stereo")
        except (av.FFmpegError, OSError) as err:
            raise DeviceError(f"speaker {spec} could not be opened: {err}") from err
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        self._failed = False

    async def _play(self, frame: AudioFrame) -> None:
        if self._failed:
            return
        try:
            await asyncio.to_thread(self._write, frame)
        except (av.FFmpegError, OSError) as err:
            self._failed = True
            logger.warning("%s stopped playing: %s", self.description, err)

    def _write(self, frame: AudioFrame) -> None:
        for resampled in self._resampler.resample(frame):
            resampled.pts = None
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)

    async def aclose(self) -> None:
        await super().aclose()
        with contextlib.suppress(av.FFmpegError, OSError):
            self._container.close()


def open_speaker(spec: str) -> AudioSink:
    """A speaker from its spec: ``"null"``, ``"pulse:NAME"`` or ``"alsa:NAME"``.

    PyAV plays it when it has the format; otherwise Debian's ``ffmpeg`` does
    (:class:`booth.ffmpeg_devices.FfmpegSpeaker`, started with each call's audio).
    """
    if spec == "null":
        return NullSpeaker()
    kind, name = _split_spec(spec, ("pulse", "alsa"), "speaker")
    if not _pyav_has(kind, "speaker", spec):
        from booth.ffmpeg_devices import FfmpegSpeaker, audio_output

        return FfmpegSpeaker(audio_output(kind, name), description=f"speaker {spec} (ffmpeg)")
    return DeviceSpeaker(spec)


@dataclass
class BoothMedia:
    """The booth's media devices, owned by the agent."""

    camera: VideoSource
    microphone: AudioSource
    speaker: AudioSink

    async def aclose(self) -> None:
        for device in (self.speaker, self.microphone, self.camera):
            with contextlib.suppress(Exception):
                await device.aclose()

    def describe(self) -> list[str]:
        return [self.camera.description, self.microphone.description, self.speaker.description]


def open_media(devices: DeviceConfig, *, caption: str = "SIMULATED CAMERA") -> BoothMedia:
    """Open the configured devices (simulated or real). Raises DeviceError with a reason."""
    opened: list[VideoSource | AudioSource | AudioSink] = []
    try:
        camera: VideoSource
        if devices.camera == "simulated":
            camera = SimulatedCamera(
                devices.video_width, devices.video_height, devices.video_fps, caption
            )
        else:
            camera = open_camera(
                devices.camera, devices.video_width, devices.video_height, devices.video_fps
            )
        opened.append(camera)
        microphone: AudioSource
        if devices.microphone == "simulated":
            microphone = SimulatedMicrophone(devices.tone_hz)
        else:
            microphone = open_microphone(devices.microphone)
        opened.append(microphone)
        speaker = open_speaker(devices.speaker)
    except DeviceError:
        for device in opened:
            if isinstance(device, _PlayerSource):
                device._source.stop()
        raise
    return BoothMedia(camera=camera, microphone=microphone, speaker=speaker)
