"""Filled forms as text: what the booth screen and the application PDF show."""

from __future__ import annotations

from shared.forms.models import (
    SIGNATURE_CELL,
    DisplayItem,
    DisplaySection,
    FieldType,
    FormField,
    FormTemplate,
    FormValues,
    ResidentView,
)
from shared.forms.wareki import DateInputError, format_date_both, format_date_en, parse_date


def display_value(
    template: FormTemplate, field: FormField, value: str | bool | None
) -> tuple[str, str]:
    """A value as (Japanese, English) display text; ``("", "")`` when empty.

    Dates show both calendars (``令和元年5月1日（2019年5月1日）``), choices their label,
    checkboxes はい/いいえ. Text is shown exactly as stored.
    """
    if field.type is FieldType.CHECKBOX:
        return ("はい", "Yes") if value is True else ("いいえ", "No")
    if value is None or isinstance(value, bool) or value == "":
        return "", ""
    if field.type is FieldType.DATE:
        try:
            day = parse_date(value)
        except DateInputError:
            return value, value
        return format_date_both(day, template.date_style_of(field)), format_date_en(day)
    if field.type is FieldType.CHOICE:
        option = field.option(value)
        return (option.ja, option.en) if option is not None else (value, value)
    return value, value


def resident_view(template: FormTemplate, values: FormValues) -> ResidentView:
    """The filled form in layout order, section by section, for the resident to check."""
    sections: list[DisplaySection] = []
    for section in template.layout.sections:
        items: list[DisplayItem] = []
        for row in section.rows:
            for cell in row:
                if cell.field == SIGNATURE_CELL:
                    continue
                field = template.field(cell.field)
                value = values.get(field.id)
                ja, en = display_value(template, field, value)
                items.append(
                    DisplayItem(
                        field_id=field.id,
                        field_type=field.type,
                        label_ja=field.label_ja,
                        label_en=field.label_en,
                        value_ja=ja,
                        value_en=en,
                        required=field.required,
                        filled=value is True if field.type is FieldType.CHECKBOX else bool(ja),
                    )
                )
        sections.append(
            DisplaySection(
                section_id=section.id,
                title_ja=section.title_ja,
                title_en=section.title_en,
                items=tuple(items),
            )
        )
    return ResidentView(
        form_id=template.id,
        title_ja=template.title_ja,
        title_en=template.title_en,
        declaration_ja=template.declaration_ja,
        declaration_en=template.declaration_en,
        sections=tuple(sections),
    )
