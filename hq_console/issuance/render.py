"""Certificate PDFs: A4, a real text layer in Noto Sans CJK JP (embedded, subset), so
names like 𠮷田・髙橋・﨑山 print and extract exactly as the register holds them.

Every page carries the document number and the verification code; the last page of each
copy carries the issue date (和暦), the issuer, the verification code in large type, a QR
code of the verification URL and how to verify. With several copies (通数) the PDF holds
each copy in turn, so the printer prints the document once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

from fpdf import FPDF
from fpdf.enums import Align, XPos, YPos
from fpdf.fonts import FontFace

from hq_console.issuance.certificates import (
    TITLES,
    CertificateContent,
    Fee,
    ResidentRecordContent,
    SealContent,
    TaxContent,
    subtitle,
)
from hq_console.issuance.codes import grouped
from hq_console.issuance.connector import SEX_JA
from shared.forms.wareki import to_wareki, to_wareki_fiscal_year, to_wareki_year
from shared.pdf_fonts import add_japanese_fonts, heavy_text

FONT: Final = "noto"

MARGIN: Final = 18.0  # mm
LABEL_WIDTH: Final = 48.0
QR_SIZE: Final = 30.0
VERIFY_BLOCK_HEIGHT: Final = 62.0
INK: Final = (20, 20, 20)
GREY: Final = (90, 90, 90)
RED: Final = (200, 30, 30)


@dataclass(frozen=True, slots=True)
class Issuer:
    """Who issues, as printed (from ConsoleConfig)."""

    city_name: str
    title: str  # 多摩市長
    name: str  # the mayor's name, may be ""
    office: str  # 多摩市役所 市民課
    sample: bool  # print 見本 / SAMPLE


@dataclass(frozen=True, slots=True)
class IssueStamp:
    """What makes one issued certificate unique."""

    document_number: str
    issued_on: date
    verification_code: str  # canonical (16 characters)
    verify_page: str  # {public_base_url}/verify
    fee: Fee

    @property
    def verify_url(self) -> str:
        return f"{self.verify_page}/{grouped(self.verification_code)}"


class _CertificatePdf(FPDF):
    def __init__(self, stamp: IssueStamp, title: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.stamp = stamp
        self.copy_label = ""
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(auto=True, margin=MARGIN + 6)
        # One weight: bold is drawn (heavy_text), which halves the time to write the PDF.
        add_japanese_fonts(self, FONT, bold=False)
        self.set_title(f"{title} {stamp.document_number}")
        self.set_creator("Ekichika")
        self.set_lang("ja")

    def footer(self) -> None:
        self.set_y(-MARGIN)
        self.set_font(FONT, size=7.5)
        self.set_text_color(*GREY)
        self.cell(
            0,
            4,
            f"文書番号 {self.stamp.document_number}　検証コード "
            f"{grouped(self.stamp.verification_code)}　{self.copy_label}　{self.page_no()}ページ",
            align=Align.C,
        )
        self.set_text_color(*INK)


def render_certificate(content: CertificateContent, stamp: IssueStamp, issuer: Issuer) -> bytes:
    """The certificate as an unsigned PDF (sign it with :class:`CertificateSigner`)."""
    title = TITLES[content.kind]
    pdf = _CertificatePdf(stamp, title)
    for copy in range(1, stamp.fee.copies + 1):
        pdf.copy_label = f"{copy}通目／全{stamp.fee.copies}通"
        pdf.add_page()
        _header(pdf, content, stamp, issuer)
        match content:
            case ResidentRecordContent():
                _resident_record(pdf, content)
            case SealContent():
                _seal(pdf, content)
            case TaxContent():
                _tax(pdf, content)
        _attestation(pdf, content, stamp, issuer)
        _verification(pdf, stamp)
    return bytes(pdf.output())


# --------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------


def _header(pdf: FPDF, content: CertificateContent, stamp: IssueStamp, issuer: Issuer) -> None:
    if issuer.sample:
        pdf.set_text_color(*RED)
        with heavy_text(pdf, FONT, 11):
            pdf.cell(
                0,
                6,
                "見本　この証明書は見本です。効力はありません。 SAMPLE — not valid",
                align=Align.C,
                new_x=XPos.LMARGIN,
                new_y=YPos.NEXT,
            )
        pdf.set_text_color(*INK)
    pdf.set_font(FONT, size=9)
    pdf.cell(
        0,
        5,
        f"文書番号　{stamp.document_number}",
        align=Align.R,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.cell(
        0,
        5,
        f"発行日　{to_wareki(stamp.issued_on)}",
        align=Align.R,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(3)
    with heavy_text(pdf, FONT, 20):
        pdf.cell(0, 11, TITLES[content.kind], align=Align.C, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    sub = subtitle(content)
    if sub:
        pdf.set_font(FONT, size=11)
        pdf.cell(0, 6, sub, align=Align.C, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)


def _rows(pdf: FPDF, rows: list[tuple[str, str]], *, heading: str = "") -> None:
    """A two-column table of label and value; long values wrap inside their cell."""
    pdf.set_font(FONT, size=10.5)
    label_style = FontFace(fill_color=(236, 239, 243))
    with pdf.table(
        col_widths=(LABEL_WIDTH, pdf.epw - LABEL_WIDTH),
        width=pdf.epw,
        first_row_as_headings=False,
        text_align=(Align.L, Align.L),
        v_align="TOP",
        line_height=6.2,
        padding=(1.2, 2.0),
    ) as table:
        if heading:
            row = table.row()
            # A darker band marks the heading (one font weight only: see _CertificatePdf).
            row.cell(heading, colspan=2, style=FontFace(fill_color=(208, 216, 228)))
        for label, value in rows:
            row = table.row()
            row.cell(label, style=label_style)
            row.cell(value or "―")
    pdf.ln(3)


def _resident_record(pdf: FPDF, content: ResidentRecordContent) -> None:
    household = content.household
    head: list[tuple[str, str]] = [("住所", household.address)]
    if content.show_relationship:
        head.append(("世帯主", household.head_name))
    _rows(pdf, head)
    for index, m in enumerate(content.members, start=1):
        rows = [
            ("氏名", m.name),
            ("ふりがな", m.name_kana),
            ("生年月日", to_wareki(m.birth_date)),
            ("性別", SEX_JA[m.sex]),
        ]
        if content.show_relationship:
            rows.append(("続柄", m.relationship))
        rows += [
            ("住民となった年月日", to_wareki(m.became_resident_on)),
            ("住所を定めた年月日", to_wareki(m.address_since)),
            ("前住所", m.previous_address),
        ]
        if content.show_honseki:
            rows += [("本籍", m.honseki), ("筆頭者", m.hittosha)]
        _rows(pdf, rows, heading=f"{index}")


def _seal(pdf: FPDF, content: SealContent) -> None:
    seal = content.seal
    pdf.set_font(FONT, size=10)
    box = 42.0
    x = (pdf.w - box) / 2
    y = pdf.get_y()
    pdf.set_draw_color(*GREY)
    pdf.rect(x, y, box, box)
    pdf.set_xy(x, y + 1)
    pdf.cell(box, 5, "印影", align=Align.C)
    # The registered impression: a round seal with its characters.
    radius = 14.0
    cx, cy = x + box / 2, y + box / 2 + 2
    pdf.set_draw_color(*RED)
    pdf.set_line_width(1.0)
    pdf.circle(x=cx, y=cy, radius=radius)
    pdf.set_line_width(0.2)
    pdf.set_text_color(*RED)
    size = 20 if len(seal.seal_text) <= 2 else 14
    pdf.set_xy(cx - radius, cy - size * 0.18)
    with heavy_text(pdf, FONT, size):
        pdf.cell(2 * radius, size * 0.36, seal.seal_text, align=Align.C)
    pdf.set_text_color(*INK)
    pdf.set_draw_color(*INK)
    pdf.set_xy(MARGIN, y + box + 5)
    _rows(
        pdf,
        [
            ("登録番号", seal.registration_number),
            ("氏名", seal.name),
            ("生年月日", to_wareki(seal.birth_date)),
            ("性別", SEX_JA[seal.sex]),
            ("住所", seal.address),
            ("登録年月日", to_wareki(seal.registered_on)),
        ],
    )


def _yen(value: int) -> str:
    return f"{value:,}円"


def _tax(pdf: FPDF, content: TaxContent) -> None:
    tax = content.tax
    year = to_wareki_fiscal_year(tax.fiscal_year)
    income_year = to_wareki_year(tax.fiscal_year - 1)
    _rows(
        pdf,
        [
            ("年度", f"{year}（{income_year}分の所得）"),
            (f"住所（{year[:-1]}1月1日現在）", tax.address),
            ("氏名", tax.name),
            ("生年月日", to_wareki(tax.birth_date)),
        ],
    )
    _rows(
        pdf,
        [
            ("給与収入", _yen(tax.salary_income)),
            ("給与所得", _yen(tax.employment_income)),
            ("その他の所得", _yen(tax.other_income)),
            ("総所得金額", _yen(tax.total_income)),
            ("所得控除合計", _yen(tax.deductions)),
            ("課税標準額", _yen(tax.taxable_income)),
            ("扶養人数", f"{tax.dependents}人"),
        ],
        heading=f"所得（{income_year}分）",
    )
    _rows(
        pdf,
        [
            ("市民税 所得割", _yen(tax.municipal_income_levy)),
            ("市民税 均等割", _yen(tax.municipal_per_capita)),
            ("都道府県民税 所得割", _yen(tax.prefectural_income_levy)),
            ("都道府県民税 均等割", _yen(tax.prefectural_per_capita)),
            ("年税額", _yen(tax.annual_tax)),
        ],
        heading=f"税額（{year}）",
    )


def _attestation_text(content: CertificateContent) -> str:
    match content:
        case ResidentRecordContent():
            scope = "世帯全員" if content.whole_household else "世帯の一部"
            omitted = [
                part
                for part, shown in (
                    ("世帯主・続柄", content.show_relationship),
                    ("本籍・筆頭者", content.show_honseki),
                )
                if not shown
            ]
            text = f"この写しは、{scope}の住民票の原本と相違ないことを証明する。"
            if omitted:
                text += f"\n（{'、'.join(omitted)}の記載は省略）"
            return text
        case SealContent():
            return "この写しは、登録されている印影と相違ないことを証明する。"
        case TaxContent():
            return "上記のとおり証明する。"


def _attestation(pdf: FPDF, content: CertificateContent, stamp: IssueStamp, issuer: Issuer) -> None:
    if pdf.get_y() + 40 + VERIFY_BLOCK_HEIGHT > pdf.h - MARGIN - 6:
        pdf.add_page()
    pdf.ln(2)
    pdf.set_font(FONT, size=11)
    pdf.multi_cell(0, 6.5, _attestation_text(content), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    pdf.cell(0, 6, to_wareki(stamp.issued_on), align=Align.R, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    signer = f"{issuer.title}　{issuer.name}".strip()
    seal = 15.0
    y = pdf.get_y()
    with heavy_text(pdf, FONT, 13):
        pdf.cell(pdf.epw - seal - 3, 9, signer, align=Align.R)
    # 職印 (the official seal), drawn in red right of the issuer's name.
    sx = pdf.w - MARGIN - seal
    pdf.set_draw_color(*RED)
    pdf.set_text_color(*RED)
    pdf.set_line_width(0.6)
    pdf.rect(sx, y - 1, seal, seal)
    pdf.set_font(FONT, size=6)
    pdf.set_xy(sx, y + 3)
    pdf.multi_cell(seal, 3.2, f"{issuer.title}\n之印", align=Align.C)
    pdf.set_line_width(0.2)
    pdf.set_text_color(*INK)
    pdf.set_draw_color(*INK)
    pdf.set_xy(MARGIN, y + seal)
    pdf.set_font(FONT, size=9)
    pdf.cell(
        0,
        5,
        f"発行元　{issuer.office}（{issuer.city_name}）",
        align=Align.R,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.cell(
        0,
        5,
        f"手数料　1通 {stamp.fee.per_copy_yen:,}円（{stamp.fee.copies}通 計"
        f"{stamp.fee.total_yen:,}円）",
        align=Align.R,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )


def _verification(pdf: FPDF, stamp: IssueStamp) -> None:
    if pdf.get_y() + VERIFY_BLOCK_HEIGHT > pdf.h - MARGIN - 6:
        pdf.add_page()
    top = pdf.h - MARGIN - 8 - VERIFY_BLOCK_HEIGHT
    top = max(top, pdf.get_y() + 4)
    pdf.set_draw_color(*GREY)
    pdf.rect(MARGIN, top, pdf.epw, VERIFY_BLOCK_HEIGHT)
    _qr(pdf, stamp.verify_url, pdf.w - MARGIN - QR_SIZE - 5, top + 6, QR_SIZE)
    text_width = pdf.epw - QR_SIZE - 16
    pdf.set_xy(MARGIN + 5, top + 4)
    with heavy_text(pdf, FONT, 10):
        pdf.cell(
            text_width, 6, "検証コード　Verification code", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.set_x(MARGIN + 5)
    with heavy_text(pdf, FONT, 18):
        pdf.cell(
            text_width, 10, grouped(stamp.verification_code), new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.set_font(FONT, size=8.5)
    note = (
        "この証明書が本物で、現在も有効かどうかは、次のページで検証コードを入力するか、"
        "右のQRコードを読み取って確認できます。表示されるのは有効・失効の別と、"
        "証明書の種類・文書番号・発行日・発行元だけです（氏名や住所は表示されません）。"
        "この証明書のPDFには電子署名が付いています。\n"
        f"{stamp.verify_page}\n"
        "Check this certificate at the page above with the code, or scan the QR code."
    )
    pdf.set_x(MARGIN + 5)
    pdf.multi_cell(text_width, 4.4, note, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(*INK)


def _qr(pdf: FPDF, data: str, x: float, y: float, size: float) -> None:
    """A QR code drawn as vector squares (sharp at any printer resolution)."""
    import qrcode  # type: ignore[import-untyped]
    from qrcode.constants import ERROR_CORRECT_M  # type: ignore[import-untyped]

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=0)
    qr.add_data(data)
    qr.make(fit=True)
    matrix: list[list[bool]] = qr.get_matrix()
    module = size / len(matrix)
    pdf.set_fill_color(0, 0, 0)
    for r, line in enumerate(matrix):
        c = 0
        while c < len(line):
            if not line[c]:
                c += 1
                continue
            start = c
            while c < len(line) and line[c]:
                c += 1
            # One rectangle per run of dark modules; a hair wider to avoid seams.
            pdf.rect(
                x + start * module, y + r * module, (c - start) * module + 0.01, module + 0.01, "F"
            )
