"""Dates in the Japanese era calendar (和暦) as certificates print them."""

from __future__ import annotations

from datetime import date
from typing import Final

# (first day, era name), newest first.
ERAS: Final = (
    (date(2019, 5, 1), "令和"),
    (date(1989, 1, 8), "平成"),
    (date(1926, 12, 25), "昭和"),
    (date(1912, 7, 30), "大正"),
    (date(1873, 1, 1), "明治"),  # the Gregorian calendar from Meiji 6
)


def era_year(day: date) -> tuple[str, int]:
    """The era and the year within it (1 for the first year)."""
    for start, name in ERAS:
        if day >= start:
            return name, day.year - start.year + 1
    raise ValueError(f"{day.isoformat()} is before the Gregorian calendar in Japan")


def _year_text(year: int) -> str:
    return "元" if year == 1 else str(year)


def wareki_date(day: date) -> str:
    """``令和8年11月23日``; the first year of an era is 元年."""
    era, year = era_year(day)
    return f"{era}{_year_text(year)}年{day.month}月{day.day}日"


def wareki_fiscal_year(fiscal_year: int) -> str:
    """The fiscal year (年度) starting in April of ``fiscal_year``: ``令和7年度``."""
    era, year = era_year(date(fiscal_year, 4, 1))
    return f"{era}{_year_text(year)}年度"


def wareki_year(calendar_year: int) -> str:
    """A calendar year (年分, e.g. the income year), named by its last day: ``令和6年``."""
    era, year = era_year(date(calendar_year, 12, 31))
    return f"{era}{_year_text(year)}年"
