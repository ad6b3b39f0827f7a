"""The document camera (書画カメラ): a second live video for staff, and full-resolution stills.

One small interface (:class:`DocumentCamera`) with a simulator and a real device behind it;
:func:`open_document_camera` picks from ``DeviceConfig.document_camera``:

* ``simulated`` — :class:`SimulatedDocumentCamera`: an A4 form (住民異動届) drawn with
  Pillow and Noto Sans CJK JP, boxes, filled-in entries and fine print, lying sideways under
  the camera as a real page often does. The live track carries the frame stamp of
  :mod:`booth.media` (top left), so the far side can prove which frames arrived; a still is
  the whole page at 3508x2480 (A4 at 300 dpi), JPEG quality 95, with a little sensor noise
  and the still number printed in the margin, so that every still differs.
* ``v4l2:/dev/videoN`` — the camera opened by :func:`booth.media.open_camera` (PyAV, or
  ``ffmpeg`` when PyAV lacks V4L2). A still is the newest frame of that stream, encoded as
  JPEG at the stream's resolution. A camera that is unplugged is opened again when it comes
  back.

:class:`DocumentCameraOwner` is the one owner of the camera (see :mod:`booth.devices`): it
serialises stills, publishes the camera's state (``ready``, ``busy`` while a still is taken,
``offline`` when the device is gone, ``error`` when it sends no picture, with the reason in
Japanese) and checks the camera when asked (the device hub does so periodically).

JPEG encoding and page rendering are CPU work and run in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Protocol

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from PIL import Image, ImageDraw

from booth.devices.base import DeviceKind, DeviceOwner, DeviceState
from booth.media import (
    STAMP_HEIGHT,
    STAMP_WIDTH,
    ByteArray,
    StampedVideoTrack,
    VideoSource,
    _caption_font,
    draw_stamp,
    open_camera,
)
from shared.config import DeviceConfig
from shared.errors import DeviceError

logger = logging.getLogger(__name__)

A4_PORTRAIT: Final = (2480, 3508)  # 300 dpi
STILL_SIZE: Final = (3508, 2480)  # the page lies sideways under the camera
STILL_QUALITY: Final = 95


@dataclass(frozen=True)
class DocumentStill:
    """One still: JPEG bytes and the picture size."""

    jpeg: bytes
    width: int
    height: int


class DocumentCamera(Protocol):
    """A document camera. ``track()`` gives a fresh live track for one call."""

    description: str

    def track(self) -> MediaStreamTrack: ...

    async def still(self) -> DocumentStill: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class CameraCondition:
    """What a document camera driver says about itself; ``reason`` is Japanese, for the
    branch board, and never holds personal data."""

    state: DeviceState
    reason: str | None = None


CAMERA_READY: Final = CameraCondition(DeviceState.READY)


class DocumentCameraDriver(DocumentCamera, Protocol):
    """A document camera that can say whether it works (:class:`DocumentCameraOwner`)."""

    async def condition(self) -> CameraCondition: ...


# --------------------------------------------------------------------------------------
# The simulated page
# --------------------------------------------------------------------------------------

_FINE_PRINT: Final = (
    "注意事項　1. この届出は、異動の日から14日以内に届け出てください。"
    "2. 代理人が届け出る場合は委任状が必要です。"
    "3. 本人確認書類（マイナンバーカード、運転免許証等）をご提示ください。"
    "4. 届出の内容に偽りがあった場合は、住民基本台帳法第52条により過料に処せられることがあります。"
    "5. 国民健康保険・国民年金・児童手当等の手続きが必要な場合があります。"
    "各担当窓口でご確認ください。"
    "6. 記入された個人情報は、住民基本台帳事務及び関連する事務の目的以外には使用しません。"
)


@lru_cache(maxsize=1)
def render_form_page() -> Image.Image:
    """The A4 form, portrait, 2480x3508 grey-scale (drawn once per process)."""
    w, h = A4_PORTRAIT
    page = Image.new("L", (w, h), 246)
    draw = ImageDraw.Draw(page)
    title = _caption_font(110)
    label = _caption_font(46)
    entry = _caption_font(58)
    small = _caption_font(30)
    tiny = _caption_font(22)
    margin = 160
    draw.text((margin, 150), "住民異動届", fill=20, font=title)
    draw.text((w - margin - 700, 190), "多摩市長　あて", fill=30, font=label)
    draw.text((w - margin - 700, 260), "届出日　令和8年11月23日", fill=30, font=label)
    # the table of boxes
    rows = [
        ("異動の種類", "転入　・　転居　・　転出　・　世帯変更"),
        ("異動日", "令和8年11月20日"),
        ("新しい住所", "東京都多摩市関戸一丁目1番地の1　聖蹟ハイツ203号室"),
        ("前の住所", "東京都府中市宮町二丁目15番地の3"),
        ("世帯主", "髙橋　一郎"),
        ("氏名（ふりがな）", "たかはし　よしこ　　髙橋　𠮷子"),
        ("生年月日", "昭和60年4月1日"),
        ("続柄", "妻"),
        ("本籍", "東京都多摩市関戸六丁目12番地"),
        ("筆頭者", "髙橋　一郎"),
        ("電話番号", "042-000-0000"),
    ]
    top = 420
    row_h = 190
    split = margin + 560
    for i, (name, value) in enumerate(rows):
        y = top + i * row_h
        draw.rectangle((margin, y, w - margin, y + row_h), outline=20, width=5)
        draw.line((split, y, split, y + row_h), fill=20, width=4)
        draw.text((margin + 30, y + 65), name, fill=20, font=label)
        draw.text((split + 40, y + 55), value, fill=35, font=entry)
    y = top + len(rows) * row_h + 60
    # check boxes
    for j, text in enumerate(
        ("国民健康保険", "国民年金", "児童手当", "印鑑登録", "マイナンバーカード")
    ):
        x = margin + j * 430
        draw.rectangle((x, y, x + 50, y + 50), outline=20, width=4)
        if j in (0, 4):
            draw.line((x + 8, y + 25, x + 22, y + 42, x + 44, y + 6), fill=25, width=7)
        draw.text((x + 70, y + 2), text, fill=20, font=small)
    y += 130
    # fine print, wrapped
    line = ""
    lines = []
    for ch in _FINE_PRINT:
        line += ch
        if draw.textlength(line, font=small) > w - 2 * margin - 40:
            lines.append(line)
            line = ""
    lines.append(line)
    for k, text in enumerate(lines):
        draw.text((margin, y + k * 44), text, fill=40, font=small)
    y += len(lines) * 44 + 40
    for k in range(6):
        draw.text(
            (margin, y + k * 30),
            "この欄は記入しないでください。　受付番号　　　　　入力　　　　　照合　　　　"
            f"　様式第{k + 1}号（第4条関係）　※印の欄は職員が記入します。",
            fill=70,
            font=tiny,
        )
    # the office stamp box
    draw.ellipse((w - margin - 300, h - 620, w - margin - 60, h - 380), outline=20, width=5)
    draw.text((w - margin - 245, h - 530), "受付印", fill=40, font=label)
    return page


def _still_image(still_no: int) -> Image.Image:
    """The page as the camera sees it: sideways, RGB, noisy, with the still number."""
    page = render_form_page().rotate(90, expand=True)  # 3508x2480
    draw = ImageDraw.Draw(page)
    clock = time.strftime("%Y-%m-%d %H:%M:%S")
    draw.text((40, 20), f"STILL #{still_no}  {clock}", fill=0, font=_caption_font(40))
    pixels = np.asarray(page, dtype=np.int16)
    rng = np.random.default_rng(still_no)
    noise = rng.normal(0.0, 3.0, size=pixels.shape).astype(np.int16)
    grey = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    # a faint warm tint, as under a desk lamp
    rgb = np.stack([grey, grey, np.clip(grey.astype(np.int16) - 6, 0, 255).astype(np.uint8)], 2)
    return Image.fromarray(rgb, "RGB")


def encode_jpeg(image: Image.Image, quality: int = STILL_QUALITY) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def render_still(still_no: int) -> DocumentStill:
    """One full-resolution still of the simulated page (blocking: run it in a thread)."""
    image = _still_image(still_no)
    return DocumentStill(encode_jpeg(image), image.width, image.height)


@lru_cache(maxsize=4)
def _page_frame(width: int, height: int) -> ByteArray:
    """The sideways page scaled into a ``width`` x ``height`` yuv420p picture (dark desk).

    Rendering and scaling the page takes about 0.1 s, so it is done once per size (the
    camera does it when it opens) and never while a call is being set up. Read only."""
    page = render_form_page().rotate(90, expand=True)
    scale = min(width / page.width, height / page.height)
    size = (max(2, int(page.width * scale)), max(2, int(page.height * scale)))
    small = page.resize(size, Image.Resampling.LANCZOS)
    desk = Image.new("L", (width, height), 60)
    desk.paste(small, ((width - size[0]) // 2, (height - size[1]) // 2))
    yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    yuv[:height, :] = np.asarray(desk, dtype=np.uint8)
    yuv.flags.writeable = False
    return yuv


class DocumentVideoTrack(StampedVideoTrack):
    """The live document picture with the frame stamp and a caption strip."""

    def _make_background(self) -> ByteArray:
        return _page_frame(self.width, self.height)

    def render(self, frame_no: int, sent_ms: int) -> VideoFrame:
        h = self.height
        yuv = self._background.copy()
        luma = yuv[:h, :]
        luma[: STAMP_HEIGHT + 4, : STAMP_WIDTH + 4] = 16  # a clean border round the stamp
        draw_stamp(luma, frame_no, sent_ms)
        self._draw_caption(luma, frame_no, sent_ms)
        return VideoFrame.from_ndarray(yuv, format="yuv420p")


class SimulatedDocumentCamera:
    """The simulator: live page video and full-resolution stills of a 住民異動届."""

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 15) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.description = f"simulated document camera {width}x{height}@{fps}, stills 3508x2480"
        self.stills_taken = 0
        self._condition = CAMERA_READY
        self._next_frame = 50_000_000  # stamps apart from the face camera's
        self._tracks: list[DocumentVideoTrack] = []
        _page_frame(width - width % 2, height - height % 2)  # render the page now, once

    def track(self) -> MediaStreamTrack:
        self._tracks = [t for t in self._tracks if t.readyState == "live"]
        track = DocumentVideoTrack(
            self.width,
            self.height,
            self.fps,
            caption="書画カメラ DOCUMENT",
            first_frame=self._next_frame,
        )
        self._next_frame += 1_000_000
        self._tracks.append(track)
        return track

    def simulate(self, state: DeviceState, reason: str | None = None) -> None:
        """Put the simulated camera into ``state`` (demo: unplugged, no picture): stills
        fail with ``reason`` until it is ``ready`` again."""
        self._condition = CameraCondition(state, reason)

    async def condition(self) -> CameraCondition:
        return self._condition

    async def still(self) -> DocumentStill:
        if self._condition.state is not DeviceState.READY:
            raise DeviceError(self._condition.reason or self._condition.state.value)
        self.stills_taken += 1
        return await asyncio.to_thread(render_still, self.stills_taken)

    async def aclose(self) -> None:
        for track in self._tracks:
            track.stop()
        self._tracks.clear()


class _NoPictureTrack(MediaStreamTrack):
    """The document track of a call while the camera cannot be opened: it ends at once
    (the call goes on without the document picture)."""

    kind = "video"

    async def recv(self) -> VideoFrame:
        raise MediaStreamError


class DeviceDocumentCamera:
    """A real document camera on V4L2; a still is the newest frame as JPEG.

    The device is opened when this is created and, if it was missing or has been unplugged,
    again when it is back (:meth:`condition`, :meth:`track`, :meth:`still`)."""

    def __init__(
        self, spec: str, width: int, height: int, fps: int, *, frame_timeout_s: float = 10.0
    ) -> None:
        self.spec = spec
        self.path = spec.partition(":")[2]
        self.width, self.height, self.fps = width, height, fps
        self.frame_timeout_s = frame_timeout_s
        self.description = f"document camera {spec} {width}x{height}@{fps}"
        self._source: VideoSource | None = None
        self._open_failure: str | None = None
        self._source_or_none()

    def _source_or_none(self) -> VideoSource | None:
        """The open camera, opening it if needed; None (the reason kept) if it cannot be."""
        if self._source is None:
            try:
                self._source = open_camera(self.spec, self.width, self.height, self.fps)
            except DeviceError as err:
                self._open_failure = err.reason
                return None
            self._open_failure = None
        return self._source

    def _missing(self) -> CameraCondition | None:
        if os.path.exists(self.path):
            return None
        return CameraCondition(
            DeviceState.OFFLINE,
            f"書画カメラ（{self.path}）が見つかりません。USBケーブルを確認してください",
        )

    def _cannot_open(self) -> CameraCondition:
        return CameraCondition(
            DeviceState.ERROR, f"書画カメラを開けません（{self._open_failure or self.spec}）"
        )

    async def condition(self) -> CameraCondition:
        """Whether the camera is there and delivers. While it works nothing is read (the
        camera light stays off between calls); after ffmpeg failed, one frame is read to
        see whether the camera is back."""
        missing = self._missing()
        if missing is not None:
            await self._drop_source()  # opened afresh when the device is back
            return missing
        source = self._source_or_none()
        if source is None:
            return self._cannot_open()
        failure = getattr(source, "failure", None)
        if not isinstance(failure, DeviceError):
            return CAMERA_READY
        if getattr(source, "pid", None) is not None:  # a call reads it and ffmpeg runs again
            return CAMERA_READY
        try:
            await self._frame()
        except DeviceError as err:
            return no_picture(err)
        return CAMERA_READY

    def track(self) -> MediaStreamTrack:
        source = None if self._missing() is not None else self._source_or_none()
        if source is None:
            return _NoPictureTrack()
        return source.track()

    async def still(self) -> DocumentStill:
        frame = await self._frame()
        image = frame.to_image()  # type: ignore[no-untyped-call]
        data = await asyncio.to_thread(encode_jpeg, image)
        return DocumentStill(data, image.width, image.height)

    async def _frame(self) -> VideoFrame:
        missing = self._missing()
        if missing is not None:
            raise DeviceError(missing.reason or "")
        source = self._source_or_none()
        if source is None:
            raise DeviceError(self._cannot_open().reason or "")
        timeout_s = self.frame_timeout_s
        still = getattr(source, "still", None)
        if still is not None:  # FfmpegCamera keeps the newest frame
            frame = await still(timeout_s)
            assert isinstance(frame, VideoFrame)
            return frame
        track = source.track()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    got = await track.recv()
                    if isinstance(got, VideoFrame):
                        return got
        except TimeoutError as err:
            raise DeviceError(
                "書画カメラから映像が届きません。ケーブルと照明を確認してください"
            ) from err
        except MediaStreamError as err:
            raise DeviceError("書画カメラの映像が途切れました。ケーブルを確認してください") from err
        finally:
            track.stop()

    async def _drop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            with contextlib.suppress(Exception):
                await source.aclose()

    async def aclose(self) -> None:
        await self._drop_source()


def no_picture(err: DeviceError) -> CameraCondition:
    """The condition of a camera that is there but gave no picture (reason in Japanese)."""
    if err.reason.startswith("書画カメラ"):
        return CameraCondition(DeviceState.ERROR, err.reason)
    return CameraCondition(DeviceState.ERROR, f"書画カメラから映像が届きません（{err.reason}）")


class DocumentCameraOwner(DeviceOwner[DocumentCameraDriver]):
    """The one owner of the document camera: takes stills one at a time and publishes the
    camera's state. It is itself a :class:`DocumentCamera` (what a call and the still flow
    use)."""

    def __init__(self, driver: DocumentCameraDriver) -> None:
        super().__init__(DeviceKind.DOCUMENT_CAMERA, driver.description, driver)
        self.description = driver.description
        self._closed = False

    def track(self) -> MediaStreamTrack:
        return self.driver.track()

    async def still(self) -> DocumentStill:
        """One full-resolution still; ``busy`` while it is taken. Raises DeviceError with
        the reason (also published as the camera's state)."""
        if self._closed:
            raise DeviceError("書画カメラは停止しています")
        return await self.use(self._take_still)

    async def _take_still(self, driver: DocumentCameraDriver) -> DocumentStill:
        if self.status.failed:  # is it back? (a failed camera does not flicker to busy)
            condition = await driver.condition()
            self.set_state(condition.state, condition.reason)
            if condition.state is not DeviceState.READY:
                raise DeviceError(condition.reason or condition.state.value)
        self.set_state(DeviceState.BUSY)
        try:
            still = await driver.still()
        except DeviceError as err:
            condition = await driver.condition()
            if condition.state is DeviceState.READY:  # the camera is there, the still failed
                condition = no_picture(err)
            self.set_state(condition.state, condition.reason)
            raise DeviceError(condition.reason or err.reason) from err
        except BaseException:
            self.set_state(DeviceState.READY)
            raise
        self.set_state(DeviceState.READY)
        return still

    async def check(self) -> None:
        """Ask the camera whether it works and publish the answer (a camera taking a still
        is left alone)."""
        if self._closed or self.in_use:
            return
        try:
            condition = await self.use(lambda d: d.condition())
        except DeviceError as err:
            condition = no_picture(err)
        if not self._closed:
            self.set_state(condition.state, condition.reason)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.driver.aclose()


def open_document_camera(devices: DeviceConfig) -> DocumentCameraDriver:
    """The document camera of ``devices.document_camera``. Raises DeviceError for a spec
    it does not understand; a v4l2 camera that is missing is opened when it comes."""
    spec = devices.document_camera
    w, h, fps = devices.document_width, devices.document_height, devices.document_fps
    if spec == "simulated":
        return SimulatedDocumentCamera(w, h, fps)
    if spec.startswith("v4l2:") and len(spec) > len("v4l2:"):
        return DeviceDocumentCamera(spec, w, h, fps)
    raise DeviceError(
        f"書画カメラの設定 {spec!r} がわかりません。'simulated' か 'v4l2:/dev/videoN' を"
        "指定してください"
    )
