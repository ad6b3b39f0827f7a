"""``python -m booth card-read``: read a My Number card's 基本4情報 once, for installers.

    echo 1234 | python -m booth card-read --pin-stdin [--reader NAME] [--json] [--config FILE]

The PIN is read from standard input only (never from the command line, where other users
could see it). The remaining PIN tries are read and shown before the PIN is sent; a wrong
PIN is tried once and never again. With the simulated reader (the default without a
configuration) the demo card's PIN is 1234.

Exit status: 0 read, 2 usage (PIN not 4 digits, bad configuration), 3 reader problem (no
pcscd, no reader, no card, card removed), 4 wrong PIN, 5 card locked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from booth.devices.card import (
    BasicInfo,
    CardLocked,
    InvalidPin,
    WrongPin,
    open_card_reader,
)
from booth.devices.mynumber import validate_pin
from shared.config import BoothConfig, DeviceConfig, load_config
from shared.errors import ConfigError, DeviceError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DEVICE = 3
EXIT_WRONG_PIN = 4
EXIT_LOCKED = 5


@dataclass(frozen=True)
class _Result:
    reader: str
    tries_before: int
    info: BasicInfo


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m booth card-read",
        description="Read 基本4情報 (name, address, birth date, sex) from a My Number card.",
        epilog="exit status: 0 read, 2 usage, 3 reader problem, 4 wrong PIN, 5 card locked",
    )
    parser.add_argument(
        "--reader",
        help="PC/SC reader name (or 'simulated'); default: devices.card_reader of the config",
    )
    parser.add_argument(
        "--pin-stdin",
        action="store_true",
        required=True,
        help="read the 4-digit PIN from the first line of standard input",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on standard output")
    parser.add_argument("--config", help="booth TOML file (EKICHIKA_BOOTH_* variables win)")
    parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for a card (default 10)"
    )
    return parser.parse_args(argv)


def _reader_spec(args: argparse.Namespace) -> str:
    if args.reader:
        reader = str(args.reader)
        if reader == "simulated" or reader == "pcsc" or reader.startswith("pcsc:"):
            return reader
        return f"pcsc:{reader}"
    if args.config:
        return load_config(BoothConfig, args.config).devices.card_reader
    return DeviceConfig().card_reader


async def _read(spec: str, pin: str, wait_s: float, progress: TextIO) -> _Result:
    reader = open_card_reader(spec)
    try:
        await reader.wait_for_card(wait_s)
        tries = await reader.remaining_pin_tries()
        print(f"PIN の残り回数 PIN tries left: {tries}", file=progress, flush=True)
        if tries == 0:
            raise CardLocked()
        info = await reader.read_basic_info(pin)
        return _Result(reader.name, tries, info)
    finally:
        await reader.aclose()


def _fail(as_json: bool, code: int, kind: str, message: str, **extra: Any) -> int:
    if as_json:
        print(json.dumps({"error": kind, "message": message, **extra}, ensure_ascii=False))
    else:
        print(f"card-read: {message}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    """Run ``card-read`` with ``argv`` (the arguments after the subcommand)."""
    args = _parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pin = sys.stdin.readline().rstrip("\r\n")
    try:
        validate_pin(pin)
    except InvalidPin as err:
        return _fail(args.json, EXIT_USAGE, "invalid_pin", err.reason)
    try:
        spec = _reader_spec(args)
        result = asyncio.run(_read(spec, pin, args.wait, sys.stderr))
    except ConfigError as err:
        return _fail(args.json, EXIT_USAGE, "config", str(err))
    except WrongPin as err:
        return _fail(
            args.json, EXIT_WRONG_PIN, "wrong_pin", err.reason, remaining_tries=err.remaining
        )
    except CardLocked as err:
        return _fail(args.json, EXIT_LOCKED, "card_locked", err.reason, remaining_tries=0)
    except DeviceError as err:
        return _fail(args.json, EXIT_DEVICE, "device", err.reason)
    facts = result.info.to_json_dict()
    if args.json:
        print(json.dumps({"reader": result.reader, **facts}, ensure_ascii=False))
    else:
        print(f"読み取り機 reader:      {result.reader}")
        print(f"氏名 name:              {facts['name']}")
        print(f"住所 address:           {facts['address']}")
        print(f"生年月日 birth date:    {facts['birth_date']}")
        print(f"性別 sex:               {facts['sex']}")
    return EXIT_OK
