"""The signed application as an A4 PDF with a text layer (fpdf2, Noto Sans CJK JP embedded).

Every label and value is real text (searchable, copyable, read by ``pdftotext``); dates
show 和暦 and 西暦; the signature is drawn as vector strokes (smooth curves) in the
signature box, scaled to the box with the pad's aspect ratio kept. The footer of every
page carries the application id, the submission time (JST) and the identifiers of the
booth, staff member and session.

Rendering is CPU-bound (about a second, mostly font subsetting): call it from a worker
thread (``asyncio.to_thread``) in a server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from fpdf import FPDF
from fpdf.enums import MethodReturnValue, StrokeCapStyle, StrokeJoinStyle, WrapMode

from shared.forms.display import display_value
from shared.forms.models import (
    DEPARTMENT_NAMES,
    GRID_COLUMNS,
    SIGNATURE_CELL,
    ApplicationMeta,
    FieldType,
    FormTemplate,
    FormValues,
    LayoutCell,
    LayoutSection,
    Signature,
)
from shared.forms.wareki import to_wareki
from shared.pdf_fonts import add_japanese_fonts

FONT = "noto"

JST = timezone(timedelta(hours=9), "JST")

PAGE_W, PAGE_H = 210.0, 297.0
MARGIN_X = 15.0
MARGIN_TOP = 14.0
FOOTER_H = 16.0
CONTENT_W = PAGE_W - 2 * MARGIN_X
COLUMN_W = CONTENT_W / GRID_COLUMNS
PAD = 1.5  # inside a cell, mm
LABEL_JA_PT = 7.5
LABEL_EN_PT = 6.0
VALUE_PT = 10.5
VALUE_LINE_H = 5.0
MIN_CELL_H = 12.0
PT_TO_MM = 25.4 / 72
INK = (20, 20, 20)
GREY = (110, 110, 110)
RULE = (150, 150, 150)
SECTION_FILL = (232, 236, 240)
SIGNATURE_PEN_MM = 0.55


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    w: float
    h: float


class _ApplicationPdf(FPDF):
    def __init__(self, template: FormTemplate, meta: ApplicationMeta) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.form = template
        self.meta = meta
        self.set_margins(MARGIN_X, MARGIN_TOP, MARGIN_X)
        self.set_auto_page_break(False)
        add_japanese_fonts(self, FONT)
        self.set_title(f"{template.title_ja} {meta.application_id}")
        self.set_subject(template.title_en)
        self.set_creator("Ekichika")
        self.set_lang("ja")
        self.alias_nb_pages()
        self.signature_area: PageArea | None = None

    def footer(self) -> None:
        meta = self.meta
        submitted = meta.submitted_at.astimezone(JST)
        y = PAGE_H - FOOTER_H + 3
        self.set_draw_color(*RULE)
        self.set_line_width(0.2)
        self.line(MARGIN_X, y, PAGE_W - MARGIN_X, y)
        self.set_text_color(*INK)
        self.set_font(FONT, size=8)
        self.set_xy(MARGIN_X, y + 1)
        when = (
            f"{submitted.year}年{submitted.month}月{submitted.day}日 "
            f"{submitted:%H:%M:%S}（{to_wareki(submitted.date())}）JST"
        )
        self.cell(
            CONTENT_W - 20,
            4,
            f"申請番号 Application ID: {meta.application_id}　提出日時 Submitted: {when}",
        )
        self.cell(20, 4, f"{self.page_no()}/{{nb}}", align="R")
        self.set_font(FONT, size=6.5)
        self.set_text_color(*GREY)
        self.set_xy(MARGIN_X, y + 5)
        self.cell(
            CONTENT_W,
            3.5,
            f"様式 Form: {self.form.id} v{self.form.version}　窓口 Booth: {meta.booth_id}"
            f"　職員 Staff: {meta.staff_id}　通話 Session: {meta.session_id}",
        )

    @property
    def bottom(self) -> float:
        return PAGE_H - FOOTER_H


def render_application_pdf(
    template: FormTemplate,
    values: FormValues,
    signature: Signature | None,
    meta: ApplicationMeta,
) -> bytes:
    """The application as PDF bytes. ``values`` should be validated (normalised) first;
    ``signature`` ``None`` leaves the signature box empty."""
    with _document(template, values, signature, meta) as pdf:
        return bytes(pdf.output())


@dataclass(frozen=True)
class PageArea:
    """A rectangle on a page of the PDF: ``page`` counts from 1; mm from the top left."""

    page: int
    x: float
    y: float
    w: float
    h: float


def signature_area(template: FormTemplate, values: FormValues) -> PageArea:
    """Where the signature strokes go when ``values`` are rendered (the inside of the
    signature box, below its label). Rows grow with their text, so it depends on values."""
    meta = ApplicationMeta(
        application_id="layout",
        form_id=template.id,
        session_id="layout",
        booth_id="layout",
        staff_id="layout",
        submitted_at=datetime.now(JST),
    )
    with _document(template, values, None, meta) as pdf:
        assert pdf.signature_area is not None
        return pdf.signature_area


@contextmanager
def _document(
    template: FormTemplate,
    values: FormValues,
    signature: Signature | None,
    meta: ApplicationMeta,
) -> Iterator[_ApplicationPdf]:
    """The laid-out document; the font files fpdf2 opened are closed afterwards."""
    if values.form_id != template.id or meta.form_id != template.id:
        raise ValueError(
            f"template {template.id!r}, values {values.form_id!r} and meta {meta.form_id!r} "
            "must be the same form"
        )
    pdf = _ApplicationPdf(template, meta)
    try:
        pdf.add_page()
        _header(pdf, template)
        for section in template.layout.sections:
            _section(pdf, template, section, values, signature)
        yield pdf
    finally:
        for font in pdf.fonts.values():
            ttfont = getattr(font, "ttfont", None)
            if ttfont is not None:
                ttfont.close()


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def _header(pdf: _ApplicationPdf, template: FormTemplate) -> None:
    dept_ja, dept_en = DEPARTMENT_NAMES[template.department]
    pdf.set_text_color(*INK)
    pdf.set_font(FONT, "B", 16)
    pdf.set_xy(MARGIN_X, MARGIN_TOP)
    pdf.cell(CONTENT_W * 0.7, 8, template.title_ja)
    pdf.set_font(FONT, size=8)
    pdf.set_text_color(*GREY)
    pdf.set_xy(MARGIN_X + CONTENT_W * 0.7, MARGIN_TOP + 1)
    pdf.cell(CONTENT_W * 0.3, 4, dept_ja, align="R")
    pdf.set_xy(MARGIN_X + CONTENT_W * 0.7, MARGIN_TOP + 4.5)
    pdf.cell(CONTENT_W * 0.3, 4, dept_en, align="R")
    pdf.set_font(FONT, size=9)
    pdf.set_xy(MARGIN_X, MARGIN_TOP + 8.5)
    pdf.cell(CONTENT_W, 4.5, template.title_en)
    y = MARGIN_TOP + 14
    if template.description_ja or template.description_en:
        pdf.set_text_color(*INK)
        pdf.set_font(FONT, size=8)
        pdf.set_xy(MARGIN_X, y)
        text = "\n".join(t for t in (template.description_ja, template.description_en) if t)
        pdf.multi_cell(CONTENT_W, 3.8, text, wrapmode=WrapMode.CHAR, align="L")
        y = pdf.get_y() + 1
    pdf.set_draw_color(*INK)
    pdf.set_line_width(0.4)
    pdf.line(MARGIN_X, y, PAGE_W - MARGIN_X, y)
    pdf.set_y(y + 2.5)


def _section(
    pdf: _ApplicationPdf,
    template: FormTemplate,
    section: LayoutSection,
    values: FormValues,
    signature: Signature | None,
) -> None:
    has_signature = any(c.field == SIGNATURE_CELL for row in section.rows for c in row)
    declaration = (
        [t for t in (template.declaration_ja, template.declaration_en) if t]
        if has_signature
        else []
    )
    heights = [_row_height(pdf, template, row, values) for row in section.rows]
    title_h = 7.0
    declaration_h = 4.2 * len(declaration) + (1.5 if declaration else 0)
    # keep the title with the first row
    if pdf.get_y() + title_h + declaration_h + heights[0] > pdf.bottom:
        pdf.add_page()
        pdf.set_y(MARGIN_TOP)
    y = pdf.get_y()
    pdf.set_fill_color(*SECTION_FILL)
    pdf.set_draw_color(*INK)
    pdf.set_line_width(0.3)
    pdf.rect(MARGIN_X, y, CONTENT_W, title_h, style="DF")
    pdf.set_text_color(*INK)
    pdf.set_font(FONT, "B", 10)
    pdf.set_xy(MARGIN_X + PAD, y + 1)
    pdf.cell(text=section.title_ja)
    pdf.set_font(FONT, size=8)
    pdf.set_text_color(*GREY)
    pdf.cell(text="　" + section.title_en)
    y += title_h
    if declaration:
        pdf.set_text_color(*INK)
        pdf.set_font(FONT, size=8.5)
        y += 0.8
        for line in declaration:
            pdf.set_xy(MARGIN_X + PAD, y)
            pdf.cell(CONTENT_W - 2 * PAD, 4.2, line)
            y += 4.2
        y += 0.7
    for row, height in zip(section.rows, heights, strict=True):
        if y + height > pdf.bottom:
            pdf.add_page()
            y = MARGIN_TOP
        x = MARGIN_X
        for cell in row:
            box = _Box(x, y, cell.span * COLUMN_W, height)
            if cell.field == SIGNATURE_CELL:
                _signature_cell(pdf, template, box, signature)
            else:
                _field_cell(pdf, template, cell, box, values)
            x += box.w
        y += height
    pdf.set_y(y + 3)


def _row_height(
    pdf: _ApplicationPdf, template: FormTemplate, row: Sequence[LayoutCell], values: FormValues
) -> float:
    height = MIN_CELL_H
    for cell in row:
        width = cell.span * COLUMN_W
        if cell.field == SIGNATURE_CELL:
            height = max(height, template.layout.signature_height_mm)
            continue
        field = template.field(cell.field)
        labels = _label_lines(pdf, field.label_ja, field.label_en, field.required, width)
        label_h = sum(line.height for line in labels)
        lines = _value_lines(pdf, template, cell, values, width)
        height = max(height, PAD + label_h + 0.6 + len(lines) * VALUE_LINE_H + PAD)
    return height


@dataclass(frozen=True)
class _LabelLine:
    parts: tuple[tuple[str, float, str, tuple[int, int, int]], ...]  # text, pt, style, rgb

    @property
    def height(self) -> float:
        return max(p[1] for p in self.parts) * PT_TO_MM * 1.35


def _label_lines(
    pdf: _ApplicationPdf, label_ja: str, label_en: str, required: bool, width: float
) -> list[_LabelLine]:
    """Label in Japanese then English: one line if both fit, else two, shrinking the type
    until each fits the cell (labels are never cut)."""
    inner = width - 2 * PAD
    ja = label_ja + ("（必須）" if required else "")
    for scale in (1.0, 0.9, 0.8, 0.7, 0.6):
        ja_pt, en_pt = LABEL_JA_PT * scale, LABEL_EN_PT * scale
        pdf.set_font(FONT, "B", ja_pt)
        ja_w = pdf.get_string_width(ja)
        pdf.set_font(FONT, size=en_pt)
        en_w = pdf.get_string_width("　" + label_en)
        ja_part = (ja, ja_pt, "B", INK)
        if ja_w + en_w <= inner:
            return [_LabelLine((ja_part, ("　" + label_en, en_pt, "", GREY)))]
        if ja_w <= inner and pdf.get_string_width(label_en) <= inner:
            return [_LabelLine((ja_part,)), _LabelLine(((label_en, en_pt, "", GREY),))]
    raise ValueError(f"the label {label_ja!r} / {label_en!r} does not fit a {width:.0f} mm cell")


def _value_lines(
    pdf: _ApplicationPdf,
    template: FormTemplate,
    cell: LayoutCell,
    values: FormValues,
    width: float,
) -> list[str]:
    field = template.field(cell.field)
    text, _ = display_value(template, field, values.get(field.id))
    if field.type is FieldType.CHECKBOX or not text:
        return [text]
    pdf.set_font(FONT, size=VALUE_PT)
    inner = width - 2 * PAD
    lines = pdf.multi_cell(
        inner,
        VALUE_LINE_H,
        text,
        dry_run=True,
        output=MethodReturnValue.LINES,
        wrapmode=WrapMode.CHAR,
        align="L",
    )
    assert isinstance(lines, list)
    return [str(line) for line in lines]


def _field_cell(
    pdf: _ApplicationPdf,
    template: FormTemplate,
    cell: LayoutCell,
    box: _Box,
    values: FormValues,
) -> None:
    field = template.field(cell.field)
    pdf.set_draw_color(*INK)
    pdf.set_line_width(0.2)
    pdf.rect(box.x, box.y, box.w, box.h)
    y = box.y + PAD
    for line in _label_lines(pdf, field.label_ja, field.label_en, field.required, box.w):
        x = box.x + PAD
        for part, pt, style, color in line.parts:
            pdf.set_font(FONT, style, pt)
            pdf.set_text_color(*color)
            pdf.set_xy(x, y)
            w = pdf.get_string_width(part)
            pdf.cell(w, line.height, part)
            x += w
        y += line.height
    y += 0.6
    pdf.set_text_color(*INK)
    pdf.set_font(FONT, size=VALUE_PT)
    if field.type is FieldType.CHECKBOX:
        checked = values.get(field.id) is True
        size = 3.6
        bx, by = box.x + PAD + 0.3, y + (VALUE_LINE_H - size) / 2
        pdf.set_line_width(0.3)
        pdf.rect(bx, by, size, size)
        if checked:
            pdf.set_line_width(0.5)
            pdf.line(bx + 0.6, by + size * 0.55, bx + size * 0.4, by + size - 0.6)
            pdf.line(bx + size * 0.4, by + size - 0.6, bx + size - 0.5, by + 0.5)
        text, _ = display_value(template, field, values.get(field.id))
        pdf.set_xy(bx + size + 1.2, y)
        pdf.cell(box.w - size - 2 * PAD - 1.5, VALUE_LINE_H, text)
        return
    for value_line in _value_lines(pdf, template, cell, values, box.w):
        pdf.set_xy(box.x + PAD, y)
        pdf.cell(box.w - 2 * PAD, VALUE_LINE_H, value_line)
        y += VALUE_LINE_H


def _signature_cell(
    pdf: _ApplicationPdf, template: FormTemplate, box: _Box, signature: Signature | None
) -> None:
    layout = template.layout
    pdf.set_draw_color(*INK)
    pdf.set_line_width(0.4)
    pdf.rect(box.x, box.y, box.w, box.h)
    pdf.set_xy(box.x + PAD, box.y + PAD)
    pdf.set_font(FONT, "B", LABEL_JA_PT)
    pdf.set_text_color(*INK)
    label_h = LABEL_JA_PT * PT_TO_MM * 1.35
    pdf.cell(pdf.get_string_width(layout.signature_label_ja), label_h, layout.signature_label_ja)
    pdf.set_font(FONT, size=LABEL_EN_PT)
    pdf.set_text_color(*GREY)
    pdf.cell(text="　" + layout.signature_label_en, h=label_h)
    area = _Box(
        box.x + 2 * PAD,
        box.y + PAD + label_h + 0.5,
        box.w - 4 * PAD,
        box.h - (PAD + label_h + 0.5) - 2 * PAD,
    )
    pdf.signature_area = PageArea(pdf.page_no(), area.x, area.y, area.w, area.h)
    if signature is not None:
        draw_signature(pdf, signature, area)


def draw_signature(pdf: FPDF, signature: Signature, area: _Box) -> None:
    """The strokes as smooth vector curves, fitted into ``area`` with the pad's aspect ratio
    kept and centred. One-point strokes (dots) become small filled circles."""
    aspect = signature.pad_aspect_ratio
    width = min(area.w, area.h * aspect)
    height = width / aspect
    ox = area.x + (area.w - width) / 2
    oy = area.y + (area.h - height) / 2

    def place(x: float, y: float) -> tuple[float, float]:
        return ox + x * width, oy + y * height

    pdf.set_draw_color(*INK)
    pdf.set_fill_color(*INK)
    for stroke in signature.strokes:
        points = _dedupe([place(p.x, p.y) for p in stroke])
        if len(points) == 1:
            x, y = points[0]
            pdf.circle(x, y, SIGNATURE_PEN_MM / 2, style="F")
            continue
        with pdf.new_path() as path:
            path.style.stroke_width = SIGNATURE_PEN_MM
            path.style.stroke_color = "#141414"
            path.style.fill_color = None
            path.style.stroke_cap_style = StrokeCapStyle.ROUND
            path.style.stroke_join_style = StrokeJoinStyle.ROUND
            path.style.auto_close = False
            path.move_to(*points[0])
            for c1, c2, end in _catmull_rom(points):
                path.curve_to(c1[0], c1[1], c2[0], c2[1], end[0], end[1])


Point = tuple[float, float]


def _dedupe(points: list[Point]) -> list[Point]:
    result = [points[0]]
    for p in points[1:]:
        if abs(p[0] - result[-1][0]) > 1e-4 or abs(p[1] - result[-1][1]) > 1e-4:
            result.append(p)
    return result


def _catmull_rom(points: Sequence[Point]) -> list[tuple[Point, Point, Point]]:
    """Cubic Bézier segments of the centripetal-free (uniform) Catmull-Rom spline through
    ``points``: the curve passes through every sampled point without corners."""
    segments: list[tuple[Point, Point, Point]] = []
    for i in range(len(points) - 1):
        p0 = points[i - 1] if i > 0 else points[i]
        p1, p2 = points[i], points[i + 1]
        p3 = points[i + 2] if i + 2 < len(points) else p2
        c1 = (p1[0] + (p2[0] - p0[0]) / 6, p1[1] + (p2[1] - p0[1]) / 6)
        c2 = (p2[0] - (p3[0] - p1[0]) / 6, p2[1] - (p3[1] - p1[1]) / 6)
        segments.append((c1, c2, p2))
    return segments
