"""The certificates HQ issues, what staff choose for each, and their fees.

Requests are pydantic models (the console sends them as JSON): a discriminated union on
``kind``. :func:`gather_content` fetches from the business systems what a request prints;
:mod:`hq_console.issuance.render` lays it out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from hq_console.issuance.connector import (
    CityRegister,
    Household,
    HouseholdMember,
    SealRegistration,
    TaxRecord,
)
from hq_console.issuance.errors import IssuanceError, RegisterError
from shared.forms.wareki import to_wareki_fiscal_year

MAX_COPIES: Final = 10


class CertificateKind(StrEnum):
    RESIDENT_RECORD = "resident_record"  # 住民票の写し
    SEAL_REGISTRATION = "seal_registration"  # 印鑑登録証明書
    TAX_INCOME = "tax_income"  # 課税・所得証明書


TITLES: Final[Mapping[CertificateKind, str]] = {
    CertificateKind.RESIDENT_RECORD: "住民票の写し",
    CertificateKind.SEAL_REGISTRATION: "印鑑登録証明書",
    CertificateKind.TAX_INCOME: "課税・所得証明書",
}
TITLES_EN: Final[Mapping[CertificateKind, str]] = {
    CertificateKind.RESIDENT_RECORD: "Certified copy of the resident record",
    CertificateKind.SEAL_REGISTRATION: "Certificate of seal registration",
    CertificateKind.TAX_INCOME: "Certificate of taxation and income",
}
# Document number prefixes (ASCII, printed and shown on the verification page).
PREFIXES: Final[Mapping[CertificateKind, str]] = {
    CertificateKind.RESIDENT_RECORD: "JR",
    CertificateKind.SEAL_REGISTRATION: "IN",
    CertificateKind.TAX_INCOME: "TX",
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    copies: Annotated[int, Field(ge=1, le=MAX_COPIES)] = 1  # 通数


class ResidentRecordRequest(_Request):
    """住民票の写し: the whole household (世帯全員) or some members (世帯の一部), with or
    without 続柄 (relationship to the head) and 本籍・筆頭者."""

    kind: Literal[CertificateKind.RESIDENT_RECORD] = CertificateKind.RESIDENT_RECORD
    scope: Literal["household", "members"] = "household"
    member_ids: tuple[Annotated[str, Field(max_length=64)], ...] = ()  # for "members"
    show_relationship: bool = False  # 世帯主・続柄の記載
    show_honseki: bool = False  # 本籍・筆頭者の記載

    @model_validator(mode="after")
    def _members_chosen(self) -> ResidentRecordRequest:
        if self.scope == "members" and not self.member_ids:
            raise ValueError("choose at least one member for a partial household copy")
        if self.scope == "household" and self.member_ids:
            raise ValueError("member_ids is only for scope 'members'")
        return self


class SealCertificateRequest(_Request):
    """印鑑登録証明書 of the resident."""

    kind: Literal[CertificateKind.SEAL_REGISTRATION] = CertificateKind.SEAL_REGISTRATION


class TaxCertificateRequest(_Request):
    """課税・所得証明書 of one fiscal year (年度; 2025 = 令和7年度, income of 2024)."""

    kind: Literal[CertificateKind.TAX_INCOME] = CertificateKind.TAX_INCOME
    fiscal_year: Annotated[int, Field(ge=2000, le=2100)]


CertificateRequest = Annotated[
    ResidentRecordRequest | SealCertificateRequest | TaxCertificateRequest,
    Field(discriminator="kind"),
]
certificate_request: Final = TypeAdapter[CertificateRequest](CertificateRequest)


def recorded_options(request: CertificateRequest) -> str:
    """The request's options as stored with the issued document: no identifiers of
    residents and no personal data (a partial household copy records how many members)."""
    options: dict[str, str | int | bool]
    match request:
        case ResidentRecordRequest():
            options = {
                "scope": request.scope,
                "show_relationship": request.show_relationship,
                "show_honseki": request.show_honseki,
            }
            if request.scope == "members":
                options["members"] = len(request.member_ids)
        case SealCertificateRequest():
            options = {}
        case TaxCertificateRequest():
            options = {"fiscal_year": request.fiscal_year}
    return json.dumps(options, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Fee:
    """手数料: per copy and in total, in yen."""

    per_copy_yen: int
    copies: int

    @property
    def total_yen(self) -> int:
        return self.per_copy_yen * self.copies


def fee_for(kind: CertificateKind, copies: int, schedule: Mapping[str, int]) -> Fee:
    """The fee from the configured schedule (``certificate_fee_yen``)."""
    if kind.value not in schedule:
        raise IssuanceError(
            f"{TITLES[kind]}の手数料が設定されていません。", f"no fee configured for {kind}"
        )
    return Fee(schedule[kind.value], copies)


# --------------------------------------------------------------------------------------
# What each certificate prints
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResidentRecordContent:
    household: Household
    members: tuple[HouseholdMember, ...]
    whole_household: bool
    show_relationship: bool
    show_honseki: bool
    kind: Literal[CertificateKind.RESIDENT_RECORD] = CertificateKind.RESIDENT_RECORD


@dataclass(frozen=True, slots=True)
class SealContent:
    seal: SealRegistration
    kind: Literal[CertificateKind.SEAL_REGISTRATION] = CertificateKind.SEAL_REGISTRATION


@dataclass(frozen=True, slots=True)
class TaxContent:
    tax: TaxRecord
    kind: Literal[CertificateKind.TAX_INCOME] = CertificateKind.TAX_INCOME


CertificateContent = ResidentRecordContent | SealContent | TaxContent


async def gather_content(
    register: CityRegister, request: CertificateRequest, resident_id: str
) -> CertificateContent:
    """Fetch from the business systems what ``request`` prints for the resident (who
    must be the person the request is made for, found by :meth:`CityRegister.find_resident`).
    """
    match request:
        case ResidentRecordRequest():
            household = await register.household(resident_id)
            if request.scope == "household":
                members = household.members
            else:
                wanted = set(request.member_ids)
                members = tuple(m for m in household.members if m.resident_id in wanted)
                if len(members) != len(wanted):
                    raise RegisterError(
                        "選択された方の中に、この世帯に登録されていない方がいます。",
                        "A selected person is not a member of the household.",
                    )
            return ResidentRecordContent(
                household=household,
                members=members,
                whole_household=request.scope == "household",
                show_relationship=request.show_relationship,
                show_honseki=request.show_honseki,
            )
        case SealCertificateRequest():
            return SealContent(await register.seal_registration(resident_id))
        case TaxCertificateRequest():
            return TaxContent(await register.tax_record(resident_id, request.fiscal_year))


def subtitle(content: CertificateContent) -> str:
    """The line under the title: the scope of a resident record, the fiscal year of a tax
    certificate (no personal data)."""
    match content:
        case ResidentRecordContent():
            return "（世帯全員）" if content.whole_household else "（世帯の一部）"
        case SealContent():
            return ""
        case TaxContent():
            return f"（{to_wareki_fiscal_year(content.tax.fiscal_year)}）"
