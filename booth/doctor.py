"""``python -m booth doctor [--config FILE] [--json]``: is every device of this booth working?

For installers and branch staff. Opens each configured device with the booth's own drivers
and says, per device, OK or 問題あり with the fix to try (Japanese first, then English):

* card reader: is pcscd reachable, is the reader there (a card may or may not lie on it);
* receipt and A4 printers: the printer's own status (paper, cover, queue);
* document camera: one full-resolution still with the booth's own driver (as staff get it);
* camera: one frame within a few seconds; microphone: one audio frame; speaker: it opens;
* signaling: the booth can connect and sign in (hello → welcome).

Nothing is printed and no card is read. The signaling check signs in as this booth: while
the booth agent runs, its connection is replaced for a moment and it reconnects by itself.
Exit status: 0 everything works, 1 something does not, 2 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import unicodedata
from dataclasses import asdict, dataclass

import aiohttp

from booth.devices.base import DeviceState
from booth.devices.card import CardPresence, open_card_reader
from booth.devices.printing import (
    A4Printer,
    PrinterCondition,
    ReceiptPrinter,
    create_a4_printer,
    create_receipt_printer,
)
from booth.document_camera import no_picture, open_document_camera
from booth.media import (
    AudioSource,
    SimulatedCamera,
    SimulatedMicrophone,
    VideoSource,
    open_camera,
    open_microphone,
    open_speaker,
)
from shared import wire
from shared.config import BoothConfig, load_config
from shared.errors import ConfigError, DeviceError, ProtocolError
from shared.protocol import BoothHello, BoothWelcome, ErrorCode, ErrorMessage

FRAME_TIMEOUT_S = 5.0
STILL_TIMEOUT_S = 15.0
SIGNALING_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class CheckResult:
    check: str  # card_reader, receipt_printer, …, signaling
    label: str  # Japanese name
    spec: str  # what the configuration says
    ok: bool
    detail: str  # what was found (English, from the driver)
    fix_ja: str | None = None
    fix_en: str | None = None


LABELS = {
    "card_reader": "カード読取機",
    "receipt_printer": "レシートプリンター",
    "a4_printer": "A4プリンター",
    "document_camera": "書画カメラ",
    "camera": "カメラ",
    "microphone": "マイク",
    "speaker": "スピーカー",
    "signaling": "本庁舎への接続",
}


def _result(
    check: str, spec: str, ok: bool, detail: str, fix: tuple[str, str] | None = None
) -> CheckResult:
    return CheckResult(
        check,
        LABELS[check],
        spec,
        ok,
        detail,
        fix[0] if fix else None,
        fix[1] if fix else None,
    )


def _config_fix(field: str) -> tuple[str, str]:
    return (
        f"設定ファイルの [devices] {field} の書き方を確認してください",
        f"check devices.{field} in the booth's configuration",
    )


# ---------------------------------------------------------------- device checks


async def check_card_reader(spec: str) -> CheckResult:
    try:
        reader = open_card_reader(spec)
    except ConfigError as err:
        return _result("card_reader", spec, False, str(err), _config_fix("card_reader"))
    try:
        presence = await asyncio.wait_for(reader.presence(), FRAME_TIMEOUT_S)
    except (DeviceError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or "no answer from the card reader"
        return _result(
            "card_reader",
            spec,
            False,
            reason,
            (
                "カード読取機の接続と pcscd を確認してください",
                f"check the reader and pcscd: {reason}",
            ),
        )
    finally:
        with contextlib.suppress(Exception):
            await reader.aclose()
    name = reader.name
    if presence is CardPresence.NO_SERVICE:
        return _result(
            "card_reader",
            spec,
            False,
            "pcscd is not running",
            ("PC/SC サービス (pcscd) を起動してください", "start pcscd (systemctl start pcscd)"),
        )
    if presence is CardPresence.NO_READER:
        return _result(
            "card_reader",
            spec,
            False,
            f"no card reader {name} found",
            (
                "カード読取機の USB ケーブルを挿し直してください",
                "plug the card reader in again; pcsc_scan lists the readers pcscd sees",
            ),
        )
    card = "a card lies on it" if presence is CardPresence.PRESENT else "no card on it"
    return _result("card_reader", spec, True, f"{name}: ready, {card}")


_PRINTER_FIX = {
    "paper_out": "用紙を補充してください",
    "offline": "プリンターの電源・ケーブル・ネットワークを確認してください",
    "error": "プリンターのカバーとエラーランプを確認してください",
}


async def check_printer(field: str, spec: str) -> CheckResult:
    device: ReceiptPrinter | A4Printer
    try:
        if field == "receipt_printer":
            device = create_receipt_printer(spec)
        else:
            device = create_a4_printer(spec)
    except (ConfigError, DeviceError) as err:
        reason = getattr(err, "reason", None) or str(err)
        return _result(field, spec, False, reason, _config_fix(field))
    try:
        condition: PrinterCondition = await asyncio.wait_for(device.query_status(), 15.0)
    except (DeviceError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or "the printer did not answer"
        condition = PrinterCondition(DeviceState.ERROR, reason)
    finally:
        with contextlib.suppress(Exception):
            await device.aclose()
    state = condition.state.value
    if state in _PRINTER_FIX:
        reason = condition.reason or state
        return _result(
            field, spec, False, f"{device.name}: {reason}", (_PRINTER_FIX[state], reason)
        )
    detail = f"{device.name}: {state}"
    if condition.reason:
        detail += f" ({condition.reason})"
    if not condition.known:
        detail += " (the printer does not answer status queries)"
    return _result(field, spec, True, detail)


async def check_camera(field: str, spec: str, config: BoothConfig) -> CheckResult:
    d = config.devices
    fix = (
        "カメラの USB ケーブルと設定を確認してください（video グループ、/dev/video*）",
        f"check the camera's cable and devices.{field} (video group, /dev/video*)",
    )
    source: VideoSource
    try:
        if spec == "simulated":
            source = SimulatedCamera(320, 240, 15, "DOCTOR")
        else:
            source = open_camera(spec, d.video_width, d.video_height, d.video_fps)
    except DeviceError as err:
        return _result(field, spec, False, err.reason, fix)
    return await _read_one(field, spec, source, fix, "video frame")


async def check_document_camera(config: BoothConfig) -> CheckResult:
    """One still, taken as during a call (the booth's document camera driver)."""
    spec = config.devices.document_camera
    fix = (
        "書画カメラの USB ケーブルと照明、設定 devices.document_camera を確認してください"
        "（video グループ、/dev/video*）",
        "check the document camera's cable and light and devices.document_camera "
        "(video group, /dev/video*)",
    )
    try:
        camera = open_document_camera(config.devices)
    except DeviceError as err:
        return _result("document_camera", spec, False, err.reason, _config_fix("document_camera"))
    try:
        async with asyncio.timeout(STILL_TIMEOUT_S):
            condition = await camera.condition()
            if condition.state is not DeviceState.READY:
                reason = condition.reason or condition.state.value
                return _result("document_camera", spec, False, reason, fix)
            still = await camera.still()
    except DeviceError as err:
        return _result("document_camera", spec, False, no_picture(err).reason or "", fix)
    except TimeoutError:
        detail = f"no still within {STILL_TIMEOUT_S:g} s"
        return _result("document_camera", spec, False, detail, fix)
    finally:
        await camera.aclose()
    detail = (
        f"{camera.description}: one still {still.width}x{still.height}, "
        f"{len(still.jpeg) // 1024} KiB JPEG"
    )
    return _result("document_camera", spec, True, detail)


async def check_microphone(spec: str) -> CheckResult:
    fix = (
        "マイクの接続と設定 devices.microphone を確認してください",
        "check the microphone's cable and devices.microphone (pactl list sources)",
    )
    source: AudioSource
    try:
        source = SimulatedMicrophone(1000.0) if spec == "simulated" else open_microphone(spec)
    except DeviceError as err:
        return _result("microphone", spec, False, err.reason, fix)
    return await _read_one("microphone", spec, source, fix, "audio frame")


async def _read_one(
    check: str, spec: str, source: VideoSource | AudioSource, fix: tuple[str, str], what: str
) -> CheckResult:
    track = source.track()
    try:
        await asyncio.wait_for(track.recv(), FRAME_TIMEOUT_S)
    except TimeoutError:
        return _result(check, spec, False, f"no {what} within {FRAME_TIMEOUT_S:g} s", fix)
    except Exception as err:  # the capture failed while reading
        return _result(check, spec, False, f"reading failed: {err}", fix)
    finally:
        track.stop()
        with contextlib.suppress(Exception):
            await source.aclose()
    return _result(check, spec, True, f"{source.description}: one {what} read")


async def check_speaker(spec: str) -> CheckResult:
    fix = (
        "スピーカーの接続と設定 devices.speaker を確認してください",
        "check the speaker's cable and devices.speaker (pactl list sinks)",
    )
    try:
        speaker = open_speaker(spec)
    except DeviceError as err:
        return _result("speaker", spec, False, err.reason, fix)
    description = speaker.description
    with contextlib.suppress(Exception):
        await speaker.aclose()
    return _result("speaker", spec, True, f"{description}: opened")


async def check_signaling(config: BoothConfig) -> CheckResult:
    url = config.server_url
    try:
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(SIGNALING_TIMEOUT_S),
            http.ws_connect(url, max_msg_size=wire.MAX_MESSAGE_BYTES) as ws,
        ):
            hello = BoothHello(booth_id=config.booth_id, credential=config.credential)
            await ws.send_str(wire.encode(hello))
            frame = await ws.receive()
            if frame.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError("the server closed the connection before welcome")
            message = wire.decode(wire.server_to_booth, frame.data)
    except (TimeoutError, aiohttp.ClientError, OSError, ConnectionError) as err:
        detail = type(err).__name__ + (f": {err}" if str(err) else "")
        return _result(
            "signaling",
            url,
            False,
            detail,
            (
                "ネットワークと設定 server_url を確認してください",
                f"check the network and server_url ({url})",
            ),
        )
    except ProtocolError as err:
        return _result("signaling", url, False, err.message, None)
    if isinstance(message, ErrorMessage):
        if message.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED):
            fix = (
                "booth_id と credential を確認してください"
                "（python -m signaling add-booth で再発行）",
                "check booth_id and credential; python -m signaling add-booth issues a new one",
            )
        else:
            fix = (
                "本庁舎のシステム担当に連絡してください",
                f"server refused: {message.code.value}",
            )
        return _result("signaling", url, False, f"{message.code.value}: {message.message}", fix)
    if not isinstance(message, BoothWelcome):
        return _result("signaling", url, False, f"expected welcome, got {message.type}", None)
    return _result(
        "signaling", url, True, f"signed in as {message.booth.booth_id} ({message.booth.name})"
    )


async def run_checks(config: BoothConfig) -> list[CheckResult]:
    d = config.devices
    return [
        await check_card_reader(d.card_reader),
        await check_printer("receipt_printer", d.receipt_printer),
        await check_printer("a4_printer", d.a4_printer),
        await check_document_camera(config),
        await check_camera("camera", d.camera, config),
        await check_microphone(d.microphone),
        await check_speaker(d.speaker),
        await check_signaling(config),
    ]


# ---------------------------------------------------------------- output


def _pad(text: str, width: int) -> str:
    """Pad to ``width`` terminal columns (Japanese characters take two)."""
    used = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(1, width - used)


def render_table(results: list[CheckResult]) -> str:
    lines = [_pad("機器 / Device", 36) + "結果 / Result"]
    for r in results:
        head = _pad(r.label, 20) + _pad(r.check, 16)
        lines.append(f"{head}{'OK' if r.ok else '問題あり / PROBLEM'}")
        lines.append(f"    {r.spec} — {r.detail}")
        if not r.ok:
            if r.fix_ja:
                lines.append(f"    対処: {r.fix_ja}")
            if r.fix_en:
                lines.append(f"    Fix:  {r.fix_en}")
    bad = sum(1 for r in results if not r.ok)
    if bad:
        lines.append(f"\n{bad}件の問題があります / {bad} problem(s) found")
    else:
        lines.append("\nすべて正常です / everything works")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m booth doctor",
        description="Check every configured device of this booth and the signaling login.",
    )
    parser.add_argument("--config", help="the booth's TOML file (EKICHIKA_BOOTH_* variables win)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        config = load_config(BoothConfig, args.config)
    except ConfigError as err:
        print(f"設定エラー / configuration error: {err}", file=sys.stderr)
        return 2
    results = asyncio.run(run_checks(config))
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, ensure_ascii=False))
    else:
        print(render_table(results))
    return 0 if ok else 1
