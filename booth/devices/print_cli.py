"""``python -m booth print-test --receipt|--a4 [--config FILE] [--printer SPEC]``.

Prints a Japanese test page on the booth's receipt or A4 printer, for installers: the
printer's status before, the job, and how the transport confirmed it. The printer comes from
``[devices]`` in the booth's TOML file (``receipt_printer`` / ``a4_printer``) or the
``EKICHIKA_BOOTH_DEVICES__*`` environment variables; ``--printer`` overrides both.
Exit status: 0 printed, 2 configuration error, 3 device error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
import tomllib
from pathlib import Path

from booth.devices.printing import (
    A4Printer,
    ReceiptPrinter,
    create_a4_printer,
    create_receipt_printer,
)
from booth.devices.receipt import (
    Block,
    QrBlock,
    Receipt,
    RuleBlock,
    SpaceBlock,
    TextBlock,
    render_a4_pdf,
)
from shared.config import DeviceConfig
from shared.errors import ConfigError, DeviceError

SAMPLE_TEXT = "いろはにほへと ちりぬるを わかよたれそ つねならむ"
NAME_KANJI = "髙橋 𠮷野 﨑山 渡邊 齋藤"


def device_config(path: str | None) -> DeviceConfig:
    """``[devices]`` of the booth's TOML file, then ``EKICHIKA_BOOTH_DEVICES__*``."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        devices = loaded.get("devices", {})
        if not isinstance(devices, dict):
            raise ConfigError(f"config file {path}: [devices] must be a table")
        data.update(devices)
    for name in DeviceConfig.model_fields:
        value = os.environ.get(f"EKICHIKA_BOOTH_DEVICES__{name.upper()}")
        if value is not None:
            data[name] = value
    try:
        return DeviceConfig.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"invalid [devices] configuration: {err}") from err


def _heading(now: str, printer: str, scale: float = 1.0) -> list[Block]:
    """Sizes in dots for a 203 dpi receipt; ``scale`` 1.5 suits a 300 dpi page."""

    def size(dots: int) -> int:
        return round(dots * scale)

    return [
        TextBlock("印刷テスト", size(44), bold=True, align="center"),
        TextBlock("Print test", size(28), align="center"),
        RuleBlock(),
        TextBlock(f"日時 {now}", size(28)),
        TextBlock(f"プリンター {printer}", size(28)),
        SpaceBlock(size(8)),
        TextBlock(SAMPLE_TEXT, size(28)),
        TextBlock(f"人名用漢字: {NAME_KANJI}", size(28)),
        TextBlock("ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ¥1,234-", size(24)),
    ]


def receipt_test_page(printer: str, now: str) -> Receipt:
    return Receipt(
        (
            *_heading(now, printer),
            SpaceBlock(8),
            QrBlock("https://ekichika.invalid/print-test", module=6),
            TextBlock("このQRコードが読めれば正常です", 24, align="center"),
            RuleBlock(),
        ),
        title="print test",
    )


def a4_test_page(printer: str, now: str) -> bytes:
    blocks: list[Block] = [
        *_heading(now, printer, 1.5),
        SpaceBlock(40),
        TextBlock("文字の大きさ", 48, bold=True),
        *(TextBlock(f"{size} px: 住民票の写しの交付申請書", size) for size in (32, 48, 72, 96)),
        SpaceBlock(40),
        QrBlock("https://ekichika.invalid/print-test", module=12, align="left"),
    ]
    return render_a4_pdf([blocks], title="print test")


async def print_test(kind: str, spec: str) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if kind == "receipt":
        receipt_printer: ReceiptPrinter = create_receipt_printer(spec)
        try:
            status = await receipt_printer.query_status()
            print(f"{receipt_printer.name}: {status.state.value} {status.reason or ''}".rstrip())
            result = await receipt_printer.print_receipt(
                receipt_test_page(receipt_printer.name, now), job_id="print-test"
            )
        finally:
            await receipt_printer.aclose()
    else:
        a4_printer: A4Printer = create_a4_printer(spec)
        try:
            status = await a4_printer.query_status()
            print(f"{a4_printer.name}: {status.state.value} {status.reason or ''}".rstrip())
            pdf = await asyncio.to_thread(a4_test_page, a4_printer.name, now)
            result = await a4_printer.print_pdf(pdf, job_id="print-test", title="print test")
        finally:
            await a4_printer.aclose()
    return result.detail + (f" (job {result.ref})" if result.ref else "")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m booth print-test", description="Print a Japanese test page"
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--receipt", action="store_true", help="the receipt printer")
    which.add_argument("--a4", action="store_true", help="the A4 printer")
    parser.add_argument("--config", help="the booth's TOML file ([devices] table)")
    parser.add_argument("--printer", help="printer spec, overriding the configuration")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    kind = "receipt" if args.receipt else "a4"
    try:
        config = device_config(args.config)
        spec = args.printer or (config.receipt_printer if args.receipt else config.a4_printer)
        detail = asyncio.run(print_test(kind, spec))
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    except DeviceError as err:
        print(f"device error: {err.reason}", file=sys.stderr)
        return 3
    print(f"printed: {detail}")
    if spec == "simulated":
        print("(simulated in memory; use simulated:DIR to keep the bytes and a PNG preview)")
    return 0
