"""Booth device states through the real signaling server to the branch board.

A booth sends ``device_status``; the branch staff of its site get it in their ``booths``
snapshot, a change is pushed, the last report survives the booth going offline, a failure
is logged once and its recovery once, and an invalid report is refused.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from booth.agent import BoothAgent
from booth.devices.base import DeviceState
from booth.devices.printing import SimulatedReceiptPrinter
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
    failed = [r.getMessage() for r in server_lines if r.levelno == logging.WARNING]
    recovered = [r.getMessage() for r in server_lines if "recovered" in r.getMessage()]
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
