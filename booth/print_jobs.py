"""Print jobs HQ sends during a call, on the call's data channel, into the print spool.

Staff send ``print_job`` (a receipt, or an A4 PDF announced with its size and SHA-256 and
then sent in ``print_job_chunk`` pieces) and ``print_job_command`` (reprint, cancel). This
flow checks what arrived, submits it to :class:`~booth.spool.PrintSpool` with the session
id as owner and the job id staff chose (so a resend after a reconnect prints nothing
twice), and sends every state change of the session's jobs back as ``print_job_status``.

A certificate HQ issued does not travel on the data channel: its ``print_job`` carries
``fetch`` (a one-time token) with the PDF's size and SHA-256. The booth fetches the PDF from
the console (:meth:`ConsoleClient.fetch_document`, once, never retried with the same token),
checks the digest and the PDF signature (:class:`booth.document_check.DocumentCheck`) and
only then submits it to the spool. A refused or failed fetch, or a document that fails a
check, is reported as ``print_job_status`` ``failed`` with a Japanese reason, and nothing
is printed. An authorised reprint (``print_job_command`` with ``reprint_no``) prints once
per number; the booth fetches the document again only if the spool no longer keeps it.

The spool decides everything about printing: a job waits ``queued`` while the printer is
off or out of paper, a job that may be on paper is never printed again except on an
explicit ``reprint`` command. A job of a call that has ended stays in the spool with its
state; nothing here holds documents beyond the assembly of one upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from booth.console_client import ConsoleClient, ConsoleUnavailable
from booth.devices.receipt import Receipt
from booth.document_check import NOT_PRINTED, DocumentCheck
from booth.spool import TERMINAL_STATES, JobRecord, PrintJob, PrintSpool, PrintTarget, SpoolError
from shared.protocol import (
    PRINT_MAX_DOCUMENT_BYTES,
    DocumentFetch,
    Model,
    PrintJobChunk,
    PrintJobCommand,
    PrintJobRejected,
    PrintJobRequest,
    PrintJobState,
    PrintJobStatus,
)

logger = logging.getLogger(__name__)

MAX_UPLOADS: Final = 4  # A4 documents being received at the same time, per call

PRINT_MESSAGES: Final = (PrintJobRequest, PrintJobChunk, PrintJobCommand)

# Why a fetch failed, by the console's refusal code (Japanese, for staff).
_FETCH_REFUSALS: Final = {
    "token_used": "受け取り用の鍵はすでに使われています",
    "token_expired": "受け取り用の鍵の有効期限が切れています",
    "unknown_token": "受け取り用の鍵が無効です",
    "other_booth": "このブース宛ての文書ではありません",
    "session_ended": "通話が終了しています",
    "revoked": "この証明書は失効しています",
    "unauthenticated": "ブースの認証に失敗しました",
    "throttled": "ブースの認証が一時的に制限されています",
    "too_large": "文書が大きすぎます",
}
NO_CONSOLE = "このブースには本庁コンソールの接続先が設定されていないため、文書を受け取れません。"


def fetch_failure(err: ConsoleUnavailable) -> str:
    """The Japanese reason staff see when the booth could not fetch a document."""
    why = _FETCH_REFUSALS.get(err.code)
    if why is None:
        return "本庁のコンソールから文書を受け取れませんでした（接続できません）。" + NOT_PRINTED
    return f"本庁のコンソールが文書の受け取りを拒否しました（{why}）。" + NOT_PRINTED


class PrintChannel(Protocol):
    """The call the jobs come from: its session id and its data channel."""

    @property
    def session_id(self) -> str | None: ...

    def send_peer_data(self, message: Model) -> bool: ...


@dataclass
class _Upload:
    request: PrintJobRequest
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


def job_status(record: JobRecord) -> PrintJobStatus:
    """The spool's record as staff see it."""
    return PrintJobStatus(
        job_id=record.job_id,
        state=PrintJobState(record.state.value),
        reason=None if record.reason is None else record.reason[:200],
        attempts=record.attempts,
        reprints=record.reprints,
        updated_at=datetime.fromtimestamp(record.updated_at, UTC),
    )


class PrintJobFlow:
    """Print requests of the booth's current call (one call at a time)."""

    def __init__(
        self,
        spool: Callable[[], PrintSpool | None],
        *,
        console: ConsoleClient | None = None,
        check: DocumentCheck | None = None,
    ) -> None:
        self._spool = spool
        self._console = console
        self._check = check or DocumentCheck([])
        self._channel: PrintChannel | None = None
        self._uploads: dict[str, _Upload] = {}
        self._fetching: set[str] = set()  # job ids whose document is being fetched
        self._watched: PrintSpool | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- wiring

    def attach(self, channel: PrintChannel) -> None:
        """Use ``channel`` (the new call) from now on."""
        self.detach()
        self._channel = channel
        spool = self._spool()
        if spool is not None and spool is not self._watched:
            if self._watched is not None:
                self._watched.remove_listener(self._job_changed)
            spool.add_listener(self._job_changed)
            self._watched = spool

    def detach(self) -> None:
        """The call ended: drop unfinished uploads; the spool keeps the jobs."""
        self._channel = None
        self._uploads.clear()

    def channel_open(self) -> None:
        """The data channel (re)opened: tell staff the state of the session's jobs."""
        self._spawn(self._send_all(), "print statuses")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self.detach()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watched is not None:
            self._watched.remove_listener(self._job_changed)
            self._watched = None

    # ---------------------------------------------------------------- from staff

    async def on_peer_data(self, message: Model) -> None:
        match message:
            case PrintJobRequest():
                await self._request(message)
            case PrintJobChunk():
                await self._chunk(message)
            case PrintJobCommand():
                await self._command(message)
            case _:
                logger.info("ignored %s on the data channel", type(message).__name__)

    async def _request(self, request: PrintJobRequest) -> None:
        if request.fetch is not None:
            if request.target != "a4" or request.size is None or request.sha256 is None:
                self._reject(
                    request.job_id, "a fetched document is an A4 PDF with its size and SHA-256"
                )
                return
            if await self._known(request.job_id):
                return  # a resend: nothing new is printed (its state went to staff)
            if request.job_id in self._fetching:
                return
            session_id = self._session_id()
            if session_id is None:
                self._reject(request.job_id, "the booth cannot print now")
                return
            self._fetching.add(request.job_id)
            self._spawn(self._fetch_and_submit(request, session_id), f"fetch {request.job_id}")
            return
        if request.target == "receipt":
            self._uploads.pop(request.job_id, None)
            if request.receipt is None:
                self._reject(request.job_id, "a receipt job needs the receipt")
                return
            data = request.receipt.model_dump(mode="json")
            data["title"] = request.title
            try:
                receipt = Receipt.from_json_dict(data)
            except (ValueError, KeyError, TypeError) as err:
                self._reject(request.job_id, f"not a valid receipt: {err}")
                return
            document = json.dumps(receipt.to_json_dict(), ensure_ascii=False).encode()
            await self._submit(request, document)
            return
        if request.size is None or request.sha256 is None:
            self._reject(request.job_id, "an A4 job needs the size and SHA-256 of the PDF")
            return
        if request.job_id not in self._uploads and len(self._uploads) >= MAX_UPLOADS:
            self._reject(request.job_id, "too many documents arriving at once; send it later")
            return
        self._uploads[request.job_id] = _Upload(request)

    async def _chunk(self, chunk: PrintJobChunk) -> None:
        upload = self._uploads.get(chunk.job_id)
        if upload is None:
            return  # its print_job was rejected (already said so) or the call changed
        request = upload.request
        if chunk.seq != len(upload.parts):
            del self._uploads[chunk.job_id]
            self._reject(chunk.job_id, f"piece {chunk.seq} arrived out of order; send it again")
            return
        try:
            data = base64.b64decode(chunk.data_b64, validate=True)
        except (binascii.Error, ValueError):
            del self._uploads[chunk.job_id]
            self._reject(chunk.job_id, f"piece {chunk.seq} is not base64; send it again")
            return
        upload.parts.append(data)
        upload.received += len(data)
        assert request.size is not None and request.sha256 is not None
        if upload.received > min(request.size, PRINT_MAX_DOCUMENT_BYTES):
            del self._uploads[chunk.job_id]
            self._reject(chunk.job_id, "more data arrived than announced; send it again")
            return
        if not chunk.last:
            return
        del self._uploads[chunk.job_id]
        document = b"".join(upload.parts)
        if len(document) != request.size:
            self._reject(chunk.job_id, "the document arrived incomplete; send it again")
            return
        if hashlib.sha256(document).hexdigest() != request.sha256:
            self._reject(chunk.job_id, "the document's SHA-256 does not match; send it again")
            return
        if not document.startswith(b"%PDF-"):
            self._reject(chunk.job_id, "the document is not a PDF")
            return
        await self._submit(request, document)

    async def _submit(self, request: PrintJobRequest, document: bytes) -> None:
        spool, session_id = self._spool(), self._session_id()
        if spool is None or session_id is None:
            self._reject(request.job_id, "the booth cannot print now")
            return
        target = PrintTarget(request.target)
        try:
            known = await spool.job(request.job_id)
            if known is not None and known.owner != session_id:
                self._reject(request.job_id, "this job id belongs to another call")
                return
            await spool.submit(
                PrintJob(request.job_id, session_id, target, document, request.title)
            )
        except SpoolError as err:
            self._reject(request.job_id, str(err))
            return
        if known is not None:
            # A resend (e.g. after a reconnect): nothing new is printed; say where it is.
            record = await spool.job(request.job_id)
            if record is not None:
                self._send(job_status(record))

    # ---------------------------------------------------------------- fetched documents

    async def _known(self, job_id: str) -> bool:
        """A job the spool already has: tell staff where it is (or refuse a foreign id)."""
        spool, session_id = self._spool(), self._session_id()
        if spool is None or session_id is None:
            return False
        record = await spool.job(job_id)
        if record is None:
            return False
        if record.owner != session_id:
            self._reject(job_id, "this job id belongs to another call")
        else:
            self._send(job_status(record))
        return True

    async def _fetch(
        self, job_id: str, fetch: DocumentFetch, size: int | None, sha256: str
    ) -> bytes | str:
        """The checked document, or why it cannot be printed (Japanese)."""
        if self._console is None:
            return NO_CONSOLE + NOT_PRINTED
        try:
            document = await self._console.fetch_document(
                fetch.token, max_bytes=size or PRINT_MAX_DOCUMENT_BYTES
            )
        except ConsoleUnavailable as err:
            logger.warning("print job %s: fetch failed (%s, %s)", job_id, err.status, err.code)
            return fetch_failure(err)
        problem = await self._check.problem(document, size=size, sha256=sha256)
        if problem is not None:
            logger.warning("print job %s: fetched document refused: %s", job_id, problem)
            return problem
        return document

    async def _fetch_and_submit(self, request: PrintJobRequest, session_id: str) -> None:
        try:
            assert request.fetch is not None and request.size is not None
            assert request.sha256 is not None
            got = await self._fetch(request.job_id, request.fetch, request.size, request.sha256)
            if isinstance(got, str):
                self._failed(request.job_id, got)
                return
            if self._session_id() != session_id:
                logger.warning("print job %s: the call ended during the fetch", request.job_id)
                return
            await self._submit(request, got)
        finally:
            self._fetching.discard(request.job_id)

    async def _reprint_fetched(self, command: PrintJobCommand, record: JobRecord) -> None:
        """An authorised reprint: once per ``reprint_no``; the document is fetched again
        only when the spool no longer keeps it."""
        spool = self._spool()
        if spool is None:
            return
        by = f"HQ (session {record.owner}, reprint {command.reprint_no})"
        try:
            try:
                new = await spool.reprint(command.job_id, by=by, number=command.reprint_no)
            except SpoolError:
                if command.fetch is None:
                    raise
                fetched = await self._fetch_again(command, record)
                if fetched is None:
                    return
                new = await spool.reprint(
                    command.job_id, by=by, number=command.reprint_no, document=fetched
                )
        except SpoolError as err:
            self._reject(command.job_id, str(err))
            return
        if new == record:
            if record.state not in TERMINAL_STATES:
                self._reject(command.job_id, "印刷が終わっていないため、再印刷できません。")
            self._send(job_status(new))

    async def _fetch_again(self, command: PrintJobCommand, record: JobRecord) -> bytes | None:
        spool = self._spool()
        assert command.fetch is not None and spool is not None
        digest = await spool.digest(command.job_id)
        if digest is None:
            return None
        self._fetching.add(command.job_id)
        try:
            # The spool keeps the digest the job was submitted with: the same bytes again.
            got = await self._fetch(command.job_id, command.fetch, None, digest)
        finally:
            self._fetching.discard(command.job_id)
        if isinstance(got, str):
            self._reject(command.job_id, got)
            return None
        return got

    # ---------------------------------------------------------------- commands

    async def _command(self, command: PrintJobCommand) -> None:
        spool, session_id = self._spool(), self._session_id()
        if spool is None or session_id is None:
            self._reject(command.job_id, "the booth cannot print now")
            return
        record = await spool.job(command.job_id)
        if record is None or record.owner != session_id:
            self._reject(command.job_id, "no such print job in this call")
            return
        if command.action == "reprint" and (command.reprint_no is not None or command.fetch):
            if command.job_id in self._fetching:
                self._reject(command.job_id, "文書を受信中です。")
                return
            await self._reprint_fetched(command, record)
            return
        by = f"HQ (session {session_id})"
        try:
            if command.action == "reprint":
                new = await spool.reprint(command.job_id, by=by)
            else:
                new = await spool.cancel(command.job_id, by=by)
        except SpoolError as err:
            self._reject(command.job_id, str(err))
            return
        if new == record:  # nothing changed (already queued, printing or cancelled)
            self._send(job_status(new))

    # ---------------------------------------------------------------- to staff

    def _job_changed(self, record: JobRecord) -> None:
        session_id = self._session_id()
        if session_id is not None and record.owner == session_id:
            self._send(job_status(record))

    async def _send_all(self) -> None:
        spool, session_id = self._spool(), self._session_id()
        if spool is None or session_id is None:
            return
        for record in await spool.jobs():
            if record.owner == session_id:
                self._send(job_status(record))

    def _failed(self, job_id: str, reason: str) -> None:
        """A job that never reached the spool (its document could not be fetched or
        failed a check): staff see it failed, with the reason."""
        logger.warning("print job %s failed before printing", job_id)
        self._send(
            PrintJobStatus(
                job_id=job_id,
                state=PrintJobState.FAILED,
                reason=reason[:200],
                attempts=0,
                reprints=0,
                updated_at=datetime.now(UTC),
            )
        )

    def _reject(self, job_id: str, reason: str) -> None:
        logger.warning("print job %s rejected: %s", job_id, reason)
        self._send(PrintJobRejected(job_id=job_id, reason=reason[:200]))

    def _session_id(self) -> str | None:
        channel = self._channel
        return None if channel is None else channel.session_id

    def _send(self, message: Model) -> bool:
        channel = self._channel
        return channel is not None and channel.send_peer_data(message)
