"""Run the whole system on one machine: signaling, the HQ console and one simulated booth.

Everything lives in ``./var/demo`` (SQLite file, generated secrets, the three config
files, and the local test CA that signs the certificates the console issues, made on the
first run). Each app runs in its own process, exactly as in production; this runner starts
them, waits until each answers, prints the URLs and demo logins, and stops them on
Ctrl-C. Running it again reuses the same database and secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from hq_console.issuance.signing import LocalCaFiles, make_test_ca
from shared.security import new_booth_credential
from shared.store import create_engine, migrate, session_factory
from shared.store.seed import BOOTHS, DEMO_ACCOUNTS, seed_demo

log = logging.getLogger("demo")

DEMO_PASSWORD = "ekichika-demo"
DEMO_BOOTH = "seiseki-1"


@dataclass(frozen=True)
class Ports:
    signaling: int
    console: int
    kiosk: int


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _load_secrets(path: Path) -> dict[str, str]:
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return data
    data = {
        "token_secret": secrets.token_urlsafe(32),
        **{f"booth:{booth_id}": new_booth_credential() for booth_id, _, _ in BOOTHS},
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    path.chmod(0o600)
    return data


def ensure_test_ca(root: Path) -> LocalCaFiles:
    """The demo's local test CA (``make-test-ca`` into ``<root>/test-ca``), made on the
    first run and reused afterwards: the console signs certificates with its issuing key,
    the booth trusts its root."""
    out = root / "test-ca"
    files = LocalCaFiles(
        root_cert=out / "test-root-ca.pem",
        issuing_key=out / "issuing-key.pem",
        issuing_cert=out / "issuing-cert.pem",
        chain=(out / "test-root-ca.pem",),
    )
    if all(p.exists() for p in (files.root_cert, files.issuing_key, files.issuing_cert)):
        return files
    print("Creating the local test CA for certificates …", flush=True)
    return make_test_ca(out)


def write_configs(
    root: Path, ports: Ports, secrets_: dict[str, str], ca: LocalCaFiles | None = None
) -> dict[str, Path]:
    db_url = f"sqlite+aiosqlite:///{(root / 'ekichika.sqlite3').resolve()}"
    files = {
        "signaling": root / "signaling.toml",
        "console": root / "console.toml",
        "booth": root / "booth.toml",
    }
    files["signaling"].write_text(
        "\n".join(
            [
                'host = "127.0.0.1"',
                f"port = {ports.signaling}",
                f"database_url = {_toml_str(db_url)}",
                f"token_secret = {_toml_str(secrets_['token_secret'])}",
                f'allowed_origins = ["http://127.0.0.1:{ports.console}", '
                f'"http://localhost:{ports.console}"]',
                "auto_migrate = false",
                "",
            ]
        ),
        encoding="utf-8",
    )
    files["console"].write_text(
        "\n".join(
            [
                'host = "127.0.0.1"',
                f"port = {ports.console}",
                f"database_url = {_toml_str(db_url)}",
                f"token_secret = {_toml_str(secrets_['token_secret'])}",
                f'signaling_url = "ws://127.0.0.1:{ports.signaling}/ws/staff"',
                "auto_migrate = false",
                f'public_base_url = "http://127.0.0.1:{ports.console}"',
                *(
                    [
                        f"issuing_key_path = {_toml_str(str(ca.issuing_key.resolve()))}",
                        f"issuing_cert_path = {_toml_str(str(ca.issuing_cert.resolve()))}",
                        "issuing_chain_paths = ["
                        + ", ".join(_toml_str(str(c.resolve())) for c in ca.chain)
                        + "]",
                    ]
                    if ca is not None
                    else []
                ),
                "",
            ]
        ),
        encoding="utf-8",
    )
    printed = (root / "printed").resolve()
    files["booth"].write_text(
        "\n".join(
            [
                f"booth_id = {_toml_str(DEMO_BOOTH)}",
                f"credential = {_toml_str(secrets_['booth:' + DEMO_BOOTH])}",
                f'server_url = "ws://127.0.0.1:{ports.signaling}/ws/booth"',
                f'console_url = "http://127.0.0.1:{ports.console}"',
                *(
                    [f"issuing_ca_paths = [{_toml_str(str(ca.root_cert.resolve()))}]"]
                    if ca is not None
                    else []
                ),
                'kiosk_host = "127.0.0.1"',
                f"kiosk_port = {ports.kiosk}",
                "",
                "[devices]",
                'camera = "simulated"',
                'microphone = "simulated"',
                'speaker = "null"',
                # The simulated printers keep what they print, for a look afterwards.
                f"receipt_printer = {_toml_str('simulated:' + str(printed / 'receipts'))}",
                f"a4_printer = {_toml_str('simulated:' + str(printed / 'a4'))}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    for f in files.values():
        f.chmod(0o600)
    return files


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _start(name: str, module: str, config: Path, logs: Path) -> subprocess.Popen[bytes]:
    out = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 8
    for p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _prepare_files(root: Path, ports: Ports) -> tuple[Path, dict[str, str], dict[str, Path]]:
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    secrets_ = _load_secrets(root / "secrets.json")
    ca = ensure_test_ca(root)
    return logs, secrets_, write_configs(root, ports, secrets_, ca)


async def run(root: Path, ports: Ports) -> int:
    for name, port in (
        ("signaling", ports.signaling),
        ("console", ports.console),
        ("kiosk", ports.kiosk),
    ):
        if not _port_free(port):
            print(
                f"Port {port} ({name}) is already in use. Stop the program using it or pick "
                f"another port, e.g. --{name}-port {port + 100}.",
                file=sys.stderr,
            )
            return 2
    logs, secrets_, files = await asyncio.to_thread(_prepare_files, root, ports)

    db_url = f"sqlite+aiosqlite:///{(root / 'ekichika.sqlite3').resolve()}"
    print("Preparing the database …", flush=True)
    await migrate(db_url)
    engine = create_engine(db_url)
    try:
        booth_creds = {b: secrets_[f"booth:{b}"] for b, _, _ in BOOTHS}
        await seed_demo(session_factory(engine), booth_creds, DEMO_PASSWORD)
    finally:
        await engine.dispose()

    procs: list[subprocess.Popen[bytes]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        signaling = _start("signaling", "signaling", files["signaling"], logs)
        procs.append(signaling)
        await _wait_http(f"http://127.0.0.1:{ports.signaling}/healthz", signaling, 30)
        console = _start("console", "hq_console", files["console"], logs)
        procs.append(console)
        await _wait_http(f"http://127.0.0.1:{ports.console}/healthz", console, 30)
        booth = _start("booth", "booth", files["booth"], logs)
        procs.append(booth)
        await _wait_http(f"http://127.0.0.1:{ports.kiosk}/", booth, 30)
    except RuntimeError as err:
        print(f"Could not start the demo: {err}. Logs are in {logs}.", file=sys.stderr)
        _stop(procs)
        return 1

    accounts = "\n".join(
        f"    {a.login:<10} / {DEMO_PASSWORD}   {a.display_name} ({a.role.value}"
        + (f", site {a.site_id}" if a.site_id else "")
        + ")"
        for a in DEMO_ACCOUNTS
    )
    print(
        f"""
Ekichika demo is running.

  Booth (kiosk page, resident):   http://127.0.0.1:{ports.kiosk}/
  HQ console (staff):             http://127.0.0.1:{ports.console}/
  Signaling server:               ws://127.0.0.1:{ports.signaling}/ws/{{booth,staff}}

  Demo logins (HQ console):
{accounts}

  Try it: sign in as sato, press 受付開始; on the kiosk page choose 日本語 → 市民課;
  answer the ring in the console. Certificates: カード読み取り (PIN 1234 on the kiosk) →
  証明書の発行 → 住民記録と照合 → 発行してブースで印刷 (signed with the local test CA in
  {root / "test-ca"}). Printed at the booth: {root / "printed"} (A4 PDFs in a4/,
  receipts as PNG in receipts/). Logs: {logs}
  Press Ctrl-C to stop.
""",
        flush=True,
    )
    waiters = [asyncio.create_task(asyncio.to_thread(p.wait)) for p in procs]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stopper not in done:
        crashed = [p for p in procs if p.poll() is not None]
        print(
            f"A process stopped unexpectedly (pid {crashed[0].pid}); see {logs}.", file=sys.stderr
        )
        code = 1
    print("Stopping …", flush=True)
    _stop(procs)
    stopper.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    print("Stopped.")
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("var/demo"),
        help="where the database, secrets, configs and logs live",
    )
    parser.add_argument("--signaling-port", type=int, default=8765)
    parser.add_argument("--console-port", type=int, default=8080)
    parser.add_argument("--kiosk-port", type=int, default=8081)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ports = Ports(args.signaling_port, args.console_port, args.kiosk_port)
    sys.exit(asyncio.run(run(args.dir, ports)))


if __name__ == "__main__":
    main()
