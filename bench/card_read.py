"""Card read benchmark: card inserted and PIN entered → the 4 facts at the staff member.

Real components: pcscd with vsmartcard's virtual reader and the virtual My Number card
of ``tests/vcard``, ``python -m signaling`` and ``python -m booth`` (card reader
``pcsc``) as separate processes, and this process as the automated staff member
(:class:`bench.staff_peer.AutoStaff`) and the kiosk page (over the booth's kiosk
WebSocket). Must run as root in a network namespace that has only loopback (vpcd listens
on every address), e.g. ``unshare --net`` as ``scripts/test.sh`` does.

Per read: the card is put on the reader, staff ask for a read over the call's data
channel, the kiosk shows the PIN pad, the PIN is entered (``pin_entered`` on the kiosk
socket), and the clock stops when ``card_basic_info`` arrives at staff. The card is
then taken off and the booth waits until it sees it gone. Key ``p95_s`` (target ≤ 1.0 s)
is PIN entered → facts at staff; ``insert_to_pin_pad_p95_s`` is how soon the PIN pad
follows the card.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench._call import BenchBooth, KioskDriver, Params, run_benchmark, running_booth
from bench._load import percentile, rounded
from shared import wire
from shared.kiosk_protocol import (
    KioskCardStage,
    PinEntered,
)
from shared.protocol import CardBasicInfo
from tests.pcsc_support import start_pcscd, stop_pcscd
from tests.vcard.card import CardProfile, VirtualMyNumberCard

log = logging.getLogger("bench.card_read")

TARGET_P95_S = 1.0


async def _card_stage(kiosk: KioskDriver, stage: KioskCardStage, after: float) -> float:
    async with asyncio.timeout(20):
        while True:
            for at, state in kiosk.screens:
                if at >= after and state.card is not None and state.card.stage is stage:
                    return at
            kiosk.changed.clear()
            await kiosk.changed.wait()


async def _booth_card(booth: BenchBooth, present: bool) -> None:
    """Wait until the booth's card reader reports the card present (or gone)."""
    want = "card_present" if present else "ready"
    async with asyncio.timeout(20):
        while True:
            status = await booth.status()
            for device in status.get("devices", []):
                if device.get("kind") == "card_reader" and device.get("state") == want:
                    return
            await asyncio.sleep(0.02)


async def run(reads: int, workdir: Path) -> dict[str, Any]:
    params = Params(width=320, height=240, fps=15)
    (workdir / "pcscd").mkdir()
    daemon = start_pcscd(workdir / "pcscd")
    pin_to_facts: list[float] = []
    insert_to_pad: list[float] = []
    card = VirtualMyNumberCard(CardProfile())
    try:
        async with running_booth(
            workdir, params, {"card_reader": "pcsc"}, booth_env=daemon.env
        ) as booth:
            record = await booth.start_call()
            for i in range(reads):
                await asyncio.to_thread(card.insert)
                inserted = time.monotonic()
                await _booth_card(booth, present=True)
                await booth.staff.request_card_read(record.session_id, f"read-{i}")
                pad = await _card_stage(booth.kiosk, KioskCardStage.WAITING_FOR_PIN, inserted)
                insert_to_pad.append(pad - inserted)
                entered = time.monotonic()
                await booth.kiosk.ws.send_str(wire.encode(PinEntered(pin="1234")))
                result = await booth.staff.card_read_result(record.session_id, f"read-{i}")
                done = time.monotonic()
                if not isinstance(result, CardBasicInfo):
                    raise RuntimeError(f"read {i} failed: {result}")
                pin_to_facts.append(done - entered)
                log.info("read %d: %.3f s", i + 1, done - entered)
                await asyncio.to_thread(card.remove)
                await _booth_card(booth, present=False)
    finally:
        card.remove()
        stop_pcscd(daemon)
    p95 = percentile(pin_to_facts, 95)
    return {
        "scenario": "card_read",
        "reads": len(pin_to_facts),
        "reader": "pcscd + vpcd + virtual My Number card",
        "p50_s": rounded(percentile(pin_to_facts, 50), 3),
        "p95_s": rounded(p95, 3),
        "insert_to_pin_pad_p50_s": rounded(percentile(insert_to_pad, 50), 3),
        "insert_to_pin_pad_p95_s": rounded(percentile(insert_to_pad, 95), 3),
        "target_p95_s": TARGET_P95_S,
        "meets_target": p95 <= TARGET_P95_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.card_read", description=__doc__)
    parser.add_argument("--reads", type=int, default=10)
    args = parser.parse_args(argv)
    return run_benchmark(lambda workdir: run(args.reads, workdir))


if __name__ == "__main__":
    sys.exit(main())
