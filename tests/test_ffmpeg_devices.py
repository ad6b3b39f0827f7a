"""Cameras, microphones and speakers through Debian's ffmpeg command.

The device arguments are swapped for lavfi sources and a WAV file; everything else (the
child process, framing, pacing, failures) runs as it does with a real device.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from booth.ffmpeg_devices import (
    DeviceStreamError,
    FfmpegCamera,
    FfmpegMicrophone,
    FfmpegSpeaker,
    audio_input,
    audio_output,
    failure_reason,
    v4l2_input,
)
from booth.ice import rtc_configuration
from booth.media import (
    ToneAudioTrack,
    dominant_frequency,
    open_camera,
    open_microphone,
    open_speaker,
    tone_level,
)
from shared.errors import DeviceError


@pytest.fixture(autouse=True)
def _ffmpeg_installed() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.fail("the ffmpeg command is missing: run scripts/setup.sh (Debian package ffmpeg)")


WIDTH, HEIGHT, FPS = 320, 240, 15
TESTSRC = ["-re", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}"]
SINE_1000 = ["-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"]

# testsrc draws eight vertical bars, 40 px wide at 320 px; the top and bottom rows are
# outside its circle, so the bars there have these colours, left to right.
BARS = [
    (0, 0, 0),  # black
    (1, 0, 0),  # red
    (1, 0, 1),  # magenta
    (0, 0, 1),  # blue
    (1, 1, 0),  # yellow
    (0, 1, 0),  # green
    (0, 1, 1),  # cyan
    (1, 1, 1),  # white
]


def bar_colours(frame: av.VideoFrame, rows: tuple[int, int]) -> list[tuple[int, int, int]]:
    """Each bar's colour as 0/1 per RGB channel, sampled at the bar's centre in ``rows``."""
    rgb = frame.to_ndarray(format="rgb24")
    scale = frame.width / WIDTH
    colours = []
    for index in range(8):
        x = int((index * 40 + 20) * scale)
        y0, y1 = int(rows[0] * scale), int(rows[1] * scale)
        mean = rgb[y0:y1, x - 6 : x + 6].reshape(-1, 3).mean(axis=0)
        assert all(v < 70 or v > 180 for v in mean), f"bar {index} is not a clear colour: {mean}"
        colours.append((int(mean[0] > 127), int(mean[1] > 127), int(mean[2] > 127)))
    return colours


def assert_testsrc(frame: av.VideoFrame) -> None:
    assert bar_colours(frame, (2, 10)) == BARS
    assert bar_colours(frame, (228, 236)) == BARS


async def stopped(device: FfmpegCamera | FfmpegMicrophone) -> None:
    """Wait until the device's ffmpeg has been stopped; fail after 5 s."""
    pid = device.pid
    for _ in range(100):
        if device.pid is None:
            break
        await asyncio.sleep(0.05)
    assert device.pid is None
    assert pid is None or process_gone(pid)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_camera_frames_size_rate_and_content() -> None:
    camera = FfmpegCamera(TESTSRC, WIDTH, HEIGHT, FPS)
    track = camera.track()
    try:
        assert camera.pid is None  # nothing runs before a call reads
        first = await asyncio.wait_for(track.recv(), 10)
        pid = camera.pid
        assert pid is not None
        frames = [first]
        arrivals = [time.monotonic()]
        for _ in range(22):
            frame = await asyncio.wait_for(track.recv(), 5)
            frames.append(frame)
            arrivals.append(time.monotonic())
        for frame in frames:
            assert isinstance(frame, av.VideoFrame)
            assert (frame.width, frame.height, frame.format.name) == (WIDTH, HEIGHT, "yuv420p")
            assert frame.time_base == fractions.Fraction(1, 90000)
        # the camera sets the pace: 15 frames a second, both by arrival and by time stamp
        rate = (len(arrivals) - 3) / (arrivals[-1] - arrivals[2])
        assert 12 < rate < 18, rate
        pts = [frame.pts for frame in frames]
        assert pts == sorted(set(pts))
        pts_rate = (len(pts) - 3) / ((pts[-1] - pts[2]) / 90000)
        assert 12 < pts_rate < 18, pts_rate
        for frame in frames[::5]:
            assert isinstance(frame, av.VideoFrame)
            assert_testsrc(frame)
        assert camera.latest is not None and camera.frames >= len(frames)

        # a second call's track reads the same ffmpeg process
        second = camera.track()
        frame = await asyncio.wait_for(second.recv(), 5)
        assert isinstance(frame, av.VideoFrame) and camera.pid == pid
        second.stop()
        assert camera.pid == pid  # the first track still reads
        track.stop()
        await stopped(camera)  # the camera is off between calls
        assert process_gone(pid)

        # a still starts the camera again for one frame
        still = await camera.still(timeout_s=10)
        assert_testsrc(still)
        assert camera.failure is None
    finally:
        track.stop()
        await camera.aclose()
    assert camera.pid is None
    with pytest.raises(DeviceError, match="is closed"):
        camera.track()


async def connect(sender: RTCPeerConnection, receiver: RTCPeerConnection) -> None:
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    answer = receiver.localDescription
    await sender.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))


async def test_camera_through_a_webrtc_call() -> None:
    camera = FfmpegCamera(TESTSRC, WIDTH, HEIGHT, FPS)
    booth = RTCPeerConnection(rtc_configuration([]))
    staff = RTCPeerConnection(rtc_configuration([]))
    received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @staff.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not received.done():
            received.set_result(track)

    sent = camera.track()
    try:
        booth.addTrack(sent)
        await connect(booth, staff)
        remote = await asyncio.wait_for(received, 10)
        decoded = []
        for _ in range(10):
            frame = await asyncio.wait_for(remote.recv(), 10)
            assert isinstance(frame, av.VideoFrame)
            decoded.append(frame)
        assert (decoded[-1].width, decoded[-1].height) == (WIDTH, HEIGHT)
        assert_testsrc(decoded[-1])
        assert camera.pid is not None
    finally:
        sent.stop()
        await booth.close()
        await staff.close()
        await camera.aclose()


async def test_microphone_reads_a_tone() -> None:
    microphone = FfmpegMicrophone(SINE_1000)
    track = microphone.track()
    try:
        started = time.monotonic()
        frames = [await asyncio.wait_for(track.recv(), 10) for _ in range(30)]
        elapsed = time.monotonic() - started
        for index, frame in enumerate(frames):
            assert isinstance(frame, av.AudioFrame)
            assert (frame.samples, frame.sample_rate, frame.format.name) == (960, 48000, "s16")
            assert frame.pts == index * 960
        audio = [f for f in frames if isinstance(f, av.AudioFrame)]
        assert abs(dominant_frequency(audio, 48000) - 1000) < 2
        assert tone_level(audio, 48000, 1000) > 0.9
        assert 0.4 < elapsed < 1.5  # 0.6 s of sound, paced by the source
    finally:
        track.stop()
        await microphone.aclose()
    assert microphone.pid is None


async def test_speaker_writes_what_it_receives(tmp_path: Path) -> None:
    out = tmp_path / "speaker.wav"
    speaker = FfmpegSpeaker(["-f", "wav", str(out)])
    tone = ToneAudioTrack(hz=660)
    try:
        speaker.attach(tone)
        await asyncio.sleep(1.0)
        pid = speaker.pid
        assert pid is not None
        assert speaker.meter.tone_level(660) > 0.9
        await speaker.detach()  # ffmpeg finishes the file and ends
        assert speaker.pid is None and process_gone(pid)
    finally:
        tone.stop()
        await speaker.aclose()
    assert speaker.failure is None
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (48000, 2)
        frames = list(container.decode(stream))
    seconds = sum(f.samples for f in frames) / 48000
    assert 0.8 < seconds < 1.3
    assert abs(dominant_frequency(frames, 48000) - 660) < 2
    assert tone_level(frames, 48000, 660) > 0.9


async def test_missing_camera_fails_fast_with_the_path() -> None:
    camera = FfmpegCamera(v4l2_input("/dev/video99", WIDTH, HEIGHT, FPS), WIDTH, HEIGHT, FPS)
    track = camera.track()
    started = time.monotonic()
    try:
        with pytest.raises(DeviceError) as caught:
            await asyncio.wait_for(track.recv(), 10)
        assert time.monotonic() - started < 5
        assert isinstance(caught.value, DeviceStreamError)  # ends the track for WebRTC
        assert caught.value.reason == (
            "/dev/video99: No such file or directory — is the camera plugged in?"
        )
        assert camera.failure is not None
        await stopped(camera)
    finally:
        track.stop()
        await camera.aclose()
    with pytest.raises(DeviceError, match="/dev/video99"):
        open_camera("v4l2:/dev/video99")


async def test_ffmpeg_dying_mid_call_ends_the_track_and_a_new_call_recovers() -> None:
    camera = FfmpegCamera(TESTSRC, WIDTH, HEIGHT, FPS)
    track = camera.track()
    try:
        await asyncio.wait_for(track.recv(), 10)
        pid = camera.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="ffmpeg was stopped by signal 9"):
            for _ in range(100):  # frames already in the pipe may still arrive
                await asyncio.wait_for(track.recv(), 5)
        assert time.monotonic() - started < 3
        assert camera.failure is not None
        await stopped(camera)
        # the next call starts a fresh process
        again = camera.track()
        frame = await asyncio.wait_for(again.recv(), 10)
        assert isinstance(frame, av.VideoFrame) and camera.pid not in (None, pid)
        again.stop()
    finally:
        track.stop()
        await camera.aclose()


async def test_a_camera_that_stops_delivering_is_a_failure() -> None:
    # five frames, then ffmpeg keeps running but writes nothing more
    stalling = ["-re", "-f", "lavfi", "-i", f"{TESTSRC[-1]},select=lt(n\\,5)"]
    camera = FfmpegCamera(stalling, WIDTH, HEIGHT, FPS, stall_timeout_s=0.5, grace_s=0.5)
    track = camera.track()
    try:
        frames = 0
        started = time.monotonic()
        with pytest.raises(DeviceError, match=r"no frames for 0\.5 s"):
            while True:
                await asyncio.wait_for(track.recv(), 5)
                frames += 1
        assert 1 <= frames <= 5
        assert time.monotonic() - started < 3
        await stopped(camera)  # SIGTERM, then SIGKILL after the grace period
    finally:
        track.stop()
        await camera.aclose()


@pytest.fixture
def refusing_pulse_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A PulseAudio socket path where nothing accepts connections."""
    path = tmp_path / "pulse-native"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # bound, never listening: connections are refused
    monkeypatch.setenv("PULSE_SERVER", f"unix:{path}")
    try:
        yield str(path)
    finally:
        sock.close()


@pytest.mark.usefixtures("refusing_pulse_server")
async def test_pulse_without_a_server_says_what_to_check() -> None:
    microphone = FfmpegMicrophone(audio_input("pulse", "default"))
    track = microphone.track()
    try:
        with pytest.raises(DeviceError) as caught:
            await asyncio.wait_for(track.recv(), 10)
        assert caught.value.reason.startswith("pulse default: ")
        assert caught.value.reason.endswith("is PipeWire/PulseAudio running for this user?")
    finally:
        track.stop()
        await microphone.aclose()

    speaker = FfmpegSpeaker(audio_output("pulse", "default"))
    tone = ToneAudioTrack(hz=440)
    try:
        speaker.attach(tone)
        for _ in range(60):
            if speaker.failure is not None:
                break
            await asyncio.sleep(0.05)
        assert speaker.failure is not None
        assert speaker.failure.reason.startswith("pulse default: ")
        assert "PipeWire/PulseAudio" in speaker.failure.reason
        assert speaker.pid is None
        await asyncio.sleep(0.2)
        assert speaker.meter.tone_level(440) > 0.9  # still measured for the staff
    finally:
        tone.stop()
        await speaker.aclose()


def test_failure_reasons() -> None:
    assert (
        failure_reason(
            [
                "[video4linux2,v4l2 @ 0x55d] Cannot open video device /dev/video0: No such device",
                "/dev/video0: No such device",
            ],
            1,
            "v4l2",
            "/dev/video0",
        )
        == "/dev/video0: No such device — is the camera plugged in?"
    )
    assert (
        failure_reason(["Connection refused"], 1, "pulse", "default")
        == "pulse default: Connection refused — is PipeWire/PulseAudio running for this user?"
    )
    assert failure_reason(["/dev/video0: Permission denied"], 1, "v4l2", "/dev/video0").endswith(
        "is the kiosk user in the video group?"
    )
    assert failure_reason([], 0, "v4l2", "/dev/video0") == (
        "/dev/video0: ffmpeg stopped (exit status 0) — check the camera and its cable"
    )


async def test_factories_use_ffmpeg_when_pyav_lacks_the_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_camera = tmp_path / "video0"
    not_a_camera.write_bytes(b"")
    if "v4l2" in av.formats_available:
        pytest.skip("this PyAV build reads V4L2 itself")
    camera = open_camera(f"v4l2:{not_a_camera}", WIDTH, HEIGHT, FPS)
    assert isinstance(camera, FfmpegCamera)
    track = camera.track()
    try:
        with pytest.raises(DeviceError, match="Inappropriate ioctl for device — is this path"):
            await asyncio.wait_for(track.recv(), 10)
    finally:
        track.stop()
        await camera.aclose()
    if "pulse" not in av.formats_available:
        microphone = open_microphone("pulse:default")
        assert isinstance(microphone, FfmpegMicrophone)
        assert microphone.description == "microphone pulse:default (ffmpeg)"
        await microphone.aclose()
        speaker = open_speaker("pulse:default")
        assert isinstance(speaker, FfmpegSpeaker)
        await speaker.aclose()
    assert open_speaker("null").description.startswith("no speaker")

    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on the PATH
    with pytest.raises(DeviceError, match="install the ffmpeg package"):
        open_camera(f"v4l2:{not_a_camera}")
    with pytest.raises(DeviceError, match="install the ffmpeg package"):
        open_speaker("pulse:default")


def _pulse_server_running() -> bool:
    if shutil.which("pactl") is None:
        return False
    return subprocess.run(["pactl", "info"], capture_output=True, timeout=5).returncode == 0


@pytest.mark.hardware
@pytest.mark.skipif(not os.path.exists("/dev/video0"), reason="no camera at /dev/video0")
async def test_real_camera_through_ffmpeg() -> None:
    camera = FfmpegCamera(v4l2_input("/dev/video0", 640, 480, 30), 640, 480, 30)
    try:
        frame = await camera.still(timeout_s=10)
        assert (frame.width, frame.height) == (640, 480)
        assert float(np.asarray(frame.to_ndarray(format="gray")).std()) > 1  # not blank
    finally:
        await camera.aclose()


@pytest.mark.hardware
@pytest.mark.skipif(not _pulse_server_running(), reason="no PulseAudio/PipeWire server")
async def test_real_pulse_microphone_and_speaker() -> None:
    microphone = FfmpegMicrophone(audio_input("pulse", "default"))
    speaker = FfmpegSpeaker(audio_output("pulse", "default"))
    tone = ToneAudioTrack(hz=660, amplitude=0.05)
    try:
        frame = await microphone.check(timeout_s=10)
        assert isinstance(frame, av.AudioFrame) and frame.samples == 960
        speaker.attach(tone)
        await asyncio.sleep(1.0)
        assert speaker.failure is None and speaker.meter.frames > 20
    finally:
        tone.stop()
        await speaker.aclose()
        await microphone.aclose()
