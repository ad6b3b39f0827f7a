"""The issuance service: look residents up, issue certificates (render, sign, store,
audit), revoke them, and answer the public verification page.

One :class:`IssuanceService` per console process (``app[ISSUANCE]``, built by
``setup_issuance``). It holds no personal data beyond the duration of a call: the PDF is
the only place the resident's data is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hq_console.issuance.certificates import (
    PREFIXES,
    TITLES,
    TITLES_EN,
    CertificateKind,
    CertificateRequest,
    Fee,
    fee_for,
    gather_content,
    recorded_options,
)
from hq_console.issuance.codes import canonical, code_digest, new_code
from hq_console.issuance.connector import CityRegister, Household, ResidentFacts, ResidentLookup
from hq_console.issuance.errors import DocumentNotFound, IssuanceError, SigningError
from hq_console.issuance.render import Issuer, IssueStamp, render_certificate
from hq_console.issuance.signing import CertificateSigner
from hq_console.issuance.simulated import DEFAULT_REGISTER, SimulatedRegister
from shared.config import ConsoleConfig
from shared.forms.wareki import to_wareki
from shared.store.audit import append_audit
from shared.store.models import IssuedDocument

log = logging.getLogger(__name__)

JST: Final = ZoneInfo("Asia/Tokyo")
NUMBER_DIGITS: Final = 5
MAX_NUMBER_ATTEMPTS: Final = 5
MAX_REASON_LENGTH: Final = 200


class DocumentStatus(StrEnum):
    ISSUED = "issued"
    REVOKED = "revoked"


class Verdict(StrEnum):
    VALID = "valid"  # 有効
    REVOKED = "revoked"  # 失効
    UNKNOWN = "unknown"  # 該当なし


@dataclass(frozen=True, slots=True)
class Verification:
    """What the public verification page shows: only what is needed to compare with the
    paper. ``kind`` … ``issuer`` are None when the code is unknown."""

    verdict: Verdict
    kind: CertificateKind | None = None
    title: str = ""  # 住民票の写し …
    title_en: str = ""
    document_number: str = ""
    issued_on: str = ""  # 和暦, as printed
    issued_at: datetime | None = None
    issuer: str = ""  # 多摩市役所 市民課（多摩市長）
    revoked_on: str = ""  # 和暦, when revoked


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """The parts of ConsoleConfig issuance uses."""

    issuer: Issuer
    public_base_url: str
    fees_yen: Mapping[str, int]

    @classmethod
    def from_config(cls, config: ConsoleConfig) -> IssuerSettings:
        return cls(
            issuer=Issuer(
                city_name=config.city_name,
                title=config.issuer_title,
                name=config.issuer_name,
                office=config.issuing_office,
                sample=config.certificate_sample_mark,
            ),
            public_base_url=config.public_base_url.rstrip("/"),
            fees_yen=dict(config.certificate_fee_yen),
        )

    @property
    def verify_page(self) -> str:
        return f"{self.public_base_url}/verify"

    @property
    def issuer_label(self) -> str:
        return f"{self.issuer.office}（{self.issuer.title}）"


def open_register(config: ConsoleConfig) -> SimulatedRegister:
    """The business systems connector the configuration names."""
    match config.business_systems:
        case "simulated":
            return SimulatedRegister.from_file(config.register_path or DEFAULT_REGISTER)


def open_signer(config: ConsoleConfig) -> CertificateSigner | None:
    """The configured signer, or None when no issuing key is configured."""
    if not config.issuing_key_path and not config.issuing_cert_path:
        return None
    return CertificateSigner(
        config.issuing_key_path,
        config.issuing_cert_path,
        [Path(p) for p in config.issuing_chain_paths],
        location=config.city_name,
    )


class IssuanceService:
    """Issues, revokes and verifies certificates."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        register: CityRegister,
        signer: CertificateSigner | None,
        settings: IssuerSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._register = register
        self._signer = signer
        self._settings = settings
        self._clock = clock
        self._number_lock = asyncio.Lock()
        self._last_numbers: dict[str, int] = {}
        self._closed = False

    @classmethod
    def from_config(
        cls, config: ConsoleConfig, sessions: async_sessionmaker[AsyncSession]
    ) -> IssuanceService:
        return cls(
            sessions=sessions,
            register=open_register(config),
            signer=open_signer(config),
            settings=IssuerSettings.from_config(config),
        )

    @property
    def settings(self) -> IssuerSettings:
        return self._settings

    @property
    def can_issue(self) -> bool:
        """False when no issuing key is configured (verification still works)."""
        return self._signer is not None

    # ---------------------------------------------------------------- business systems

    async def find_resident(self, facts: ResidentFacts) -> ResidentLookup:
        """Match the card's 4 facts with the resident register."""
        return await self._register.find_resident(facts)

    async def household(self, resident_id: str) -> Household:
        """The resident's household, for choosing members of a 住民票の写し."""
        return await self._register.household(resident_id)

    async def tax_years(self, resident_id: str) -> tuple[int, ...]:
        """Fiscal years a 課税・所得証明書 can be issued for, newest first."""
        return await self._register.tax_years(resident_id)

    def fee(self, request: CertificateRequest) -> Fee:
        """手数料 of a request (per copy and total), to show before issuing."""
        return fee_for(request.kind, request.copies, self._settings.fees_yen)

    # ------------------------------------------------------------------------ issuing

    async def issue(
        self,
        request: CertificateRequest,
        *,
        resident_id: str,
        staff_id: str,
        session_id: str | None = None,
        booth_id: str | None = None,
    ) -> IssuedDocument:
        """Render the certificate from the business systems, sign it, store it and append
        an audit record (action ``certificate_issued``). The returned row holds the signed
        PDF (``pdf``); the verification code is printed in it and stored only as a hash.

        Raises :class:`RegisterError` (no such record, e.g. no seal registration) or
        :class:`SigningError` (no issuing key configured)."""
        if self._signer is None:
            raise SigningError(
                "署名鍵が設定されていないため、証明書を発行できません。",
                "No issuing key is configured; certificates cannot be issued.",
            )
        fee = self.fee(request)
        content = await gather_content(self._register, request, resident_id)
        now = self._clock()
        issued_on = now.astimezone(JST).date()
        for _attempt in range(MAX_NUMBER_ATTEMPTS):
            number = await self._next_number(request.kind, issued_on)
            code = new_code()
            stamp = IssueStamp(
                document_number=number,
                issued_on=issued_on,
                verification_code=code,
                verify_page=self._settings.verify_page,
                fee=fee,
            )
            unsigned = await asyncio.to_thread(
                render_certificate, content, stamp, self._settings.issuer
            )
            pdf = await self._signer.sign(unsigned)
            document = IssuedDocument(
                id=uuid.uuid4().hex,
                document_number=number,
                kind=request.kind.value,
                options=recorded_options(request),
                copies=fee.copies,
                fee_per_copy_yen=fee.per_copy_yen,
                fee_total_yen=fee.total_yen,
                session_id=session_id,
                booth_id=booth_id,
                staff_id=staff_id,
                code_sha256=code_digest(code),
                pdf_sha256=hashlib.sha256(pdf).hexdigest(),
                pdf=pdf,
                status=DocumentStatus.ISSUED.value,
                created_at=now,
            )
            try:
                async with self._sessions() as db, db.begin():
                    db.add(document)
                    await db.flush()
                    await append_audit(
                        db,
                        action="certificate_issued",
                        staff_id=staff_id,
                        booth_id=booth_id,
                        session_id=session_id,
                        object_id=document.id,
                        detail={
                            "kind": request.kind.value,
                            "document_number": number,
                            "copies": fee.copies,
                            "fee_total_yen": fee.total_yen,
                        },
                    )
            except IntegrityError:
                # Another console process took the number (or, once in 2^80, the code).
                log.warning("document number %s taken, numbering again", number)
                self._last_numbers.pop(self._prefix(request.kind, issued_on), None)
                continue
            log.info(
                "certificate %s (%s, %d copies) issued by staff %s",
                number,
                request.kind.value,
                fee.copies,
                staff_id,
            )
            return document
        raise IssuanceError(
            "文書番号を採番できませんでした。もう一度お試しください。",
            "Could not allocate a document number.",
        )

    @staticmethod
    def _prefix(kind: CertificateKind, issued_on: date) -> str:
        return f"{PREFIXES[kind]}-{issued_on:%Y%m%d}-"

    async def _next_number(self, kind: CertificateKind, issued_on: date) -> str:
        """``JR-20261130-00001``: per kind and day, in order (unique in the database)."""
        prefix = self._prefix(kind, issued_on)
        async with self._number_lock:
            async with self._sessions() as db:
                last = await db.scalar(
                    select(IssuedDocument.document_number)
                    .where(IssuedDocument.document_number.like(f"{prefix}%"))
                    .order_by(IssuedDocument.document_number.desc())
                    .limit(1)
                )
            stored = int(last.removeprefix(prefix)) if last else 0
            seq = max(stored, self._last_numbers.get(prefix, 0)) + 1
            self._last_numbers[prefix] = seq
        return f"{prefix}{seq:0{NUMBER_DIGITS}d}"

    async def document(self, document_id: str) -> IssuedDocument:
        """An issued document (with its PDF) for reprinting or display."""
        async with self._sessions() as db:
            document = await db.get(IssuedDocument, document_id)
        if document is None:
            raise DocumentNotFound("該当する発行記録がありません。", "No such issued document.")
        return document

    async def documents_of_session(self, session_id: str) -> list[IssuedDocument]:
        """The certificates issued in a call session, oldest first."""
        async with self._sessions() as db:
            rows = await db.scalars(
                select(IssuedDocument)
                .where(IssuedDocument.session_id == session_id)
                .order_by(IssuedDocument.created_at)
            )
            return list(rows)

    async def revoke(self, document_id: str, *, staff_id: str, reason: str) -> IssuedDocument:
        """Mark a certificate revoked (失効): the verification page says so from now on.
        Appends an audit record (``certificate_revoked``). Revoking twice is refused."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_LENGTH:
            raise IssuanceError(
                f"失効の理由を{MAX_REASON_LENGTH}文字以内で入力してください。",
                "A revocation reason of 1-200 characters is required.",
            )
        async with self._sessions() as db, db.begin():
            document = await db.get(IssuedDocument, document_id)
            if document is None:
                raise DocumentNotFound("該当する発行記録がありません。", "No such issued document.")
            if document.status == DocumentStatus.REVOKED:
                raise IssuanceError(
                    "この証明書はすでに失効しています。", "The certificate is already revoked."
                )
            document.status = DocumentStatus.REVOKED.value
            document.revoked_at = datetime.now(UTC)
            document.revoke_reason = reason
            await db.flush()
            await append_audit(
                db,
                action="certificate_revoked",
                staff_id=staff_id,
                booth_id=document.booth_id,
                session_id=document.session_id,
                object_id=document.id,
                detail={"kind": document.kind, "document_number": document.document_number},
            )
        log.info("certificate %s revoked by staff %s", document.document_number, staff_id)
        return document

    # ------------------------------------------------------------------- verification

    async def verify_code(self, code: str) -> Verification:
        """Look a printed verification code up: valid, revoked or unknown."""
        canonical_code = canonical(code)
        if canonical_code is None:
            return Verification(Verdict.UNKNOWN)
        async with self._sessions() as db:
            document = await db.scalar(
                select(IssuedDocument).where(
                    IssuedDocument.code_sha256 == code_digest(canonical_code)
                )
            )
        if document is None:
            return Verification(Verdict.UNKNOWN)
        kind = CertificateKind(document.kind)
        revoked = document.status == DocumentStatus.REVOKED
        return Verification(
            verdict=Verdict.REVOKED if revoked else Verdict.VALID,
            kind=kind,
            title=TITLES[kind],
            title_en=TITLES_EN[kind],
            document_number=document.document_number,
            issued_on=to_wareki(document.created_at.astimezone(JST).date()),
            issued_at=document.created_at,
            issuer=self._settings.issuer_label,
            revoked_on=(
                to_wareki(document.revoked_at.astimezone(JST).date())
                if revoked and document.revoked_at
                else ""
            ),
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._register.aclose()
