"""File drops: the spool of uploaded files, and their processing into Kafka with a receipt per file.

The FTP server (``ftp.py``) writes an upload to ``spool/<user>/incoming/<id>.part`` and, only when the transfer
ended cleanly, renames it into ``spool/<user>/ready/`` and hands it to the `FileProcessor`: a partial upload
is never processed, an aborted one is deleted. The spool lies outside every partner's home, so nobody can
touch a file between upload and receipt.

Processing streams the file from disk (``batch_lines`` lines at a time, read in a thread; a 1 GB file never
sits in memory): parse and validate each chunk, wait for the partner's quota, publish accepted readings and
dead letters together and wait for Kafka's acks, then append the chunk's lines to the receipt draft. While
Kafka refuses (breaker open) or fails, the same chunk is retried: processing pauses and resumes by itself.
Only after the last chunk was acknowledged is the receipt moved into ``users/<user>/outbox/<file>.receipt.json``
(atomic rename) and the spooled file deleted. A restart processes what is still in ``ready/`` again: the ids
are deterministic, so a file processed twice publishes the same events (consumers deduplicate by id).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import orjson

from libs.events.meterpoints import SourceKind
from libs.events.records import KafkaRecord
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import Refused
from libs.flowcontrol.quota import Quota
from services.collection import csvformat
from services.collection.adapters.ftpusers import check_login
from services.collection.adapters.kafka import Publisher, PublishFailed, dead_letter_record
from services.collection.domain import Accepted, Duplicate, Held, ItemOutcome, Rejected
from services.collection.handlers import READINGS, FileLine, Origin, Pipeline, count_outcomes, prepare_lines
from services.collection.metrics import CollectionMetrics
from services.collection.scope import Deliverer
from services.collection.settings import FtpSettings

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Names a partner may give an uploaded file (it also names the receipt)."""
RECEIPT_SUFFIX = ".receipt.json"
_READY = re.compile(r"(\d{20})-([0-9a-f]{16})--(.+)")
_DIR_MODE = 0o750


@dataclass(frozen=True, slots=True)
class FileJob:
    """One uploaded file waiting in the spool."""

    user: str
    name: str
    path: Path
    received_at: datetime
    upload_id: str

    @property
    def receipt_name(self) -> str:
        """The receipt's file name in the partner's outbox."""
        return self.name + RECEIPT_SUFFIX


class Spool:
    """The folder layout under ``ftp.root``: ``users/<login>/{inbox,outbox}`` and ``spool/<login>/...``."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def home(self, login: str) -> Path:
        """A partner's home (its FTP root: ``/inbox``, ``/outbox``); ValueError for a name that is no login."""
        return self.root / "users" / check_login(login)

    def outbox(self, login: str) -> Path:
        """Where a partner's receipts appear."""
        return self.home(login) / "outbox"

    def ensure_home(self, login: str) -> Path:
        """Create a partner's home with its inbox and outbox; return the home."""
        home = self.home(login)
        for folder in (home / "inbox", home / "outbox"):
            folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        return home

    def _spool(self, login: str, part: str) -> Path:
        folder = self.root / "spool" / check_login(login) / part
        folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        return folder

    def new_upload(self, login: str) -> Path:
        """A fresh temporary path for an upload in progress."""
        return self._spool(login, "incoming") / f"{secrets.token_hex(8)}.part"

    def commit(self, login: str, upload: Path, name: str, received_at: datetime) -> FileJob:
        """Move a completed upload into the queue folder (atomic rename) and describe it."""
        if not FILE_NAME.fullmatch(name):
            raise ValueError(f"not an acceptable file name: {name!r}")
        upload_id = secrets.token_hex(8)
        stamp = int(received_at.timestamp() * 1_000_000)
        path = self._spool(login, "ready") / f"{stamp:020d}-{upload_id}--{name}"
        os.replace(upload, path)
        return FileJob(login, name, path, received_at, upload_id)

    def recover(self) -> list[FileJob]:
        """At start-up: delete uploads that never completed; return the queued files, oldest first."""
        jobs: list[FileJob] = []
        spool = self.root / "spool"
        if not spool.is_dir():
            return jobs
        for user_folder in sorted(spool.iterdir()):
            for leftover in (user_folder / "incoming").glob("*.part"):
                leftover.unlink(missing_ok=True)
            for leftover in (user_folder / "work").glob("*.part"):
                leftover.unlink(missing_ok=True)
            ready = user_folder / "ready"
            if not ready.is_dir():
                continue
            for path in ready.iterdir():
                match = _READY.fullmatch(path.name)
                if match is None:
                    continue
                received_at = datetime.fromtimestamp(int(match.group(1)) / 1_000_000, UTC)
                jobs.append(FileJob(user_folder.name, match.group(3), path, received_at, match.group(2)))
        return sorted(jobs, key=lambda job: (job.received_at, job.upload_id))

    def receipt_draft(self, job: FileJob) -> Path:
        """Where a file's receipt is written while it is processed."""
        return self._spool(job.user, "work") / f"{job.upload_id}.receipt.part"

    def publish_receipt(self, job: FileJob, draft: Path) -> Path:
        """Move a finished receipt into the partner's outbox (atomic: nobody reads half a receipt)."""
        target = self.ensure_home(job.user) / "outbox" / job.receipt_name
        os.replace(draft, target)
        return target


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ReceiptWriter:
    """Writes a receipt draft as the file's chunks are acknowledged: never more than one chunk in memory."""

    def __init__(self, path: Path, job: FileJob) -> None:
        self.path = path
        self._file = path.open("wb")
        self._first = True
        self.accepted = self.duplicates = self.rejected = self.held = 0
        head = {"file": job.name, "user": job.user, "upload_id": job.upload_id, "received_at": _utc(job.received_at)}
        self._file.write(orjson.dumps(head)[:-1] + b', "lines": [')

    def add(self, lines: Sequence[FileLine], outcomes: Sequence[ItemOutcome]) -> None:
        """Record one acknowledged chunk: a receipt entry per line."""
        entries: list[bytes] = []
        for outcome in outcomes:
            number = lines[outcome.index].number
            if type(outcome) is Accepted:
                entry = {"line": number, "status": "accepted", "id": outcome.event_id}
            elif type(outcome) is Duplicate:
                entry = {
                    "line": number,
                    "status": "duplicate",
                    "id": outcome.event_id,
                    "duplicate_of": lines[outcome.duplicate_of].number,
                }
            elif type(outcome) is Held:
                # Valid, but the meterpoint is not registered: the reading waits in the DLQ for a redrive.
                entry = {
                    "line": number,
                    "status": "held",
                    "id": outcome.event_id,
                    "reason": outcome.reason,
                    "detail": outcome.detail,
                }
            else:
                assert isinstance(outcome, Rejected)
                entry = {"line": number, "status": "rejected", "reason": outcome.reason, "detail": outcome.detail}
            entries.append(orjson.dumps(entry))
        if not entries:
            return
        accepted, duplicates, rejected, held = count_outcomes(outcomes)
        self.accepted += accepted
        self.duplicates += duplicates
        self.rejected += rejected
        self.held += held
        separator = b"\n  " if self._first else b",\n  "
        self._first = False
        self._file.write(separator + b",\n  ".join(entries))

    def finish(self, *, processed_at: datetime, reason: str | None = None, detail: str | None = None) -> None:
        """Close the document (``status`` processed, or rejected with ``reason``) and make it durable."""
        tail: dict[str, object] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "held": self.held,
            "status": "processed" if reason is None else "rejected",
        }
        if reason is not None:
            tail["reason"] = reason
            tail["detail"] = detail
        tail["processed_at"] = _utc(processed_at)
        self._file.write(b"\n], " + orjson.dumps(tail)[1:] + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abandon(self) -> None:
        """Drop the draft (processing did not finish; the file is processed again later)."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def read_line(file: BinaryIO, max_line_bytes: int) -> tuple[bytes, bool] | None:
    """The next line without its line end and whether it was longer than the limit (then cut); None at the end."""
    raw = file.readline(max_line_bytes + 2)
    if not raw:
        return None
    if raw.endswith(b"\n") or len(raw) <= max_line_bytes:
        content = csvformat.strip_line_end(raw)
        if len(content) <= max_line_bytes:
            return content, False
        return content[:max_line_bytes], True
    while True:  # skip the rest of an overlong line, a bounded piece at a time
        rest = file.readline(64 * 1024)
        if not rest or rest.endswith(b"\n"):
            return raw[:max_line_bytes], True


def read_lines(file: BinaryIO, number: int, max_lines: int, max_line_bytes: int) -> tuple[list[FileLine], int]:
    """Up to ``max_lines`` non-blank lines starting at line ``number``; and the number of the next line."""
    lines: list[FileLine] = []
    while len(lines) < max_lines:
        line = read_line(file, max_line_bytes)
        if line is None:
            break
        content, cut = line
        if cut or content.strip():
            lines.append(FileLine(number, content, cut))
        number += 1
    return lines, number


class FileProcessor:
    """Processes spooled files with ``processing_workers`` workers until cancelled (see the module doc).

    ``submit(job)`` queues a completed upload; the FTP server asks ``queued(user)`` before accepting another
    upload of that user, so the queue holds at most ``max_queued_files_per_user`` files per user.
    """

    def __init__(
        self,
        settings: FtpSettings,
        *,
        spool: Spool,
        publisher: Publisher,
        pipeline: Pipeline,
        quota: Quota,
        metrics: CollectionMetrics,
        clock: Clock | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tenant_of: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self._settings = settings
        # The partner's grid company, looked up once per file (its account); None: checked by its login alone.
        self._tenant_of = tenant_of
        self._spool = spool
        self._publisher = publisher
        self._pipeline = pipeline
        self._quota = quota
        self._metrics = metrics
        self._clock = clock or MonotonicClock()
        self._wall_clock = wall_clock
        # Bounded by construction: an upload is refused while its user has max_queued_files_per_user queued.
        self._queue: asyncio.Queue[FileJob] = asyncio.Queue()
        self._queued: Counter[str] = Counter()
        self._paused = 0
        self.processed = 0

    @property
    def paused(self) -> bool:
        """True while a worker waits for Kafka."""
        return self._paused > 0

    def queued(self, user: str) -> int:
        """Files of ``user`` uploaded and not yet processed."""
        return self._queued[user]

    def submit(self, job: FileJob) -> None:
        """Queue a completed upload."""
        self._queued[job.user] += 1
        self._metrics.ftp_queued_files.inc()
        self._queue.put_nowait(job)

    async def run(self) -> None:
        """Queue what a previous run left in the spool, then process files until cancelled.

        Processing starts once the scope view has caught up (before, a registered meterpoint could look unknown).
        """
        scope = self._pipeline.scope
        while scope is not None and not scope.ready:
            await self._clock.sleep(0.05)
        for job in await asyncio.to_thread(self._spool.recover):
            self.submit(job)
        async with asyncio.TaskGroup() as workers:
            for number in range(self._settings.processing_workers):
                workers.create_task(self._work(), name=f"ftp-file-processor-{number}")

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.process(job)
            except Exception:
                # The file stays in the spool and is processed again on the next start; no receipt meanwhile.
                logger.exception("processing %s of %s failed", job.name, job.user)
                self._metrics.ftp_files.labels("failed").inc()
            finally:
                self._queued[job.user] -= 1
                if self._queued[job.user] <= 0:
                    del self._queued[job.user]
                self._metrics.ftp_queued_files.dec()

    async def process(self, job: FileJob) -> Path:
        """Publish one spooled file and write its receipt; return the receipt's path."""
        origin = Origin("ftp", f"ftp:{job.user}/{job.name}", job.upload_id, job.user)
        # The partner is its login (a meterpoint's data_source names it), in its account's grid company.
        tenant = await self._partner_tenant(job.user)
        deliverer = Deliverer(SourceKind.FTP_PARTNER, job.user, tenant)
        receipt = ReceiptWriter(self._spool.receipt_draft(job), job)
        try:
            with job.path.open("rb") as file:
                outcome = await self._stream(file, job, origin, deliverer, receipt)
            receipt.finish(processed_at=self._wall_clock(), reason=outcome[0], detail=outcome[1])
        except BaseException:
            receipt.abandon()
            raise
        target = await asyncio.to_thread(self._spool.publish_receipt, job, receipt.path)
        job.path.unlink(missing_ok=True)
        self.processed += 1
        self._metrics.ftp_files.labels("processed" if outcome[0] is None else "rejected").inc()
        logger.info(
            "file %s of %s processed: %d accepted, %d duplicate, %d rejected, %d held line(s)",
            job.name,
            job.user,
            receipt.accepted,
            receipt.duplicates,
            receipt.rejected,
            receipt.held,
        )
        return target

    async def _partner_tenant(self, login: str) -> str | None:
        if self._tenant_of is None:
            return None
        try:
            return await self._tenant_of(login)
        except Exception as error:  # the database away: the login alone still decides (it is unique in the hub)
            logger.warning("FTP partner %s: no tenant for the scope check (%s); checking its login only", login, error)
            return None

    async def _stream(
        self, file: BinaryIO, job: FileJob, origin: Origin, deliverer: Deliverer, receipt: ReceiptWriter
    ) -> tuple[str | None, str | None]:
        settings = self._settings
        limit = settings.max_line_bytes
        header = await asyncio.to_thread(read_line, file, limit)
        try:
            if header is None:
                raise csvformat.HeaderError("the file is empty; the first line must be the header")
            if header[1]:
                raise csvformat.HeaderError(f"the first line is longer than {limit} bytes; it must be the header")
            columns = csvformat.parse_header(header[0])
        except csvformat.HeaderError as error:
            # The whole file is refused; its first line goes to the DLQ as the evidence (not the whole file).
            letter = dead_letter_record(
                topic=READINGS.dlq,
                origin=origin.name,
                record_id=f"{origin.record_id}#1",
                key=None,
                value=header[0] if header is not None else b"",
                reason=error.reason,
                detail=f"line 1: {error}",
                failed_at=job.received_at,
                headers=[*origin.headers(), ("gridhub.line", b"1")],
            )
            await self._publish([letter])
            self._metrics.rejections.labels("ftp", error.reason).inc()
            return error.reason, str(error)
        number = 2
        while True:
            lines, number = await asyncio.to_thread(read_lines, file, number, settings.batch_lines, limit)
            if not lines:
                return None, None
            prepared = prepare_lines(
                lines,
                columns=columns,
                origin=origin,
                deliverer=deliverer,
                received_at=job.received_at,
                pipeline=self._pipeline,
                max_line_bytes=limit,
            )
            await self._charge(job.user, len(lines))
            await self._publish(prepared.records)
            receipt.add(lines, prepared.outcomes)
            self._metrics.count("ftp", READINGS.name, prepared.outcomes)

    async def _charge(self, user: str, cost: int) -> None:
        # Over quota the file waits (slowed, not refused): a partner's big drop cannot crowd out the others.
        while True:
            decision = self._quota.try_acquire(user, cost)
            if decision.allowed or math.isinf(decision.retry_after):
                return  # a batch above the burst could never pass; settings keep the burst >= batch_lines
            self._metrics.ftp_quota_waits.inc()
            await self._clock.sleep(decision.retry_after)

    async def _publish(self, records: list[KafkaRecord]) -> None:
        """Publish until Kafka acknowledged every record: pause (and retry the same records) while it cannot."""
        settings = self._settings
        backoff = settings.retry_backoff_seconds
        paused = False
        try:
            while True:
                try:
                    with self._metrics.publish_seconds.labels("ftp").time():
                        await self._publisher.publish(records)
                    return
                except Refused as refused:
                    wait = refused.retry_after if refused.retry_after is not None else backoff
                    error = "Kafka breaker open"
                except PublishFailed as failed:
                    wait, error = backoff, str(failed)
                    backoff = min(backoff * 2, settings.max_retry_backoff_seconds)
                if not paused:
                    logger.warning("FTP file processing paused: %s", error)
                    paused = True
                    self._paused += 1
                    self._metrics.ftp_paused.set(self._paused)
                await self._clock.sleep(min(max(wait, 0.05), settings.max_retry_backoff_seconds))
        finally:
            if paused:
                logger.info("Kafka takes records again; FTP file processing resumed")
                self._paused -= 1
                self._metrics.ftp_paused.set(self._paused)


__all__ = ["FILE_NAME", "RECEIPT_SUFFIX", "FileJob", "FileProcessor", "ReceiptWriter", "Spool", "read_lines"]
