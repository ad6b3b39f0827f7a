"""Noto Sans CJK JP for PDFs made with fpdf2, loaded once per process.

fpdf2 parses a font file in ``add_font`` (for Noto Sans CJK: 44,810 code points, their
widths and glyph ids — about half a second per weight) and subsets it when the PDF is
written. The parsed metrics never change, so :func:`add_japanese_fonts` parses each weight
once, keeps it as a prototype, and gives every document a copy that shares the metrics but
has its own glyph subset and its own (lazily opened) font file, which the subsetter may cut
down in place. Documents render the same as with ``add_font``; only the repeated parse is
gone. Thread-safe: documents are rendered in worker threads.
"""

from __future__ import annotations

import copy
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from fontTools import ttLib  # type: ignore[import-untyped]
from fpdf import FPDF
from fpdf.enums import TextMode
from fpdf.fonts import SubsetMap, TTFFont

FONT_DIR: Final = Path("/usr/share/fonts/opentype/noto")
FONT_REGULAR: Final = FONT_DIR / "NotoSansCJK-Regular.ttc"  # face 0 is Japanese (JP)
FONT_BOLD: Final = FONT_DIR / "NotoSansCJK-Bold.ttc"

_prototypes: dict[tuple[Path, str], tuple[TTFFont, bytes]] = {}
_lock = threading.Lock()


def _prototype(path: Path, style: str) -> tuple[TTFFont, bytes]:
    """The parsed font and the file's bytes (read once: no file stays open)."""
    key = (path, style)
    with _lock:
        found = _prototypes.get(key)
        if found is None:
            try:
                data = path.read_bytes()
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"{path} is missing: PDFs need Noto Sans CJK JP (Debian package fonts-noto-cjk)"
                ) from err
            scratch = FPDF()
            scratch.add_font("prototype", style=style, fname=str(path))
            font = scratch.fonts[f"prototype{style}"]
            assert isinstance(font, TTFFont)
            font.ttfont.close()  # every document opens its own from ``data``
            found = (font, data)
            _prototypes[key] = found
        return found


def _add(pdf: FPDF, family: str, style: str, path: Path) -> None:
    prototype, data = _prototype(path, style)
    font = copy.copy(prototype)
    font.i = len(pdf.fonts) + 1
    font.fontkey = f"{family.lower()}{style}"
    # The document's own: the font file (the subsetter edits it in place), its glyphs.
    font.ttfont = ttLib.TTFont(
        io.BytesIO(data), recalcTimestamp=False, recalcBBoxes=False, fontNumber=0, lazy=True
    )
    font.subset = SubsetMap(font)
    font.biggest_size_pt = 0
    font.missing_glyphs = []
    font._hbfont = None
    pdf.fonts[font.fontkey] = font
    if font.is_cff and font.is_cid_keyed:
        pdf._set_min_pdf_version("1.6")


def add_japanese_fonts(pdf: FPDF, family: str, *, bold: bool = True) -> None:
    """Register Noto Sans CJK JP as ``family`` (and its bold as style ``"B"``) in ``pdf``."""
    _add(pdf, family, "", FONT_REGULAR)
    if bold:
        _add(pdf, family, "B", FONT_BOLD)


@contextmanager
def heavy_text(pdf: FPDF, family: str, size_pt: float) -> Iterator[None]:
    """Text in the regular face drawn bold: filled and outlined in its own colour (a stroke
    of about 2.5 % of the em). Saves embedding a second weight, which costs as much time as
    the first when the PDF is written. The graphics state is restored afterwards."""
    with pdf.local_context(
        font_family=family,
        font_size_pt=size_pt,
        font_style="",
        text_mode=TextMode.FILL_STROKE,
        line_width=size_pt * 0.0088,  # mm
        draw_color=pdf.text_color,
    ):
        yield
