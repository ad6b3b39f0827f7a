"""Checks a certificate PDF the booth fetched from the console before it is printed.

Two checks, both before the document reaches the spool:

* the bytes are exactly what staff announced on the data channel (size and SHA-256);
* the PDF's signature (pyHanko) is intact, covers the whole file and chains to one of the
  issuing CA roots of the booth's configuration (``BoothConfig.issuing_ca_paths``). No
  network access: revocation information is not fetched.

A booth with no root configured checks the SHA-256 only (and says so once in its log).
Failures come back as a Japanese sentence for staff; nothing of the document is logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import SignatureCoverageLevel, async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

NOT_PRINTED = "印刷していません。"
HASH_MISMATCH = "受け取った文書が発行時の内容と一致しません（サイズまたはSHA-256）。" + NOT_PRINTED
NOT_SIGNED = "文書に電子署名がありません。" + NOT_PRINTED
SIGNATURE_BROKEN = "電子署名が無効です（発行後に文書が変更されています）。" + NOT_PRINTED
SIGNATURE_UNTRUSTED = (
    "電子署名の発行元を確認できません（このブースが信頼する発行用認証局ではありません）。"
    + NOT_PRINTED
)
NOT_A_PDF = "受け取った文書がPDFではありません。" + NOT_PRINTED


def load_trust_roots(paths: Sequence[str]) -> list[Any]:
    """The root certificates (PEM or DER files); a missing or unreadable file is a
    configuration error."""
    roots: list[Any] = []
    for name in paths:
        path = Path(name)
        try:
            certs = list(load_certs_from_pemder_data(path.read_bytes()))
        except (OSError, ValueError) as err:
            raise ConfigError(f"issuing CA certificate {path} cannot be read: {err}") from err
        if not certs:
            raise ConfigError(f"issuing CA certificate {path} holds no certificate")
        roots.extend(certs)
    return roots


class DocumentCheck:
    """Checks fetched documents against the announced digest and the trusted roots."""

    def __init__(self, trust_roots: Sequence[Any]) -> None:
        self._roots = list(trust_roots)
        self._warned = False

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> DocumentCheck:
        return cls(load_trust_roots(paths))

    @property
    def checks_signatures(self) -> bool:
        return bool(self._roots)

    async def problem(self, document: bytes, *, size: int | None, sha256: str) -> str | None:
        """None when ``document`` may be printed, else why not (Japanese, for staff).
        ``size`` None: only the digest is compared."""
        if size is not None and len(document) != size:
            return HASH_MISMATCH
        if hashlib.sha256(document).hexdigest() != sha256:
            return HASH_MISMATCH
        if not document.startswith(b"%PDF-"):
            return NOT_A_PDF
        if not self._roots:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "no issuing CA configured (issuing_ca_paths): fetched documents are "
                    "checked by SHA-256 only, their signatures are not validated"
                )
            return None
        return await self._signature_problem(document)

    async def _signature_problem(self, document: bytes) -> str | None:
        try:
            reader = PdfFileReader(io.BytesIO(document))
            embedded = list(reader.embedded_signatures)
        except (PdfError, ValueError, KeyError) as err:
            logger.warning("fetched document unreadable: %s", type(err).__name__)
            return NOT_A_PDF
        if not embedded:
            return NOT_SIGNED
        context = ValidationContext(trust_roots=self._roots, allow_fetching=False)
        try:
            status = await async_validate_pdf_signature(embedded[-1], context)
        except (PdfError, ValueError, KeyError) as err:
            logger.warning("signature of a fetched document unreadable: %s", type(err).__name__)
            return SIGNATURE_BROKEN
        if not (status.intact and status.valid):
            return SIGNATURE_BROKEN
        if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
            return SIGNATURE_BROKEN
        if not status.trusted:
            return SIGNATURE_UNTRUSTED
        return None
