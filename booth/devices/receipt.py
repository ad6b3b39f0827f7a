"""Rendering printed matter: receipts as ESC/POS raster images, A4 pages as PDF.

Receipt printers cannot print Japanese reliably from their own fonts (python-escpos sends
kanji as GB18030 and kana as ``?``; printer fonts lack many name kanji), so every receipt is
laid out with Pillow in Noto Sans CJK JP, turned into a 1-bit image at the printer's dot
width and sent as ``GS v 0`` raster bands. QR codes are drawn into the same image, so what
the simulator previews is exactly what the printer gets.

A4 documents are rendered the same way at 300 dpi and written as a PDF by Pillow (1-bit,
CCITT G4). reportlab cannot embed Noto CJK (its outlines are CFF, and reportlab only reads
TrueType outlines); a raster page at 300 dpi keeps one font, one layout engine and no extra
dependency, at the price of a larger file and no text layer.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont, ImageOps

from shared.errors import DeviceError

FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
FONT_FAMILY = "Noto Sans CJK JP"

RECEIPT_WIDTH_80MM = 576  # dots at 203 dpi on 80 mm paper (72 mm printable)
RECEIPT_WIDTH_58MM = 384
RASTER_BAND_ROWS = 960  # rows per GS v 0 command; printers limit the height of one image

# ESC/POS commands used here.
ESC_INIT = b"\x1b\x40"  # ESC @
GS_RASTER = b"\x1d\x76\x30"  # GS v 0
GS_CUT_FEED = b"\x1d\x56\x42"  # GS V 66 n: feed n and partial cut
ESC_FEED_LINES = b"\x1b\x64"  # ESC d n

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


@dataclass(frozen=True)
class Receipt:
    """What to print on a receipt. ``title`` names the job in logs and print queues; it
    must not hold personal data."""

    blocks: tuple[Block, ...]
    title: str = "receipt"

    def to_json_dict(self) -> dict[str, Any]:
        return {"title": self.title, "blocks": [_block_to_dict(b) for b in self.blocks]}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            blocks=tuple(_block_from_dict(b) for b in data["blocks"]),
            title=str(data.get("title", "receipt")),
        )


def _block_to_dict(block: Block) -> dict[str, Any]:
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


def _block_from_dict(data: dict[str, Any]) -> Block:
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
# Receipts


def render_receipt(
    receipt: Receipt, width: int = RECEIPT_WIDTH_80MM, margin: int = 8
) -> Image.Image:
    """The receipt as a 1-bit image ``width`` dots wide (a multiple of 8)."""
    if width % 8:
        raise ValueError("the dot width of a receipt printer is a multiple of 8")
    return to_bilevel(render_blocks(receipt.blocks, width, margin))


def encode_escpos(
    image: Image.Image, *, cut: bool = True, feed_lines: int = 4, band_rows: int = RASTER_BAND_ROWS
) -> bytes:
    """ESC/POS for ``image``: initialise, the image as ``GS v 0`` bands, feed, cut."""
    mono = image.convert("1")
    if mono.width % 8:
        raise ValueError("the image width must be a multiple of 8")
    # In mode "1" a set bit is white; on paper a set bit is a dot.
    ink = ImageOps.invert(mono.convert("L")).convert("1", dither=Image.Dither.NONE)
    out = bytearray(ESC_INIT)
    width_bytes = ink.width // 8
    for top in range(0, ink.height, band_rows):
        band = ink.crop((0, top, ink.width, min(ink.height, top + band_rows)))
        out += GS_RASTER + bytes([0])  # m = 0: normal density
        out += width_bytes.to_bytes(2, "little") + band.height.to_bytes(2, "little")
        out += band.tobytes()
    if cut:
        out += GS_CUT_FEED + bytes([min(255, feed_lines * 24)])
    elif feed_lines:
        out += ESC_FEED_LINES + bytes([feed_lines])
    return bytes(out)


def receipt_escpos(receipt: Receipt, width: int = RECEIPT_WIDTH_80MM) -> tuple[bytes, Image.Image]:
    """Render and encode: the bytes to send and the image they print."""
    image = render_receipt(receipt, width)
    return encode_escpos(image), image


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
