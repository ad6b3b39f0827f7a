"""A simulated city register: fictional residents read from a JSON file.

The default file (``register.json`` next to this module) holds a few households of
fictional people in 多摩市, with rare-kanji names (𠮷田, 髙橋, 﨑山), a long address, seal
registrations, tax figures and two residents whose 4 basic facts are identical (so the
"several matches" answer can be shown). Any resemblance to real people is accidental.
A city can point ``register_path`` at a file of the same shape for a demonstration.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from hq_console.issuance.connector import (
    Household,
    HouseholdMember,
    NoResidentMatch,
    ResidentFacts,
    ResidentLookup,
    ResidentMatch,
    SealRegistration,
    SeveralResidentMatches,
    Sex,
    TaxRecord,
    same_person,
    translate_errors,
)
from hq_console.issuance.errors import RegisterError, RegisterUnavailable

log = logging.getLogger(__name__)

DEFAULT_REGISTER: Final = Path(__file__).resolve().parent / "register.json"

RESIDENT_SYSTEM: Final = "住民基本台帳システム"
SEAL_SYSTEM: Final = "印鑑登録システム"
TAX_SYSTEM: Final = "税務システム"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Tax(_Strict):
    salary_income: int
    employment_income: int
    other_income: int = 0
    total_income: int
    deductions: int
    taxable_income: int
    dependents: int = 0
    municipal_income_levy: int
    municipal_per_capita: int
    prefectural_income_levy: int
    prefectural_per_capita: int


class _Seal(_Strict):
    registration_number: str
    registered_on: date
    seal_text: str


class _Member(_Strict):
    id: str
    name: str
    name_kana: str
    birth_date: date
    sex: Sex
    relationship: str
    became_resident_on: date
    address_since: date
    previous_address: str = ""
    honseki: str
    hittosha: str
    seal: _Seal | None = None
    tax: dict[int, _Tax] = {}  # fiscal year → figures


class _Household(_Strict):
    id: str
    address: str
    members: list[_Member]


class _RegisterFile(_Strict):
    households: list[_Household]


@dataclass(frozen=True, slots=True)
class _Entry:
    household: Household
    person: HouseholdMember
    member: _Member


class SimulatedRegister:
    """:class:`~hq_console.issuance.connector.CityRegister` over a JSON file, read once."""

    def __init__(self, households: list[_Household]) -> None:
        self._households: dict[str, Household] = {}
        self._entries: dict[str, _Entry] = {}
        for h in households:
            if not h.members:
                raise RegisterError(f"世帯 {h.id} に世帯員がいません。", f"household {h.id} empty")
            household = Household(
                household_id=h.id,
                address=h.address,
                head_name=h.members[0].name,
                members=tuple(_member(m) for m in h.members),
            )
            self._households[h.id] = household
            for m, person in zip(h.members, household.members, strict=True):
                if m.id in self._entries:
                    raise RegisterError(
                        f"住民番号 {m.id} が重複しています。", f"duplicate resident id {m.id}"
                    )
                self._entries[m.id] = _Entry(household, person, m)
        self._closed = False

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_REGISTER) -> SimulatedRegister:
        with translate_errors(RESIDENT_SYSTEM):
            text = Path(path).read_text(encoding="utf-8")
        try:
            data = _RegisterFile.model_validate(json.loads(text))
        except (ValueError, ValidationError) as err:
            log.warning("simulated register %s is not valid", path)
            raise RegisterUnavailable(
                "住民基本台帳の模擬データを読み取れませんでした（形式が正しくありません）。",
                f"The simulated register {path} is not valid: {err}",
            ) from err
        return cls(data.households)

    @classmethod
    async def open(cls, path: str | Path = DEFAULT_REGISTER) -> SimulatedRegister:
        return await asyncio.to_thread(cls.from_file, path)

    def _entry(self, resident_id: str, system: str) -> _Entry:
        if self._closed:
            raise RegisterUnavailable(
                f"{system}への接続は終了しています。", f"{system}: connection closed"
            )
        entry = self._entries.get(resident_id)
        if entry is None:
            raise RegisterError(
                "住民基本台帳に該当する方が見つかりません。",
                "No such resident in the register.",
            )
        return entry

    async def find_resident(self, facts: ResidentFacts) -> ResidentLookup:
        if self._closed:
            raise RegisterUnavailable(
                f"{RESIDENT_SYSTEM}への接続は終了しています。", "register closed"
            )
        found = [
            entry
            for entry in self._entries.values()
            if same_person(facts, entry.person, entry.household.address)
        ]
        if not found:
            return NoResidentMatch()
        if len(found) > 1:
            return SeveralResidentMatches(len(found))
        return ResidentMatch(found[0].member.id, found[0].household.household_id)

    async def household(self, resident_id: str) -> Household:
        return self._entry(resident_id, RESIDENT_SYSTEM).household

    async def seal_registration(self, resident_id: str) -> SealRegistration:
        entry = self._entry(resident_id, SEAL_SYSTEM)
        seal = entry.member.seal
        if seal is None:
            raise RegisterError(
                "この方は印鑑登録をしていません。", "This resident has no registered seal."
            )
        m = entry.member
        return SealRegistration(
            resident_id=m.id,
            registration_number=seal.registration_number,
            registered_on=seal.registered_on,
            seal_text=seal.seal_text,
            name=m.name,
            birth_date=m.birth_date,
            sex=m.sex,
            address=entry.household.address,
        )

    async def tax_record(self, resident_id: str, fiscal_year: int) -> TaxRecord:
        entry = self._entry(resident_id, TAX_SYSTEM)
        tax = entry.member.tax.get(fiscal_year)
        if tax is None:
            raise RegisterError(
                f"{fiscal_year}年度の課税情報がありません。",
                f"No tax record for fiscal year {fiscal_year}.",
            )
        m = entry.member
        return TaxRecord(
            resident_id=m.id,
            fiscal_year=fiscal_year,
            name=m.name,
            address=entry.household.address,
            birth_date=m.birth_date,
            **tax.model_dump(),
        )

    async def tax_years(self, resident_id: str) -> tuple[int, ...]:
        entry = self._entry(resident_id, TAX_SYSTEM)
        return tuple(sorted(entry.member.tax, reverse=True))

    async def aclose(self) -> None:
        self._closed = True


def _member(m: _Member) -> HouseholdMember:
    fields: dict[str, Any] = m.model_dump(exclude={"id", "seal", "tax"})
    return HouseholdMember(resident_id=m.id, **fields)
