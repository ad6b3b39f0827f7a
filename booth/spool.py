"""The booth's durable print spool (SQLite at ``DeviceConfig.spool_path``).

A job comes from HQ with an id the sender chose; submitting the same id again never prints
twice. Each printer (receipt, A4) has one worker that prints its queued jobs in order. A job
moves ``queued → printing → printed | failed(reason)``, or ``queued → cancelled``:

* while the printer is offline or out of paper, the job stays ``queued`` (its ``reason`` says
  why) and the worker retries with a growing delay; nothing reached the printer, so nothing
  can print twice;
* a job a print system (CUPS) has taken stays with it while the printer cannot print: the
  job stays ``printing``, its ``reason`` says why it waits, and it is never sent again;
* a job that may have reached the printer and then went wrong becomes ``failed``; only an
  explicit :meth:`PrintSpool.reprint` prints it again;
* a job found ``printing`` when the spool starts (the booth agent stopped mid-job) is not
  printed again: it becomes ``failed`` ("interrupted; reprint needs HQ's approval"), unless
  the print system can say what happened to it (a CUPS job id was recorded): completed →
  ``printed``; still in CUPS → the spool keeps waiting for it.

All SQLite work runs on the spool's own worker thread; every transition is committed
before anything is sent to a printer, and is reported to the listeners (to be sent to HQ).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from booth.devices.base import FAILED_STATES, DeviceOwner, DeviceState, DeviceWorker
from booth.devices.printing import (
    A4Printer,
    JobOutcome,
    JobProgress,
    PrinterCondition,
    PrinterError,
    PrintResult,
    ReceiptPrinter,
)
from booth.devices.receipt import Receipt
from shared.errors import DeviceError, EkichikaError

logger = logging.getLogger(__name__)

T = TypeVar("T")

INTERRUPTED_REASON = "interrupted; reprint needs HQ's approval"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PRINTING = "printing"
    PRINTED = "printed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.PRINTED, JobState.FAILED, JobState.CANCELLED})


class PrintTarget(enum.StrEnum):
    RECEIPT = "receipt"
    A4 = "a4"


class SpoolError(EkichikaError):
    """A spool command cannot be carried out (unknown job, wrong state, reused job id)."""


@dataclass(frozen=True)
class PrintJob:
    """A job as the sender gives it. ``job_id`` is chosen by the sender and makes
    :meth:`PrintSpool.submit` idempotent; ``owner`` is the session or staff id it belongs
    to; ``title`` names it in logs and print queues and must not hold personal data."""

    job_id: str
    owner: str
    target: PrintTarget
    document: bytes  # a receipt as JSON, or a PDF
    title: str

    @classmethod
    def for_receipt(cls, job_id: str, owner: str, receipt: Receipt) -> PrintJob:
        document = json.dumps(receipt.to_json_dict(), ensure_ascii=False).encode()
        return cls(job_id, owner, PrintTarget.RECEIPT, document, receipt.title)

    @classmethod
    def for_pdf(cls, job_id: str, owner: str, pdf: bytes, title: str = "document") -> PrintJob:
        return cls(job_id, owner, PrintTarget.A4, pdf, title)


@dataclass(frozen=True)
class JobRecord:
    """A job as the spool keeps it (without the document)."""

    job_id: str
    owner: str
    target: PrintTarget
    title: str
    state: JobState
    reason: str | None  # why it waits (queued) or failed; None otherwise
    device_ref: str | None  # the print system's job id (CUPS), once it has one
    attempts: int  # times it was handed to the printer driver
    reprints: int
    created_at: float
    updated_at: float


JobListener = Callable[[JobRecord], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS print_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    target TEXT NOT NULL,
    title TEXT NOT NULL,
    document BLOB,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    device_ref TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    reprints INTEGER NOT NULL DEFAULT 0,
    authorised_reprint INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS print_jobs_state ON print_jobs (target, state, seq);
"""

_COLUMNS = (
    "job_id, owner, target, title, state, reason, device_ref, attempts, reprints, "
    "created_at, updated_at"
)


def _record(row: sqlite3.Row | tuple[object, ...]) -> JobRecord:
    (job_id, owner, target, title, state, reason, ref, attempts, reprints, created, updated) = (
        tuple(row)
    )
    return JobRecord(
        str(job_id),
        str(owner),
        PrintTarget(str(target)),
        str(title),
        JobState(str(state)),
        None if reason is None else str(reason),
        None if ref is None else str(ref),
        int(str(attempts)),
        int(str(reprints)),
        float(str(created)),
        float(str(updated)),
    )


class PrintSpool:
    """Durable print queue for the booth's printers (see the module docstring).

    ``receipt_printer`` / ``a4_printer``: the owners of the printers (None: the booth has
    none, and jobs for it are refused). ``retry_min_s``/``retry_max_s`` bound the delay
    between attempts while a printer is unavailable.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        receipt_printer: DeviceOwner[ReceiptPrinter] | None = None,
        a4_printer: DeviceOwner[A4Printer] | None = None,
        retry_min_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._receipt = receipt_printer
        self._a4 = a4_printer
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._worker = DeviceWorker("print-spool")
        self._conn: sqlite3.Connection | None = None
        self._listeners: list[JobListener] = []
        self._wake = {target: asyncio.Event() for target in PrintTarget}
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, settle jobs interrupted by a stop, start the workers."""
        if self._started:
            return
        self._started = True
        try:
            await self._worker.run(self._open_blocking)
        except sqlite3.Error as err:
            raise SpoolError(f"cannot open the print spool {self.path}: {err}") from err
        interrupted = await self._db(
            lambda c: [
                _record(r)
                for r in c.execute(
                    f"SELECT {_COLUMNS} FROM print_jobs WHERE state = ? ORDER BY seq",
                    (JobState.PRINTING.value,),
                )
            ]
        )
        for target in PrintTarget:
            if self._owner(target) is None:
                continue
            resume = [r for r in interrupted if r.target is target]
            self._tasks.append(
                asyncio.create_task(self._run(target, resume), name=f"print-spool-{target}")
            )
        for record in interrupted:
            if self._owner(record.target) is None:
                await self._transition(record, JobState.FAILED, INTERRUPTED_REASON)

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(print_jobs)")}
        if "authorised_reprint" not in columns:  # a spool from before numbered reprints
            conn.execute(
                "ALTER TABLE print_jobs ADD COLUMN authorised_reprint INTEGER NOT NULL DEFAULT 0"
            )
        self._conn = conn

    async def aclose(self) -> None:
        """Stop the workers and close the database; idempotent. A job being printed stays
        ``printing`` in the database and is settled by the next :meth:`start`."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        for task in [*self._tasks, *self._side_tasks]:
            task.cancel()
        for task in [*self._tasks, *self._side_tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(DeviceError):
                await self._worker.run(conn.close)
        await asyncio.to_thread(self._worker.close)

    async def __aenter__(self) -> PrintSpool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- listeners ---------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, record: JobRecord) -> None:
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                logger.exception("print job listener failed")

    # -- commands ----------------------------------------------------------------------

    async def submit(self, job: PrintJob) -> str:
        """Queue ``job``; returns its id. The same id again (a retry by the sender) changes
        nothing; the same id with another document is refused."""
        owner = self._owner(job.target)
        if owner is None:
            raise SpoolError(f"this booth has no {job.target.value} printer")
        self._validate(job)
        digest = hashlib.sha256(job.document).hexdigest()
        now = time.time()

        def insert(conn: sqlite3.Connection) -> tuple[bool, str, str]:
            cursor = conn.execute(
                "INSERT INTO print_jobs (job_id, owner, target, title, document, digest, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(job_id) DO NOTHING",
                (
                    job.job_id,
                    job.owner,
                    job.target.value,
                    job.title,
                    job.document,
                    digest,
                    JobState.QUEUED.value,
                    now,
                    now,
                ),
            )
            row = conn.execute(
                "SELECT target, digest FROM print_jobs WHERE job_id = ?", (job.job_id,)
            ).fetchone()
            return cursor.rowcount == 1, str(row[0]), str(row[1])

        created, target, stored_digest = await self._db(insert)
        if not created:
            if target != job.target.value or stored_digest != digest:
                raise SpoolError(f"job id {job.job_id} was already used for another document")
            logger.info("print job %s submitted again; already known", job.job_id)
            return job.job_id
        logger.info("print job %s queued for the %s printer", job.job_id, job.target.value)
        record = await self.job(job.job_id)
        if record is not None:
            self._emit(record)
        self._wake[job.target].set()
        return job.job_id

    @staticmethod
    def _validate(job: PrintJob) -> None:
        if not job.job_id or len(job.job_id) > 200:
            raise SpoolError("a print job needs an id of 1 to 200 characters")
        if job.target is PrintTarget.A4 and not job.document.startswith(b"%PDF-"):
            raise SpoolError(f"print job {job.job_id}: the document is not a PDF")
        if job.target is PrintTarget.RECEIPT:
            try:
                Receipt.from_json_dict(json.loads(job.document))
            except (ValueError, KeyError, TypeError) as err:
                raise SpoolError(f"print job {job.job_id}: not a valid receipt") from err

    async def job(self, job_id: str) -> JobRecord | None:
        row = await self._db(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM print_jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        )
        return None if row is None else _record(row)

    async def digest(self, job_id: str) -> str | None:
        """The SHA-256 (hex) of the job's document, as submitted; None for an unknown job."""
        row = await self._db(
            lambda c: c.execute(
                "SELECT digest FROM print_jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        """Jobs in submission order, optionally only those in ``states``."""
        wanted = None if states is None else {s.value for s in states}
        rows = await self._db(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM print_jobs ORDER BY seq").fetchall()
        )
        return [_record(r) for r in rows if wanted is None or r[4] in wanted]

    async def cancel(self, job_id: str, *, by: str) -> JobRecord:
        """Cancel a queued (or failed) job. A job being printed cannot be cancelled."""
        record = await self._require(job_id)
        if record.state is JobState.CANCELLED:
            return record
        if record.state not in (JobState.QUEUED, JobState.FAILED):
            raise SpoolError(f"print job {job_id} is {record.state.value}; it cannot be cancelled")
        logger.info("print job %s cancelled by %s", job_id, by)
        return await self._transition(record, JobState.CANCELLED, f"cancelled by {by}")

    async def reprint(
        self, job_id: str, *, by: str, number: int | None = None, document: bytes | None = None
    ) -> JobRecord:
        """Queue a printed, failed or cancelled job again: the explicit command for a job
        that may already be on paper. A job still queued or printing is left as it is.

        ``number``: the sender's count of authorised reprints of this job (1, 2 …). A
        number the spool has already carried out changes nothing, so that a repeated
        command never prints again. ``document``: the job's document again, for a job whose
        document the spool no longer keeps (it must be the same bytes)."""
        record = await self._require(job_id)
        done, kept, digest = await self._db(
            lambda c: c.execute(
                "SELECT authorised_reprint, length(document), digest FROM print_jobs"
                " WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        )
        if number is not None and int(done) >= number:
            logger.info("print job %s: reprint %d was already carried out", job_id, number)
            return record
        if record.state not in TERMINAL_STATES:
            return record
        if not kept:
            if document is None:
                raise SpoolError(
                    f"print job {job_id}: the document is no longer kept; send it again"
                )
            if hashlib.sha256(document).hexdigest() != digest:
                raise SpoolError(f"print job {job_id}: not the document this job printed")

            def restore(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE print_jobs SET document = ? WHERE job_id = ?", (document, job_id)
                )

            await self._db(restore)
        logger.info("print job %s: reprint requested by %s", job_id, by)
        new = await self._transition(
            record,
            JobState.QUEUED,
            None,
            reprint=True,
            clear_ref=True,
            expect=TERMINAL_STATES,
            reprint_no=number,
        )
        self._wake[record.target].set()
        return new

    async def purge_documents(self, older_than_s: float) -> int:
        """Forget the documents (which may hold personal data) of printed and cancelled
        jobs last changed more than ``older_than_s`` ago; the records stay."""
        limit = time.time() - older_than_s

        def purge(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE print_jobs SET document = NULL WHERE document IS NOT NULL"
                " AND state IN (?, ?) AND updated_at < ?",
                (JobState.PRINTED.value, JobState.CANCELLED.value, limit),
            )
            return cursor.rowcount

        return await self._db(purge)

    async def wait_for(self, job_id: str, states: Iterable[JobState]) -> JobRecord:
        """Wait until the job is in one of ``states`` (bound it with ``asyncio.timeout``)."""
        wanted = frozenset(states)
        changed = asyncio.Event()

        def listener(record: JobRecord) -> None:
            if record.job_id == job_id:
                changed.set()

        self.add_listener(listener)
        try:
            while True:
                changed.clear()
                record = await self._require(job_id)
                if record.state in wanted:
                    return record
                await changed.wait()
        finally:
            self.remove_listener(listener)

    # -- internals ---------------------------------------------------------------------

    def _owner(
        self, target: PrintTarget
    ) -> DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer] | None:
        return self._receipt if target is PrintTarget.RECEIPT else self._a4

    async def _db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise SpoolError("the print spool is not open")
            return fn(self._conn)

        return await self._worker.run(call)

    async def _require(self, job_id: str) -> JobRecord:
        record = await self.job(job_id)
        if record is None:
            raise SpoolError(f"no print job {job_id}")
        return record

    async def _transition(
        self,
        record: JobRecord,
        state: JobState,
        reason: str | None,
        *,
        attempt: bool = False,
        reprint: bool = False,
        clear_ref: bool = False,
        device_ref: str | None = None,
        expect: Iterable[JobState] | None = None,
        reprint_no: int | None = None,
    ) -> JobRecord:
        """The one place a job changes state: committed, logged, reported."""
        allowed = [s.value for s in (expect if expect is not None else [record.state])]
        now = time.time()

        def update(conn: sqlite3.Connection) -> sqlite3.Row | None:
            marks = ",".join("?" for _ in allowed)
            cursor = conn.execute(
                "UPDATE print_jobs SET state = ?, reason = ?, updated_at = ?,"
                " attempts = attempts + ?, reprints = reprints + ?,"
                " device_ref = CASE WHEN ? THEN NULL ELSE coalesce(?, device_ref) END,"
                " authorised_reprint = max(authorised_reprint, ?)"
                f" WHERE job_id = ? AND state IN ({marks})",
                (
                    state.value,
                    reason,
                    now,
                    int(attempt),
                    int(reprint),
                    int(clear_ref),
                    device_ref,
                    reprint_no or 0,
                    record.job_id,
                    *allowed,
                ),
            )
            if cursor.rowcount != 1:
                return None
            row: sqlite3.Row | None = conn.execute(
                f"SELECT {_COLUMNS} FROM print_jobs WHERE job_id = ?", (record.job_id,)
            ).fetchone()
            return row

        row = await self._db(update)
        if row is None:
            current = await self._require(record.job_id)
            raise SpoolError(
                f"print job {record.job_id} is {current.state.value}, not {record.state.value}"
            )
        new = _record(row)
        if new.state is not record.state:
            logger.info(
                "print job %s: %s → %s%s",
                new.job_id,
                record.state.value,
                new.state.value,
                f" ({reason})" if reason else "",
            )
        self._emit(new)
        return new

    async def _save_ref(self, record: JobRecord, ref: str) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE print_jobs SET device_ref = ? WHERE job_id = ?", (ref, record.job_id)
            )

        await self._db(save)

    def _progress(
        self, record: JobRecord, owner: DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer]
    ) -> JobProgress:
        def submitted(ref: str) -> None:
            task = asyncio.create_task(self._save_ref(record, ref))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

        def condition(c: PrinterCondition) -> None:
            owner.set_state(c.state, c.reason)
            # A job the print system holds while its printer cannot print stays with it
            # (sending it again could print it twice): the job says why it waits.
            waiting = c.reason if c.state in FAILED_STATES else None
            task = asyncio.create_task(self._note_waiting(record, waiting))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

        return JobProgress(submitted, condition)

    async def _note_waiting(self, record: JobRecord, reason: str | None) -> None:
        """Set the reason of a job that is ``printing`` (waiting in the print system)."""
        now = time.time()

        def note(conn: sqlite3.Connection) -> sqlite3.Row | None:
            cursor = conn.execute(
                "UPDATE print_jobs SET reason = ?, updated_at = ? WHERE job_id = ? AND state = ?"
                " AND coalesce(reason, '') != coalesce(?, '')",
                (reason, now, record.job_id, JobState.PRINTING.value, reason),
            )
            if cursor.rowcount != 1:
                return None
            row: sqlite3.Row | None = conn.execute(
                f"SELECT {_COLUMNS} FROM print_jobs WHERE job_id = ?", (record.job_id,)
            ).fetchone()
            return row

        row = await self._db(note)
        if row is not None:
            new = _record(row)
            if reason:
                logger.info("print job %s waits in the print system (%s)", new.job_id, reason)
            self._emit(new)

    async def _next_queued(self, target: PrintTarget) -> tuple[JobRecord, bytes] | None:
        row = await self._db(
            lambda c: c.execute(
                f"SELECT {_COLUMNS}, document FROM print_jobs WHERE target = ? AND state = ?"
                " ORDER BY seq LIMIT 1",
                (target.value, JobState.QUEUED.value),
            ).fetchone()
        )
        if row is None:
            return None
        return _record(row[:-1]), bytes(row[-1] or b"")

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()

    async def _run(self, target: PrintTarget, interrupted: list[JobRecord]) -> None:
        owner = self._owner(target)
        assert owner is not None
        try:
            for record in interrupted:
                await self._settle_interrupted(record, owner)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("print spool: settling interrupted %s jobs failed", target.value)
        delay = self.retry_min_s
        while not self._closing.is_set():
            try:
                self._wake[target].clear()
                queued = await self._next_queued(target)
                if queued is None:
                    await self._wake[target].wait()
                    continue
                record, document = queued
                printed = await self._print(record, document, owner)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database problem: keep the worker alive, try again later
                logger.exception("print spool worker for the %s printer failed", target.value)
                printed = False
            if printed:
                delay = self.retry_min_s
            else:
                await self._pause(delay)
                delay = min(self.retry_max_s, delay * 2)

    async def _settle_interrupted(
        self, record: JobRecord, owner: DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer]
    ) -> None:
        """A job that was printing when the spool stopped: never printed again
        automatically; settled from the print system's answer when it has one."""
        outcome = JobOutcome.UNKNOWN
        ref = record.device_ref
        if ref is not None:
            outcome = await owner.driver.job_outcome(ref)
        logger.info("print job %s was interrupted; print system says %s", record.job_id, outcome)
        if ref is None or outcome is JobOutcome.UNKNOWN:
            await self._transition(record, JobState.FAILED, INTERRUPTED_REASON)
        elif outcome is JobOutcome.COMPLETED:
            await self._transition(record, JobState.PRINTED, None)
        elif outcome is JobOutcome.FAILED:
            await self._transition(
                record,
                JobState.FAILED,
                f"the print system reports job {ref} cancelled or aborted; {INTERRUPTED_REASON}",
            )
        else:
            progress = self._progress(record, owner)
            owner.set_state(DeviceState.BUSY)
            try:
                result = await owner.use(lambda p: p.wait_for_job(ref, progress))
            except PrinterError as err:
                owner.set_state(err.state, err.reason)
                await self._transition(record, JobState.FAILED, err.reason)
            else:
                owner.set_state(DeviceState.READY)
                logger.info("print job %s: %s", record.job_id, result.detail)
                await self._transition(record, JobState.PRINTED, None)

    async def _print(
        self,
        record: JobRecord,
        document: bytes,
        owner: DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer],
    ) -> bool:
        """Print one job. Returns False when the printer was unavailable and the job went
        back to the queue (the caller waits before the next attempt)."""
        record = await self._transition(record, JobState.PRINTING, None, attempt=True)
        progress = self._progress(record, owner)
        owner.set_state(DeviceState.BUSY)
        try:
            result = await self._send(record, document, owner, progress)
        except PrinterError as err:
            state = err.state if err.state is not DeviceState.BUSY else DeviceState.ERROR
            owner.set_state(state, err.reason)
            if err.delivered:
                await self._transition(record, JobState.FAILED, err.reason)
                return True
            await self._transition(record, JobState.QUEUED, err.reason)
            return False
        except DeviceError as err:
            owner.set_state(DeviceState.ERROR, err.reason)
            await self._transition(record, JobState.QUEUED, err.reason)
            return False
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("print job %s failed unexpectedly", record.job_id)
            owner.set_state(DeviceState.ERROR, "the printer driver failed; see the booth log")
            await self._transition(
                record, JobState.FAILED, "the printer driver failed; see the booth log"
            )
            return True
        owner.set_state(DeviceState.READY)
        logger.info("print job %s: %s", record.job_id, result.detail)
        await self._transition(record, JobState.PRINTED, None, device_ref=result.ref)
        return True

    async def _send(
        self,
        record: JobRecord,
        document: bytes,
        owner: DeviceOwner[ReceiptPrinter] | DeviceOwner[A4Printer],
        progress: JobProgress,
    ) -> PrintResult:
        if record.target is PrintTarget.RECEIPT:
            receipt = Receipt.from_json_dict(json.loads(document))
            receipt_owner: DeviceOwner[ReceiptPrinter] = owner  # type: ignore[assignment]
            return await receipt_owner.use(
                lambda p: p.print_receipt(receipt, job_id=record.job_id, progress=progress)
            )
        a4_owner: DeviceOwner[A4Printer] = owner  # type: ignore[assignment]
        return await a4_owner.use(
            lambda p: p.print_pdf(
                document, job_id=record.job_id, title=record.title, progress=progress
            )
        )
