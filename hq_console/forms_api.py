"""書かない窓口 in the console: the forms a staff member fills during a call, their drafts, the
revisions shown at the booth, and the signed applications.

Routes (registered by :func:`setup_forms`; JSON unless said otherwise)
  GET    /api/forms[?session_id=…]       the forms of the staff member's departments (the
                                          call's department first when a session is named)
  GET    /api/forms/{form_id}             one template: fields, labels, help, choices, layout
  POST   /api/forms/{form_id}/validate    {values, complete?} → errors (ja/en), normalised
                                          values and display text (dates in both calendars)
  GET    /api/sessions/{sid}/forms/{form_id}/draft   the draft (values, shown revision)
  PUT    /api/sessions/{sid}/forms/{form_id}/draft   {values}: save as the staff member types
  DELETE /api/sessions/{sid}/forms/{form_id}/draft   abandon the form (the draft is deleted)
  POST   /api/sessions/{sid}/forms/{form_id}/show    {values} → a new revision and the
                                          ``form_show`` message to send to the booth
  POST   /api/sessions/{sid}/forms/{form_id}/applications
                                          {values, revision, signature}: 申請を確定
  GET    /api/applications/{application_id}/pdf      the stored PDF

Drafts and revisions: only the staff member of a live session saves a draft or shows a
form. Each ``show`` stores the normalised values as the next revision; the resident signs
that revision on the booth screen. Submitting needs the latest revision and exactly its
values: a signature made on an earlier revision, or values changed after the resident saw
them, are refused. The draft (which holds the resident's personal data) is deleted in the
same transaction that stores the application, and drafts left behind are purged
``form_draft_retention_s`` after their call ended.

Nothing here logs or audits personal data: the audit record ``application_submitted``
holds identifiers, the form id and version and the PDF's SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hq_console import app as console
from hq_console.auth import SignedInStaff
from shared import wire
from shared.forms import (
    ApplicationMeta,
    FieldError,
    FormTemplate,
    FormValues,
    Signature,
    TemplateCatalog,
    display_value,
    render_application_pdf,
    resident_view,
    validate_values,
)
from shared.protocol import FormShow, FormViewItem, FormViewSection, StaffRole
from shared.store.audit import append_audit
from shared.store.models import Application, CallSession, FormDraft

log = logging.getLogger(__name__)

FORMS: Final = web.AppKey("forms", TemplateCatalog)

MAX_DRAFT_BODY: Final = 128 * 1024
MAX_SUBMIT_BODY: Final = 512 * 1024
MAX_SHOW_MESSAGE_BYTES: Final = 60 * 1024
"""A ``form_show`` must fit one data channel message (every WebRTC stack takes 64 KiB)."""
MIN_SIGNATURE_POINTS: Final = 2


class FormsApiError(Exception):
    """Turned into a JSON error response by the handlers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response({"error": self.code, "message": self.message}, status=self.status)


# --------------------------------------------------------------------------------------
# The draft's stored form
# --------------------------------------------------------------------------------------


@dataclass
class DraftState:
    """What ``form_drafts.values`` holds (JSON): the values as typed, and the revision last
    shown at the booth with its normalised values."""

    values: dict[str, str | bool]
    revision: int = 0
    shown: dict[str, str | bool] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"values": self.values, "revision": self.revision, "shown": self.shown},
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> DraftState:
        try:
            raw = json.loads(text)
        except ValueError:
            return cls(values={})
        if not isinstance(raw, dict):
            return cls(values={})
        values = raw.get("values")
        shown = raw.get("shown")
        revision = raw.get("revision")
        return cls(
            values=dict(values) if isinstance(values, dict) else {},
            revision=revision if isinstance(revision, int) else 0,
            shown=dict(shown) if isinstance(shown, dict) else None,
        )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


async def _staff(request: web.Request) -> SignedInStaff:
    staff = await console.current_staff(request)
    if staff is None:
        raise FormsApiError(401, "unauthenticated", "sign in first")
    if staff.role not in console.HQ_ROLES:
        raise FormsApiError(403, "forbidden", "HQ staff only")
    return staff


def _template(request: web.Request) -> FormTemplate:
    form_id = request.match_info["form_id"]
    try:
        return request.app[FORMS].get(form_id)
    except KeyError:
        raise FormsApiError(404, "unknown_form", "no such form") from None


def _departments(staff: SignedInStaff) -> set[str] | None:
    """The departments whose forms the staff member fills (None: every department)."""
    if staff.role is StaffRole.ADMIN:
        return None
    return {skill.department for skill in staff.skills}


def _may_use(staff: SignedInStaff, template: FormTemplate) -> bool:
    departments = _departments(staff)
    return departments is None or template.department.value in departments


async def _json_body(request: web.Request, limit: int) -> dict[str, Any]:
    """The JSON object of the body (read here: bodies may exceed the app's 64 KiB)."""
    if request.content_length is not None and request.content_length > limit:
        raise FormsApiError(413, "too_large", "the request body is too large")
    parts: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise FormsApiError(413, "too_large", "the request body is too large")
        parts.append(chunk)
    try:
        body = json.loads(b"".join(parts))
    except ValueError:
        raise FormsApiError(400, "bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise FormsApiError(400, "bad_json", "the body must be a JSON object")
    return body


def _form_values(template: FormTemplate, raw: object) -> FormValues:
    if not isinstance(raw, dict):
        raise FormsApiError(400, "bad_values", "values must be an object of field id → value")
    try:
        return FormValues(form_id=template.id, values=raw)
    except ValidationError:
        raise FormsApiError(
            400, "bad_values", "values must be text or true/false, keyed by field id"
        ) from None


def _errors_json(errors: tuple[FieldError, ...]) -> list[dict[str, str]]:
    return [e.model_dump() for e in errors]


def _display(template: FormTemplate, values: FormValues) -> dict[str, dict[str, str]]:
    shown: dict[str, dict[str, str]] = {}
    for field in template.fields:
        value = values.get(field.id)
        if value is None:
            continue
        ja, en = display_value(template, field, value)
        shown[field.id] = {"ja": ja, "en": en}
    return shown


async def _session_of(
    db: AsyncSession, staff: SignedInStaff, session_id: str, *, live: bool
) -> CallSession:
    call = await db.get(CallSession, session_id)
    if call is None or call.staff_id != staff.staff_id:
        log.warning("forms: staff %s is not in session %s", staff.staff_id, session_id)
        raise FormsApiError(403, "not_your_session", "not a session of this staff member")
    if live and call.ended_at is not None:
        raise FormsApiError(409, "session_ended", "the call has ended")
    return call


async def _draft(db: AsyncSession, session_id: str, form_id: str) -> FormDraft | None:
    result = await db.execute(
        select(FormDraft).where(FormDraft.session_id == session_id, FormDraft.form_id == form_id)
    )
    return result.scalar_one_or_none()


def _template_summary(template: FormTemplate) -> dict[str, object]:
    return {
        "id": template.id,
        "version": template.version,
        "title_ja": template.title_ja,
        "title_en": template.title_en,
        "department": template.department.value,
        "description_ja": template.description_ja,
        "description_en": template.description_en,
    }


def form_show_message(template: FormTemplate, values: FormValues, revision: int) -> FormShow:
    """The ``form_show`` data channel message for ``values`` (already normalised)."""
    view = resident_view(template, values)
    return FormShow(
        form_id=template.id,
        revision=revision,
        title_ja=view.title_ja,
        title_en=view.title_en,
        declaration_ja=view.declaration_ja,
        declaration_en=view.declaration_en,
        sections=[
            FormViewSection(
                section_id=section.section_id,
                title_ja=section.title_ja,
                title_en=section.title_en,
                items=[
                    FormViewItem(
                        field_id=item.field_id,
                        label_ja=item.label_ja,
                        label_en=item.label_en,
                        value_ja=item.value_ja,
                        value_en=item.value_en,
                        required=item.required,
                        filled=item.filled,
                    )
                    for item in section.items
                ],
            )
            for section in view.sections
        ],
    )


def receipt_number(application_id: str) -> str:
    """The 受付番号 shown to staff and resident: the id's first 12 hex digits in groups."""
    head = application_id[:12].upper()
    return "-".join(head[i : i + 4] for i in range(0, len(head), 4))


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _api(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except FormsApiError as err:
            return err.response()
        return response

    return wrapped


async def list_forms(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    departments = _departments(staff)
    templates = [
        t for t in request.app[FORMS] if departments is None or t.department in departments
    ]
    first: str | None = None
    language: str | None = None
    session_id = request.query.get("session_id")
    if session_id:
        async with request.app[console.SESSIONS]() as db:
            call = await _session_of(db, staff, session_id, live=False)
        first, language = call.department, call.language
        templates.sort(key=lambda t: t.department != first)
    return web.json_response(
        {
            "department": first,
            "language": language,
            "forms": [_template_summary(t) for t in templates],
        }
    )


async def get_form(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    template = _template(request)
    if not _may_use(staff, template):
        raise FormsApiError(403, "forbidden", "a form of another department")
    return web.json_response(template.model_dump(mode="json"))


async def validate_form(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    template = _template(request)
    if not _may_use(staff, template):
        raise FormsApiError(403, "forbidden", "a form of another department")
    body = await _json_body(request, MAX_DRAFT_BODY)
    values = _form_values(template, body.get("values"))
    complete = body.get("complete", True) is not False
    result = validate_values(template, values, complete=complete)
    return web.json_response(
        {
            "ok": result.ok,
            "values": result.values.values,
            "errors": _errors_json(result.errors),
            "display": _display(template, result.values),
        }
    )


async def get_draft(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    template = _template(request)
    session_id = request.match_info["session_id"]
    async with request.app[console.SESSIONS]() as db:
        await _session_of(db, staff, session_id, live=False)
        draft = await _draft(db, session_id, template.id)
    if draft is None:
        raise FormsApiError(404, "no_draft", "no draft of this form in this session")
    state = DraftState.from_json(draft.values)
    return web.json_response(
        {
            "values": state.values,
            "revision": state.revision,
            "updated_at": draft.updated_at.isoformat(),
        }
    )


async def put_draft(request: web.Request) -> web.StreamResponse:
    """Save the values as typed (the console calls it debounced while the staff member
    types); answers with the draft check (missing required values are not errors yet)."""
    staff = await _staff(request)
    template = _template(request)
    if not _may_use(staff, template):
        raise FormsApiError(403, "forbidden", "a form of another department")
    session_id = request.match_info["session_id"]
    body = await _json_body(request, MAX_DRAFT_BODY)
    values = _form_values(template, body.get("values"))
    async with request.app[console.SESSIONS]() as db, db.begin():
        await _session_of(db, staff, session_id, live=True)
        draft = await _draft(db, session_id, template.id)
        if draft is None:
            draft = FormDraft(
                id=uuid.uuid4().hex,
                session_id=session_id,
                staff_id=staff.staff_id,
                form_id=template.id,
                values=DraftState(values=dict(values.values)).to_json(),
            )
            db.add(draft)
        else:
            state = DraftState.from_json(draft.values)
            state.values = dict(values.values)
            draft.values = state.to_json()
            draft.updated_at = datetime.now(UTC)
    result = validate_values(template, values, complete=False)
    return web.json_response(
        {
            "saved": True,
            "errors": _errors_json(result.errors),
            "display": _display(template, result.values),
        }
    )


async def delete_draft(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    template = _template(request)
    session_id = request.match_info["session_id"]
    async with request.app[console.SESSIONS]() as db, db.begin():
        await _session_of(db, staff, session_id, live=False)
        result = await db.execute(
            delete(FormDraft).where(
                FormDraft.session_id == session_id, FormDraft.form_id == template.id
            )
        )
    return web.json_response({"deleted": bool(getattr(result, "rowcount", 0))})


async def show_form(request: web.Request) -> web.StreamResponse:
    """利用者に表示: store the values as the next revision and answer with the
    ``form_show`` message the console sends on the data channel."""
    staff = await _staff(request)
    template = _template(request)
    if not _may_use(staff, template):
        raise FormsApiError(403, "forbidden", "a form of another department")
    session_id = request.match_info["session_id"]
    body = await _json_body(request, MAX_DRAFT_BODY)
    values = _form_values(template, body.get("values"))
    result = validate_values(template, values, complete=False)
    if not result.ok:
        return web.json_response(
            {
                "error": "invalid_values",
                "message": "correct the marked fields first",
                "errors": _errors_json(result.errors),
            },
            status=422,
        )
    missing = validate_values(template, values, complete=True).errors
    async with request.app[console.SESSIONS]() as db, db.begin():
        await _session_of(db, staff, session_id, live=True)
        draft = await _draft(db, session_id, template.id)
        if draft is None:
            draft = FormDraft(
                id=uuid.uuid4().hex,
                session_id=session_id,
                staff_id=staff.staff_id,
                form_id=template.id,
                values="{}",
            )
            db.add(draft)
            state = DraftState(values={})
        else:
            state = DraftState.from_json(draft.values)
        state.values = dict(values.values)
        state.revision += 1
        state.shown = dict(result.values.values)
        message = form_show_message(template, result.values, state.revision)
        if len(wire.encode(message).encode()) > MAX_SHOW_MESSAGE_BYTES:
            raise FormsApiError(413, "too_large", "the form is too long to show at the booth")
        draft.values = state.to_json()
        draft.updated_at = datetime.now(UTC)
    log.info("form %s revision %d shown in session %s", template.id, state.revision, session_id)
    return web.json_response(
        {
            "revision": state.revision,
            "complete": not missing,
            "errors": _errors_json(missing),
            "message": message.model_dump(mode="json"),
        }
    )


async def submit_application(request: web.Request) -> web.StreamResponse:
    """申請を確定: the values of the revision the resident signed, and the signature →
    the application PDF, stored with who, when, booth and session."""
    staff = await _staff(request)
    template = _template(request)
    if not _may_use(staff, template):
        raise FormsApiError(403, "forbidden", "a form of another department")
    session_id = request.match_info["session_id"]
    body = await _json_body(request, MAX_SUBMIT_BODY)
    values = _form_values(template, body.get("values"))
    revision = body.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise FormsApiError(400, "bad_revision", "revision must be a positive number")
    try:
        signature = Signature.model_validate(body.get("signature"))
    except ValidationError:
        raise FormsApiError(400, "bad_signature", "the signature is not valid") from None
    if signature.point_count < MIN_SIGNATURE_POINTS:
        raise FormsApiError(400, "bad_signature", "the signature is empty")
    sessions = request.app[console.SESSIONS]
    async with sessions() as db:
        call = await _session_of(db, staff, session_id, live=False)
        draft = await _draft(db, session_id, template.id)
        booth_id = call.booth_id
    state = DraftState.from_json(draft.values) if draft is not None else None
    if draft is None or state is None or state.shown is None:
        raise FormsApiError(409, "not_shown", "the form was not shown to the resident")
    if revision != state.revision:
        log.warning(
            "form %s in session %s: signature of revision %d refused (latest %d)",
            template.id,
            session_id,
            revision,
            state.revision,
        )
        raise FormsApiError(
            409, "stale_revision", "the signature is for an earlier revision of the form"
        )
    result = validate_values(template, values, complete=True)
    if not result.ok:
        return web.json_response(
            {
                "error": "invalid_values",
                "message": "the form is not complete",
                "errors": _errors_json(result.errors),
            },
            status=422,
        )
    if result.values.values != state.shown:
        raise FormsApiError(
            409, "values_changed", "the values differ from the revision the resident signed"
        )
    application_id = uuid.uuid4().hex
    meta = ApplicationMeta(
        application_id=application_id,
        form_id=template.id,
        session_id=session_id,
        booth_id=booth_id,
        staff_id=staff.staff_id,
        submitted_at=datetime.now(UTC),
    )
    pdf = await asyncio.to_thread(render_application_pdf, template, result.values, signature, meta)
    digest = hashlib.sha256(pdf).hexdigest()
    async with sessions() as db, db.begin():
        removed = await db.execute(
            delete(FormDraft).where(FormDraft.id == draft.id, FormDraft.values == draft.values)
        )
        if not getattr(removed, "rowcount", 0):
            # Submitted twice at once, or shown again while the PDF was being made.
            raise FormsApiError(409, "stale_revision", "the form changed while submitting")
        db.add(
            Application(
                id=application_id,
                session_id=session_id,
                booth_id=booth_id,
                staff_id=staff.staff_id,
                form_id=template.id,
                pdf=pdf,
                sha256=digest,
                submitted_at=meta.submitted_at,
            )
        )
        await append_audit(
            db,
            action="application_submitted",
            staff_id=staff.staff_id,
            booth_id=booth_id,
            session_id=session_id,
            object_id=application_id,
            detail={
                "form_id": template.id,
                "form_version": template.version,
                "revision": revision,
                "sha256": digest,
                "size": len(pdf),
            },
        )
    log.info(
        "application %s (%s) submitted in session %s by staff %s",
        application_id[:8],
        template.id,
        session_id,
        staff.staff_id,
    )
    return web.json_response(
        {
            "id": application_id,
            "receipt_number": receipt_number(application_id),
            "sha256": digest,
            "size": len(pdf),
            "submitted_at": meta.submitted_at.isoformat(),
            "pdf_url": f"/api/applications/{application_id}/pdf",
        },
        status=201,
    )


async def application_pdf(request: web.Request) -> web.StreamResponse:
    staff = await _staff(request)
    application_id = request.match_info["application_id"]
    async with request.app[console.SESSIONS]() as db:
        row = await db.get(Application, application_id)
    if row is None or (staff.role is not StaffRole.ADMIN and row.staff_id != staff.staff_id):
        # The same answer for "no such application" and "not yours".
        raise FormsApiError(404, "not_found", "no such application")
    return web.Response(
        body=row.pdf,
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="application-{row.id[:12]}.pdf"',
            "X-Content-SHA256": row.sha256,
        },
    )


# --------------------------------------------------------------------------------------
# Retention of drafts
# --------------------------------------------------------------------------------------


async def purge_form_drafts(
    sessions: async_sessionmaker[AsyncSession],
    *,
    retention_s: float,
    stale_s: float,
    now: datetime | None = None,
) -> int:
    """Delete the drafts of calls that ended more than ``retention_s`` ago and drafts not
    saved for ``stale_s``; returns how many went."""
    at = now or datetime.now(UTC)
    ended_before = at - timedelta(seconds=retention_s)
    ended_sessions = select(CallSession.id).where(
        CallSession.ended_at.is_not(None), CallSession.ended_at < ended_before
    )
    async with sessions() as db, db.begin():
        result = await db.execute(
            delete(FormDraft).where(
                or_(
                    FormDraft.session_id.in_(ended_sessions),
                    FormDraft.updated_at < at - timedelta(seconds=stale_s),
                )
            )
        )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("purged %d form drafts", count)
    return count


async def _draft_purge(app: web.Application) -> AsyncIterator[None]:
    config = app[console.CONFIG]

    async def run() -> None:
        while True:
            try:
                await purge_form_drafts(
                    app[console.SESSIONS],
                    retention_s=config.form_draft_retention_s,
                    stale_s=config.session_ttl_s,
                )
            except Exception:
                log.exception("form draft purge failed")
            await asyncio.sleep(config.form_draft_purge_interval_s)

    task = asyncio.create_task(run(), name="form draft purge")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def setup_forms(app: web.Application, catalog: TemplateCatalog | None = None) -> None:
    """Add the forms API to the console app (after its database context)."""
    app[FORMS] = catalog or TemplateCatalog.load()
    app.cleanup_ctx.append(_draft_purge)
    draft = "/api/sessions/{session_id}/forms/{form_id}/draft"
    app.router.add_get("/api/forms", _api(list_forms))
    app.router.add_get("/api/forms/{form_id}", _api(get_form))
    app.router.add_post("/api/forms/{form_id}/validate", _api(validate_form))
    app.router.add_get(draft, _api(get_draft))
    app.router.add_put(draft, _api(put_draft))
    app.router.add_delete(draft, _api(delete_draft))
    app.router.add_post("/api/sessions/{session_id}/forms/{form_id}/show", _api(show_form))
    app.router.add_post(
        "/api/sessions/{session_id}/forms/{form_id}/applications", _api(submit_application)
    )
    app.router.add_get("/api/applications/{application_id}/pdf", _api(application_pdf))


__all__ = [
    "FORMS",
    "DraftState",
    "form_show_message",
    "purge_form_drafts",
    "receipt_number",
    "setup_forms",
]
