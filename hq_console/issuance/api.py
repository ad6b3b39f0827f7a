"""The staff API of certificate issuance during a call, and the booth's document fetch.

Routes (registered by :func:`setup_issuance_api`, from ``setup_issuance``)
  GET  /api/issuance/catalog                      certificates, their options and fees
  POST /api/sessions/{session_id}/issuance/match  本人確認: the card's 4 facts against the
                                                  register → match (household members' names)
                                                  / none / several
  POST /api/sessions/{session_id}/issuance/fee    the fee of a request
  POST /api/sessions/{session_id}/issuance/documents   issue → the document and the
                                                  ``print_job`` to send to the booth
  GET  /api/sessions/{session_id}/issuance/documents   the session's issued documents
  POST /api/issuance/documents/{document_id}/print     a fresh token for the same print job
                                                  (the booth did not get it: resend)
  POST /api/issuance/documents/{document_id}/reprint   再印刷 (``{"confirm": true}``):
                                                  audit ``certificate_reprinted`` → the
                                                  ``print_job_command`` to send
  POST /api/issuance/documents/{document_id}/revoke    失効 (``{"reason": …}``)
  GET  /api/booth/documents/{token}               the booth fetches a PDF (Basic auth, one
                                                  time, see hq_console.issuance.delivery)

Everything under /api/sessions/… and the print/reprint routes is for the HQ staff member of
the live call session only. The resident matched in a session is kept in memory for that
session (issuing is always for that resident); nothing personal is logged or stored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select

from hq_console.app import (
    BOOTH_THROTTLE,
    CONFIG,
    HQ_ROLES,
    SESSIONS,
    _api_staff,
)
from hq_console.auth import SignedInStaff
from hq_console.booth_auth import BOOTH_API_PREFIX, authenticated_booth
from hq_console.issuance.certificates import (
    MAX_COPIES,
    TITLES,
    TITLES_EN,
    CertificateKind,
    CertificateRequest,
    certificate_request,
)
from hq_console.issuance.connector import (
    NoResidentMatch,
    ResidentFacts,
    SeveralResidentMatches,
)
from hq_console.issuance.delivery import (
    FETCH_STATUS,
    DocumentTokens,
    FetchRefusal,
    FetchRefused,
)
from hq_console.issuance.errors import (
    DocumentNotFound,
    IssuanceError,
    RegisterUnavailable,
    SigningError,
)
from hq_console.issuance.service import DocumentStatus, IssuanceService
from hq_console.issuance.web import ISSUANCE
from shared.protocol import DocumentFetch, PrintJobCommand, PrintJobRequest, StaffRole
from shared.store.audit import append_audit
from shared.store.models import AuditRecord, CallSession, IssuedDocument

log = logging.getLogger(__name__)

_TOKEN: Final = re.compile(r"^[0-9a-f]{64}$")
_DOCUMENT_ID: Final = re.compile(r"^[0-9a-f]{32}$")
REPRINT_ACTION: Final = "certificate_reprinted"
MAX_MATCHED: Final = 1000  # sessions whose matched resident is remembered


@dataclass(slots=True)
class MatchedResident:
    """The resident 本人確認 found in a session (identifiers of the register only)."""

    resident_id: str
    member_ids: frozenset[str]


class IssuanceDesk:
    """Per-process state of the staff API: fetch tokens and each live session's match."""

    def __init__(self, tokens: DocumentTokens) -> None:
        self.tokens = tokens
        self._matched: dict[str, MatchedResident] = {}

    def remember(self, session_id: str, match: MatchedResident | None) -> None:
        self._matched.pop(session_id, None)
        if match is not None:
            while len(self._matched) >= MAX_MATCHED:  # bounded: the oldest calls go first
                del self._matched[next(iter(self._matched))]
            self._matched[session_id] = match

    def matched(self, session_id: str) -> MatchedResident | None:
        return self._matched.get(session_id)


ISSUANCE_DESK: Final = web.AppKey("issuance_desk", IssuanceDesk)


class CardFacts(BaseModel):
    """The card's 4 basic facts as the staff page holds them (CardBasicInfo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=400)]
    address: Annotated[str, Field(min_length=1, max_length=1000)]
    birth_date: date
    sex: Literal["male", "female", "other", "unknown"]


class ReprintConfirmation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    confirm: bool


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Annotated[str, Field(min_length=1, max_length=200)]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, message_en: str = "") -> web.Response:
    return web.json_response(
        {"error": code, "message": message, "message_en": message_en}, status=status
    )


def _issuance_error(err: IssuanceError) -> web.Response:
    match err:
        case DocumentNotFound():
            status, code = 404, "not_found"
        case RegisterUnavailable():
            status, code = 503, "register_unavailable"
        case SigningError():
            status, code = 503, "cannot_sign"
        case _:
            status, code = 409, "refused"
    return _error(status, code, err.message, err.message_en)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as err:
        raise web.HTTPBadRequest(
            text='{"error":"bad_json","message":"JSON の本文が必要です。"}',
            content_type="application/json",
        ) from err


def _invalid(err: ValidationError) -> web.Response:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid"}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return _error(
        400, "invalid", "入力内容を確認してください。", f"{where}: {first.get('msg', '')}"[:200]
    )


async def _hq_staff(request: web.Request) -> SignedInStaff:
    staff = await _api_staff(request)
    if staff.role not in HQ_ROLES:
        raise web.HTTPForbidden(
            text='{"error":"forbidden","message":"本庁の職員のみ利用できます。"}',
            content_type="application/json",
        )
    return staff


async def _own_live_call(
    request: web.Request, staff: SignedInStaff, session_id: str
) -> CallSession:
    """The live call session ``session_id`` of this staff member, or a 403."""
    async with request.app[SESSIONS]() as db:
        call = await db.get(CallSession, session_id)
    if call is None or call.staff_id != staff.staff_id or call.ended_at is not None:
        log.warning("issuance refused: staff %s has no live session %s", staff.staff_id, session_id)
        raise web.HTTPForbidden(
            text=(
                '{"error":"not_your_session","message":"通話中のご自身の受付でのみ操作できます。",'
                '"message_en":"Only during your own live call."}'
            ),
            content_type="application/json",
        )
    return call


def _document_json(document: IssuedDocument, reprints: int = 0) -> dict[str, object]:
    kind = CertificateKind(document.kind)
    return {
        "id": document.id,
        "document_number": document.document_number,
        "kind": kind.value,
        "title": TITLES[kind],
        "title_en": TITLES_EN[kind],
        "copies": document.copies,
        "fee_per_copy_yen": document.fee_per_copy_yen,
        "fee_total_yen": document.fee_total_yen,
        "status": document.status,
        "created_at": document.created_at.isoformat(),
        "revoked_at": document.revoked_at.isoformat() if document.revoked_at else None,
        "size": len(document.pdf),
        "sha256": document.pdf_sha256,
        "reprints": reprints,
    }


def print_title(document: IssuedDocument) -> str:
    """The job's name in print queues: the document number (no personal data)."""
    return f"certificate {document.document_number}"


def print_job_for(document: IssuedDocument, token: str) -> PrintJobRequest:
    """The data-channel message that makes the booth fetch and print ``document``."""
    return PrintJobRequest(
        job_id=document.id,
        target="a4",
        title=print_title(document),
        size=len(document.pdf),
        sha256=document.pdf_sha256,
        fetch=DocumentFetch(token=token),
    )


async def _reprint_counts(request: web.Request, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    async with request.app[SESSIONS]() as db:
        rows = await db.execute(
            select(AuditRecord.object_id, func.count())
            .where(AuditRecord.action == REPRINT_ACTION, AuditRecord.object_id.in_(ids))
            .group_by(AuditRecord.object_id)
        )
        return {str(object_id): int(count) for object_id, count in rows.all()}


async def _session_document(
    request: web.Request, staff: SignedInStaff
) -> tuple[IssuedDocument, CallSession]:
    """The document of the URL, issued in a live session of this staff member."""
    document_id = request.match_info["document_id"]
    if not _DOCUMENT_ID.match(document_id):
        raise web.HTTPNotFound(
            text='{"error":"not_found","message":"該当する発行記録がありません。"}',
            content_type="application/json",
        )
    try:
        document = await request.app[ISSUANCE].document(document_id)
    except DocumentNotFound:
        raise web.HTTPNotFound(
            text='{"error":"not_found","message":"該当する発行記録がありません。"}',
            content_type="application/json",
        ) from None
    if document.session_id is None:
        raise web.HTTPConflict(
            text='{"error":"no_session","message":"通話中に発行された証明書ではありません。"}',
            content_type="application/json",
        )
    call = await _own_live_call(request, staff, document.session_id)
    return document, call


def _not_revoked(document: IssuedDocument) -> web.Response | None:
    if document.status == DocumentStatus.REVOKED:
        return _error(
            409,
            "revoked",
            "この証明書は失効しています。印刷できません。",
            "The certificate is revoked.",
        )
    return None


# --------------------------------------------------------------------------------------
# Staff routes
# --------------------------------------------------------------------------------------


async def api_catalog(request: web.Request) -> web.StreamResponse:
    await _hq_staff(request)
    service = request.app[ISSUANCE]
    fees = service.settings.fees_yen
    certificates = [
        {
            "kind": kind.value,
            "title": TITLES[kind],
            "title_en": TITLES_EN[kind],
            "fee_per_copy_yen": fees.get(kind.value),
            "options": {
                CertificateKind.RESIDENT_RECORD: ["scope", "show_relationship", "show_honseki"],
                CertificateKind.SEAL_REGISTRATION: [],
                CertificateKind.TAX_INCOME: ["fiscal_year"],
            }[kind],
        }
        for kind in CertificateKind
        if kind.value in fees
    ]
    return web.json_response(
        {"can_issue": service.can_issue, "max_copies": MAX_COPIES, "certificates": certificates}
    )


async def api_match(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    session_id = request.match_info["session_id"]
    await _own_live_call(request, staff, session_id)
    try:
        facts = CardFacts.model_validate(await _json(request))
    except ValidationError as err:
        return _invalid(err)
    service = request.app[ISSUANCE]
    desk = request.app[ISSUANCE_DESK]
    desk.remember(session_id, None)
    try:
        lookup = await service.find_resident(
            ResidentFacts(facts.name, facts.address, facts.birth_date, facts.sex)
        )
        if isinstance(lookup, NoResidentMatch):
            log.info("resident lookup for session %s: no match", session_id)
            return web.json_response({"result": "none"})
        if isinstance(lookup, SeveralResidentMatches):
            log.info("resident lookup for session %s: %d matches", session_id, lookup.count)
            return web.json_response({"result": "several", "count": lookup.count})
        household = await service.household(lookup.resident_id)
        tax_years = await service.tax_years(lookup.resident_id)
    except IssuanceError as err:
        return _issuance_error(err)
    desk.remember(
        session_id,
        MatchedResident(lookup.resident_id, frozenset(m.resident_id for m in household.members)),
    )
    log.info("resident lookup for session %s: matched %s", session_id, lookup.resident_id)
    return web.json_response(
        {
            "result": "match",
            "members": [
                {
                    "id": m.resident_id,
                    "name": m.name,
                    "relationship": m.relationship,
                    "self": m.resident_id == lookup.resident_id,
                }
                for m in household.members
            ],
            "tax_years": list(tax_years),
        }
    )


async def _certificate_request(request: web.Request) -> CertificateRequest | web.Response:
    try:
        return certificate_request.validate_python(await _json(request))
    except ValidationError as err:
        return _invalid(err)


async def api_fee(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    await _own_live_call(request, staff, request.match_info["session_id"])
    wanted = await _certificate_request(request)
    if isinstance(wanted, web.Response):
        return wanted
    try:
        fee = request.app[ISSUANCE].fee(wanted)
    except IssuanceError as err:
        return _issuance_error(err)
    return web.json_response(
        {"per_copy_yen": fee.per_copy_yen, "copies": fee.copies, "total_yen": fee.total_yen}
    )


async def api_issue(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    session_id = request.match_info["session_id"]
    call = await _own_live_call(request, staff, session_id)
    wanted = await _certificate_request(request)
    if isinstance(wanted, web.Response):
        return wanted
    desk = request.app[ISSUANCE_DESK]
    matched = desk.matched(session_id)
    if matched is None:
        return _error(
            409,
            "not_identified",
            "先に本人確認（カード情報と住民記録の照合）を行ってください。",
            "Match the resident first.",
        )
    member_ids = getattr(wanted, "member_ids", ())
    if any(m not in matched.member_ids for m in member_ids):
        return _error(409, "not_in_household", "選択された方はこの世帯に登録されていません。")
    service: IssuanceService = request.app[ISSUANCE]
    try:
        document = await service.issue(
            wanted,
            resident_id=matched.resident_id,
            staff_id=staff.staff_id,
            session_id=session_id,
            booth_id=call.booth_id,
        )
    except IssuanceError as err:
        return _issuance_error(err)
    token = desk.tokens.issue(document.id, booth_id=call.booth_id, session_id=session_id)
    job = print_job_for(document, token)
    return web.json_response(
        {
            "document": _document_json(document),
            "print_job": job.model_dump(mode="json"),
            "token_ttl_s": desk.tokens.ttl_s,
        },
        status=201,
    )


async def api_session_documents(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    session_id = request.match_info["session_id"]
    async with request.app[SESSIONS]() as db:
        call = await db.get(CallSession, session_id)
    if call is None or (call.staff_id != staff.staff_id and staff.role != StaffRole.ADMIN):
        return _error(403, "not_your_session", "ご自身の受付の記録のみ表示できます。")
    documents = await request.app[ISSUANCE].documents_of_session(session_id)
    counts = await _reprint_counts(request, [d.id for d in documents])
    return web.json_response(
        {"documents": [_document_json(d, counts.get(d.id, 0)) for d in documents]}
    )


async def api_print_again(request: web.Request) -> web.StreamResponse:
    """A fresh token for the original print job (the booth never got the document: the
    token expired, the fetch failed). The booth's spool prints a job id at most once, so
    this cannot print a second copy; a second copy is a reprint."""
    staff = await _hq_staff(request)
    document, call = await _session_document(request, staff)
    refused = _not_revoked(document)
    if refused is not None:
        return refused
    desk = request.app[ISSUANCE_DESK]
    token = desk.tokens.issue(document.id, booth_id=call.booth_id, session_id=call.id)
    log.info("fresh fetch token for certificate %s by staff %s", document.id[:8], staff.staff_id)
    return web.json_response({"print_job": print_job_for(document, token).model_dump(mode="json")})


async def api_reprint(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    try:
        confirmation = ReprintConfirmation.model_validate(await _json(request))
    except ValidationError as err:
        return _invalid(err)
    if not confirmation.confirm:
        return _error(
            400,
            "confirmation_required",
            "再印刷には確認が必要です。",
            "A reprint needs the staff member's confirmation.",
        )
    document, call = await _session_document(request, staff)
    refused = _not_revoked(document)
    if refused is not None:
        return refused
    async with request.app[SESSIONS]() as db, db.begin():
        done = await db.scalar(
            select(func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.action == REPRINT_ACTION, AuditRecord.object_id == document.id)
        )
        reprint_no = int(done or 0) + 1
        await append_audit(
            db,
            action=REPRINT_ACTION,
            staff_id=staff.staff_id,
            booth_id=call.booth_id,
            session_id=call.id,
            object_id=document.id,
            detail={
                "kind": document.kind,
                "document_number": document.document_number,
                "reprint_no": reprint_no,
            },
        )
    desk = request.app[ISSUANCE_DESK]
    token = desk.tokens.issue(document.id, booth_id=call.booth_id, session_id=call.id)
    command = PrintJobCommand(
        job_id=document.id,
        action="reprint",
        reprint_no=reprint_no,
        fetch=DocumentFetch(token=token),
    )
    log.info(
        "certificate %s: reprint %d authorised by staff %s",
        document.document_number,
        reprint_no,
        staff.staff_id,
    )
    return web.json_response(
        {
            "document": _document_json(document, reprint_no),
            "print_job_command": command.model_dump(mode="json"),
        }
    )


async def api_revoke(request: web.Request) -> web.StreamResponse:
    staff = await _hq_staff(request)
    document_id = request.match_info["document_id"]
    try:
        revocation = Revocation.model_validate(await _json(request))
    except ValidationError as err:
        return _invalid(err)
    service = request.app[ISSUANCE]
    try:
        document = await service.document(document_id)
        if document.staff_id != staff.staff_id and staff.role != StaffRole.ADMIN:
            return _error(403, "forbidden", "発行した職員のみ失効できます。")
        document = await service.revoke(
            document_id, staff_id=staff.staff_id, reason=revocation.reason
        )
    except IssuanceError as err:
        return _issuance_error(err)
    counts = await _reprint_counts(request, [document.id])
    return web.json_response({"document": _document_json(document, counts.get(document.id, 0))})


# --------------------------------------------------------------------------------------
# The booth's fetch
# --------------------------------------------------------------------------------------


def _fetch_refused(booth_id: str, refusal: FetchRefusal) -> web.Response:
    log.warning("document fetch by booth %s refused: %s", booth_id, refusal.value)
    return web.json_response(
        {"error": refusal.value, "message": f"document fetch refused: {refusal.value}"},
        status=FETCH_STATUS[refusal],
    )


async def api_booth_document(request: web.Request) -> web.StreamResponse:
    booth_id = await authenticated_booth(
        request, request.app[SESSIONS], request.app[BOOTH_THROTTLE]
    )
    token = request.match_info["token"]
    if not _TOKEN.match(token):
        return _fetch_refused(booth_id, FetchRefusal.UNKNOWN)
    try:
        ticket = request.app[ISSUANCE_DESK].tokens.redeem(token, booth_id=booth_id)
    except FetchRefused as err:
        return _fetch_refused(booth_id, err.refusal)
    async with request.app[SESSIONS]() as db:
        call = await db.get(CallSession, ticket.session_id)
    if call is None or call.ended_at is not None or call.booth_id != booth_id:
        return _fetch_refused(booth_id, FetchRefusal.SESSION_ENDED)
    try:
        document = await request.app[ISSUANCE].document(ticket.document_id)
    except DocumentNotFound:
        return _fetch_refused(booth_id, FetchRefusal.UNKNOWN)
    if document.status == DocumentStatus.REVOKED:
        return _fetch_refused(booth_id, FetchRefusal.REVOKED)
    log.info("certificate %s fetched by booth %s", document.id[:8], booth_id)
    return web.Response(
        body=document.pdf,
        content_type="application/pdf",
        headers={"Cache-Control": "no-store", "X-Document-SHA256": document.pdf_sha256},
    )


def setup_issuance_api(app: web.Application) -> None:
    """Add the staff API and the booth's fetch route (called by ``setup_issuance``)."""
    app[ISSUANCE_DESK] = IssuanceDesk(DocumentTokens(app[CONFIG].document_token_ttl_s))
    router = app.router
    router.add_get("/api/issuance/catalog", api_catalog)
    router.add_post("/api/sessions/{session_id}/issuance/match", api_match)
    router.add_post("/api/sessions/{session_id}/issuance/fee", api_fee)
    router.add_post("/api/sessions/{session_id}/issuance/documents", api_issue)
    router.add_get("/api/sessions/{session_id}/issuance/documents", api_session_documents)
    router.add_post("/api/issuance/documents/{document_id}/print", api_print_again)
    router.add_post("/api/issuance/documents/{document_id}/reprint", api_reprint)
    router.add_post("/api/issuance/documents/{document_id}/revoke", api_revoke)
    router.add_get(BOOTH_API_PREFIX + "documents/{token}", api_booth_document)
