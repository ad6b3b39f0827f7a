"""Booth device states through the real signaling server to the branch board.

A booth sends ``device_status``; the branch staff of its site get it in their ``booths``
snapshot, a change is pushed, the last report survives the booth going offline, a failure
is logged once and its recovery once, and an invalid report is refused. A real booth agent
reports its simulated devices, including the document camera (busy while a still is taken,
unplugged and back), and a v4l2 document camera that is missing or that ffmpeg cannot read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from booth.agent import BoothAgent
from booth.devices.base import DeviceState
from booth.devices.printing import SimulatedReceiptPrinter
from booth.doctor import check_document_camera
from booth.document_camera import DocumentCameraOwner, SimulatedDocumentCamera
from shared.errors import DeviceError
from shared.protocol import (
    BoothsSnapshot,
    BoothState,
    BoothStatus,
    DeviceReport,
    DeviceStatusReport,
    ErrorCode,
)
from tests.call_support import booth_config
from tests.signaling_support import (
    StaffClient,
    connect_booth,
    connect_staff,
    running_signaling,
)

SINCE = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
PAPER_OUT_REASON = "the printer is out of paper — load a new roll"


def report(receipt_state: str, reason: str | None = None) -> DeviceStatusReport:
    return DeviceStatusReport(
        devices=[
            DeviceReport(kind="card_reader", name="Virtual PCD 00 00", state="ready", since=SINCE),
            DeviceReport(
                kind="receipt_printer",
                name="receipt (simulated)",
                state=receipt_state,
                since=SINCE,
                reason=reason,
            ),
            DeviceReport(
                kind="camera", name="simulated camera 320x240@15", state="ready", since=SINCE
            ),
        ]
    )


async def booth_status(staff: StaffClient, booth_id: str, predicate: object) -> BoothStatus:
    """The first pushed snapshot in which ``booth_id`` matches ``predicate``."""
    assert callable(predicate)
    while True:
        snap = await staff.expect(BoothsSnapshot, within=5.0)
        for status in snap.booths:
            if status.booth.booth_id == booth_id and predicate(status):
                return status


def receipt_of(status: BoothStatus) -> DeviceReport | None:
    return next((d for d in status.devices if d.kind == "receipt_printer"), None)


def document_camera_of(status: BoothStatus) -> DeviceReport | None:
    return next((d for d in status.devices if d.kind == "document_camera"), None)


def document_camera_is(state: str) -> object:
    return lambda s: (d := document_camera_of(s)) is not None and d.state == state


def _message(record: logging.LogRecord) -> str:
    """A signaling log line without its ``[node …]`` prefix."""
    return re.sub(r"^\[node [^\]]+\] ", "", record.getMessage())


async def test_device_report_reaches_the_branch_board_and_changes_are_pushed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signaling.server")
    async with running_signaling(tmp_path) as sig:
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            first = await branch.expect(BoothsSnapshot)
            assert [b.booth.booth_id for b in first.booths] == ["seiseki-1"]
            assert first.booths[0].devices == []

            async with connect_booth(
                sig.ws_url, "seiseki-1", sig.booth_credentials["seiseki-1"]
            ) as booth:
                await booth.send(report("ready"))
                status = await booth_status(branch, "seiseki-1", lambda s: s.devices)
                assert status.state is BoothState.IDLE
                assert [(d.kind, d.name, d.state) for d in status.devices] == [
                    ("card_reader", "Virtual PCD 00 00", "ready"),
                    ("receipt_printer", "receipt (simulated)", "ready"),
                    ("camera", "simulated camera 320x240@15", "ready"),
                ]
                assert status.devices[0].since == SINCE

                # The printer runs out of paper: pushed, with the reason. Sent twice,
                # logged once.
                await booth.send(report("paper_out", PAPER_OUT_REASON))
                await booth.send(report("paper_out", PAPER_OUT_REASON))
                status = await booth_status(
                    branch, "seiseki-1", lambda s: (r := receipt_of(s)) and r.state == "paper_out"
                )
                receipt = receipt_of(status)
                assert receipt is not None and receipt.reason == PAPER_OUT_REASON
                await branch.expect_none(BoothsSnapshot, within=0.3)  # no change, no push

                await booth.send(report("ready"))
                status = await booth_status(
                    branch, "seiseki-1", lambda s: (r := receipt_of(s)) and r.state == "ready"
                )
                assert receipt_of(status) is not None

                # A booth of another site is not shown to this branch.
                async with connect_booth(
                    sig.ws_url, "tamacenter-1", sig.booth_credentials["tamacenter-1"]
                ) as other:
                    await other.send(report("error", "printer cover open"))
                    await branch.expect_none(BoothsSnapshot, within=0.4)

            # The booth went offline: the card says offline, the last report stays.
            status = await booth_status(
                branch, "seiseki-1", lambda s: s.state is BoothState.OFFLINE
            )
            assert [d.state for d in status.devices] == ["ready", "ready", "ready"]

    server_lines = [r for r in caplog.records if r.name == "signaling.server"]
    failed = [_message(r) for r in server_lines if r.levelno == logging.WARNING]
    recovered = [_message(r) for r in server_lines if "recovered" in r.getMessage()]
    assert failed == [
        f"booth seiseki-1: receipt_printer receipt (simulated) paper_out ({PAPER_OUT_REASON})",
        "booth tamacenter-1: receipt_printer receipt (simulated) error (printer cover open)",
    ]
    assert recovered == ["booth seiseki-1: receipt_printer receipt (simulated) recovered (ready)"]


async def test_a_reconnected_booth_keeps_its_last_report(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as sig:
        cred = sig.booth_credentials["seiseki-1"]
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            await branch.expect(BoothsSnapshot)
            async with connect_booth(sig.ws_url, "seiseki-1", cred) as booth:
                await booth.send(report("offline", "no answer from 10.0.0.5:9100"))
                await booth_status(branch, "seiseki-1", lambda s: s.devices)
            await booth_status(branch, "seiseki-1", lambda s: s.state is BoothState.OFFLINE)
            async with connect_booth(sig.ws_url, "seiseki-1", cred):
                status = await booth_status(
                    branch, "seiseki-1", lambda s: s.state is BoothState.IDLE
                )
                receipt = receipt_of(status)
                assert receipt is not None
                assert (receipt.state, receipt.reason) == (
                    "offline",
                    "no answer from 10.0.0.5:9100",
                )


async def test_invalid_device_report_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as sig:
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            await branch.expect(BoothsSnapshot)
            cred = sig.booth_credentials["seiseki-1"]
            async with connect_booth(sig.ws_url, "seiseki-1", cred) as booth:
                await booth.send(report("ready"))
                await booth_status(branch, "seiseki-1", lambda s: s.devices)
                bad_frames = [
                    # a state that does not exist
                    {
                        "type": "device_status",
                        "devices": [
                            {
                                "kind": "receipt_printer",
                                "name": "r",
                                "state": "on_fire",
                                "since": "2026-11-23T06:00:00Z",
                            }
                        ],
                    },
                    # an unknown kind
                    {
                        "type": "device_status",
                        "devices": [
                            {
                                "kind": "coffee_machine",
                                "name": "c",
                                "state": "ready",
                                "since": "2026-11-23T06:00:00Z",
                            }
                        ],
                    },
                    # a reason longer than 200 characters
                    {
                        "type": "device_status",
                        "devices": [
                            {
                                "kind": "card_reader",
                                "name": "c",
                                "state": "error",
                                "since": "2026-11-23T06:00:00Z",
                                "reason": "x" * 201,
                            }
                        ],
                    },
                    # an unknown field
                    {"type": "device_status", "devices": [], "extra": 1},
                ]
                for frame in bad_frames:
                    await booth.send_raw(json.dumps(frame))
                    error = await booth.expect_error()
                    assert error.code is ErrorCode.BAD_MESSAGE
                    assert error.ref == "device_status"
                    assert not error.fatal
                await branch.expect_none(BoothsSnapshot, within=0.3)
                # Still connected and still understood.
                await booth.send(report("paper_out", PAPER_OUT_REASON))
                status = await booth_status(
                    branch, "seiseki-1", lambda s: (r := receipt_of(s)) and r.state == "paper_out"
                )
                assert [d.kind for d in status.devices] == [
                    "card_reader",
                    "receipt_printer",
                    "camera",
                ]


async def test_booth_agent_reports_its_devices_and_a_printer_running_out_of_paper(
    tmp_path: Path,
) -> None:
    async with running_signaling(tmp_path) as sig:
        agent = BoothAgent(booth_config(sig, tmp_path))
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            try:
                await agent.start()
                status = await booth_status(branch, "seiseki-1", lambda s: s.devices)
                assert [(d.kind, d.state) for d in status.devices] == [
                    ("card_reader", "card_present"),  # the simulator holds a demo card
                    ("document_camera", "ready"),
                    ("receipt_printer", "ready"),
                    ("a4_printer", "ready"),
                    ("camera", "ready"),
                    ("microphone", "ready"),
                    ("speaker", "ready"),
                ]
                names = {d.kind: d.name for d in status.devices}
                assert names["camera"] == "simulated camera 320x240@10"
                assert names["receipt_printer"] == "receipt (simulated)"

                receipt = agent.devices.receipt
                assert receipt is not None
                assert isinstance(receipt.driver, SimulatedReceiptPrinter)
                receipt.driver.simulate(DeviceState.PAPER_OUT, PAPER_OUT_REASON)
                await agent.devices.check_printers()
                status = await booth_status(
                    branch, "seiseki-1", lambda s: (r := receipt_of(s)) and r.state == "paper_out"
                )
                reported = receipt_of(status)
                assert reported is not None and reported.reason == PAPER_OUT_REASON
                assert agent.device_reporter is not None
                sent = agent.device_reporter.sent

                # A burst of changes goes out as one report.
                receipt.set_state(DeviceState.BUSY)
                receipt.set_state(DeviceState.PAPER_OUT, "again")
                receipt.set_state(DeviceState.READY)
                status = await booth_status(
                    branch, "seiseki-1", lambda s: (r := receipt_of(s)) and r.state == "ready"
                )
                assert agent.device_reporter.sent == sent + 1
            finally:
                await agent.aclose()


UNPLUGGED_REASON = "書画カメラ（/dev/video2）が見つかりません。USBケーブルを確認してください"


async def test_document_camera_state_reaches_staff_busy_unplugged_and_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="booth.devices.base")
    caplog.set_level(logging.INFO, logger="signaling.server")
    async with running_signaling(tmp_path) as sig:
        agent = BoothAgent(
            booth_config(sig, tmp_path, document_width=320, document_height=240, document_fps=10)
        )
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            try:
                await agent.start()
                status = await booth_status(branch, "seiseki-1", lambda s: s.devices)
                camera_report = document_camera_of(status)
                assert camera_report is not None
                assert (camera_report.state, camera_report.name, camera_report.reason) == (
                    "ready",
                    "simulated document camera 320x240@10, stills 3508x2480",
                    None,
                )
                # The agent's document camera (calls and stills use it) is the hub's owner.
                camera = agent.devices.document_camera
                assert isinstance(camera, DocumentCameraOwner)
                assert agent.document_camera is camera
                assert isinstance(camera.driver, SimulatedDocumentCamera)

                # A full-resolution still: busy while it is taken, ready afterwards.
                taking = asyncio.create_task(camera.still())
                await booth_status(branch, "seiseki-1", document_camera_is("busy"))
                still = await taking
                assert (still.width, still.height) == (3508, 2480)
                assert still.jpeg[:2] == b"\xff\xd8"
                await booth_status(branch, "seiseki-1", document_camera_is("ready"))

                # Unplugged: the next check reports it, with the reason in Japanese; a
                # second check changes nothing (no report, no second log line).
                camera.driver.simulate(DeviceState.OFFLINE, UNPLUGGED_REASON)
                await agent.devices.check_document_camera()
                await agent.devices.check_document_camera()
                status = await booth_status(branch, "seiseki-1", document_camera_is("offline"))
                report_ = document_camera_of(status)
                assert report_ is not None and report_.reason == UNPLUGGED_REASON
                await branch.expect_none(BoothsSnapshot, within=0.4)

                # A still asked for meanwhile fails with the same reason; nothing is taken.
                with pytest.raises(DeviceError, match="見つかりません"):
                    await camera.still()
                assert camera.driver.stills_taken == 1
                assert camera.status.state is DeviceState.OFFLINE

                # Plugged in again: ready, and stills work again.
                camera.driver.simulate(DeviceState.READY)
                await agent.devices.check_document_camera()
                status = await booth_status(branch, "seiseki-1", document_camera_is("ready"))
                report_ = document_camera_of(status)
                assert report_ is not None and report_.reason is None
                assert (await camera.still()).width == 3508
                assert camera.driver.stills_taken == 2
            finally:
                await agent.aclose()
            await agent.aclose()  # idempotent
            assert camera._closed

    name = "simulated document camera 320x240@10, stills 3508x2480"
    booth_lines = [r.getMessage() for r in caplog.records if r.name == "booth.devices.base"]
    assert [line for line in booth_lines if line.startswith("document_camera")] == [
        f"document_camera {name}: offline ({UNPLUGGED_REASON})",
        f"document_camera {name}: recovered (ready)",
    ]
    server_lines = [_message(r) for r in caplog.records if r.name == "signaling.server"]
    assert [line for line in server_lines if "document_camera" in line] == [
        f"booth seiseki-1: document_camera {name} offline ({UNPLUGGED_REASON})",
        f"booth seiseki-1: document_camera {name} recovered (ready)",
    ]


async def test_v4l2_document_camera_missing_then_unreadable_is_reported(tmp_path: Path) -> None:
    """A v4l2 document camera whose device node is missing is reported offline; a node that
    ffmpeg cannot read as a camera (a plain file here) gives an error with ffmpeg's reason
    once a still is asked for; gone again, offline again. ``python -m booth doctor`` says
    the same."""
    device = tmp_path / "video7"
    async with running_signaling(tmp_path) as sig:
        config = booth_config(
            sig,
            tmp_path,
            document_camera=f"v4l2:{device}",
            document_width=320,
            document_height=240,
            document_fps=10,
        )
        agent = BoothAgent(config)
        async with connect_staff(sig.ws_url, sig.staff_token("takahashi")) as branch:
            try:
                await agent.start()
                status = await booth_status(branch, "seiseki-1", document_camera_is("offline"))
                report_ = document_camera_of(status)
                assert report_ is not None
                assert report_.name == f"document camera v4l2:{device} 320x240@10"
                assert report_.reason == (
                    f"書画カメラ（{device}）が見つかりません。USBケーブルを確認してください"
                )
                checked = await check_document_camera(config)
                assert (checked.ok, checked.detail) == (False, report_.reason)
                camera = agent.document_camera
                assert isinstance(camera, DocumentCameraOwner)
                # A call made now gets a document track that ends at once.
                track = camera.track()
                assert track.kind == "video"

                device.write_bytes(b"not a camera")
                await agent.devices.check_document_camera()
                await booth_status(branch, "seiseki-1", document_camera_is("ready"))
                with pytest.raises(DeviceError) as failed:
                    await camera.still()
                status = await booth_status(branch, "seiseki-1", document_camera_is("error"))
                report_ = document_camera_of(status)
                assert report_ is not None and report_.reason is not None
                assert report_.reason.startswith("書画カメラから映像が届きません（")
                assert str(device) in report_.reason  # ffmpeg's own line names the device
                assert failed.value.reason == report_.reason
                checked = await check_document_camera(config)
                assert (checked.ok, checked.detail) == (False, report_.reason)
                assert checked.fix_ja is not None and "書画カメラ" in checked.fix_ja

                device.unlink()
                await agent.devices.check_document_camera()
                await booth_status(branch, "seiseki-1", document_camera_is("offline"))
            finally:
                await agent.aclose()
