"""Dates in 和暦 (Japanese eras) and 西暦 (Gregorian), both ways.

Accepted input (full-width digits and separators are accepted, spaces are ignored):

* 和暦: ``令和元年5月1日``, ``令和1年5月1日``, ``R1.5.1``, ``H31/4/30``, ``㍻31年4月30日``
* 西暦: ``2019年5月1日``, ``2019-05-01``, ``2019/5/1``, ``2019.5.1``, ``20190501``

Rules:

* A date that does not exist (2月30日, 平成0年) is refused.
* A 和暦 date after its era ended but still in the era's last year is accepted and
  normalised: ``平成31年5月1日`` is ``令和元年5月1日`` (2019-05-01), ``昭和64年1月8日`` is
  ``平成元年1月8日``. People keep writing the old era for months after a change and
  pre-printed forms carry it, so refusing would only make them write again.
* A year the era never reached (``平成32年``) and a date before the era began
  (``令和元年4月30日``: 令和 began on 2019-05-01) are refused with the correct date.
* Dates before 1873-01-01 (明治6年, when Japan adopted the Gregorian calendar) are refused:
  earlier 明治 dates are in the lunisolar calendar.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from shared.forms.models import DateStyle


@dataclass(frozen=True)
class Era:
    name: str  # 令和
    letter: str  # R
    romaji: str  # Reiwa
    start: date  # first day
    end: date | None  # last day; None for the current era


ERAS: tuple[Era, ...] = (
    Era("明治", "M", "Meiji", date(1868, 1, 25), date(1912, 7, 29)),
    Era("大正", "T", "Taisho", date(1912, 7, 30), date(1926, 12, 24)),
    Era("昭和", "S", "Showa", date(1926, 12, 25), date(1989, 1, 7)),
    Era("平成", "H", "Heisei", date(1989, 1, 8), date(2019, 4, 30)),
    Era("令和", "R", "Reiwa", date(2019, 5, 1), None),
)
EARLIEST_DATE = date(1873, 1, 1)
"""明治6年1月1日, the first day of the Gregorian calendar in Japan."""

_BY_NAME = {e.name: e for e in ERAS} | {e.letter: e for e in ERAS}
_DASHES = str.maketrans({c: "-" for c in "‐‑‒–—―−ー－﹣"})
_SEP = r"(?:[./-])"
_WAREKI = re.compile(
    r"^(?P<era>令和|平成|昭和|大正|明治|[RHSTM])(?P<year>元|\d{1,3})"
    rf"(?:年|{_SEP})(?P<month>\d{{1,2}})(?:月|{_SEP})(?P<day>\d{{1,2}})日?$"
)
_SEIREKI = re.compile(
    rf"^(?:西暦)?(?P<year>\d{{4}})(?:年|{_SEP})(?P<month>\d{{1,2}})(?:月|{_SEP})"
    r"(?P<day>\d{1,2})日?$"
)
_COMPACT = re.compile(r"^(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})$")

_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class DateInputError(ValueError):
    """A date was refused; the messages say why, in Japanese and English."""

    def __init__(self, message_ja: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_ja = message_ja
        self.message_en = message_en


def era_of(day: date) -> tuple[Era, int]:
    """The era of ``day`` and the year in it (1 = 元年)."""
    if day < ERAS[0].start:
        raise DateInputError(
            f"{_seireki(day)}は明治より前の日付です。",
            f"{_english(day)} is before the Meiji era.",
        )
    era = next(e for e in reversed(ERAS) if day >= e.start)
    return era, day.year - era.start.year + 1


def to_wareki(day: date) -> str:
    """``date(2019, 5, 1)`` → ``令和元年5月1日``."""
    era, year = era_of(day)
    return f"{era.name}{_year(year)}年{day.month}月{day.day}日"


def to_seireki(day: date) -> str:
    """``date(2019, 5, 1)`` → ``2019年5月1日``."""
    return _seireki(day)


def to_wareki_fiscal_year(fiscal_year: int) -> str:
    """The fiscal year (年度) starting in April of ``fiscal_year``: ``令和7年度``."""
    era, year = era_of(date(fiscal_year, 4, 1))
    return f"{era.name}{_year(year)}年度"


def to_wareki_year(calendar_year: int) -> str:
    """A calendar year (年分, e.g. an income year), named by its last day: ``令和6年``."""
    era, year = era_of(date(calendar_year, 12, 31))
    return f"{era.name}{_year(year)}年"


def format_date(day: date, style: DateStyle) -> str:
    """The stored text of a date field in ``style``."""
    return to_wareki(day) if style is DateStyle.WAREKI else to_seireki(day)


def format_date_both(day: date, style: DateStyle) -> str:
    """For display: ``令和元年5月1日（2019年5月1日）`` or ``2019年5月1日（令和元年5月1日）``."""
    first, second = format_date(day, style), format_date(day, _other(style))
    return f"{first}（{second}）"


def format_date_en(day: date) -> str:
    """``1 May 2019 (Reiwa 1)``."""
    era, year = era_of(day)
    return f"{_english(day)} ({era.romaji} {year})"


def from_wareki(era_name: str, year: int, month: int, day: int) -> date:
    """The date of 和暦 ``era_name year年month月day日`` (rules in the module docstring)."""
    era = _BY_NAME.get(era_name)
    if era is None:
        raise DateInputError(
            f"元号「{era_name}」は使えません（令和・平成・昭和・大正・明治）。",
            f"Unknown era {era_name!r} (use Reiwa, Heisei, Showa, Taisho or Meiji).",
        )
    written = f"{era.name}{_year(year) if year >= 1 else year}年{month}月{day}日"
    if year < 1:
        raise DateInputError(
            f"{written}は存在しない日付です（年は元年または1以上）。",
            f"{era.romaji} {year} does not exist: era years start at 1.",
        )
    gregorian_year = era.start.year + year - 1
    try:
        result = date(gregorian_year, month, day)
    except ValueError:
        raise DateInputError(
            f"{written}は存在しない日付です。",
            f"{era.romaji} {year}, month {month}, day {day} does not exist.",
        ) from None
    if result < EARLIEST_DATE:
        raise DateInputError(
            "明治5年（1872年）以前の日付は旧暦のため扱えません。",
            "Dates before 1873 (Meiji 6) are in the old calendar and cannot be used.",
        )
    if result < era.start:
        raise DateInputError(
            f"{written}は{era.name}が始まる前の日付です（{era.name}は{to_seireki(era.start)}から。"
            f"この日は{to_wareki(result)}です）。",
            f"{era.romaji} began on {_english(era.start)}; "
            f"{_english(result)} is {format_date_en(result)}.",
        )
    if era.end is not None and result > era.end and result.year != era.end.year:
        _, last_year = era_of(era.end)
        raise DateInputError(
            f"{era.name}は{last_year}年（{era.end.year}年）{era.end.month}月{era.end.day}日までです。"
            f"{written}は存在しません。",
            f"{era.romaji} ended on {_english(era.end)} ({era.romaji} {last_year}); "
            f"{era.romaji} {year} does not exist.",
        )
    return result


def parse_date(text: str) -> date:
    """Read a 和暦 or 西暦 date written in any of the accepted forms."""
    cleaned = normalize_date_text(text)
    if match := _WAREKI.match(cleaned):
        year_text = match["year"]
        year = 1 if year_text == "元" else int(year_text)
        return from_wareki(match["era"], year, int(match["month"]), int(match["day"]))
    match = _SEIREKI.match(cleaned) or _COMPACT.match(cleaned)
    if match:
        year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
        try:
            result = date(year, month, day)
        except ValueError:
            raise DateInputError(
                f"{year}年{month}月{day}日は存在しない日付です。",
                f"{year}-{month:02d}-{day:02d} does not exist.",
            ) from None
        if result < EARLIEST_DATE:
            raise DateInputError(
                "明治5年（1872年）以前の日付は旧暦のため扱えません。",
                "Dates before 1873 (Meiji 6) are in the old calendar and cannot be used.",
            )
        return result
    raise DateInputError(
        "日付として読み取れません。例: 令和元年5月1日、H31.4.30、2019-05-01",
        "Not a date. Examples: 令和元年5月1日 (Reiwa 1, May 1), H31.4.30, 2019-05-01.",
    )


def normalize_date_text(text: str) -> str:
    """Full-width to half-width (㍻ → 平成, ㋿ → 令和), dashes unified, spaces removed."""
    cleaned = unicodedata.normalize("NFKC", text).translate(_DASHES)
    cleaned = re.sub(r"\s+", "", cleaned)
    return cleaned.upper() if cleaned[:1].isascii() else cleaned


def _year(year: int) -> str:
    return "元" if year == 1 else str(year)


def _seireki(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _english(day: date) -> str:
    return f"{day.day} {_MONTHS_EN[day.month - 1]} {day.year}"


def _other(style: DateStyle) -> DateStyle:
    return DateStyle.SEIREKI if style is DateStyle.WAREKI else DateStyle.WAREKI
