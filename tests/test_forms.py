"""The forms library of 書かない窓口: templates, validation, card fill, the application PDF.

PDFs are checked the way a reader sees them: ``pdftotext`` for the text layer and
``pdftoppm`` for the drawn signature.
"""

from __future__ import annotations

import math
import re
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from shared.forms import (
    TEMPLATE_DIR,
    ApplicationMeta,
    DateInputError,
    DateStyle,
    Department,
    FieldType,
    FormTemplate,
    FormValues,
    PageArea,
    Signature,
    SignaturePoint,
    TemplateCatalog,
    TemplateError,
    display_value,
    fill_from_card,
    load_template,
    normalize_kana,
    normalize_phone,
    normalize_postal_code,
    parse_date,
    render_application_pdf,
    resident_view,
    signature_area,
    to_wareki,
    validate_values,
)
from shared.protocol import CardBasicInfo

FIVE_FORMS = {
    "juminhyo-request": ("住民票の写し等交付請求書", Department.SHIMIN),
    "inkan-shomei-request": ("印鑑登録証明書交付申請書", Department.SHIMIN),
    "juumin-idou": ("住民異動届（転入・転居・転出）", Department.SHIMIN),
    "kokuho-shikaku": ("国民健康保険 資格取得・喪失届", Department.HOKEN),
    "jidou-teate": ("児童手当 認定請求書", Department.KOSODATE),
}
RARE_NAMES = ("𠮷田　髙﨑", "髙橋　花子", "山﨑　翔太")
LONG_ADDRESS = (
    "東京都多摩市関戸六丁目12番地1　聖蹟桜ヶ丘ステーションタワーレジデンス南棟1203号室"
    "（株式会社多摩テクノロジーズ社宅・管理人室経由）"
)
CARD = CardBasicInfo(
    request_id="card-1",
    name="𠮷田　髙﨑",
    address=LONG_ADDRESS,
    birth_date=date(1989, 1, 8),
    sex="female",
)
TODAY = date(2025, 6, 1)


@pytest.fixture(scope="module")
def catalog() -> TemplateCatalog:
    return TemplateCatalog.load()


def _meta(template: FormTemplate, application_id: str = "app-20250601-0001") -> ApplicationMeta:
    return ApplicationMeta(
        application_id=application_id,
        form_id=template.id,
        session_id="sess-42",
        booth_id="seiseki-1",
        staff_id="sato",
        submitted_at=datetime(2025, 6, 1, 1, 30, 5, tzinfo=UTC),  # 10:30:05 JST
    )


def _entered_values(template: FormTemplate) -> dict[str, str | bool]:
    """What a staff member types for every field not filled from the card (deliberately in
    the forms people really use: hiragana furigana, full-width digits, 和暦 shorthand)."""
    values: dict[str, str | bool] = {}
    names = iter(RARE_NAMES[1:] * 10)
    for field in template.fields:
        if field.card is not None:
            continue
        match field.type:
            case FieldType.TEXT:
                if field.id.endswith("_name") or field.id.endswith("_head"):
                    values[field.id] = next(names)
                elif "relationship" in field.id:
                    values[field.id] = "長男"
                elif field.id in ("account_number", "registration_number", "insurance_number"):
                    values[field.id] = "0012345"
                elif field.id == "bank_branch":
                    values[field.id] = "聖蹟桜ヶ丘支店"
                else:
                    values[field.id] = "多摩中央信用金庫"
            case FieldType.KANA:
                values[field.id] = "よしだ　たかさき"
            case FieldType.DATE:
                values[field.id] = "Ｓ６０．４．１"
            case FieldType.POSTAL_CODE:
                values[field.id] = "２０６００１１"
            case FieldType.PHONE:
                values[field.id] = "０４２（３７５）８１１１"
            case FieldType.CHOICE:
                values[field.id] = field.options[-1].value
            case FieldType.CHECKBOX:
                values[field.id] = True
            case FieldType.NUMBER:
                values[field.id] = "２"
            case FieldType.ADDRESS:
                values[field.id] = LONG_ADDRESS
            case FieldType.MULTILINE:
                values[field.id] = "前住所で国民健康保険に加入。\n保険証は返却済み。"
    return values


def _filled(template: FormTemplate) -> FormValues:
    entered = FormValues(form_id=template.id, values=_entered_values(template))
    result = validate_values(template, fill_from_card(template, CARD).merged(entered), today=TODAY)
    assert result.errors == ()
    return result.values


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "application.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(
        ["pdftotext", "-raw", "-enc", "UTF-8", str(path), "-"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.stdout.decode("utf-8")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _signature() -> Signature:
    """A wave, a loop and a dot, as a finger draws them on a 3:1 pad."""
    wave = tuple(
        SignaturePoint(x=0.05 + 0.5 * i / 80, y=0.5 + 0.35 * math.sin(i / 6), t=i * 12)
        for i in range(81)
    )
    loop = tuple(
        SignaturePoint(
            x=0.75 + 0.12 * math.cos(i / 10), y=0.5 + 0.3 * math.sin(i / 10), t=1200 + i * 10
        )
        for i in range(63)
    )
    dot = (SignaturePoint(x=0.95, y=0.8, t=2100),)
    return Signature(strokes=(wave, loop, dot), pad_aspect_ratio=3.0)


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------


def test_the_five_forms_load_with_their_schema(catalog: TemplateCatalog) -> None:
    assert {t.id for t in catalog} >= set(FIVE_FORMS)
    for form_id, (title, department) in FIVE_FORMS.items():
        template = catalog.get(form_id)
        assert template.title_ja == title
        assert template.title_en
        assert template.department is department
        placed = [c.field for s in template.layout.sections for r in s.rows for c in r]
        assert sorted(p for p in placed if p != "@signature") == sorted(
            f.id for f in template.fields
        )
        assert placed.count("@signature") == 1
        # the card fills name, birth date and address on every one of these forms
        facts = {f.card.value for f in template.fields if f.card is not None}
        assert {"name", "birth_date", "address"} <= facts
        assert any(f.required for f in template.fields)
        # a round trip through JSON (console ↔ booth) gives the same template
        assert FormTemplate.model_validate_json(template.model_dump_json()) == template
    assert [t.id for t in catalog.for_department(Department.HOKEN)] == ["kokuho-shikaku"]


def test_layout_shorthand_shares_the_remaining_columns(catalog: TemplateCatalog) -> None:
    row = catalog.get("juumin-idou").layout.sections[-1].rows[0]
    assert [(c.field, c.span) for c in row] == [("@signature", 12)]
    address_row = catalog.get("juminhyo-request").layout.sections[0].rows[2]
    assert [(c.field, c.span) for c in address_row] == [("applicant_address", 12)]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
id = "{id}"
title_ja = "テスト届"
title_en = "Test notice"
department = "shimin"

[[fields]]
id = "name"
label_ja = "氏名"
label_en = "Name"
type = "text"
card = "name"

[[fields]]
id = "birth"
label_ja = "生年月日"
label_en = "Date of birth"
type = "{birth_type}"

[layout]
[[layout.sections]]
id = "main"
title_ja = "本人"
title_en = "Person"
rows = [["name:6", "birth:6"], ["{last}"]]
"""


def test_a_valid_minimal_template_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "test-form", BASE.format(id="test-form", birth_type="date", last="@signature")
    )
    template = load_template(path)
    assert template.field("birth").type is FieldType.DATE
    assert template.date_style is DateStyle.WAREKI


@pytest.mark.parametrize(
    ("text", "location", "problem"),
    [
        (
            BASE.format(id="bad-form", birth_type="datetime", last="@signature"),
            "fields[1] (id 'birth') → type",
            "'text', 'kana', 'date'",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="nickname"),
            "",
            "places 'nickname', which is not a field of this form",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="birth"),
            "",
            "field 'birth' is placed twice",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="name:6").replace(
                '"name:6", "birth:6"', '"birth:12"'
            ),
            "",
            "exactly one '@signature' cell is needed (found 0)",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="@signature").replace(
                'card = "name"', 'card = "birth_date"'
            ),
            "fields[0] (id 'name')",
            "card fact 'birth_date' fills only fields of type date",
        ),
        (
            BASE.format(id="bad-form", birth_type="choice", last="@signature"),
            "fields[1] (id 'birth')",
            "a choice field needs options",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="@signature").replace(
                '["name:6", "birth:6"]', '["name:8", "birth:6"]'
            ),
            "layout → sections[0] (id 'main') → rows",
            "row 1 is 14 columns wide",
        ),
        (
            BASE.format(id="other-name", birth_type="date", last="@signature"),
            "id",
            "the id 'other-name' must be the file name",
        ),
        (
            BASE.format(id="bad-form", birth_type="date", last="@signature").replace(
                'card = "name"', "max_length = 2000"
            ),
            "",
            "field 'name' (section 'main') can need",
        ),
        ('id = "bad-form"\ntitle_ja = "未完', "", "not valid TOML"),
    ],
)
def test_a_malformed_template_names_the_file_and_the_field(
    tmp_path: Path, text: str, location: str, problem: str
) -> None:
    path = _write(tmp_path, "bad-form", text)
    with pytest.raises(TemplateError) as caught:
        load_template(path)
    error = caught.value
    assert error.path == path
    assert str(path) in str(error)
    assert error.location == location
    assert problem in error.problem, error.problem


def test_a_directory_with_a_bad_template_is_refused_whole(tmp_path: Path) -> None:
    _write(tmp_path, "test-form", BASE.format(id="test-form", birth_type="date", last="@signature"))
    _write(tmp_path, "zz-broken", BASE.format(id="zz-broken", birth_type="when", last="@signature"))
    with pytest.raises(TemplateError, match=r"zz-broken\.toml: fields\[1\] \(id 'birth'\)"):
        TemplateCatalog.load(tmp_path)
    assert len(TemplateCatalog.load(TEMPLATE_DIR)) >= 5


# --------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "wareki"),
    [
        (date(1989, 1, 7), "昭和64年1月7日"),
        (date(1989, 1, 8), "平成元年1月8日"),
        (date(2019, 4, 30), "平成31年4月30日"),
        (date(2019, 5, 1), "令和元年5月1日"),
        (date(1926, 12, 24), "大正15年12月24日"),
        (date(1926, 12, 25), "昭和元年12月25日"),
        (date(1912, 7, 29), "明治45年7月29日"),
        (date(1912, 7, 30), "大正元年7月30日"),
        (date(2025, 6, 1), "令和7年6月1日"),
    ],
)
def test_wareki_and_seireki_both_ways_at_era_boundaries(day: date, wareki: str) -> None:
    assert to_wareki(day) == wareki
    assert parse_date(wareki) == day
    assert parse_date(day.isoformat()) == day
    assert parse_date(f"{day.year}年{day.month}月{day.day}日") == day
    full_width = wareki.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    assert parse_date(full_width) == day


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("平成31年5月1日", date(2019, 5, 1)),  # era already over: normalised to 令和元年
        ("昭和64年1月8日", date(1989, 1, 8)),
        ("令和1年5月1日", date(2019, 5, 1)),
        ("R1.5.1", date(2019, 5, 1)),
        ("h31/4/30", date(2019, 4, 30)),
        ("㍻３１年４月３０日", date(2019, 4, 30)),
        ("Ｓ６０．４．１", date(1985, 4, 1)),
        ("２０１９－０５－０１", date(2019, 5, 1)),
        ("20190501", date(2019, 5, 1)),
        (" 令和 元年 5月 1日 ", date(2019, 5, 1)),
    ],
)
def test_accepted_date_spellings(text: str, day: date) -> None:
    assert parse_date(text) == day


def test_a_date_in_an_ended_era_is_stored_in_the_right_one(catalog: TemplateCatalog) -> None:
    template = catalog.get("juumin-idou")
    result = validate_values(
        template,
        {"move_date": "平成31年5月1日", "person1_birth_date": "昭和64年1月8日"},
        complete=False,
        today=TODAY,
    )
    assert result.errors == ()
    assert result.values.get("move_date") == "令和元年5月1日"
    assert result.values.get("person1_birth_date") == "平成元年1月8日"
    field = template.field("move_date")
    assert display_value(template, field, "令和元年5月1日") == (
        "令和元年5月1日（2019年5月1日）",
        "1 May 2019 (Reiwa 1)",
    )


@pytest.mark.parametrize(
    ("text", "message_ja"),
    [
        (
            "令和元年4月30日",
            "令和元年4月30日は令和が始まる前の日付です（令和は2019年5月1日から。この日は平成31年4月30日です）。",
        ),
        ("平成32年1月1日", "平成は31年（2019年）4月30日までです。平成32年1月1日は存在しません。"),
        (
            "平成元年1月7日",
            "平成元年1月7日は平成が始まる前の日付です（平成は1989年1月8日から。この日は昭和64年1月7日です）。",
        ),
        ("令和5年2月29日", "令和5年2月29日は存在しない日付です。"),
        ("平成0年4月1日", "平成0年4月1日は存在しない日付です（年は元年または1以上）。"),
        ("2023年2月29日", "2023年2月29日は存在しない日付です。"),
        ("2019-13-01", "2019年13月1日は存在しない日付です。"),
        ("明治5年12月1日", "明治5年（1872年）以前の日付は旧暦のため扱えません。"),
        ("来週の月曜日", "日付として読み取れません。例: 令和元年5月1日、H31.4.30、2019-05-01"),
        ("安政3年1月1日", "日付として読み取れません。例: 令和元年5月1日、H31.4.30、2019-05-01"),
    ],
)
def test_impossible_dates_are_refused_with_the_reason(text: str, message_ja: str) -> None:
    with pytest.raises(DateInputError) as caught:
        parse_date(text)
    assert caught.value.message_ja == message_ja
    assert caught.value.message_en


def test_birth_dates_cannot_be_in_the_future(catalog: TemplateCatalog) -> None:
    template = catalog.get("juminhyo-request")
    result = validate_values(
        template, {"applicant_birth_date": "令和7年6月2日"}, complete=False, today=TODAY
    )
    error = result.error_for("applicant_birth_date")
    assert error is not None
    assert error.message_ja == "今日より後の日付は入力できません。"
    assert error.message_en == "This date cannot be later than today."


# --------------------------------------------------------------------------------------
# Other field types
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("2060011", "206-0011"),
        ("206-0011", "206-0011"),
        ("〒２０６－００１１", "206-0011"),
        ("２０６ー００１１", "206-0011"),
    ],
)
def test_postal_codes_are_normalised(text: str, normal: str) -> None:
    assert normalize_postal_code(text) == normal


@pytest.mark.parametrize("text", ["206-001", "20600111", "206-00a1", "2-060011"])
def test_bad_postal_codes_are_refused(catalog: TemplateCatalog, text: str) -> None:
    template = catalog.get("jidou-teate")
    result = validate_values(template, {"claimant_postal_code": text}, complete=False)
    error = result.error_for("claimant_postal_code")
    assert error is not None
    assert error.message_ja == "郵便番号は7桁の数字で入力してください（例: 206-0011）。"
    assert error.message_en == "A postal code is 7 digits (for example 206-0011)."
    assert result.values.get("claimant_postal_code") == text  # kept for correction


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("やまだ　はなこ", "ヤマダ　ハナコ"),
        ("ﾔﾏﾀﾞ ﾊﾅｺ", "ヤマダ　ハナコ"),
        ("ヤマダ  ハナコ", "ヤマダ　ハナコ"),
        ("ゔぃくとりあ・すみす", "ヴィクトリア・スミス"),
        ("コーイチ", "コーイチ"),
    ],
)
def test_furigana_becomes_full_width_katakana(text: str, normal: str) -> None:
    assert normalize_kana(text) == normal


@pytest.mark.parametrize(
    ("text", "shown"),
    [("山田　はなこ", "山田"), ("Yamada", "Yamd"), ("ヤマダ1", "1")],
)
def test_furigana_with_other_characters_is_refused(
    catalog: TemplateCatalog, text: str, shown: str
) -> None:
    template = catalog.get("juminhyo-request")
    result = validate_values(template, {"applicant_kana": text}, complete=False)
    error = result.error_for("applicant_kana")
    assert error is not None
    assert error.message_ja == f"フリガナはカタカナで入力してください（使えない文字: {shown}）。"
    assert error.message_en == f"Furigana must be written in katakana (not allowed: {shown})."


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("042-375-8111", "042-375-8111"),
        ("０４２（３７５）８１１１", "042-375-8111"),
        ("(042)375-8111", "042-375-8111"),
        ("09012345678", "090-1234-5678"),
        ("+81 90-1234-5678", "090-1234-5678"),
        ("0120123456", "0120-123-456"),
    ],
)
def test_phone_numbers_are_normalised(text: str, normal: str) -> None:
    assert normalize_phone(text) == normal


def test_required_max_length_choice_number_and_unknown_fields(catalog: TemplateCatalog) -> None:
    template = catalog.get("juminhyo-request")
    result = validate_values(
        template,
        {
            "applicant_name": "𠮷" * 61,
            "applicant_phone": "12345",
            "relationship": "friend",
            "copies": "11",
            "include_head": "maybe",
            "favourite_colour": "青",
        },
        today=TODAY,
    )
    messages = {e.field_id: e.message_ja for e in result.errors}
    assert messages["applicant_name"] == "60文字以内で入力してください。"
    assert messages["applicant_phone"].startswith("電話番号は0から始まる10桁または11桁")
    assert messages["relationship"] == (
        "選択肢から選んでください（本人、同一世帯の方、代理人（委任状あり）、その他）。"
    )
    assert messages["copies"] == "10以下の数を入力してください。"
    assert messages["include_head"] == "チェックの有無（はい・いいえ）で指定してください。"
    assert messages["favourite_colour"] == "この項目はこの様式にありません。"
    assert messages["applicant_kana"] == "「フリガナ」は必須です。入力してください。"
    assert messages["scope"] == "「必要な範囲」を選んでください。"
    assert (
        messages["confirmed"] == "「本人確認書類を確認しました（職員記入）」にチェックが必要です。"
    )
    assert "subject_name" not in messages  # optional and empty
    # exactly 60 rare kanji is fine: limits count characters, not bytes or UTF-16 units
    ok = validate_values(template, {"applicant_name": "𠮷" * 60}, complete=False)
    assert ok.errors == ()


def test_multiline_keeps_line_breaks_up_to_twenty_lines(catalog: TemplateCatalog) -> None:
    template = catalog.get("kokuho-shikaku")
    ok = validate_values(template, {"notes": "一行目\r\n二行目"}, complete=False)
    assert ok.values.get("notes") == "一行目\n二行目"
    result = validate_values(template, {"notes": "\n".join(["行"] * 21)}, complete=False)
    error = result.error_for("notes")
    assert error is not None
    assert error.message_ja == "改行は20行までにしてください。"


def test_text_keeps_rare_kanji_and_refuses_control_characters(catalog: TemplateCatalog) -> None:
    template = catalog.get("juminhyo-request")
    result = validate_values(
        template,
        {
            "applicant_name": " 𠮷田　髙﨑 ",
            "subject_name": "山田\u202e太郎",
            "purpose_detail": "a\nb",
        },
        complete=False,
    )
    assert result.values.get("applicant_name") == "𠮷田　髙﨑"
    assert result.error_for("subject_name") is not None
    error = result.error_for("purpose_detail")
    assert error is not None
    assert error.message_ja == "この項目は改行やタブを入れずに1行で入力してください。"


# --------------------------------------------------------------------------------------
# Card
# --------------------------------------------------------------------------------------


def test_fill_from_card_puts_the_four_facts_in_their_fields(catalog: TemplateCatalog) -> None:
    template = catalog.get("juumin-idou")
    values = fill_from_card(template, CARD)
    assert values.form_id == "juumin-idou"
    assert values.values == {
        "old_address": LONG_ADDRESS,
        "informant_name": "𠮷田　髙﨑",
        "person1_name": "𠮷田　髙﨑",
        "person1_birth_date": "平成元年1月8日",
        "person1_sex": "female",
    }
    # the name is kept code point for code point (no compatibility mapping of 﨑 or 𠮷)
    assert [hex(ord(c)) for c in str(values.values["person1_name"])] == [
        "0x20bb7",
        "0x7530",
        "0x3000",
        "0x9ad9",
        "0xfa11",
    ]
    # a 西暦 form gets 西暦 dates; a sex the form has no option for is left to the staff
    seireki = template.model_copy(update={"date_style": DateStyle.SEIREKI})
    unknown = CARD.model_copy(update={"sex": "unknown"})
    values = fill_from_card(seireki, unknown)
    assert values.values["person1_birth_date"] == "1989年1月8日"
    assert "person1_sex" not in values.values


# --------------------------------------------------------------------------------------
# The resident's view
# --------------------------------------------------------------------------------------


def test_resident_view_lists_every_field_with_display_values(catalog: TemplateCatalog) -> None:
    template = catalog.get("kokuho-shikaku")
    view = resident_view(template, _filled(template))
    assert view.title_ja == "国民健康保険 資格取得・喪失届"
    assert [s.section_id for s in view.sections] == [s.id for s in template.layout.sections]
    items = {i.field_id: i for s in view.sections for i in s.items}
    assert set(items) == {f.id for f in template.fields}
    assert items["head_name"].value_ja == "𠮷田　髙﨑"
    assert items["head_birth_date"].value_ja == "平成元年1月8日（1989年1月8日）"
    assert items["head_birth_date"].value_en == "8 January 1989 (Heisei 1)"
    assert items["insured_birth_date"].value_ja == "昭和60年4月1日（1985年4月1日）"
    assert items["reason"].value_ja == "その他"
    assert items["proof_seen"].value_ja == "はい"
    assert items["head_kana"].value_ja == "ヨシダ　タカサキ"
    assert all(i.filled for i in items.values())
    empty = resident_view(template, FormValues(form_id=template.id))
    first = empty.sections[0].items[0]
    assert (first.value_ja, first.filled, first.required) == ("", False, True)


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form_id", sorted(FIVE_FORMS))
def test_pdf_text_layer_has_every_label_and_value(
    catalog: TemplateCatalog, form_id: str, tmp_path: Path
) -> None:
    template = catalog.get(form_id)
    values = _filled(template)
    pdf = render_application_pdf(template, values, _signature(), _meta(template))
    assert pdf.startswith(b"%PDF-")
    text = _pdf_text(pdf, tmp_path)
    flat = _squash(text)
    assert template.title_ja in text
    assert _squash(template.title_en) in flat
    for field in template.fields:
        assert _squash(field.label_ja) in flat, field.id
        assert _squash(field.label_en) in flat, field.id
        shown, _ = display_value(template, field, values.get(field.id))
        assert shown, field.id
        assert _squash(shown) in flat, (field.id, shown)
    # the card's facts and the rare kanji the staff typed, exactly
    assert _squash(LONG_ADDRESS) in flat
    assert "𠮷田" in text and "髙﨑" in text
    assert "髙橋" in text or "山﨑" in text
    assert "平成元年1月8日（1989年1月8日）" in flat
    # footer: application id and submission time (JST, both calendars)
    assert "申請番号ApplicationID:app-20250601-0001" in flat
    assert "2025年6月1日10:30:05（令和7年6月1日）JST" in flat
    assert "Booth:seiseki-1" in flat and "Staff:sato" in flat


def test_pdf_embeds_the_font_and_keeps_text(catalog: TemplateCatalog, tmp_path: Path) -> None:
    template = catalog.get("juminhyo-request")
    pdf = render_application_pdf(template, _filled(template), None, _meta(template))
    path = tmp_path / "a.pdf"
    path.write_bytes(pdf)
    fonts = subprocess.run(
        ["pdffonts", str(path)], check=True, capture_output=True, timeout=60
    ).stdout.decode()
    assert "NotoSansCJK" in fonts
    rows = [line for line in fonts.splitlines() if "NotoSansCJK" in line]
    assert all(" yes " in line for line in rows)  # embedded (subset) fonts
    info = subprocess.run(
        ["pdfinfo", str(path)], check=True, capture_output=True, timeout=60
    ).stdout.decode()
    assert re.search(r"Page size:\s+595\.\d+ x 841\.\d+ pts \(A4\)", info)


def _dark_pixels(pdf: bytes, tmp_path: Path, area: PageArea) -> int:
    dpi = 100
    path = tmp_path / "page.pdf"
    path.write_bytes(pdf)
    prefix = tmp_path / "page"
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            str(dpi),
            "-gray",
            "-png",
            "-singlefile",
            "-f",
            str(area.page),
            "-l",
            str(area.page),
            str(path),
            str(prefix),
        ],
        check=True,
        timeout=60,
    )
    with Image.open(prefix.with_suffix(".png")) as image:
        gray = image.convert("L")
        px = dpi / 25.4
        box = (
            math.ceil(area.x * px) + 1,
            math.ceil(area.y * px) + 1,
            math.floor((area.x + area.w) * px) - 1,
            math.floor((area.y + area.h) * px) - 1,
        )
        return int((np.asarray(gray.crop(box)) < 100).sum())


def test_signature_strokes_are_drawn_in_the_signature_box(
    catalog: TemplateCatalog, tmp_path: Path
) -> None:
    template = catalog.get("jidou-teate")
    values = _filled(template)
    area = signature_area(template, values)
    assert area.w > 100 and area.h > 15  # a full-width box on this form
    signed = render_application_pdf(template, values, _signature(), _meta(template))
    unsigned = render_application_pdf(template, values, None, _meta(template))
    dark_signed = _dark_pixels(signed, tmp_path, area)
    dark_unsigned = _dark_pixels(unsigned, tmp_path, area)
    assert dark_unsigned == 0
    assert dark_signed > 300  # a wave and a loop, about 0.5 mm wide, tens of mm long
    # the strokes are vector curves, not an image
    assert b"/Subtype /Image" not in signed


def test_signature_keeps_the_pad_aspect_ratio(catalog: TemplateCatalog, tmp_path: Path) -> None:
    """A diagonal drawn corner to corner on a square pad stays at 45° in a wide box."""
    template = catalog.get("juminhyo-request")
    values = _filled(template)
    diagonal = Signature(
        strokes=(tuple(SignaturePoint(x=i / 20, y=i / 20, t=i * 10) for i in range(21)),),
        pad_aspect_ratio=1.0,
    )
    pdf = render_application_pdf(template, values, diagonal, _meta(template))
    area = signature_area(template, values)
    path = tmp_path / "d.pdf"
    path.write_bytes(pdf)
    dpi = 100
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            str(dpi),
            "-gray",
            "-png",
            "-singlefile",
            str(path),
            str(tmp_path / "d"),
        ],
        check=True,
        timeout=60,
    )
    px = dpi / 25.4
    with Image.open(tmp_path / "d.png") as image:
        gray = np.asarray(image.convert("L"))
    x0, y0 = math.ceil(area.x * px) + 1, math.ceil(area.y * px) + 1
    x1, y1 = math.floor((area.x + area.w) * px) - 1, math.floor((area.y + area.h) * px) - 1
    rows, cols = np.nonzero(gray[y0:y1, x0:x1] < 100)
    dark = [(int(x) + x0, int(y) + y0) for y, x in zip(rows, cols, strict=True)]
    xs = [x for x, _ in dark]
    ys = [y for _, y in dark]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    assert abs(width - height) <= 3, (width, height)
    centre = (min(xs) + max(xs)) / 2
    assert abs(centre - (x0 + x1) / 2) <= 3  # centred in the box


# --------------------------------------------------------------------------------------
# Models on the wire
# --------------------------------------------------------------------------------------


def test_signature_sizes_are_bounded() -> None:
    point = {"x": 0.5, "y": 0.5, "t": 0}
    ok = Signature.model_validate({"strokes": [[point] * 1000] * 4, "pad_aspect_ratio": 2.5})
    assert ok.point_count == 4000
    too_many = {"strokes": [[point] * 1000] * 5, "pad_aspect_ratio": 2.5}
    with pytest.raises(ValidationError, match="at most 4000 points"):
        Signature.model_validate(too_many)
    with pytest.raises(ValidationError):
        Signature.model_validate({"strokes": [[point] * 1001], "pad_aspect_ratio": 2.5})
    with pytest.raises(ValidationError):
        Signature.model_validate({"strokes": [[point]] * 65, "pad_aspect_ratio": 2.5})
    for bad in ({"x": 1.5, "y": 0, "t": 0}, {"x": float("nan"), "y": 0, "t": 0}):
        with pytest.raises(ValidationError):
            Signature.model_validate({"strokes": [[bad]], "pad_aspect_ratio": 2.5})
    with pytest.raises(ValidationError):
        Signature.model_validate({"strokes": [], "pad_aspect_ratio": 2.5})
    with pytest.raises(ValidationError):
        Signature.model_validate({"strokes": [[point]], "pad_aspect_ratio": 0})
    # the largest signature is well under a megabyte of JSON
    assert len(ok.model_dump_json()) < 200_000


def test_values_and_meta_on_the_wire() -> None:
    values = FormValues.model_validate_json(
        '{"form_id": "juminhyo-request",'
        ' "values": {"applicant_name": "𠮷田", "include_head": true}}'
    )
    assert values.values == {"applicant_name": "𠮷田", "include_head": True}
    with pytest.raises(ValidationError):
        FormValues.model_validate({"form_id": "x", "values": {"a": "b" * 2001}})
    with pytest.raises(ValidationError):
        FormValues.model_validate({"form_id": "x", "values": {"Bad Key": "b"}})
    with pytest.raises(ValidationError, match="time zone"):
        ApplicationMeta(
            application_id="a",
            form_id="x",
            session_id="s",
            booth_id="b",
            staff_id="t",
            submitted_at=datetime(2025, 6, 1, 10, 0),
        )


def test_a_long_form_continues_on_a_second_page(catalog: TemplateCatalog, tmp_path: Path) -> None:
    template = catalog.get("juumin-idou")
    notes = "\n".join(f"{n}行目：前住所地の手当と医療費助成の引継ぎを相談。" for n in range(1, 13))
    entered = FormValues(form_id=template.id, values={"notes": notes})
    values = validate_values(template, _filled(template).merged(entered), today=TODAY)
    assert values.errors == ()
    area = signature_area(template, values.values)
    assert area.page == 2
    pdf = render_application_pdf(template, values.values, _signature(), _meta(template))
    text = _pdf_text(pdf, tmp_path)
    assert text.count("申請番号 Application ID: app-20250601-0001") == 2
    assert "1/2" in text and "2/2" in text
    assert _squash(notes) in _squash(text)
    assert _dark_pixels(pdf, tmp_path, area) > 300
