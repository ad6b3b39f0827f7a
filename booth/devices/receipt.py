"""Receipts: laid out as an image and sent to the printer as ESC/POS raster.

Receipt printers cannot print Japanese reliably from their own fonts (python-escpos sends
kanji as GB18030 and kana as ``?``; printer fonts lack many name kanji), so every receipt is
laid out with Pillow in Noto Sans CJK JP (:mod:`shared.documents`), turned into a 1-bit
image at the printer's dot width and sent as ``GS v 0`` raster bands. QR codes are drawn
into the same image, so what the simulator previews is exactly what the printer gets.

The layout blocks and the A4 renderer live in :mod:`shared.documents` (HQ renders A4
documents too); they are re-exported here for the booth's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from shared.documents import (
    A4_MM,
    FONT_DIRS,
    FONT_FAMILY,
    Align,
    Block,
    QrBlock,
    RuleBlock,
    SpaceBlock,
    TextBlock,
    block_from_dict,
    block_to_dict,
    find_font_file,
    render_a4_pdf,
    render_blocks,
    to_bilevel,
    wrap_text,
)

__all__ = [
    "A4_MM",
    "ESC_FEED_LINES",
    "ESC_INIT",
    "FONT_DIRS",
    "FONT_FAMILY",
    "GS_CUT_FEED",
    "GS_RASTER",
    "RASTER_BAND_ROWS",
    "RECEIPT_WIDTH_58MM",
    "RECEIPT_WIDTH_80MM",
    "Align",
    "Block",
    "QrBlock",
    "Receipt",
    "RuleBlock",
    "SpaceBlock",
    "TextBlock",
    "encode_escpos",
    "find_font_file",
    "receipt_escpos",
    "render_a4_pdf",
    "render_blocks",
    "render_receipt",
    "to_bilevel",
    "wrap_text",
]

RECEIPT_WIDTH_80MM = 576  # dots at 203 dpi on 80 mm paper (72 mm printable)
RECEIPT_WIDTH_58MM = 384
RASTER_BAND_ROWS = 960  # rows per GS v 0 command; printers limit the height of one image

# ESC/POS commands used here.
ESC_INIT = b"\x1b\x40"  # ESC @
GS_RASTER = b"\x1d\x76\x30"  # GS v 0
GS_CUT_FEED = b"\x1d\x56\x42"  # GS V 66 n: feed n and partial cut
ESC_FEED_LINES = b"\x1b\x64"  # ESC d n


@dataclass(frozen=True)
class Receipt:
    """What to print on a receipt. ``title`` names the job in logs and print queues; it
    must not hold personal data."""

    blocks: tuple[Block, ...]
    title: str = "receipt"

    def to_json_dict(self) -> dict[str, Any]:
        return {"title": self.title, "blocks": [block_to_dict(b) for b in self.blocks]}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            blocks=tuple(block_from_dict(b) for b in data["blocks"]),
            title=str(data.get("title", "receipt")),
        )


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
