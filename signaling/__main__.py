"""Command line of the signaling server.

``python -m signaling [--config FILE]`` serves (``ekichika-signaling`` is the same).
``python -m signaling [--config FILE] add-booth --id ID --site SITE --name NAME`` creates or
updates a booth and prints a fresh credential once, for the booth's installer; only its
hash is stored, so it cannot be shown again (run the command again for a new one).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time

from aiohttp import web

from shared.config import SignalingConfig, load_config
from shared.errors import ConfigError
from shared.security import new_booth_credential
from shared.store import Site, migrate, session_factory
from shared.store import create_engine as create_store_engine
from shared.store.seed import seed_reference_data, upsert_booth
from signaling.app import create_app
from signaling.cluster import await_chain

log = logging.getLogger("signaling")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m signaling", description=__doc__)
    parser.add_argument("--config", help="TOML file (EKICHIKA_SIGNALING_* variables win)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add-booth", help="create or update a booth; prints its credential")
    add.add_argument("--id", required=True, dest="booth_id")
    add.add_argument("--site", required=True)
    add.add_argument("--name", required=True)
    return parser


async def add_booth(config: SignalingConfig, booth_id: str, site_id: str, name: str) -> str:
    """Create or update a booth with a new credential; returns the credential."""
    await migrate(config.database_url)
    engine = create_store_engine(config.database_url)
    try:
        sessions = session_factory(engine)
        await seed_reference_data(sessions)
        async with sessions() as s:
            if await s.get(Site, site_id) is None:
                raise ConfigError(f"site {site_id!r} does not exist")
        credential = new_booth_credential()
        await upsert_booth(sessions, booth_id, site_id, name, credential)
        return credential
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(SignalingConfig, args.config)
        if args.command == "add-booth":
            credential = asyncio.run(add_booth(config, args.booth_id, args.site, args.name))
            print(f"booth {args.booth_id}: credential (shown once)")
            print(credential)
            return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("signaling listening on %s:%d", config.host, config.port)
    app = create_app(config)
    app.on_shutdown.insert(0, _start_stop_watchdog)
    web.run_app(app, host=config.host, port=config.port, print=None)
    return 0


STOP_REPORT_S = 10.0  # a stop still running after this is logged, with what it waits for


async def _start_stop_watchdog(app: web.Application) -> None:
    """A stop normally ends within seconds (the queued records are written first). One that
    does not is logged every STOP_REPORT_S with each task still running and where it waits,
    so that the operator (or systemd's TimeoutStopSec) knows what held it."""
    loop = asyncio.get_running_loop()

    def watch() -> None:
        while True:
            time.sleep(STOP_REPORT_S)
            waiting = [
                f"{t.get_name()}: {' → '.join(await_chain(t))}" for t in asyncio.all_tasks(loop)
            ]
            log.error("stop still running; waiting for: %s", " | ".join(waiting) or "nothing")

    threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
