"""``python -m hq_console``: serve the console, or manage staff accounts.

python -m hq_console [--config FILE]
python -m hq_console add-staff --login L --name N --role hq|branch [--site S]
    [--skill dept:lang ...] [--password-stdin] [--config FILE | --database-url URL]
python -m hq_console audit verify [--config FILE | --database-url URL] [--json]
    walk the hash-chained audit log; exit 0 if intact, 1 with the first broken record
python -m hq_console make-test-ca --out DIR [--city NAME] [--issuer-title TITLE]
    a local test root CA and certificate-issuing key (demo and tests only)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared.config import DEFAULT_DATABASE_URL, ConsoleConfig, load_config
from shared.errors import ConfigError
from shared.protocol import StaffRole
from shared.store.audit import AuditVerification, verify_audit_chain
from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import Department, Site, Staff
from shared.store.seed import upsert_staff

log = logging.getLogger(__name__)

LOGIN_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SKILL_PATTERN = re.compile(r"^([A-Za-z0-9_.-]{1,64}):([a-z]{2,3}(?:-[A-Za-z0-9]+)*)$")
MIN_PASSWORD_LENGTH = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hq_console", description="Ekichika HQ console (staff web app)"
    )
    parser.add_argument("--config", help="TOML configuration file")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add-staff", help="create or update a staff account")
    add.add_argument("--config", dest="sub_config", help="TOML configuration file")
    add.add_argument("--database-url", help="database URL (default: from the configuration)")
    add.add_argument("--login", required=True, help="login name, also the staff id")
    add.add_argument("--name", required=True, help="display name, e.g. 佐藤 花子")
    add.add_argument("--role", required=True, choices=[r.value for r in StaffRole])
    add.add_argument("--site", help="site id (required for branch staff)")
    add.add_argument(
        "--skill",
        action="append",
        default=[],
        metavar="DEPT:LANG",
        help="a department and language this person serves, e.g. shimin:ja (repeatable)",
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check every record's hash and link; report the first broken record"
    )
    verify.add_argument("--config", dest="sub_config", help="TOML configuration file")
    verify.add_argument("--database-url", help="database URL (default: from the configuration)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    test_ca = sub.add_parser(
        "make-test-ca", help="write a local test root CA and issuing key (demo and tests only)"
    )
    test_ca.add_argument("--out", required=True, help="directory for the PEM files")
    test_ca.add_argument("--city", default="多摩市", help="city name in the certificates")
    test_ca.add_argument("--issuer-title", default="多摩市長", help="e.g. 多摩市長")
    return parser


def _make_test_ca_command(args: argparse.Namespace) -> int:
    from hq_console.issuance.signing import make_test_ca

    files = make_test_ca(args.out, city_name=args.city, issuer_title=args.issuer_title)
    print(f"issuing_key_path = {str(files.issuing_key)!r}")
    print(f"issuing_cert_path = {str(files.issuing_cert)!r}")
    print(f"issuing_chain_paths = {[str(p) for p in files.chain]!r}")
    print(f"# trust anchor for PDF readers and tests: {files.root_cert}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("パスワード / Password: ")
    second = getpass.getpass("もう一度 / Repeat: ")
    if first != second:
        raise SystemExit("パスワードが一致しません / The passwords do not match")
    return first


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    path = args.sub_config or args.config
    if path is None:
        try:
            return load_config(ConsoleConfig).database_url
        except ConfigError:
            return DEFAULT_DATABASE_URL
    return load_config(ConsoleConfig, path).database_url


async def add_staff(
    database_url: str,
    *,
    login: str,
    display_name: str,
    role: StaffRole,
    site_id: str | None,
    skills: tuple[tuple[str, str], ...],
    password: str,
) -> bool:
    """Create or update an account (login = staff id). Returns True if it was created."""
    await migrate(database_url)
    engine = create_engine(database_url)
    try:
        sessions = session_factory(engine)
        async with sessions() as s:
            if site_id is not None and await s.get(Site, site_id) is None:
                raise ConfigError(f"unknown site {site_id!r}")
            known = set((await s.execute(select(Department.code))).scalars())
            for department, _language in skills:
                if department not in known:
                    raise ConfigError(
                        f"unknown department {department!r} (known: {', '.join(sorted(known))})"
                    )
            existed = await s.get(Staff, login) is not None
        await upsert_staff(sessions, login, login, display_name, password, role, site_id, skills)
        return not existed
    finally:
        await engine.dispose()


def _add_staff_command(args: argparse.Namespace) -> int:
    if not LOGIN_PATTERN.match(args.login):
        print("login must be 1-64 characters of A-Z a-z 0-9 _ . -", file=sys.stderr)
        return 2
    role = StaffRole(args.role)
    if role == StaffRole.BRANCH and not args.site:
        print("branch staff need --site", file=sys.stderr)
        return 2
    skills: list[tuple[str, str]] = []
    for item in args.skill:
        match = SKILL_PATTERN.match(item)
        if not match:
            print(
                f"bad --skill {item!r}: expected DEPARTMENT:LANGUAGE, e.g. shimin:ja",
                file=sys.stderr,
            )
            return 2
        skills.append((match.group(1), match.group(2)))
    password = _read_password(args.password_stdin)
    if len(password) < MIN_PASSWORD_LENGTH:
        print(f"the password needs at least {MIN_PASSWORD_LENGTH} characters", file=sys.stderr)
        return 2
    try:
        created = asyncio.run(
            add_staff(
                _database_url(args),
                login=args.login,
                display_name=args.name,
                role=role,
                site_id=args.site,
                skills=tuple(skills),
                password=password,
            )
        )
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(f"{'created' if created else 'updated'} staff account {args.login}")
    return 0


async def verify_audit(database_url: str) -> AuditVerification:
    """Walk the audit chain of the database at ``database_url`` (read only, no migration)."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as db:
            return await verify_audit_chain(db)
    finally:
        await engine.dispose()


def _existing_database(database_url: str) -> str:
    """The URL, if it names a database that exists (an SQLite file is not created)."""
    parsed = make_url(database_url)
    database = parsed.database
    sqlite_file = parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
    if sqlite_file and not Path(str(database)).is_file():
        raise ConfigError(f"no database file at {database}")
    return database_url


def _audit_verify_command(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(verify_audit(_existing_database(_database_url(args))))
    except (ConfigError, SQLAlchemyError) as err:
        print(f"監査ログを読めません / cannot read the audit log: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "records_checked": result.records_checked,
                    "first_broken_id": result.first_broken_id,
                    "reason": None if result.reason is None else result.reason.value,
                    "message": result.message,
                    "last_hash": result.last_hash,
                }
            )
        )
    elif result.ok:
        print(
            f"監査ログ {result.records_checked} 件: 改ざんはありません / "
            f"audit log: {result.records_checked} records, chain OK"
            + (f" (last hash {result.last_hash})" if result.last_hash else "")
        )
    else:
        assert result.reason is not None
        print(
            f"監査ログ: 記録 {result.first_broken_id} で連鎖が壊れています / "
            f"audit log: chain broken at record {result.first_broken_id}: "
            f"{result.reason.value} ({result.message})"
        )
    return 0 if result.ok else 1


def _serve(config_path: str | None) -> int:
    from hq_console.app import create_app

    try:
        config = load_config(ConsoleConfig, config_path)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    log.info("HQ console on http://%s:%d", config.host, config.port)
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "add-staff":
        return _add_staff_command(args)
    if args.command == "audit":
        return _audit_verify_command(args)
    if args.command == "make-test-ca":
        return _make_test_ca_command(args)
    return _serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
