"""Cameras, microphones and speakers read and written through Debian's ``ffmpeg`` command.

The PyAV wheel is built without Video4Linux2 and PulseAudio, while the distribution's
``ffmpeg`` has both. These drivers run ``ffmpeg`` as a child process and move raw media
through its standard input or output:

* :class:`FfmpegCamera` reads ``yuv420p`` frames of a fixed size from ``ffmpeg -f v4l2 …``
  and serves them as WebRTC video tracks;
* :class:`FfmpegMicrophone` reads 48 kHz mono ``s16le`` from ``ffmpeg -f pulse|alsa …`` and
  serves it as 20 ms audio frames;
* :class:`FfmpegSpeaker` writes 48 kHz stereo ``s16le`` into ``ffmpeg … -f pulse|alsa NAME``.

Every class takes the ffmpeg *device* arguments as a list (:func:`v4l2_input`,
:func:`audio_input`, :func:`audio_output` build the real ones), so that any other ffmpeg
source or destination (a ``lavfi`` test source, a WAV file) runs through exactly the same
code: the child process, the framing, the pacing and the error handling.

A capture process starts when the first track asks for a frame and stops when the last
track has stopped, so the camera light is off between calls. The process is stopped by its
PID (SIGTERM, then SIGKILL after a grace period). If ffmpeg exits or stops delivering,
every live track ends with :class:`DeviceStreamError`, a :class:`DeviceError` whose reason
is ffmpeg's last error line plus what to check (``/dev/video0: No such device — is the
camera plugged in?``). If this program dies, ffmpeg sees its pipe close and exits too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import fractions
import logging
import re
import shutil
import time
from collections.abc import Sequence
from typing import Final

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from booth.media import NullSpeaker
from shared.errors import DeviceError

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE: Final = 90000
AUDIO_RATE: Final = 48000
AUDIO_FRAME_SAMPLES: Final = 960  # 20 ms at 48 kHz
_COMMON: Final = ("-hide_banner", "-nostdin", "-nostats", "-loglevel", "error")
_STDERR_LINES: Final = 20
_INPUT_PIPE_BYTES: Final = 4096  # about 21 ms of 48 kHz stereo s16


class DeviceStreamError(DeviceError, MediaStreamError):
    """A capture device failed during a call: ends the track (WebRTC treats it as the end
    of the stream) and carries the :class:`DeviceError` reason."""


def find_ffmpeg() -> str:
    """The path of the ``ffmpeg`` command. Raises DeviceError when it is not installed."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise DeviceError("the ffmpeg command is missing — install the ffmpeg package")
    return path


# --------------------------------------------------------------------------------------
# Device arguments
# --------------------------------------------------------------------------------------


def v4l2_input(
    path: str, width: int, height: int, fps: int, *, input_format: str | None = None
) -> list[str]:
    """ffmpeg input arguments for a V4L2 camera. ``input_format="mjpeg"`` asks the camera
    for compressed frames (needed by most USB cameras above 640x480 at full rate)."""
    args = ["-f", "v4l2"]
    if input_format:
        args += ["-input_format", input_format]
    return [*args, "-video_size", f"{width}x{height}", "-framerate", str(fps), "-i", path]


def audio_input(kind: str, name: str) -> list[str]:
    """ffmpeg input arguments for a PulseAudio (``kind="pulse"``) or ALSA capture device."""
    return ["-f", kind, "-i", name]


def audio_output(kind: str, name: str) -> list[str]:
    """ffmpeg output arguments for a PulseAudio or ALSA playback device."""
    args = ["-f", kind]
    if kind == "pulse":
        args += ["-name", "ekichika-booth"]
    return [*args, name]


# --------------------------------------------------------------------------------------
# Failure reasons
# --------------------------------------------------------------------------------------

_PREFIX: Final = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
# Lines ffmpeg adds after the real cause.
_GENERIC: Final = (
    "error initializing output stream",
    "could not write header",
    "conversion failed",
    "error opening output file",
    "error opening input file",
    "error while ",
    "exiting normally",
    "error submitting",
    "failed to set value",
)

_HINTS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "v4l2": (
        ("no such file", "is the camera plugged in?"),
        ("no such device", "is the camera plugged in?"),
        ("permission denied", "is the kiosk user in the video group?"),
        ("resource busy", "is another program using the camera?"),
        ("inappropriate ioctl", "is this path a camera?"),
        ("cannot find a proper format", "the camera offers no such format; try another size"),
        ("", "check the camera and its cable"),
    ),
    "pulse": (
        ("no such entity", "check the device name (pactl list short sources / sinks)"),
        ("", "is PipeWire/PulseAudio running for this user?"),
    ),
    "alsa": (
        ("permission denied", "is the kiosk user in the audio group?"),
        ("resource busy", "is another program using the sound card?"),
        ("no such file", "check the device name (arecord -L / aplay -L)"),
        ("", "check the sound card"),
    ),
}


def _device_of(args: Sequence[str], *, output: bool) -> tuple[str, str]:
    """(format, device name) of ffmpeg device arguments: the ``-f`` value and the ``-i``
    value (input) or the last argument (output)."""
    fmt = ""
    name = args[-1] if args else ""
    for index, arg in enumerate(args[:-1]):
        if arg == "-f":
            fmt = args[index + 1]
        elif arg == "-i" and not output:
            name = args[index + 1]
            break
    return fmt, name


def failure_reason(lines: Sequence[str], returncode: int | None, fmt: str, device: str) -> str:
    """A short reason from ffmpeg's error output: its last telling line, what to check."""
    cleaned = [_PREFIX.sub("", line).strip().rstrip(".") for line in lines]
    telling = [
        line
        for line in cleaned
        if line
        and not line.startswith("ALSA lib ")
        and not line.lower().startswith(_GENERIC)
        and not line.endswith("--")
    ]
    if telling:
        line = telling[-1]
    elif returncode is not None and returncode < 0:
        line = f"ffmpeg was stopped by signal {-returncode}"
    elif returncode is not None:
        line = f"ffmpeg stopped (exit status {returncode})"
    else:
        line = "ffmpeg stopped"
    if device and not line.startswith(device):
        line = f"{device}: {line}"
    if fmt in ("pulse", "alsa") and not line.startswith(fmt):
        line = f"{fmt} {line}"
    lowered = line.lower()
    for needle, hint in _HINTS.get(fmt, ()):
        if needle in lowered:
            return f"{line} — {hint}"
    return line


# --------------------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------------------


class FfmpegProcess:
    """One ``ffmpeg`` child: started, watched (its error output) and stopped by PID."""

    def __init__(
        self, args: Sequence[str], *, fmt: str, device: str, stdin: bool, stdout: bool
    ) -> None:
        self.args = [find_ffmpeg(), *_COMMON, *args]
        self.fmt = fmt
        self.device = device
        self._want_stdin = stdin
        self._want_stdout = stdout
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self._process is not None and self._process.stdin is not None
        return self._process.stdin

    async def start(self, *, read_limit: int = 2**16) -> None:
        pipe = asyncio.subprocess.PIPE
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=pipe if self._want_stdin else asyncio.subprocess.DEVNULL,
                stdout=pipe if self._want_stdout else asyncio.subprocess.DEVNULL,
                stderr=pipe,
                limit=read_limit,
            )
        except OSError as err:
            raise DeviceError(f"{self.device}: cannot run ffmpeg ({err.strerror})") from err
        logger.debug("ffmpeg for %s started, pid %s", self.device, self._process.pid)
        if self._want_stdin and self._process.stdin is not None:
            # A full pipe is delay: keep only a few milliseconds of audio in it.
            transport = self._process.stdin.transport
            transport.set_write_buffer_limits(high=_INPUT_PIPE_BYTES)
            pipe_end = transport.get_extra_info("pipe")
            if pipe_end is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe_end.fileno(), fcntl.F_SETPIPE_SZ, _INPUT_PIPE_BYTES)
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        stream = self._process.stderr
        while True:
            line = await stream.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
                logger.debug("ffmpeg %s: %s", self.device, text)

    async def wait_exited(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the process to end (and its error output to be read)."""
        if self._process is None:
            return True
        try:
            await asyncio.wait_for(self._process.wait(), timeout_s)
        except TimeoutError:
            return False
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        return True

    def failure(self) -> DeviceError:
        return DeviceError(failure_reason(self._stderr, self.returncode, self.fmt, self.device))

    async def stop(self, grace_s: float = 2.0, *, close_stdin: bool = False) -> None:
        """End the process: close its input (lets it finish a file), SIGTERM, then SIGKILL
        after ``grace_s``. Idempotent."""
        process = self._process
        if process is None:
            return
        if close_stdin and process.stdin is not None and process.returncode is None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            if await self.wait_exited(grace_s):
                await self._finish()
                return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            if not await self.wait_exited(grace_s) and process.returncode is None:
                logger.warning(
                    "ffmpeg for %s ignored SIGTERM; killing pid %s", self.device, process.pid
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await self.wait_exited(grace_s)
        await self._finish()

    async def _finish(self) -> None:
        process = self._process
        if process is not None and process.stdin is not None:
            process.stdin.close()
            with contextlib.suppress(OSError):
                await process.stdin.wait_closed()
        task, self._stderr_task = self._stderr_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --------------------------------------------------------------------------------------
# Capture (camera, microphone)
# --------------------------------------------------------------------------------------


class _Mailbox:
    """Frames waiting for one track; the oldest are dropped when it is full."""

    def __init__(self, size: int) -> None:
        self._frames: collections.deque[VideoFrame | AudioFrame] = collections.deque(maxlen=size)
        self._event = asyncio.Event()
        self._error: BaseException | None = None

    def put(self, frame: VideoFrame | AudioFrame) -> None:
        self._frames.append(frame)
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def get(self) -> VideoFrame | AudioFrame:
        while True:
            if self._frames:
                return self._frames.popleft()
            if self._error is not None:
                raise self._error
            self._event.clear()
            await self._event.wait()


class FfmpegCaptureTrack(MediaStreamTrack):
    """One call's track of an ffmpeg capture; stopping it releases the device."""

    def __init__(self, capture: _FfmpegCapture, kind: str, queue: int) -> None:
        super().__init__()
        self.kind = kind
        self._capture = capture
        self._mailbox = _Mailbox(queue)
        self._joined = False

    async def recv(self) -> VideoFrame | AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._joined:
            self._joined = True
            await self._capture._join(self)
        frame = await self._mailbox.get()
        if self.readyState != "live":
            raise MediaStreamError
        return frame

    def _put(self, frame: VideoFrame | AudioFrame) -> None:
        self._mailbox.put(frame)

    def _fail(self, error: DeviceStreamError) -> None:
        self._mailbox.fail(error)

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self._mailbox.fail(MediaStreamError())
            self._capture._leave(self)


class _FfmpegCapture:
    """One ffmpeg process that feeds every live track of a capture device."""

    kind = "video"
    what = "frames"

    def __init__(
        self,
        input_args: Sequence[str],
        output_args: Sequence[str],
        frame_bytes: int,
        description: str,
        *,
        queue: int,
        start_timeout_s: float,
        stall_timeout_s: float,
        grace_s: float,
    ) -> None:
        find_ffmpeg()
        self.input_args = list(input_args)
        self.description = description
        self.frames = 0
        self.failure: DeviceError | None = None
        self.start_timeout_s = start_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.grace_s = grace_s
        self._output_args = list(output_args)
        self._frame_bytes = frame_bytes
        self._queue = queue
        self._fmt, self._device = _device_of(self.input_args, output=False)
        self._tracks: set[FfmpegCaptureTrack] = set()
        self._process: FfmpegProcess | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running ffmpeg's PID, or None while no track reads."""
        return None if self._process is None else self._process.pid

    def track(self) -> MediaStreamTrack:
        """A fresh track for one call; ffmpeg starts when it is first read."""
        if self._closed:
            raise DeviceError(f"{self.description} is closed")
        return FfmpegCaptureTrack(self, self.kind, self._queue)

    async def _join(self, track: FfmpegCaptureTrack) -> None:
        self._tracks.add(track)
        try:
            await self._ensure_running()
        except DeviceError as err:
            self._tracks.discard(track)
            track._fail(DeviceStreamError(err.reason))
        if not self._tracks:  # every track stopped while ffmpeg was starting
            self._schedule_stop()

    async def _ensure_running(self) -> None:
        async with self._lock:
            if self._stopping is not None:
                await self._stopping
            if self._closed:
                raise DeviceError(f"{self.description} is closed")
            if self._process is not None:
                return
            process = FfmpegProcess(
                [*self.input_args, *self._output_args, "-"],
                fmt=self._fmt,
                device=self._device,
                stdin=False,
                stdout=True,
            )
            await process.start(read_limit=max(2**16, 2 * self._frame_bytes))
            self._process = process
            self.failure = None
            self._reader = asyncio.get_running_loop().create_task(self._read(process))

    def _leave(self, track: FfmpegCaptureTrack) -> None:
        self._tracks.discard(track)
        if not self._tracks:
            self._schedule_stop()

    def _schedule_stop(self) -> None:
        if self._process is not None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop_process())

    async def _stop_process(self) -> None:
        try:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            process = self._process
            if process is not None:
                await process.stop(self.grace_s)
                logger.debug("%s: ffmpeg pid %s stopped", self.description, process.pid)
            self._process = None
        finally:
            self._stopping = None

    async def _read(self, process: FfmpegProcess) -> None:
        started = 0.0
        count = 0
        size = self._frame_bytes
        try:
            while True:
                timeout = self.start_timeout_s if count == 0 else self.stall_timeout_s
                try:
                    data = await asyncio.wait_for(process.stdout.readexactly(size), timeout)
                except asyncio.IncompleteReadError:
                    await process.wait_exited(self.grace_s)
                    raise process.failure() from None
                except TimeoutError:
                    raise DeviceError(
                        failure_reason(
                            [f"no {self.what} for {timeout:g} s"], None, self._fmt, self._device
                        )
                    ) from None
                if count == 0:
                    started = time.monotonic()  # time stamps count from the first frame
                frame = self._make_frame(data, count, time.monotonic() - started)
                count += 1
                self.frames += 1
                self._keep(frame)
                for track in list(self._tracks):
                    track._put(frame)
        except DeviceError as err:
            self._fail(err)
            self._schedule_stop()

    def _fail(self, err: DeviceError) -> None:
        self.failure = err
        logger.warning("%s failed: %s", self.description, err.reason)
        tracks, self._tracks = self._tracks, set()
        for track in tracks:
            track._fail(DeviceStreamError(err.reason))

    def _make_frame(self, data: bytes, index: int, elapsed_s: float) -> VideoFrame | AudioFrame:
        raise NotImplementedError

    def _keep(self, frame: VideoFrame | AudioFrame) -> None:
        return None

    async def check(self, timeout_s: float = 10.0) -> VideoFrame | AudioFrame:
        """Read one frame (starting ffmpeg if no call reads) and return it: proves that the
        device works, e.g. when the booth starts. Raises DeviceError with the reason."""
        track = self.track()
        try:
            frame = await asyncio.wait_for(track.recv(), timeout_s)
        except TimeoutError as err:
            raise DeviceError(f"{self.description}: nothing within {timeout_s:g} s") from err
        finally:
            track.stop()
        assert isinstance(frame, VideoFrame | AudioFrame)
        return frame

    async def aclose(self) -> None:
        """Stop every track and the process. Idempotent."""
        self._closed = True
        for track in list(self._tracks):
            track.stop()
        self._tracks.clear()
        async with self._lock:
            if self._stopping is not None:
                await self._stopping
            if self._process is not None:
                await self._stop_process()


class FfmpegCamera(_FfmpegCapture):
    """A camera read through ``ffmpeg`` (VideoSource).

    ``input_args`` are ffmpeg's input arguments (:func:`v4l2_input`, or any other source);
    ffmpeg scales to ``width`` x ``height`` and writes raw ``yuv420p``. Frames are served as
    they arrive (the camera sets the pace); a slow reader gets the newest frame, never a
    backlog. :attr:`latest` keeps the newest frame for stills.
    """

    kind = "video"
    what = "frames"

    def __init__(
        self,
        input_args: Sequence[str],
        width: int,
        height: int,
        fps: int,
        *,
        description: str | None = None,
        start_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
        grace_s: float = 2.0,
    ) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise DeviceError(f"camera: {width}x{height} is not a usable picture size")
        self.width, self.height, self.fps = width, height, fps
        output = ["-s", f"{width}x{height}", "-fps_mode", "passthrough"]
        output += ["-f", "rawvideo", "-pix_fmt", "yuv420p"]
        _, device = _device_of(list(input_args), output=False)
        super().__init__(
            input_args,
            output,
            width * height * 3 // 2,
            description or f"camera {device} {width}x{height}@{fps} (ffmpeg)",
            queue=1,
            start_timeout_s=start_timeout_s,
            stall_timeout_s=stall_timeout_s,
            grace_s=grace_s,
        )
        self.latest: VideoFrame | None = None
        self._last_pts = -1

    def _make_frame(self, data: bytes, index: int, elapsed_s: float) -> VideoFrame:
        w, h = self.width, self.height
        frame = VideoFrame.from_ndarray(
            np.frombuffer(data, dtype=np.uint8).reshape(h * 3 // 2, w), format="yuv420p"
        )
        # the time of arrival, strictly increasing
        pts = max(int(elapsed_s * VIDEO_CLOCK_RATE), self._last_pts + 1) if index else 0
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame

    def _keep(self, frame: VideoFrame | AudioFrame) -> None:
        if isinstance(frame, VideoFrame):
            self.latest = frame

    async def still(self, timeout_s: float = 10.0) -> VideoFrame:
        """The next frame (starts the camera if no call reads it). Raises DeviceError."""
        frame = await self.check(timeout_s)
        assert isinstance(frame, VideoFrame)
        return frame


class FfmpegMicrophone(_FfmpegCapture):
    """A microphone read through ``ffmpeg`` (AudioSource): 48 kHz mono s16, 20 ms frames."""

    kind = "audio"
    what = "audio"

    def __init__(
        self,
        input_args: Sequence[str],
        *,
        description: str | None = None,
        start_timeout_s: float = 5.0,
        stall_timeout_s: float = 2.0,
        grace_s: float = 2.0,
    ) -> None:
        fmt, device = _device_of(list(input_args), output=False)
        super().__init__(
            input_args,
            ["-ac", "1", "-ar", str(AUDIO_RATE), "-f", "s16le"],
            AUDIO_FRAME_SAMPLES * 2,
            description or f"microphone {fmt}:{device} (ffmpeg)",
            queue=25,  # 0.5 s; a reader that falls further behind loses the oldest audio
            start_timeout_s=start_timeout_s,
            stall_timeout_s=stall_timeout_s,
            grace_s=grace_s,
        )

    def _make_frame(self, data: bytes, index: int, elapsed_s: float) -> AudioFrame:
        samples = np.frombuffer(data, dtype=np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


# --------------------------------------------------------------------------------------
# Playback
# --------------------------------------------------------------------------------------


class FfmpegSpeaker(NullSpeaker):
    """Plays a received audio track through ``ffmpeg`` (AudioSink) and measures it.

    ``output_args`` are ffmpeg's output arguments (:func:`audio_output`, or e.g.
    ``["-f", "wav", PATH]``). ffmpeg starts with the first frame of a call and ends when the
    call's track is detached. If it fails, the reason is kept in :attr:`failure` and logged
    once; the level meter keeps working.
    """

    def __init__(
        self,
        output_args: Sequence[str],
        *,
        description: str | None = None,
        write_timeout_s: float = 2.0,
        grace_s: float = 2.0,
    ) -> None:
        find_ffmpeg()
        self.output_args = list(output_args)
        self._fmt, self._device = _device_of(self.output_args, output=True)
        super().__init__(description or f"speaker {self._fmt}:{self._device} (ffmpeg)")
        self.write_timeout_s = write_timeout_s
        self.grace_s = grace_s
        self.failure: DeviceError | None = None
        self._process: FfmpegProcess | None = None
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def attach(self, track: MediaStreamTrack) -> None:
        previous, self._process = self._process, None
        if previous is not None:  # attached again without detach: finish the old output
            task = asyncio.get_running_loop().create_task(previous.stop(self.grace_s))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        self.failure = None
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
        super().attach(track)

    async def _play(self, frame: AudioFrame) -> None:
        if self.failure is not None:
            return
        try:
            if self._process is None:
                pcm_in = ["-f", "s16le", "-ar", str(AUDIO_RATE), "-ac", "2"]
                pcm_in += ["-probesize", "32", "-analyzeduration", "0", "-i", "-", "-y"]
                process = FfmpegProcess(
                    [*pcm_in, *self.output_args],
                    fmt=self._fmt,
                    device=self._device,
                    stdin=True,
                    stdout=False,
                )
                await process.start()
                self._process = process
            process = self._process
            if process.returncode is not None:  # ffmpeg ended on its own
                await process.wait_exited(self.grace_s)
                raise process.failure()
            for resampled in self._resampler.resample(frame):
                process.stdin.write(resampled.to_ndarray().tobytes())
            try:
                await asyncio.wait_for(process.stdin.drain(), self.write_timeout_s)
            except (BrokenPipeError, ConnectionResetError):
                await process.wait_exited(self.grace_s)
                raise process.failure() from None
            except TimeoutError:
                raise DeviceError(
                    failure_reason(
                        [f"took no audio for {self.write_timeout_s:g} s"],
                        None,
                        self._fmt,
                        self._device,
                    )
                ) from None
        except DeviceError as err:
            self.failure = err
            logger.warning("%s stopped playing: %s", self.description, err.reason)
            process_, self._process = self._process, None
            if process_ is not None:
                await process_.stop(self.grace_s)

    async def detach(self) -> None:
        await super().detach()
        process, self._process = self._process, None
        if process is not None:
            await process.stop(self.grace_s, close_stdin=True)
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        await self.detach()


__all__ = [
    "DeviceStreamError",
    "FfmpegCamera",
    "FfmpegMicrophone",
    "FfmpegProcess",
    "FfmpegSpeaker",
    "audio_input",
    "audio_output",
    "failure_reason",
    "find_ffmpeg",
    "v4l2_input",
]
