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
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import ChildProcess, percentile, rounded
from bench.call_setup import KioskDriver, Params, _prepare
from bench.staff_peer import AutoStaff
from shared import wire
from shared.kiosk_protocol import (
    ChooseLanguage,
    KioskCardStage,
    KioskScreen,
    PinEntered,
    RequestHelpTouched,
)
from shared.protocol import CardBasicInfo, StaffRole
from shared.security import issue_staff_token
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


async def _booth_card(http: aiohttp.ClientSession, health: str, present: bool) -> None:
    """Wait until the booth's card reader reports the card present (or gone)."""
    want = "card_present" if present else "ready"
    async with asyncio.timeout(20):
        while True:
            async with http.get(health) as resp:
                status: dict[str, Any] = await resp.json()
            for device in status.get("devices", []):
                if device.get("kind") == "card_reader" and device.get("state") == want:
                    return
            await asyncio.sleep(0.02)


async def run(reads: int, workdir: Path) -> dict[str, Any]:
    params = Params(width=320, height=240, fps=15)
    (workdir / "pcscd").mkdir()
    daemon = start_pcscd(workdir / "pcscd")
    _, token_secret, ports = await _prepare(workdir, params, {"card_reader": "pcsc"})
    signaling = ChildProcess(
        "signaling",
        [sys.executable, "-m", "signaling", "--config", str(workdir / "signaling.toml")],
        workdir / "signaling.log",
    )
    booth = ChildProcess(
        "booth",
        [sys.executable, "-m", "booth", "--config", str(workdir / "booth.toml")],
        workdir / "booth.log",
    )
    pin_to_facts: list[float] = []
    insert_to_pad: list[float] = []
    card = VirtualMyNumberCard(CardProfile())
    try:
        await signaling.start()
        await signaling.wait_listening("127.0.0.1", ports["signaling"], 30)
        await booth.start(env=daemon.env)
        await booth.wait_listening("127.0.0.1", ports["kiosk"], 30)
        health = f"http://127.0.0.1:{ports['kiosk']}/healthz"
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while True:
                    async with http.get(health) as resp:
                        if (await resp.json()).get("signaling") == "connected":
                            break
                    await asyncio.sleep(0.05)
            ws = await http.ws_connect(f"http://127.0.0.1:{ports['kiosk']}/ws")
            kiosk = KioskDriver(ws)
            reader = asyncio.create_task(kiosk.read())
            staff = AutoStaff(
                f"ws://127.0.0.1:{ports['signaling']}/ws/staff",
                lambda: issue_staff_token(token_secret, "sato", StaffRole.HQ, 600),
            )
            try:
                await staff.connect()
                await staff.set_available()
                await ws.send_str(wire.encode(ChooseLanguage(language="ja")))
                await ws.send_str(wire.encode(RequestHelpTouched(department="shimin")))
                async with asyncio.timeout(20):
                    record = await staff.call_started.get()
                    await record.connected.wait()
                await kiosk.wait_screen(KioskScreen.IN_CALL, after=0)
                for i in range(reads):
                    await asyncio.to_thread(card.insert)
                    inserted = time.monotonic()
                    await _booth_card(http, health, present=True)
                    await staff.request_card_read(record.session_id, f"read-{i}")
                    pad = await _card_stage(kiosk, KioskCardStage.WAITING_FOR_PIN, inserted)
                    insert_to_pad.append(pad - inserted)
                    entered = time.monotonic()
                    await ws.send_str(wire.encode(PinEntered(pin="1234")))
                    result = await staff.card_read_result(record.session_id, f"read-{i}")
                    done = time.monotonic()
                    if not isinstance(result, CardBasicInfo):
                        raise RuntimeError(f"read {i} failed: {result}")
                    pin_to_facts.append(done - entered)
                    log.info("read %d: %.3f s", i + 1, done - entered)
                    await asyncio.to_thread(card.remove)
                    await _booth_card(http, health, present=False)
            finally:
                await staff.aclose()
                reader.cancel()
                await ws.close()
    finally:
        await booth.aclose()
        await signaling.aclose()
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
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from booth.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="ekichika-bench-") as tmp:
        result = asyncio.run(run(args.reads, Path(tmp)))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
