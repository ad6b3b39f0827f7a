"""The connector to the city's business systems (基幹系システム).

Three systems hold what certificates print: the resident register (住民基本台帳), seal
registration (印鑑登録) and tax (課税). :class:`CityRegister` is the interface the console
uses; an implementation talks to one city's systems and translates their failures into
:class:`RegisterError` (Japanese message, no personal data) at its edge, for example with
:func:`translate_errors`. :mod:`hq_console.issuance.simulated` is the implementation that
reads a small register of fictional residents (demo, development and tests).

A resident is found by the card's 4 basic facts (基本4情報). The answer is one resident,
none, or several (the facts do not tell them apart: staff must check by other means).
Nothing here stores personal data; results live only as long as the caller keeps them.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

from hq_console.issuance.errors import RegisterError, RegisterUnavailable
from shared.protocol import CardBasicInfo

log = logging.getLogger(__name__)

Sex = Literal["male", "female", "other", "unknown"]

SEX_JA: dict[str, str] = {"male": "男", "female": "女", "other": "その他", "unknown": "不明"}


@dataclass(frozen=True, slots=True)
class ResidentFacts:
    """The 4 basic facts as read from a My Number card (or typed by staff)."""

    name: str
    address: str
    birth_date: date
    sex: Sex

    @classmethod
    def from_card(cls, card: CardBasicInfo) -> ResidentFacts:
        return cls(card.name, card.address, card.birth_date, card.sex)


@dataclass(frozen=True, slots=True)
class ResidentMatch:
    """Exactly one resident has these facts."""

    resident_id: str
    household_id: str


@dataclass(frozen=True, slots=True)
class NoResidentMatch:
    """Nobody in the register has these facts (moved away, a typo, another city)."""


@dataclass(frozen=True, slots=True)
class SeveralResidentMatches:
    """More than one resident has these facts; the card alone cannot tell which."""

    count: int


ResidentLookup = ResidentMatch | NoResidentMatch | SeveralResidentMatches


@dataclass(frozen=True, slots=True)
class HouseholdMember:
    """One person of a household as the resident register holds them."""

    resident_id: str
    name: str  # 氏名
    name_kana: str  # ふりがな
    birth_date: date
    sex: Sex
    relationship: str  # 続柄 (世帯主, 妻, 子 …)
    became_resident_on: date  # 住民となった年月日
    address_since: date  # 住所を定めた年月日
    previous_address: str  # 前住所 ("" if born here)
    honseki: str  # 本籍
    hittosha: str  # 筆頭者 (the head of the family register)


@dataclass(frozen=True, slots=True)
class Household:
    """A household (世帯): its address, its head and its members in register order."""

    household_id: str
    address: str
    head_name: str  # 世帯主
    members: tuple[HouseholdMember, ...]

    def member(self, resident_id: str) -> HouseholdMember:
        for m in self.members:
            if m.resident_id == resident_id:
                return m
        raise RegisterError(
            "指定された方はこの世帯に登録されていません。",
            "The person is not a member of this household.",
        )


@dataclass(frozen=True, slots=True)
class SealRegistration:
    """印鑑登録: what the certificate prints, with the registered seal's text."""

    resident_id: str
    registration_number: str  # 登録番号
    registered_on: date
    seal_text: str  # the characters of the seal impression (印影), usually the surname
    name: str
    birth_date: date
    sex: Sex
    address: str


@dataclass(frozen=True, slots=True)
class TaxRecord:
    """課税・所得: the figures of one fiscal year (年度), in yen. The income is of the
    calendar year before (年分); the address is the one on 1 January of the fiscal year."""

    resident_id: str
    fiscal_year: int  # 年度 (2025 = 令和7年度)
    name: str
    address: str
    birth_date: date
    salary_income: int  # 給与収入
    employment_income: int  # 給与所得
    other_income: int  # その他の所得
    total_income: int  # 総所得金額
    deductions: int  # 所得控除合計
    taxable_income: int  # 課税標準額
    dependents: int  # 扶養人数
    municipal_income_levy: int  # 市民税 所得割
    municipal_per_capita: int  # 市民税 均等割
    prefectural_income_levy: int  # 都道府県民税 所得割
    prefectural_per_capita: int  # 都道府県民税 均等割

    @property
    def annual_tax(self) -> int:
        """年税額."""
        return (
            self.municipal_income_levy
            + self.municipal_per_capita
            + self.prefectural_income_levy
            + self.prefectural_per_capita
        )


class CityRegister(Protocol):
    """The city's business systems, as certificate issuance needs them.

    Every method raises :class:`RegisterError` (or :class:`RegisterUnavailable`) with a
    Japanese message when the record does not exist or the system fails; lower-library
    exceptions never leave an implementation.
    """

    async def find_resident(self, facts: ResidentFacts) -> ResidentLookup:
        """Look a resident up by the 4 basic facts."""
        ...

    async def household(self, resident_id: str) -> Household:
        """The resident's household (for 住民票の写し)."""
        ...

    async def seal_registration(self, resident_id: str) -> SealRegistration:
        """The resident's seal registration (for 印鑑登録証明書)."""
        ...

    async def tax_record(self, resident_id: str, fiscal_year: int) -> TaxRecord:
        """The resident's tax and income figures of ``fiscal_year`` (課税・所得証明書)."""
        ...

    async def tax_years(self, resident_id: str) -> tuple[int, ...]:
        """The fiscal years a tax certificate can be issued for, newest first."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


@contextmanager
def translate_errors(system: str) -> Iterator[None]:
    """Map a business system's low-level failures to :class:`RegisterUnavailable`.

    ``system`` is a short Japanese name (住民基本台帳システム …) shown to staff.
    """
    try:
        yield
    except RegisterError:
        raise
    except (OSError, TimeoutError, ValueError, KeyError, TypeError) as err:
        log.warning("business system %s failed: %s", system, type(err).__name__)
        raise RegisterUnavailable(
            f"{system}に接続できないか、応答を読み取れませんでした。"
            "しばらくしてからもう一度お試しください。",
            f"The business system ({system}) could not be reached or read. Try again later.",
        ) from err


# --------------------------------------------------------------------------------------
# Matching the card's facts with the register
# --------------------------------------------------------------------------------------

_DASHES = re.compile(r"[\u2010-\u2015\u2212\u30fc\uff0d\ufe63\u2043ｰ-]")
_KANJI_DIGITS = {"〇": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8}
_KANJI_DIGITS |= {"九": 9}
_KANJI_NUMBER = re.compile(r"[〇一二三四五六七八九十]+(?=丁目|番|号)")
_BLOCK_NUMBERS = re.compile(r"(\d+)(?:丁目|番地|番|号)")


def _kanji_to_int(text: str) -> int:
    """一 … 九十九 (as addresses write block numbers)."""
    if "十" not in text:
        value = 0
        for ch in text:
            value = value * 10 + _KANJI_DIGITS[ch]
        return value
    tens, _, ones = text.partition("十")
    return (_KANJI_DIGITS[tens] if tens else 1) * 10 + (_KANJI_DIGITS[ones] if ones else 0)


def normalize_name(name: str) -> str:
    """Width-folded, without spaces. Variant kanji (髙/高, 﨑/崎) stay distinct: the
    register and the card both hold the registered form."""
    return "".join(unicodedata.normalize("NFKC", name).split())


def normalize_address(address: str) -> str:
    """Width-folded, without spaces, block numbers as ``1-2-3`` (一丁目2番3号 → 1-2-3)."""
    text = "".join(unicodedata.normalize("NFKC", address).split())
    text = _DASHES.sub("-", text)
    text = _KANJI_NUMBER.sub(lambda m: str(_kanji_to_int(m.group(0))), text)
    text = _BLOCK_NUMBERS.sub(lambda m: m.group(1) + "-", text)
    return text.rstrip("-").replace("--", "-")


def same_person(facts: ResidentFacts, member: HouseholdMember, address: str) -> bool:
    """The 4 facts of a card and a register entry agree."""
    return (
        facts.birth_date == member.birth_date
        and facts.sex == member.sex
        and normalize_name(facts.name) == normalize_name(member.name)
        and normalize_address(facts.address) == normalize_address(address)
    )
