"""Migrations on a shared PostgreSQL database started by several processes at once.

Signaling nodes and console instances migrate at start-up (``auto_migrate``); when a city
starts them together on a fresh database, each waits for the others and all of them start
(``shared/store/migrations/env.py``, an advisory lock around the upgrade)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text

from shared.store.db import _alembic_config
from tests.postgres_support import postgres_server, postgres_url
from tests.signaling_support import open_engine

__all__ = ["postgres_server", "postgres_url"]  # fixtures

REPO = Path(__file__).resolve().parent.parent
PROCESSES = 4


async def test_processes_migrating_one_fresh_database_at_once_all_succeed(
    postgres_url: str,
) -> None:
    script = (
        "import sys, time\n"
        "from shared.store.db import migrate_sync\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # start together
        "migrate_sync(sys.argv[1])\n"
    )
    at = str(time.time() + 1.5)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            postgres_url,
            at,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(PROCESSES)
    ]
    async with asyncio.timeout(60):
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (out, _) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    head = ScriptDirectory.from_config(_alembic_config(postgres_url)).get_current_head()
    async with open_engine(postgres_url) as engine, engine.connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        tables = (
            await conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE tablename = 'call_sessions'")
            )
        ).scalar_one()
    assert [v[0] for v in versions] == [head]
    assert tables == 1
