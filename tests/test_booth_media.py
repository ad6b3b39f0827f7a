"""Booth media: the stamped test picture survives VP8, the tone survives Opus."""

from __future__ import annotations

import fractions
import os

import aioice.ice
import av
import numpy as np
import pytest
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from booth.ice import restrict_host_addresses, rtc_configuration
from booth.media import (
    STAMP_HEIGHT,
    STAMP_WIDTH,
    AudioMeter,
    Stamp,
    StampedVideoTrack,
    ToneAudioTrack,
    audio_samples,
    dominant_frequency,
    draw_stamp,
    open_camera,
    open_media,
    read_stamp,
    read_stamp_luma,
    tone_amplitude,
    tone_level,
    wall_clock_ms,
)
from shared.config import DeviceConfig
from shared.errors import DeviceError
from shared.protocol import IceServer

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)


def vp8_round_trip(frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
    encoder = get_encoder(VP8)
    decoder = get_decoder(VP8)
    decoded: list[av.VideoFrame] = []
    for index, frame in enumerate(frames):
        payloads, timestamp = encoder.encode(frame, force_keyframe=index == 0)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for out in decoder.decode(JitterFrame(data=data, timestamp=timestamp)):
            assert isinstance(out, av.VideoFrame)
            decoded.append(out)
    return decoded


@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480)])
async def test_stamps_survive_vp8(width: int, height: int) -> None:
    track = StampedVideoTrack(width, height, fps=30, first_frame=4_000_000_000)
    sent = [await track.recv() for _ in range(20)]
    track.stop()
    before = wall_clock_ms()
    received = vp8_round_trip(sent)
    assert len(received) == 20
    assert (received[0].width, received[0].height) == (width, height)

    stamps = [read_stamp(frame) for frame in received]
    # At the encoder's bit rate VP8 now and then leaves a macroblock of the changing
    # timestamp from the previous frame; the checksum then rejects that frame's stamp
    # (None), it never misreads it. The keyframe and nearly every frame must read.
    assert stamps[0] is not None
    readable = [(index, stamp) for index, stamp in enumerate(stamps) if stamp is not None]
    assert len(readable) >= 17
    for index, stamp in readable:
        assert stamp.frame_no == 4_000_000_000 + index  # exact, never another frame's
        # drawn just before the round trip: a latency of a few hundred ms at most
        assert 0 <= stamp.latency_ms() < 5000
        assert (before - stamp.sent_ms) % 2**32 < 5000


async def test_frame_pacing_and_timestamps() -> None:
    track = StampedVideoTrack(320, 240, fps=15)
    frames = [await track.recv() for _ in range(4)]
    track.stop()
    assert [f.pts for f in frames] == [0, 6000, 12000, 18000]
    assert frames[0].time_base == fractions.Fraction(1, 90000)


def test_stamp_layout_is_the_documented_one() -> None:
    luma = np.zeros((100, 400), dtype=np.uint8)
    draw_stamp(luma, frame_no=0x80000001, sent_ms=0x00FF00FF)
    bright = luma > 128
    # frame counter MSB first: block (row 0, col 0) white, then 30 black, then white
    assert bright[8, 10] and not bright[8, 30] and bright[24, 310]
    # the stamp area is 320 x 80 px: nothing drawn to the right of it or below it
    assert not bright[:, STAMP_WIDTH:].any() and not bright[STAMP_HEIGHT:, :].any()
    # checksum: (0x80 + 0x01 + 0xFF + 0xFF) % 256 = 0x7F -> blocks 40 px wide: 0 1111111
    assert [bool(bright[72, 20 + 40 * i]) for i in range(8)] == [False] + [True] * 7
    assert read_stamp_luma(luma) == Stamp(frame_no=0x80000001, sent_ms=0x00FF00FF)


def test_pictures_without_a_valid_stamp_are_rejected() -> None:
    height, width = 240, 320
    gray = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), "rgb24")
    black = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
    rng = np.random.default_rng(7)
    noise = av.VideoFrame.from_ndarray(
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb24"
    )
    for frame in (gray, black, noise):
        assert read_stamp(frame) is None

    # a valid stamp with one payload bit flipped fails the checksum
    luma = np.full((height, width), 100, np.uint8)
    draw_stamp(luma, frame_no=1234, sent_ms=wall_clock_ms())
    assert read_stamp_luma(luma) is not None
    luma[16:32, 20:40] = 255 - luma[16:32, 20:40]
    assert read_stamp_luma(luma) is None
    # too small to hold a stamp
    small = av.VideoFrame.from_ndarray(np.zeros((60, 160, 3), np.uint8), "rgb24")
    assert read_stamp(small) is None
    # a corrupted checksum strip
    luma = np.full((height, width), 100, np.uint8)
    draw_stamp(luma, frame_no=99, sent_ms=wall_clock_ms())
    luma[64:80, 0:40] = 255 - luma[64:80, 0:40]
    assert read_stamp_luma(luma) is None


async def test_tone_track_survives_opus() -> None:
    track = ToneAudioTrack(hz=1000.0, sample_rate=48000)
    frames = [await track.recv() for _ in range(25)]
    track.stop()
    assert [f.pts for f in frames[:3]] == [0, 960, 1920]
    assert frames[0].samples == 960 and frames[0].sample_rate == 48000
    assert frames[0].format.name == "s16" and len(frames[0].layout.channels) == 1

    encoder, decoder = get_encoder(OPUS), get_decoder(OPUS)
    decoded: list[av.AudioFrame] = []
    for frame in frames:
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            for out in decoder.decode(JitterFrame(data=payload, timestamp=timestamp)):
                assert isinstance(out, av.AudioFrame)
                decoded.append(out)
    samples = audio_samples(decoded[5:])  # skip the codec's start-up
    assert abs(dominant_frequency(samples, 48000) - 1000.0) <= 20.0
    assert tone_level(samples, 48000, 1000.0) > 0.9
    assert tone_level(samples, 48000, 660.0) < 0.05
    assert 0.15 < tone_amplitude(samples, 48000, 1000.0) < 0.35  # sent at 0.3 full scale
    # raw int16 samples give the same relative level
    raw = (samples * 32768).astype(np.int16)
    assert tone_level(raw, 48000, 1000.0) == pytest.approx(tone_level(samples, 48000, 1000.0))

    meter = AudioMeter(window_s=0.5)
    for frame in decoded:
        meter.add(frame)
    assert meter.frames == len(decoded)
    assert abs(meter.dominant_frequency() - 1000.0) <= 20.0
    assert 0.1 < meter.level() < 0.4


def test_dominant_frequency_of_a_staff_tone() -> None:
    t = np.arange(9600) / 48000
    samples = 0.2 * np.sin(2 * np.pi * 660.0 * t)
    assert abs(dominant_frequency(samples, 48000) - 660.0) <= 5.0
    assert tone_amplitude(samples, 48000, 660.0) == pytest.approx(0.2, abs=0.02)
    assert tone_level(samples, 48000, 660.0) > 0.95
    assert tone_level(samples, 48000, 1000.0) < 0.05
    assert tone_level(np.zeros(960), 48000, 660.0) == 0.0


def test_rtc_configuration_never_adds_a_default_stun_server() -> None:
    assert rtc_configuration([]).iceServers == []
    turn = IceServer(urls=["turn:127.0.0.1:3478"], username="u", credential="c")
    configured = rtc_configuration([turn]).iceServers
    assert configured is not None and len(configured) == 1
    assert configured[0].urls == ["turn:127.0.0.1:3478"] and configured[0].credential == "c"


def test_restrict_host_addresses() -> None:
    try:
        restrict_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        restrict_host_addresses([])
        assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    finally:
        restrict_host_addresses(["127.0.0.1"])  # what every test runs with (conftest)


def test_device_errors_are_readable() -> None:
    with pytest.raises(DeviceError, match=r"/dev/video97 does not exist"):
        open_camera("v4l2:/dev/video97")
    with pytest.raises(DeviceError, match="not understood"):
        open_media(DeviceConfig(camera="webcam0"))
    with pytest.raises(DeviceError, match="not understood"):
        open_media(DeviceConfig(speaker="hdmi"))
    media = open_media(DeviceConfig())
    assert media.describe()[0].startswith("simulated camera")


@pytest.mark.hardware
@pytest.mark.skipif(not os.path.exists("/dev/video0"), reason="no camera at /dev/video0")
async def test_real_camera_delivers_frames() -> None:
    camera = open_camera("v4l2:/dev/video0", 640, 480, 30)
    track = camera.track()
    try:
        frame = await track.recv()
        assert isinstance(frame, av.VideoFrame) and frame.width > 0
    finally:
        track.stop()
        await camera.aclose()
