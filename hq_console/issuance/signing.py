"""PDF signatures on certificates (pyHanko), their validation, and a local test CA.

The issuing key and certificate come from configuration (PEM or DER files):
``issuing_key_path``, ``issuing_cert_path`` and ``issuing_chain_paths`` (the intermediate
and root certificates, embedded in each signature so readers can build the chain). Each
certificate is signed as a certification signature (PAdES baseline B-B, DocMDP "no
changes"): a reader that trusts the root shows it valid, and any change after signing
breaks it.

:func:`make_test_ca` writes a root CA and an issuing certificate for demonstrations and
tests only; a city uses a certificate from its own PKI (e.g. LGPKI) instead.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyhanko.keys import load_certs_from_pemder_data, load_private_key_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from hq_console.issuance.errors import SigningError

log = logging.getLogger(__name__)

SIGNATURE_FIELD: Final = "CitySignature"


class CertificateSigner:
    """Signs certificate PDFs with one key and certificate chain, loaded once."""

    def __init__(
        self,
        key_path: str | Path,
        cert_path: str | Path,
        chain_paths: Sequence[str | Path] = (),
        *,
        reason: str = "証明書の発行",
        location: str = "",
    ) -> None:
        if not str(key_path) or not str(cert_path):
            raise SigningError(
                "証明書の署名鍵が設定されていません（issuing_key_path / issuing_cert_path）。",
                "No issuing key or certificate is configured.",
            )
        try:
            key = load_private_key_from_pemder(Path(key_path), passphrase=None)
            cert = _read_certs(Path(cert_path))[0]
            chain = [c for p in chain_paths for c in _read_certs(Path(p))]
        except (OSError, ValueError, TypeError) as err:
            log.error("issuing key or certificate unreadable: %s", type(err).__name__)
            raise SigningError(
                "証明書の署名鍵または電子証明書を読み込めません。設定のファイルを確認してください。",
                f"The issuing key or certificate cannot be read: {err}",
            ) from err
        self._signer = signers.SimpleSigner(
            signing_cert=cert,
            signing_key=key,
            cert_registry=_store([cert, *chain]),
        )
        self._reason = reason
        self._location = location
        self.subject = cert.subject.human_friendly

    async def sign(self, pdf: bytes) -> bytes:
        """The PDF with a certification signature appended as an incremental update."""
        meta = signers.PdfSignatureMetadata(
            field_name=SIGNATURE_FIELD,
            md_algorithm="sha256",
            reason=self._reason,
            location=self._location or None,
            subfilter=fields.SigSeedSubFilter.PADES,
            certify=True,
            docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        )
        try:
            writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
            out = io.BytesIO()
            await signers.PdfSigner(meta, signer=self._signer).async_sign_pdf(writer, output=out)
        except (PdfError, PyHankoSigningError, ValueError) as err:
            log.error("signing a certificate failed: %s", type(err).__name__)
            raise SigningError(
                "証明書に電子署名できませんでした。", f"Signing failed: {err}"
            ) from err
        return out.getvalue()


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """What validating a certificate PDF found."""

    signed: bool  # the PDF has a signature at all
    intact: bool  # the signed bytes are unchanged
    trusted: bool  # the signer's chain ends at a trusted root
    covers_whole_file: bool  # nothing was appended after signing
    signer: str  # the signer's subject, "" if unsigned

    @property
    def valid(self) -> bool:
        return self.signed and self.intact and self.trusted and self.covers_whole_file


async def check_signature(pdf: bytes, trust_roots: Sequence[bytes]) -> SignatureCheck:
    """Validate the certificate signature of ``pdf`` against ``trust_roots`` (PEM or DER
    root certificates). Never fetches anything from the network."""
    roots = [_load_cert(data) for data in trust_roots]
    try:
        reader = PdfFileReader(io.BytesIO(pdf))
        embedded = list(reader.embedded_signatures)
    except (PdfError, ValueError) as err:
        log.info("not a readable PDF: %s", type(err).__name__)
        return SignatureCheck(False, False, False, False, "")
    if not embedded:
        return SignatureCheck(False, False, False, False, "")
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    try:
        status = await async_validate_pdf_signature(embedded[0], context)
    except (PdfError, ValueError) as err:
        log.info("signature unreadable: %s", type(err).__name__)
        return SignatureCheck(True, False, False, False, "")
    from pyhanko.sign.validation import SignatureCoverageLevel

    return SignatureCheck(
        signed=True,
        intact=bool(status.intact and status.valid),
        trusted=bool(status.trusted),
        covers_whole_file=status.coverage == SignatureCoverageLevel.ENTIRE_FILE,
        signer=status.signing_cert.subject.human_friendly,
    )


def _load_cert(data: bytes) -> Any:
    """An asn1crypto certificate from PEM or DER bytes."""
    certs = list(load_certs_from_pemder_data(data))
    if not certs:
        raise ValueError("no certificate in the data")
    return certs[0]


def _read_certs(path: Path) -> list[Any]:
    certs = list(load_certs_from_pemder_data(path.read_bytes()))
    if not certs:
        raise ValueError(f"no certificate in {path.name}")
    return certs


def _store(certs: list[Any]) -> SimpleCertificateStore:
    store = SimpleCertificateStore()  # type: ignore[no-untyped-call]
    for cert in certs:
        store.register(cert)
    return store


# --------------------------------------------------------------------------------------
# Test CA
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalCaFiles:
    """The files :func:`make_test_ca` writes."""

    root_cert: Path  # trust anchor (import into a PDF reader to see signatures valid)
    issuing_key: Path  # private key of the issuing certificate (mode 0600)
    issuing_cert: Path
    chain: tuple[Path, ...]  # what issuing_chain_paths should list


def make_test_ca(
    out_dir: str | Path,
    *,
    city_name: str = "多摩市",
    issuer_title: str = "多摩市長",
    valid_days: int = 825,
    now: dt.datetime | None = None,
) -> LocalCaFiles:
    """Write a local test root CA and an issuing certificate signed by it (ECDSA P-256).

    For demonstrations and tests only: the root's private key is not kept, so nothing
    else can ever be signed with it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{city_name} (TEST)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{city_name} テスト用ルート認証局"),
        ]
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days * 2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{city_name} (TEST)"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer_title} (テスト用)"),
                ]
            )
        )
        .issuer_name(root_name)
        .public_key(issuing_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    files = LocalCaFiles(
        root_cert=out / "test-root-ca.pem",
        issuing_key=out / "issuing-key.pem",
        issuing_cert=out / "issuing-cert.pem",
        chain=(out / "test-root-ca.pem",),
    )
    files.root_cert.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    files.issuing_cert.write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    key_pem = issuing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(files.issuing_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    os.chmod(files.issuing_key, 0o600)
    return files
