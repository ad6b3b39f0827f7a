"""``python -m booth doctor`` as a separate process against a real signaling server.

With simulated devices and the right credential everything is OK (exit 0, JSON lists each
check). With a receipt printer nobody listens for, a card reader spec that does not exist
and a wrong credential, the exit status is 1 and each problem comes with its fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from tests.signaling_support import running_signaling

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [
    "card_reader",
    "receipt_printer",
    "a4_printer",
    "document_camera",
    "camera",
    "microphone",
    "speaker",
    "signaling",
]


def write_config(path: Path, server_url: str, credential: str, devices: dict[str, str]) -> Path:
    lines = [
        'booth_id = "seiseki-1"',
        f'credential = "{credential}"',
        f'server_url = "{server_url}"',
        "[devices]",
        *(f'{k} = "{v}"' for k, v in devices.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def doctor(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKICHIKA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "booth",
        "doctor",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_doctor_with_simulated_devices_finds_everything_working(tmp_path: Path) -> None:
    async with running_signaling(tmp_path) as sig:
        config = write_config(
            tmp_path / "booth.toml",
            f"{sig.ws_url}/ws/booth",
            sig.booth_credentials["seiseki-1"],
            {"spool_path": str(tmp_path / "spool.sqlite3")},
        )
        code, out, err = await doctor("--config", str(config), "--json")
        assert code == 0, (out, err)
        report: dict[str, Any] = json.loads(out)
        assert report["ok"] is True
        checks = {c["check"]: c for c in report["checks"]}
        assert list(checks) == CHECKS
        assert all(c["ok"] and c["fix_ja"] is None for c in checks.values())
        assert checks["card_reader"]["label"] == "カード読取機"
        assert checks["camera"]["detail"].endswith("one video frame read")
        assert checks["microphone"]["detail"].endswith("one audio frame read")
        assert checks["receipt_printer"]["detail"] == "receipt (simulated): ready"
        assert checks["signaling"]["detail"] == "signed in as seiseki-1 (聖蹟桜ヶ丘 1番ブース)"

        code, out, _ = await doctor("--config", str(config))
        assert code == 0
        assert "すべて正常です / everything works" in out
        assert "問題あり" not in out


async def test_doctor_names_each_problem_with_its_fix(tmp_path: Path) -> None:
    port = closed_port()
    async with running_signaling(tmp_path) as sig:
        config = write_config(
            tmp_path / "booth.toml",
            f"{sig.ws_url}/ws/booth",
            "not-the-right-credential",
            {"receipt_printer": f"network:127.0.0.1:{port}", "card_reader": "smartcard"},
        )
        code, out, err = await doctor("--config", str(config), "--json")
        assert code == 1, (out, err)
        report = json.loads(out)
        assert report["ok"] is False
        checks = {c["check"]: c for c in report["checks"]}
        bad = {name for name, c in checks.items() if not c["ok"]}
        assert bad == {"receipt_printer", "card_reader", "signaling"}
        receipt = checks["receipt_printer"]
        assert f"cannot reach the receipt printer at 127.0.0.1:{port}" in receipt["detail"]
        assert receipt["fix_ja"] == "プリンターの電源・ケーブル・ネットワークを確認してください"
        assert "check that it is switched on" in receipt["fix_en"]
        assert checks["card_reader"]["fix_ja"] == (
            "設定ファイルの [devices] card_reader の書き方を確認してください"
        )
        assert checks["signaling"]["detail"].startswith("auth_failed")
        assert "python -m signaling add-booth" in checks["signaling"]["fix_en"]

        code, out, _ = await doctor("--config", str(config))
        assert code == 1
        assert "レシートプリンター" in out and "問題あり / PROBLEM" in out
        assert "対処: プリンターの電源・ケーブル・ネットワークを確認してください" in out
        assert "3件の問題があります / 3 problem(s) found" in out


async def test_doctor_refuses_a_missing_config_file(tmp_path: Path) -> None:
    code, _, err = await doctor("--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert "does not exist" in err
