"""Validation and normalisation of form values.

:func:`validate_values` checks every value of a form against its template and returns the
values in their normal form (postal code ``123-4567``, furigana in full-width katakana,
dates in the template's date style) together with the errors, each in natural Japanese
first and English second. ``docs/forms.md`` lists the rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date

from shared.forms.models import (
    MAX_MULTILINE_LINES,
    MAX_VALUE_CHARS,
    FieldError,
    FieldType,
    FormField,
    FormTemplate,
    FormValues,
    ValidationResult,
)
from shared.forms.wareki import DateInputError, format_date, parse_date

_DASHES = str.maketrans({c: "-" for c in "‐‑‒–—―−ー－﹣"})
_KATAKANA_EXTRA = frozenset("ー・ヽヾ　")
_TRUE = frozenset({"true", "on", "1", "yes", "はい"})
_FALSE = frozenset({"false", "off", "0", "no", "いいえ", ""})


class FieldValueError(ValueError):
    """One value was refused; the messages say why and how to write it."""

    def __init__(self, message_ja: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_ja = message_ja
        self.message_en = message_en


def validate_values(
    template: FormTemplate,
    values: FormValues | Mapping[str, str | bool],
    *,
    today: date | None = None,
    complete: bool = True,
) -> ValidationResult:
    """Check ``values`` against ``template``.

    ``complete=False`` checks a draft: missing required values are not errors yet.
    ``today`` is the date that ``allow_future = false`` fields are compared with.
    """
    if not isinstance(values, FormValues):
        values = FormValues(form_id=template.id, values=dict(values))
    if values.form_id != template.id:
        raise ValueError(f"values of form {values.form_id!r} checked against {template.id!r}")
    raw = dict(values.values)
    today = today or date.today()
    errors: list[FieldError] = []
    normalised: dict[str, str | bool] = {}
    known = {f.id for f in template.fields}
    for field_id in raw:
        if field_id not in known:
            errors.append(
                FieldError(
                    field_id=field_id,
                    message_ja="この項目はこの様式にありません。",
                    message_en="This form has no such field.",
                )
            )
    for field in template.fields:
        value = raw.get(field.id)
        try:
            result = normalize_value(template, field, value, today=today)
        except FieldValueError as err:
            errors.append(
                FieldError(field_id=field.id, message_ja=err.message_ja, message_en=err.message_en)
            )
            if value is not None:
                normalised[field.id] = value
            continue
        if result is None or result == "":
            if field.required and complete:
                errors.append(_required(field))
            continue
        if result is False and field.required and complete:
            errors.append(_required(field))
        normalised[field.id] = result
    return ValidationResult(
        values=FormValues(form_id=template.id, values=normalised), errors=tuple(errors)
    )


def normalize_value(
    template: FormTemplate,
    field: FormField,
    value: str | bool | None,
    *,
    today: date | None = None,
) -> str | bool | None:
    """One value in its normal form (``None`` or ``""`` when empty); raises
    :class:`FieldValueError` when it cannot be accepted. Required is not checked here."""
    if field.type is FieldType.CHECKBOX:
        return _checkbox(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldValueError(
            "この項目には文字を入力してください。", "This field takes text, not yes/no."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise _too_long(MAX_VALUE_CHARS)
    text = value.strip()
    if not text:
        return ""
    match field.type:
        case FieldType.TEXT | FieldType.ADDRESS:
            result = _single_line(text)
        case FieldType.MULTILINE:
            result = _multiline(text)
        case FieldType.KANA:
            result = normalize_kana(text)
        case FieldType.DATE:
            result = _date(template, field, text, today or date.today())
        case FieldType.POSTAL_CODE:
            result = normalize_postal_code(text)
        case FieldType.PHONE:
            result = normalize_phone(text)
        case FieldType.CHOICE:
            result = _choice(field, text)
        case FieldType.NUMBER:
            result = _number(field, text)
    if len(result) > field.limit:
        raise _too_long(field.limit)
    return result


# --------------------------------------------------------------------------------------
# Per type
# --------------------------------------------------------------------------------------


def normalize_kana(text: str) -> str:
    """フリガナ: hiragana and half-width kana become full-width katakana; spaces become one
    full-width space; anything else is refused, naming the characters."""
    converted = unicodedata.normalize("NFKC", text)
    chars: list[str] = []
    for ch in converted:
        code = ord(ch)
        if 0x3041 <= code <= 0x3096 or ch in "ゝゞ":  # hiragana → katakana
            chars.append(chr(code + 0x60))
        elif ch.isspace():
            chars.append("　")
        else:
            chars.append(ch)
    result = re.sub("　+", "　", "".join(chars)).strip("　")
    bad = [ch for ch in result if not (0x30A1 <= ord(ch) <= 0x30FA or ch in _KATAKANA_EXTRA)]
    if bad:
        shown = "".join(dict.fromkeys(bad))
        raise FieldValueError(
            f"フリガナはカタカナで入力してください（使えない文字: {shown}）。",
            f"Furigana must be written in katakana (not allowed: {shown}).",
        )
    return result


def normalize_postal_code(text: str) -> str:
    """7 digits, with or without a hyphen, full-width accepted → ``123-4567``."""
    cleaned = unicodedata.normalize("NFKC", text).translate(_DASHES)
    cleaned = re.sub(r"[\s〒]", "", cleaned)
    match = re.fullmatch(r"(\d{3})-?(\d{4})", cleaned)
    if match is None:
        raise FieldValueError(
            "郵便番号は7桁の数字で入力してください（例: 206-0011）。",
            "A postal code is 7 digits (for example 206-0011).",
        )
    return f"{match[1]}-{match[2]}"


def normalize_phone(text: str) -> str:
    """A Japanese number: 10 or 11 digits starting with 0 (``+81`` is turned into 0).
    Hyphens and parentheses are kept as hyphens; full-width is accepted."""
    cleaned = unicodedata.normalize("NFKC", text).translate(_DASHES)
    cleaned = re.sub(r"\s+", "", cleaned)
    cleaned = re.sub(r"^\+81-?(?:\(0\))?", "0", cleaned)
    cleaned = re.sub(r"^0(\d+)\)", r"0\1-", cleaned)  # 042)375-8111
    cleaned = re.sub(r"^\((0\d+)\)", r"\1-", cleaned)  # (042)375-8111
    cleaned = re.sub(r"\((\d+)\)", r"-\1-", cleaned)  # 042(375)8111
    cleaned = re.sub(r"-+", "-", cleaned).strip("-")
    digits = cleaned.replace("-", "")
    if not re.fullmatch(r"[\d-]+", cleaned) or not re.fullmatch(r"0\d{9,10}", digits):
        raise FieldValueError(
            "電話番号は0から始まる10桁または11桁の数字で入力してください（例: 042-375-8111）。",
            "A phone number is 10 or 11 digits starting with 0 (for example 042-375-8111).",
        )
    if "-" in cleaned:
        return cleaned
    if len(digits) == 11:  # mobile, 050 IP phones: 090-1234-5678
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if digits.startswith(("0120", "0800")):
        return f"{digits[:4]}-{digits[4:7]}-{digits[7:]}"
    return digits


def _single_line(text: str) -> str:
    _refuse_control(text, allow_newline=False)
    return text


def _multiline(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    _refuse_control(text, allow_newline=True)
    if text.count("\n") >= MAX_MULTILINE_LINES:
        raise FieldValueError(
            f"改行は{MAX_MULTILINE_LINES}行までにしてください。",
            f"Use at most {MAX_MULTILINE_LINES} lines.",
        )
    return text


def _refuse_control(text: str, *, allow_newline: bool) -> None:
    for ch in text:
        if ch == "\n" and allow_newline:
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            if ch in "\n\t":
                raise FieldValueError(
                    "この項目は改行やタブを入れずに1行で入力してください。",
                    "Write this on one line, without line breaks or tabs.",
                )
            raise FieldValueError(
                f"使えない文字（U+{ord(ch):04X}）が含まれています。",
                f"The text contains a character that cannot be used (U+{ord(ch):04X}).",
            )


def _date(template: FormTemplate, field: FormField, text: str, today: date) -> str:
    try:
        day = parse_date(text)
    except DateInputError as err:
        raise FieldValueError(err.message_ja, err.message_en) from None
    if not field.allow_future and day > today:
        raise FieldValueError(
            "今日より後の日付は入力できません。", "This date cannot be later than today."
        )
    return format_date(day, template.date_style_of(field))


def _choice(field: FormField, text: str) -> str:
    for option in field.options:
        if text in (option.value, option.ja, option.en):
            return option.value
    names = "、".join(o.ja for o in field.options)
    raise FieldValueError(
        f"選択肢から選んでください（{names}）。",
        "Choose one of: " + ", ".join(o.en for o in field.options) + ".",
    )


def _number(field: FormField, text: str) -> str:
    cleaned = unicodedata.normalize("NFKC", text).replace(",", "").replace(" ", "")
    if not re.fullmatch(r"-?\d{1,15}", cleaned):
        raise FieldValueError("半角または全角の数字で入力してください。", "Enter a whole number.")
    number = int(cleaned)
    if field.min is not None and number < field.min:
        raise FieldValueError(
            f"{field.min}以上の数を入力してください。", f"Enter {field.min} or more."
        )
    if field.max is not None and number > field.max:
        raise FieldValueError(
            f"{field.max}以下の数を入力してください。", f"Enter {field.max} or less."
        )
    return str(number)


def _checkbox(value: str | bool | None) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise FieldValueError(
        "チェックの有無（はい・いいえ）で指定してください。", "This takes yes or no."
    )


def _required(field: FormField) -> FieldError:
    if field.type is FieldType.CHECKBOX:
        return FieldError(
            field_id=field.id,
            message_ja=f"「{field.label_ja}」にチェックが必要です。",
            message_en=f"“{field.label_en}” must be checked.",
        )
    if field.type is FieldType.CHOICE:
        return FieldError(
            field_id=field.id,
            message_ja=f"「{field.label_ja}」を選んでください。",
            message_en=f"Choose “{field.label_en}”.",
        )
    return FieldError(
        field_id=field.id,
        message_ja=f"「{field.label_ja}」は必須です。入力してください。",
        message_en=f"“{field.label_en}” is required.",
    )


def _too_long(limit: int) -> FieldValueError:
    return FieldValueError(
        f"{limit}文字以内で入力してください。", f"Use at most {limit} characters."
    )
