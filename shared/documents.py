"""Printed matter laid out with Pillow: text, QR codes and rules as images, A4 pages as PDF.

Receipt printers and the A4 printer both get pictures, not fonts: every block is drawn in
Noto Sans CJK JP, so Japanese prints the same everywhere. The booth turns the layout into
ESC/POS raster (``booth.devices.receipt``); HQ and the booth render A4 documents here.

A4 documents are rendered at 300 dpi and written as a PDF by Pillow (1-bit, CCITT G4).
reportlab cannot embed Noto CJK (its outlines are CFF, and reportlab only reads TrueType
outlines); a raster page at 300 dpi keeps one font, one layout engine and no extra
dependency, at the price of a larger file and no text layer.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont

from shared.errors import DeviceError

FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
FONT_FAMILY = "Noto Sans CJK JP"

Align = Literal["left", "center", "right"]

# Characters that must not start a line (Japanese line-breaking rules, simplified).
_NO_LINE_START = set(
    "、。，．,.・：；？！ー）」』】〕〉》ゝゞぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ"
)


@dataclass(frozen=True)
class TextBlock:
    """A paragraph; ``size`` is the font size in dots (24 ≈ 3 mm at 203 dpi)."""

    text: str
    size: int = 28
    bold: bool = False
    align: Align = "left"


@dataclass(frozen=True)
class QrBlock:
    """A QR code (error correction M); ``module`` is the size of one module in dots."""

    data: str
    module: int = 6
    align: Align = "center"


@dataclass(frozen=True)
class RuleBlock:
    """A horizontal line across the paper."""

    thickness: int = 2


@dataclass(frozen=True)
class SpaceBlock:
    """Empty space, ``dots`` high."""

    dots: int = 16


Block = TextBlock | QrBlock | RuleBlock | SpaceBlock


def block_to_dict(block: Block) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {
            "kind": "text",
            "text": block.text,
            "size": block.size,
            "bold": block.bold,
            "align": block.align,
        }
    if isinstance(block, QrBlock):
        return {"kind": "qr", "data": block.data, "module": block.module, "align": block.align}
    if isinstance(block, RuleBlock):
        return {"kind": "rule", "thickness": block.thickness}
    return {"kind": "space", "dots": block.dots}


def block_from_dict(data: dict[str, Any]) -> Block:
    kind = data.get("kind")
    if kind == "text":
        return TextBlock(
            str(data["text"]), int(data["size"]), bool(data["bold"]), _align(data["align"])
        )
    if kind == "qr":
        return QrBlock(str(data["data"]), int(data["module"]), _align(data["align"]))
    if kind == "rule":
        return RuleBlock(int(data["thickness"]))
    if kind == "space":
        return SpaceBlock(int(data["dots"]))
    raise ValueError(f"unknown receipt block kind {kind!r}")


def _align(value: object) -> Align:
    if value == "left" or value == "center" or value == "right":
        return value
    raise ValueError(f"unknown alignment {value!r}")


# --------------------------------------------------------------------------------------
# Fonts


@functools.lru_cache(maxsize=4)
def find_font_file(bold: bool = False) -> tuple[Path, int]:
    """The Noto Sans CJK file and the face index of its Japanese face."""
    name = "NotoSansCJK-Bold.ttc" if bold else "NotoSansCJK-Regular.ttc"
    for directory in FONT_DIRS:
        path = directory / name
        if not path.exists():
            continue
        for index in range(10):
            try:
                font = ImageFont.truetype(str(path), 12, index=index)
            except OSError:
                break
            if font.getname()[0] == FONT_FAMILY:
                return path, index
    if bold:
        return find_font_file(False)
    raise DeviceError(
        "the Japanese font Noto Sans CJK JP is not installed; install the Debian package "
        "fonts-noto-cjk"
    )


@functools.lru_cache(maxsize=64)
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    path, index = find_font_file(bold)
    return ImageFont.truetype(str(path), size, index=index)


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels. Japanese breaks between any
    two characters (keeping closing punctuation off a line start); Latin words stay whole
    when they fit."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for ch in paragraph:
            candidate = line + ch
            if not line or font.getlength(candidate) <= width:
                line = candidate
                continue
            if ch in _NO_LINE_START:  # hang the punctuation on the current line
                line = candidate
                continue
            head, tail = _split_latin_word(line)
            if head and tail and font.getlength(tail + ch) <= width:
                lines.append(head.rstrip())
                line = tail + ch
            else:
                lines.append(line.rstrip())
                line = ch.lstrip()
        lines.append(line)
    return lines


def _split_latin_word(line: str) -> tuple[str, str]:
    """Split off a trailing run of ASCII letters/digits so that it can move to the next line."""
    i = len(line)
    while i > 0 and line[i - 1].isascii() and line[i - 1].isalnum():
        i -= 1
    return line[:i], line[i:]


# --------------------------------------------------------------------------------------
# Layout


def render_blocks(blocks: Sequence[Block], width: int, margin: int) -> Image.Image:
    """Lay ``blocks`` out on a white canvas ``width`` pixels wide; mode "L"."""
    inner = width - 2 * margin
    parts: list[Image.Image] = []
    for block in blocks:
        parts.append(_render_block(block, inner))
    height = sum(p.height for p in parts) + 2 * margin
    canvas = Image.new("L", (width, max(height, 1)), 255)
    y = margin
    for block, part in zip(blocks, parts, strict=True):
        align = block.align if isinstance(block, TextBlock | QrBlock) else "left"
        x = margin + _offset(align, inner, part.width)
        canvas.paste(part, (x, y))
        y += part.height
    return canvas


def _offset(align: Align, inner: int, width: int) -> int:
    if align == "center":
        return max(0, (inner - width) // 2)
    if align == "right":
        return max(0, inner - width)
    return 0


def _render_block(block: Block, inner: int) -> Image.Image:
    if isinstance(block, TextBlock):
        font = _font(block.size, block.bold)
        lines = wrap_text(block.text, font, inner)
        ascent, descent = font.getmetrics()
        line_height = int((ascent + descent) * 1.15)
        text_width = max((int(font.getlength(line)) for line in lines), default=0)
        image = Image.new("L", (min(inner, max(text_width, 1)), line_height * len(lines)), 255)
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(lines):
            x = _offset(block.align, image.width, int(font.getlength(line)))
            draw.text((x, i * line_height), line, font=font, fill=0)
        return image
    if isinstance(block, QrBlock):
        return _render_qr(block, inner)
    if isinstance(block, RuleBlock):
        image = Image.new("L", (inner, block.thickness + 16), 255)
        ImageDraw.Draw(image).rectangle((0, 8, inner - 1, 8 + block.thickness - 1), fill=0)
        return image
    return Image.new("L", (inner, max(block.dots, 1)), 255)


def _render_qr(block: QrBlock, inner: int) -> Image.Image:
    import qrcode  # type: ignore[import-untyped]
    from qrcode.constants import ERROR_CORRECT_M  # type: ignore[import-untyped]

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=1, border=4)
    qr.add_data(block.data)
    qr.make(fit=True)
    matrix: list[list[bool]] = qr.get_matrix()
    modules = len(matrix)
    module = max(1, min(block.module, inner // modules))
    image = Image.new("L", (modules, modules), 255)
    image.putdata([0 if cell else 255 for row in matrix for cell in row])
    return image.resize((modules * module, modules * module), Image.Resampling.NEAREST)


def to_bilevel(image: Image.Image) -> Image.Image:
    """Threshold a greyscale image to mode "1" (no dithering: crisp text edges)."""
    return image.point(lambda v: 255 if v >= 128 else 0).convert("1", dither=Image.Dither.NONE)


# --------------------------------------------------------------------------------------
# A4 documents

A4_MM = (210, 297)


def render_a4_pdf(
    pages: Iterable[Sequence[Block]], *, dpi: int = 300, margin_mm: float = 15, title: str = ""
) -> bytes:
    """A PDF with one A4 page per item of ``pages`` (blocks laid out top to bottom)."""
    width = round(A4_MM[0] / 25.4 * dpi)
    height = round(A4_MM[1] / 25.4 * dpi)
    margin = round(margin_mm / 25.4 * dpi)
    images: list[Image.Image] = []
    for blocks in pages:
        page = Image.new("L", (width, height), 255)
        content = render_blocks(blocks, width, margin)
        page.paste(content.crop((0, 0, width, min(height, content.height))), (0, 0))
        images.append(to_bilevel(page))
    if not images:
        raise ValueError("a document needs at least one page")
    buffer = io.BytesIO()
    images[0].save(
        buffer, "PDF", resolution=float(dpi), save_all=True, append_images=images[1:], title=title
    )
    return buffer.getvalue()


def a4_test_document(printed_at: str, *, dpi: int = 300) -> bytes:
    """The 2-page A4 test document HQ can print at a booth (no personal data): a heading,
    Japanese and English text, a QR code and a page number on each page."""
    note = (
        "この文書は、本庁の遠隔窓口からブースの A4 プリンターへの印刷を確かめるための"
        "テスト文書です。個人情報は含まれていません。"
    )
    pages: list[list[Block]] = []
    for number in (1, 2):
        pages.append(
            [
                TextBlock("A4 テスト文書", 96, bold=True, align="center"),
                TextBlock("Ekichika A4 test document", 48, align="center"),
                RuleBlock(6),
                SpaceBlock(40),
                TextBlock(f"作成日時 {printed_at}", 48),
                SpaceBlock(40),
                TextBlock(note, 48),
                SpaceBlock(60),
                QrBlock(f"ekichika:a4-test:page-{number}", module=12),
                SpaceBlock(60),
                TextBlock(f"{number} / 2 ページ", 48, align="right"),
            ]
        )
    return render_a4_pdf(pages, dpi=dpi, title="A4 test document")
