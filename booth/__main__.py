"""``python -m booth [--config booth.toml]``: the booth agent and its kiosk UI.

Also ``python -m booth doctor``, ``card-read`` and ``print-test`` for installers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from booth.agent import BoothAgent
from booth.kiosk import create_kiosk_app
from shared.config import BoothConfig, load_config
from shared.errors import ConfigError, DeviceError


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m booth", description="Ekichika booth agent and kiosk UI"
    )
    parser.add_argument("--config", help="TOML file (EKICHIKA_BOOTH_* variables win)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING …")
    return parser.parse_args(argv)


async def serve(config: BoothConfig) -> None:
    """Run the agent and the kiosk UI until cancelled."""
    agent = BoothAgent(config)
    await agent.start()
    runner = web.AppRunner(create_kiosk_app(agent), shutdown_timeout=2.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.kiosk_host, config.kiosk_port)
        await site.start()
        print(f"kiosk UI: http://{config.kiosk_host}:{config.kiosk_port}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await agent.aclose()


def main(argv: list[str] | None = None) -> None:
    rest = sys.argv[1:] if argv is None else argv
    if rest[:1] == ["card-read"]:  # python -m booth card-read --pin-stdin …
        from booth.devices.card_cli import main as card_read

        raise SystemExit(card_read(rest[1:]))
    if (sys.argv[1:] if argv is None else argv)[:1] == ["print-test"]:  # --receipt | --a4
        from booth.devices.print_cli import main as print_test

        raise SystemExit(print_test((sys.argv[1:] if argv is None else argv)[1:]))
    if rest[:1] == ["doctor"]:  # python -m booth doctor [--config FILE] [--json]
        from booth.doctor import main as doctor

        raise SystemExit(doctor(rest[1:]))
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The WebRTC library logs every ICE check at INFO; keep the booth's log calm.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    try:
        config = load_config(BoothConfig, args.config)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config))
    except DeviceError as err:
        print(f"device error: {err.reason}", file=sys.stderr)
        raise SystemExit(3) from err
    except OSError as err:
        print(f"cannot serve the kiosk UI: {err}", file=sys.stderr)
        raise SystemExit(4) from err


if __name__ == "__main__":
    main()
