"""The models of 書かない窓口: form templates, filled values, errors, signatures, metadata.

Templates are read from TOML files (:mod:`shared.forms.templates`); the other models travel
between the HQ console and the booth (WebRTC data channel, HTTP), so every size is bounded.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from shared.protocol import Ident, Model

# Field ids are what values are keyed by, so they are short ASCII names.
FieldId = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9_]*$")]
FormId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$")]
LabelText = Annotated[str, Field(min_length=1, max_length=120)]
HelpText = Annotated[str, Field(max_length=600)]

GRID_COLUMNS = 12
"""The layout grid: each row of a section is 12 columns wide."""

SIGNATURE_CELL = "@signature"
"""The layout cell that places the signature box."""

MAX_FIELDS = 120
MAX_MULTILINE_LINES = 20
"""A multiline value has at most this many lines (line breaks + 1)."""

# The A4 geometry that template checks need: every cell must fit on one page at its
# longest value (the PDF never splits a cell). A full-width character of a value is
# about 3.7 mm wide (10.5 pt), a line 5 mm high.
CONTENT_WIDTH_MM = 180.0
VALUE_CHAR_MM = 3.7
VALUE_LINE_MM = 5.0
MAX_CELL_MM = 225.0
MAX_VALUE_CHARS = 2000
"""No value, of any field, is longer than this (templates may set lower limits)."""


class Department(StrEnum):
    """The HQ department that handles a form."""

    SHIMIN = "shimin"  # 市民課
    HOKEN = "hoken"  # 保険年金課
    KOSODATE = "kosodate"  # 子育て支援課
    KAZEI = "kazei"  # 課税課


DEPARTMENT_NAMES: dict[Department, tuple[str, str]] = {
    Department.SHIMIN: ("市民課", "Residents Division"),
    Department.HOKEN: ("保険年金課", "Health Insurance and Pension Division"),
    Department.KOSODATE: ("子育て支援課", "Child-Rearing Support Division"),
    Department.KAZEI: ("課税課", "Taxation Division"),
}


class FieldType(StrEnum):
    TEXT = "text"  # one line of text, kept exactly as entered (rare kanji included)
    KANA = "kana"  # フリガナ: full-width katakana; hiragana and half-width kana are converted
    DATE = "date"  # 和暦 or 西暦 in, stored in the template's date style, shown as both
    POSTAL_CODE = "postal_code"  # 7 digits, stored as 123-4567
    PHONE = "phone"  # Japanese phone number, 10 or 11 digits starting with 0
    CHOICE = "choice"  # one of the field's options
    CHECKBOX = "checkbox"  # yes / no
    NUMBER = "number"  # a whole number, optionally between min and max
    ADDRESS = "address"  # one long line: 都道府県 to 部屋番号
    MULTILINE = "multiline"  # free text with line breaks


DEFAULT_MAX_LENGTH: dict[FieldType, int] = {
    FieldType.TEXT: 100,
    FieldType.KANA: 100,
    FieldType.DATE: 40,
    FieldType.POSTAL_CODE: 20,
    FieldType.PHONE: 30,
    FieldType.CHOICE: 64,
    FieldType.CHECKBOX: 10,
    FieldType.NUMBER: 20,
    FieldType.ADDRESS: 200,
    FieldType.MULTILINE: 1000,
}
"""The limit of each type when the template sets none (characters, not bytes)."""


class CardFact(StrEnum):
    """The facts of the card (:class:`shared.protocol.CardBasicInfo`) a field can take."""

    NAME = "name"
    ADDRESS = "address"
    BIRTH_DATE = "birth_date"
    SEX = "sex"


CARD_FACT_TYPES: dict[CardFact, frozenset[FieldType]] = {
    CardFact.NAME: frozenset({FieldType.TEXT}),
    CardFact.ADDRESS: frozenset({FieldType.ADDRESS, FieldType.TEXT}),
    CardFact.BIRTH_DATE: frozenset({FieldType.DATE}),
    CardFact.SEX: frozenset({FieldType.CHOICE}),
}
"""Which field types can take which card fact."""

SEX_VALUES = frozenset({"male", "female", "other", "unknown"})
"""The values of ``CardBasicInfo.sex``; a sex field's options use these values."""


class DateStyle(StrEnum):
    WAREKI = "wareki"  # stored as 令和元年5月1日
    SEIREKI = "seireki"  # stored as 2019年5月1日


class ChoiceOption(Model):
    value: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
    ja: LabelText
    en: LabelText


class FormField(Model):
    """One field of a form."""

    id: FieldId
    label_ja: LabelText
    label_en: LabelText
    type: FieldType
    required: bool = False
    max_length: Annotated[int, Field(ge=1, le=MAX_VALUE_CHARS)] | None = None
    card: CardFact | None = None
    help_ja: HelpText = ""
    help_en: HelpText = ""
    options: tuple[ChoiceOption, ...] = ()
    # number only
    min: int | None = None
    max: int | None = None
    # date only: refuse dates after today (birth dates)
    allow_future: bool = True
    # date only: overrides the template's date style
    date_style: DateStyle | None = None

    @property
    def limit(self) -> int:
        """The maximum number of characters of a value."""
        return self.max_length if self.max_length is not None else DEFAULT_MAX_LENGTH[self.type]

    def option(self, value: str) -> ChoiceOption | None:
        return next((o for o in self.options if o.value == value), None)

    @model_validator(mode="after")
    def _consistent(self) -> FormField:
        if self.type is FieldType.CHOICE:
            if not self.options:
                raise ValueError("a choice field needs options")
            values = [o.value for o in self.options]
            if len(set(values)) != len(values):
                raise ValueError("option values must be unique")
        elif self.options:
            raise ValueError(f"only choice fields have options (this one is {self.type.value})")
        if self.type is not FieldType.NUMBER and (self.min is not None or self.max is not None):
            raise ValueError("only number fields have min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if self.type is not FieldType.DATE and (
            self.date_style is not None or not self.allow_future
        ):
            raise ValueError("only date fields have date_style and allow_future")
        if self.max_length is not None and self.type in (
            FieldType.CHOICE,
            FieldType.CHECKBOX,
            FieldType.DATE,
        ):
            raise ValueError(f"a {self.type.value} field has no max_length")
        if self.card is not None:
            allowed = CARD_FACT_TYPES[self.card]
            if self.type not in allowed:
                names = ", ".join(sorted(t.value for t in allowed))
                raise ValueError(f"card fact {self.card.value!r} fills only fields of type {names}")
            if self.card is CardFact.SEX:
                option_values = {o.value for o in self.options}
                if not option_values <= SEX_VALUES or not {"male", "female"} <= option_values:
                    raise ValueError(
                        "a field filled with the card's sex needs options 'male' and 'female' "
                        "(and only 'other' or 'unknown' besides)"
                    )
        return self


class LayoutCell(Model):
    """One cell of a layout row: a field id (or ``@signature``) and its width in columns."""

    field: Annotated[str, Field(min_length=1, max_length=48)]
    span: Annotated[int, Field(ge=1, le=GRID_COLUMNS)]


def _parse_row(row: Any) -> Any:
    """``["name:8", "sex"]`` → cells; cells without a span share the remaining columns."""
    if not isinstance(row, list | tuple):
        return row
    cells: list[Any] = []
    free: list[int] = []
    used = 0
    for item in row:
        if not isinstance(item, str):
            cells.append(item)
            if isinstance(item, dict) and isinstance(item.get("span"), int):
                used += item["span"]
            continue
        name, sep, span_text = item.partition(":")
        name = name.strip()
        if sep:
            if not span_text.strip().isdigit():
                raise ValueError(f"cell {item!r}: the span after ':' must be a number of columns")
            span = int(span_text)
            used += span
            cells.append({"field": name, "span": span})
        else:
            free.append(len(cells))
            cells.append({"field": name, "span": 0})
    if free:
        remaining = GRID_COLUMNS - used
        if remaining < len(free):
            raise ValueError(f"row {row!r}: no columns left for the cells without a span")
        share, extra = divmod(remaining, len(free))
        for n, index in enumerate(free):
            cells[index]["span"] = share + (1 if n < extra else 0)
    return cells


class LayoutSection(Model):
    """A titled block of the A4 page; rows of cells on a 12-column grid."""

    id: FieldId
    title_ja: LabelText
    title_en: LabelText
    rows: tuple[tuple[LayoutCell, ...], ...] = Field(min_length=1)

    @field_validator("rows", mode="before")
    @classmethod
    def _shorthand(cls, rows: Any) -> Any:
        if isinstance(rows, list | tuple):
            return [_parse_row(row) for row in rows]
        return rows

    @field_validator("rows")
    @classmethod
    def _widths(
        cls, rows: tuple[tuple[LayoutCell, ...], ...]
    ) -> tuple[tuple[LayoutCell, ...], ...]:
        for n, row in enumerate(rows):
            if not row:
                raise ValueError(f"row {n + 1} is empty")
            width = sum(cell.span for cell in row)
            if width > GRID_COLUMNS:
                raise ValueError(
                    f"row {n + 1} is {width} columns wide; a row has at most {GRID_COLUMNS}"
                )
        return rows


class FormLayout(Model):
    """The A4 layout: sections in order; one cell somewhere is the signature box."""

    sections: tuple[LayoutSection, ...] = Field(min_length=1)
    signature_height_mm: Annotated[float, Field(ge=15, le=80)] = 28.0
    signature_label_ja: LabelText = "署名"
    signature_label_en: LabelText = "Signature"


class FormTemplate(Model):
    """A form as data: loaded from ``shared/forms/templates/<id>.toml``."""

    id: FormId
    version: Annotated[int, Field(ge=1)] = 1
    title_ja: LabelText
    title_en: LabelText
    department: Department
    date_style: DateStyle = DateStyle.WAREKI
    description_ja: HelpText = ""
    description_en: HelpText = ""
    declaration_ja: HelpText = ""
    declaration_en: HelpText = ""
    fields: tuple[FormField, ...] = Field(min_length=1, max_length=MAX_FIELDS)
    layout: FormLayout

    def field(self, field_id: str) -> FormField:
        """The field with this id (``KeyError`` if there is none)."""
        for f in self.fields:
            if f.id == field_id:
                return f
        raise KeyError(field_id)

    def date_style_of(self, field: FormField) -> DateStyle:
        return field.date_style or self.date_style

    @model_validator(mode="after")
    def _layout_places_every_field_once(self) -> FormTemplate:
        ids = [f.id for f in self.fields]
        seen: set[str] = set()
        for f in ids:
            if f in seen:
                raise ValueError(f"field id {f!r} is used twice")
            seen.add(f)
        placed: dict[str, str] = {}
        signatures = 0
        section_ids: set[str] = set()
        for section in self.layout.sections:
            if section.id in section_ids:
                raise ValueError(f"layout: section id {section.id!r} is used twice")
            section_ids.add(section.id)
            for row in section.rows:
                for cell in row:
                    if cell.field == SIGNATURE_CELL:
                        signatures += 1
                        continue
                    if cell.field not in seen:
                        raise ValueError(
                            f"layout: section {section.id!r} places {cell.field!r}, "
                            "which is not a field of this form"
                        )
                    if cell.field in placed:
                        raise ValueError(
                            f"layout: field {cell.field!r} is placed twice "
                            f"(sections {placed[cell.field]!r} and {section.id!r})"
                        )
                    placed[cell.field] = section.id
        for section in self.layout.sections:
            for row in section.rows:
                for cell in row:
                    if cell.field != SIGNATURE_CELL:
                        _check_fits_a_page(self.field(cell.field), cell.span, section.id)
        missing = [f for f in ids if f not in placed]
        if missing:
            raise ValueError(f"layout: fields not placed in any section: {', '.join(missing)}")
        if signatures != 1:
            raise ValueError(
                f"layout: exactly one {SIGNATURE_CELL!r} cell is needed (found {signatures})"
            )
        return self


def worst_case_lines(field: FormField, span: int) -> int:
    """How many lines the longest value of ``field`` can take in a cell ``span`` wide."""
    width = span * CONTENT_WIDTH_MM / GRID_COLUMNS - 3.0
    per_line = max(1, int(width // VALUE_CHAR_MM))
    lines = -(-field.limit // per_line)
    if field.type is FieldType.MULTILINE:
        lines += MAX_MULTILINE_LINES - 1
    return lines


def _check_fits_a_page(field: FormField, span: int, section_id: str) -> None:
    if field.type is FieldType.CHECKBOX:
        return
    height = worst_case_lines(field, span) * VALUE_LINE_MM
    if height > MAX_CELL_MM:
        raise ValueError(
            f"layout: field {field.id!r} (section {section_id!r}) can need {height:.0f} mm at "
            f"{field.limit} characters in {span} columns, more than a page; "
            "give it more columns or a smaller max_length"
        )


# --------------------------------------------------------------------------------------
# Filled forms
# --------------------------------------------------------------------------------------

FieldValue = Annotated[str, Field(max_length=MAX_VALUE_CHARS)] | bool


class FormValues(Model):
    """The values of one form: field id → text (or ``True``/``False`` for a checkbox)."""

    form_id: FormId
    values: Annotated[dict[FieldId, FieldValue], Field(max_length=MAX_FIELDS)] = Field(
        default_factory=dict
    )

    def get(self, field_id: str) -> str | bool | None:
        return self.values.get(field_id)

    def merged(self, other: FormValues) -> FormValues:
        """These values with ``other``'s on top (same form)."""
        if other.form_id != self.form_id:
            raise ValueError(f"cannot merge values of {other.form_id!r} into {self.form_id!r}")
        return FormValues(form_id=self.form_id, values={**self.values, **other.values})


class FieldError(Model):
    """Why a value was refused, for the staff member (Japanese) and in English."""

    field_id: FieldId
    message_ja: Annotated[str, Field(max_length=400)]
    message_en: Annotated[str, Field(max_length=400)]


class ValidationResult(Model):
    """Normalised values and the errors; ``values`` keeps the raw text of refused fields."""

    values: FormValues
    errors: tuple[FieldError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_for(self, field_id: str) -> FieldError | None:
        return next((e for e in self.errors if e.field_id == field_id), None)


# --------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------

MAX_STROKES = 64
MAX_POINTS_PER_STROKE = 1000
MAX_POINTS = 4000
"""About 160 kB of JSON at most: a signature can never be megabytes."""

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class SignaturePoint(Model):
    """A point on the signature pad: x to the right, y down, both 0..1; ``t`` in ms."""

    x: Unit
    y: Unit
    t: Annotated[int, Field(ge=0, le=3_600_000)]


Stroke = Annotated[
    tuple[SignaturePoint, ...], Field(min_length=1, max_length=MAX_POINTS_PER_STROKE)
]


class Signature(Model):
    """A finger signature: strokes of points; ``pad_aspect_ratio`` is the pad's width/height."""

    strokes: Annotated[tuple[Stroke, ...], Field(min_length=1, max_length=MAX_STROKES)]
    pad_aspect_ratio: Annotated[float, Field(ge=0.2, le=10.0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _bounded(self) -> Signature:
        total = sum(len(s) for s in self.strokes)
        if total > MAX_POINTS:
            raise ValueError(f"a signature has at most {MAX_POINTS} points (got {total})")
        return self

    @property
    def point_count(self) -> int:
        return sum(len(s) for s in self.strokes)

    @property
    def extent(self) -> float:
        """The larger side of the strokes' bounding box, in pad units (0 for dots only)."""
        xs = [p.x for s in self.strokes for p in s]
        ys = [p.y for s in self.strokes for p in s]
        return max(max(xs) - min(xs), max(ys) - min(ys))


# --------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------


class ApplicationMeta(Model):
    """Who, when, where: identifiers only, never personal data."""

    application_id: Ident
    form_id: FormId
    session_id: Ident
    booth_id: Ident
    staff_id: Ident
    submitted_at: datetime

    @field_validator("submitted_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("submitted_at needs a time zone")
        return value


# --------------------------------------------------------------------------------------
# The resident's view of a filled form
# --------------------------------------------------------------------------------------


class DisplayItem(Model):
    """One field as the resident sees it: labels and the value as text."""

    field_id: FieldId
    field_type: FieldType
    label_ja: str
    label_en: str
    value_ja: str  # "" when empty
    value_en: str  # the English rendering (dates, choices, yes/no); else the same text
    required: bool
    filled: bool


class DisplaySection(Model):
    section_id: FieldId
    title_ja: str
    title_en: str
    items: tuple[DisplayItem, ...]


class ResidentView(Model):
    """What the booth screen shows for checking before signing."""

    form_id: FormId
    title_ja: str
    title_en: str
    declaration_ja: str
    declaration_en: str
    sections: tuple[DisplaySection, ...]
