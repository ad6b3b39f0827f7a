"""Demo data: the Tama City service points, four departments, demo staff and booths.

Idempotent: rows that exist are left as they are (a booth's credential is updated so that
a freshly written booth config always matches).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.protocol import StaffRole
from shared.security import hash_booth_credential, hash_password
from shared.store.models import Booth, Department, Site, Staff, StaffSkill

SITES = [
    ("seiseki", "聖蹟桜ヶ丘駅サービスポイント", "Seiseki-Sakuragaoka Station Service Point"),
    ("tamacenter", "多摩センター駅サービスポイント", "Tama Center Station Service Point"),
]

DEPARTMENTS = [
    ("shimin", "市民課", "Citizen Services", 1),
    ("hoken", "保険年金課", "Health Insurance and Pension", 2),
    ("kosodate", "子育て支援課", "Child-Rearing Support", 3),
    ("kazei", "課税課", "Taxation", 4),
]

BOOTHS = [
    ("seiseki-1", "seiseki", "聖蹟桜ヶ丘 1番ブース"),
    ("tamacenter-1", "tamacenter", "多摩センター 1番ブース"),
]


@dataclass(frozen=True)
class DemoAccount:
    login: str
    display_name: str
    role: StaffRole
    site_id: str | None
    skills: tuple[tuple[str, str], ...]  # (department, language)


DEMO_ACCOUNTS = [
    DemoAccount(
        "sato",
        "佐藤 花子",
        StaffRole.HQ,
        None,
        (("shimin", "ja"), ("shimin", "en"), ("hoken", "ja"), ("hoken", "en")),
    ),
    DemoAccount(
        "suzuki",
        "鈴木 一郎",
        StaffRole.HQ,
        None,
        (("shimin", "ja"), ("kosodate", "ja"), ("kazei", "ja")),
    ),
    DemoAccount("takahashi", "髙橋 美咲", StaffRole.BRANCH, "seiseki", ()),
]


async def seed_reference_data(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Sites and departments (needed by every installation's demo and tests)."""
    async with sessions.begin() as s:
        for site_id, ja, en in SITES:
            if await s.get(Site, site_id) is None:
                s.add(Site(id=site_id, name_ja=ja, name_en=en))
        for code, ja, en, order in DEPARTMENTS:
            if await s.get(Department, code) is None:
                s.add(Department(code=code, name_ja=ja, name_en=en, sort_order=order))


async def upsert_booth(
    sessions: async_sessionmaker[AsyncSession],
    booth_id: str,
    site_id: str,
    name: str,
    credential: str,
) -> None:
    async with sessions.begin() as s:
        booth = await s.get(Booth, booth_id)
        if booth is None:
            s.add(
                Booth(
                    id=booth_id,
                    site_id=site_id,
                    name=name,
                    credential_hash=hash_booth_credential(credential),
                )
            )
        else:
            booth.site_id, booth.name = site_id, name
            booth.credential_hash = hash_booth_credential(credential)


async def upsert_staff(
    sessions: async_sessionmaker[AsyncSession],
    staff_id: str,
    login: str,
    display_name: str,
    password: str,
    role: StaffRole,
    site_id: str | None,
    skills: tuple[tuple[str, str], ...],
) -> None:
    async with sessions.begin() as s:
        staff = await s.get(Staff, staff_id)
        if staff is None:
            staff = Staff(
                id=staff_id,
                login=login,
                display_name=display_name,
                password_hash=hash_password(password),
                role=role.value,
                site_id=site_id,
            )
            s.add(staff)
        else:
            staff.display_name, staff.role, staff.site_id = display_name, role.value, site_id
            staff.password_hash = hash_password(password)
            staff.skills.clear()
            await s.flush()
        staff.skills.extend(StaffSkill(department=d, language=lang) for d, lang in skills)


async def seed_demo(
    sessions: async_sessionmaker[AsyncSession], booth_credentials: dict[str, str], password: str
) -> None:
    """Reference data, the demo booths (with the given credentials) and demo accounts."""
    await seed_reference_data(sessions)
    for booth_id, site_id, name in BOOTHS:
        if booth_id in booth_credentials:
            await upsert_booth(sessions, booth_id, site_id, name, booth_credentials[booth_id])
    for acc in DEMO_ACCOUNTS:
        await upsert_staff(
            sessions,
            acc.login,
            acc.login,
            acc.display_name,
            password,
            acc.role,
            acc.site_id,
            acc.skills,
        )
