"""Tells signaling what state the booth's devices are in.

A :class:`DeviceStatusReporter` sends a :class:`~shared.protocol.DeviceStatusReport` after
every welcome and whenever a device of :class:`~booth.devices.hub.BoothDevices` (card
reader, document camera, receipt and A4 printers) changes; changes that come in a burst (a
print job or a document still: busy, then ready) go out as one report after
``coalesce_s``. Camera, microphone and speaker are reported as ``ready`` from the moment
they were opened (they are opened at start; a device that cannot be opened stops the
agent before it connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from booth.devices.base import DeviceStatus
from booth.devices.hub import BoothDevices
from booth.media import BoothMedia
from booth.signaling_client import BoothSignalingClient
from shared.protocol import DeviceReport, DeviceStatusReport

logger = logging.getLogger(__name__)

_TEXT_MAX = 200  # ShortText


def _short(text: str) -> str:
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 1] + "…"


def device_report(status: DeviceStatus) -> DeviceReport:
    return DeviceReport(
        kind=status.kind.value,
        name=_short(status.name),
        state=status.state.value,
        since=datetime.fromtimestamp(status.since, UTC),
        reason=_short(status.reason) if status.reason else None,
    )


def media_reports(media: BoothMedia | None, since: float) -> list[DeviceReport]:
    if media is None:
        return []
    at = datetime.fromtimestamp(since, UTC)
    return [
        DeviceReport(kind="camera", name=_short(media.camera.description), state="ready", since=at),
        DeviceReport(
            kind="microphone", name=_short(media.microphone.description), state="ready", since=at
        ),
        DeviceReport(
            kind="speaker", name=_short(media.speaker.description), state="ready", since=at
        ),
    ]


class DeviceStatusReporter:
    def __init__(
        self,
        devices: BoothDevices,
        media: BoothMedia | None,
        signaling: BoothSignalingClient,
        *,
        coalesce_s: float = 0.2,
    ) -> None:
        self._devices = devices
        self._media = media
        self._signaling = signaling
        self._coalesce_s = coalesce_s
        self._media_since = time.time()
        self._pending: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0  # reports sent so far
        devices.add_listener(self._changed)

    def report(self) -> DeviceStatusReport:
        devices = [device_report(s) for s in self._devices.statuses()]
        return DeviceStatusReport(devices=devices + media_reports(self._media, self._media_since))

    async def send_now(self) -> None:
        """Send the current report at once (after a welcome)."""
        if self._closed:
            return
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if await self._signaling.send(self.report()):
            self.sent += 1

    def _changed(self, _statuses: list[DeviceStatus]) -> None:
        if self._closed or self._pending is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to send with
            self._pending = asyncio.get_running_loop().create_task(
                self._send_later(), name="device-status-report"
            )

    async def _send_later(self) -> None:
        await asyncio.sleep(self._coalesce_s)
        self._pending = None
        if self._signaling.connected and await self._signaling.send(self.report()):
            self.sent += 1

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._devices.remove_listener(self._changed)
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
