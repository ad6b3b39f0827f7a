"""Emulated booth–HQ links from the shell: bring one up, run programs on either side,
take it down.

::

    python -m bench.netlink up station            # prints the link's state as JSON
    python -m bench.netlink run station -- ip -o addr          # booth side (default)
    python -m bench.netlink run station --side hq -- python -m signaling --config ...
    python -m bench.netlink status
    python -m bench.netlink down station          # or just "down": every link that is up

``up`` starts a small background process (``serve``) that builds the link with
:func:`tests.netlink.emulated_link` and keeps it until ``down`` stops it by its PID. The
process writes its state (PIDs, addresses, namespace paths) to
``<state dir>/<profile>.json``; ``run`` joins a side with ``nsenter --net=<path>`` and
execs the command, so its exit status is the command's. One link per profile at a time.
Needs root. Nothing leaves the two namespaces: they have no route beyond the link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from tests.netlink import PROFILES, SIDES, emulated_link, profile_named

log = logging.getLogger("bench.netlink")

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_UP_LIMIT_S: Final = 15.0
_DOWN_LIMIT_S: Final = 10.0


def default_state_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / "ekichika-netlink"


def _state_path(state_dir: Path, profile: str) -> Path:
    return state_dir / f"{profile}.json"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is still a ``bench.netlink serve`` process (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"bench.netlink" in cmdline and b"serve" in cmdline


def _live_state(state_dir: Path, profile: str) -> dict[str, Any] | None:
    """The state of ``profile``'s link if its server still runs; stale files are removed."""
    path = _state_path(state_dir, profile)
    state = _read_state(path)
    if state is None:
        return None
    if not _is_our_server(int(state["pid"])):
        path.unlink(missing_ok=True)
        return None
    return state


# --------------------------------------------------------------------------------------
# serve: the background process holding one link
# --------------------------------------------------------------------------------------


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)  # readers never see half a file


def _remove_state(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _serve(profile_name: str, state_file: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with emulated_link(profile_name) as link:
        state: dict[str, Any] = {
            "profile": dataclasses.asdict(link.profile),
            "pid": os.getpid(),
            "wire_pid": link.wire_pid,
            **{
                side: {"address": link.end(side).address, "netns": link.end(side).net_path}
                for side in SIDES
            },
        }
        _write_state(state_file, state)
        log.info("link %s up (pid %d)", profile_name, os.getpid())
        try:
            await stop.wait()
        finally:
            _remove_state(state_file)
    log.info("link %s down", profile_name)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def cmd_up(profile: str, state_dir: Path) -> int:
    profile_named(profile)  # fail early on an unknown name
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = _live_state(state_dir, profile)
    if existing is not None:
        log.error("link %s is already up (pid %s); take it down first", profile, existing["pid"])
        return 1
    state_file = _state_path(state_dir, profile)
    log_path = state_dir / f"{profile}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.netlink", "serve", profile, f"--state-file={state_file}"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # outlives this command; stopped by "down"
        )
    deadline = time.monotonic() + _UP_LIMIT_S
    while (state := _read_state(state_file)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(_DOWN_LIMIT_S)
            tail = log_path.read_text(errors="replace")[-3000:]
            log.error("link %s did not come up:\n%s", profile, tail)
            return 1
        time.sleep(0.05)
    print(json.dumps(state))
    return 0


def _stop_server(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _DOWN_LIMIT_S
    while _is_our_server(pid):
        if time.monotonic() > deadline:
            log.warning("pid %d ignored SIGTERM; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


def cmd_down(profile: str | None, state_dir: Path) -> int:
    names = [profile] if profile else sorted(p.stem for p in state_dir.glob("*.json"))
    for name in names:
        state = _live_state(state_dir, name)
        if state is None:
            log.info("link %s is not up", name)
            continue
        _stop_server(int(state["pid"]))
        _state_path(state_dir, name).unlink(missing_ok=True)
        log.info("link %s down", name)
    return 0


def cmd_status(state_dir: Path) -> int:
    up = {}
    for path in sorted(state_dir.glob("*.json")):
        state = _live_state(state_dir, path.stem)
        if state is not None:
            up[path.stem] = state
    print(json.dumps(up))
    return 0


def cmd_run(profile: str, side: str, argv: list[str], state_dir: Path) -> int:
    if not argv:
        log.error("nothing to run: give a command after --")
        return 2
    state = _live_state(state_dir, profile)
    if state is None:
        log.error("link %s is not up: python -m bench.netlink up %s", profile, profile)
        return 1
    os.execvp("nsenter", ["nsenter", f"--net={state[side]['netns']}", "--", *argv])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.netlink",
        description="Emulated booth–HQ links: up, run, status, down.",
    )
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a link and keep it in the background")
    up.add_argument("profile", choices=sorted(PROFILES))
    down = sub.add_parser("down", help="take a link down (all links without a name)")
    down.add_argument("profile", nargs="?", choices=sorted(PROFILES))
    sub.add_parser("status", help="print the links that are up as JSON")
    run = sub.add_parser("run", help="run a command on one side of a link")
    run.add_argument("profile", choices=sorted(PROFILES))
    run.add_argument("--side", choices=SIDES, default="booth")
    run.epilog = "The command follows a lone --: run station --side hq -- CMD [ARGS...]"
    serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("profile", choices=sorted(PROFILES))
    serve.add_argument("--state-file", type=Path, required=True)
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:  # everything after the first lone "--" is the command to run
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if command and args.command != "run":
        parser.error("only 'run' takes a command after --")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state_dir: Path = args.state_dir
    if args.command == "up":
        sys.exit(cmd_up(args.profile, state_dir))
    if args.command == "down":
        sys.exit(cmd_down(args.profile, state_dir))
    if args.command == "status":
        sys.exit(cmd_status(state_dir))
    if args.command == "run":
        sys.exit(cmd_run(args.profile, args.side, command, state_dir))
    if args.command == "serve":
        asyncio.run(_serve(args.profile, args.state_file))


if __name__ == "__main__":
    main()
