"""FTP ingress: an embedded asyncio FTP server (aioftp) where partners drop reading files.

- **Logins**: one account per partner (``ftp_users``, scrypt hashes; ``services.collection.commands.ftpusers``).
  Anonymous logins (``anonymous``, ``ftp``, no user) are refused. Password checks that are not cached run in a
  thread and are limited per remote address; a partner has at most ``max_connections_per_user`` sessions.
- **Jail**: a partner sees its home as ``/`` with ``/inbox`` (upload here) and ``/outbox`` (receipts: list,
  download, delete). A path that climbs above ``/`` is refused (550), not silently clamped. Creating,
  removing or renaming folders and files, appending and resuming uploads are refused.
- **Uploads** (``STOR /inbox/<name>``): admitted when the partner has fewer than ``max_uploads_per_user`` uploads
  and ``max_queued_files_per_user`` queued files, and the boundary's bulkhead (uploads of all partners) has
  room; otherwise 450 / 452 at once. The data goes to a temporary file in the spool (outside the jail); past
  the maximum file size the upload is cut off (552) and deleted. Only a transfer that ended cleanly while the
  control connection is still there is committed (226) and queued; ABOR, a lost connection or a data error
  deletes it (426). Partners that want to be safe against their own crash mid-upload send files in one STOR
  per file and check for 226 (the receipt tells what was processed).
- **Processing** is the `FileProcessor`'s (``filedrop.py``): receipts appear in ``/outbox/<name>.receipt.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aioftp
from aioftp.server import ConnectionConditions, worker

from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.quota import Quota
from libs.platform.passwords import hash_password, verify_password
from services.collection.adapters.ftpusers import LOGIN, RESERVED_LOGINS, FtpUserStore
from services.collection.filedrop import FILE_NAME, RECEIPT_SUFFIX, FileProcessor, Spool
from services.collection.metrics import CollectionMetrics
from services.collection.settings import FtpSettings

logger = logging.getLogger(__name__)

INBOX = PurePosixPath("/inbox")
OUTBOX = PurePosixPath("/outbox")
_PATH_COMMANDS = ("cwd", "list", "mlsd", "mlst", "stor", "appe", "retr", "dele", "mkd", "rmd", "rnfr", "rnto")
_REFUSED_COMMANDS = ("appe", "mkd", "rmd", "rnfr", "rnto")
_MAX_REMEMBERED = 4
Command = Callable[[Any, Any], Awaitable[bool]]


class PartnerUser(aioftp.User):
    """An aioftp user for one session; ``authenticated`` once its password was checked."""

    authenticated: bool = False


class PartnerUsers(aioftp.AbstractUserManager):
    """Partner logins against an `FtpUserStore`: no anonymous access, hashed passwords, per-user session caps."""

    def __init__(
        self,
        store: FtpUserStore,
        spool: Spool,
        *,
        max_connections_per_user: int,
        checks: Quota,
        metrics: CollectionMetrics,
    ) -> None:
        super().__init__()
        self._store = store
        self._spool = spool
        self._max_connections = max_connections_per_user
        self._checks = checks
        self._metrics = metrics
        self._sessions: Counter[str] = Counter()
        # A verified password is remembered as an HMAC under a key that exists only in this process, so a
        # partner's next login costs no scrypt; a changed password no longer matches what is remembered.
        self._memory_key = secrets.token_bytes(32)
        self._verified: dict[str, dict[bytes, str]] = {}
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    async def get_user(self, login: str) -> tuple[aioftp.AbstractUserManager.GetUserResponse, aioftp.User | None, str]:
        """USER: refuse anonymous logins at once; ask every other login for a password (never tell who exists)."""
        responses = aioftp.AbstractUserManager.GetUserResponse
        login = login.strip()
        if not login or login.lower() in RESERVED_LOGINS:
            self._metrics.ftp_logins.labels("anonymous").inc()
            return responses.ERROR, None, "anonymous login is not allowed"
        if not LOGIN.fullmatch(login):
            return responses.PASSWORD_REQUIRED, PartnerUser(login, base_path=self._spool.root / "nobody"), "password"
        permissions = [
            aioftp.Permission("/", readable=True, writable=False),
            aioftp.Permission(str(INBOX), readable=True, writable=True),
            aioftp.Permission(str(OUTBOX), readable=True, writable=True),
        ]
        user = PartnerUser(login, base_path=self._spool.home(login), home_path="/", permissions=permissions)
        return responses.PASSWORD_REQUIRED, user, "password required"

    async def check(self, user: aioftp.User, password: str, remote: str) -> str | None:
        """None when ``password`` opens ``user``'s session; otherwise the reply text of the 530."""
        login = user.login or ""
        account = await self._store.get(login) if LOGIN.fullmatch(login) else None
        token = hmac.new(self._memory_key, f"{login}\x00{password}".encode(), hashlib.sha256).digest()
        encoded = account.password_hash if account is not None else None
        ok = encoded is not None and self._verified.get(login, {}).get(token) == encoded
        if not ok:
            decision = self._checks.try_acquire(remote)
            if not decision.allowed:
                self._metrics.ftp_logins.labels("throttled").inc()
                return f"too many login attempts; try again in {max(1, round(decision.retry_after))} s"
            # An unknown login costs as much as a wrong password, so timing does not tell which it was.
            ok = await asyncio.to_thread(verify_password, password, encoded or self._dummy_hash)
            ok = ok and encoded is not None
            if ok and encoded is not None:
                remembered = self._verified.setdefault(login, {})
                if len(remembered) >= _MAX_REMEMBERED:
                    remembered.clear()
                remembered[token] = encoded
        if not ok or account is None or not account.active:
            self._metrics.ftp_logins.labels("failed").inc()
            return "login incorrect"
        if self._sessions[login] >= self._max_connections:
            self._metrics.ftp_logins.labels("busy").inc()
            return f"too many sessions for {login} (at most {self._max_connections})"
        self._sessions[login] += 1
        if isinstance(user, PartnerUser):
            user.authenticated = True
        await asyncio.to_thread(self._spool.ensure_home, login)
        self._metrics.ftp_logins.labels("ok").inc()
        return None

    async def authenticate(self, user: aioftp.User, password: str) -> bool:
        """Unused: `PartnerFtpServer.pass_` calls `check`, which also knows the remote address."""
        return await self.check(user, password, "") is None

    async def notify_logout(self, user: aioftp.User) -> None:
        """A session ended: give its slot back."""
        if isinstance(user, PartnerUser) and user.authenticated and user.login is not None:
            user.authenticated = False
            self._sessions[user.login] -= 1
            if self._sessions[user.login] <= 0:
                del self._sessions[user.login]


def escapes_home(current: PurePosixPath, argument: str) -> bool:
    """True when ``argument`` (relative to ``current``) climbs above the home: ``..`` past ``/``."""
    path = PurePosixPath(argument) if argument else current
    if not path.is_absolute():
        path = current / path
    depth = 0
    for part in path.parts[1:]:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


class PartnerFtpServer(aioftp.Server):
    """aioftp's server with the jail, the upload admission and the spool of this service (see the module doc)."""

    def __init__(
        self,
        settings: FtpSettings,
        *,
        users: PartnerUsers,
        spool: Spool,
        processor: FileProcessor,
        uploads: Bulkhead,
        max_file_bytes: int,
        metrics: CollectionMetrics,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        ports = None
        if settings.passive_port_first:
            ports = range(settings.passive_port_first, settings.passive_port_last + 1)
        super().__init__(
            users,
            block_size=settings.block_size,
            socket_timeout=settings.socket_timeout_seconds,
            idle_timeout=settings.idle_timeout_seconds,
            wait_future_timeout=5,
            maximum_connections=settings.max_connections,
            data_ports=ports,
            encoding="utf-8",
            welcome_message="GridHub collection: upload reading files (CSV) into /inbox, receipts are in /outbox",
        )
        self._settings = settings
        self._partners = users
        self._spool = spool
        self._processor = processor
        self._uploads = uploads
        self._uploading: Counter[str] = Counter()
        self._max_file_bytes = max_file_bytes
        self._metrics = metrics
        self._wall_clock = wall_clock
        for name in _REFUSED_COMMANDS:
            self.commands_mapping[name] = self._not_allowed
        for name in _PATH_COMMANDS:
            self.commands_mapping[name] = self._jailed(name, self.commands_mapping[name])

    # --- the jail ------------------------------------------------------------------------------------------

    def _jailed(self, name: str, command: Command) -> Command:
        async def guarded(connection: Any, rest: Any) -> bool:
            text = str(rest)
            if "\x00" in text:
                connection.response("501", "no NUL characters in paths")
                return True
            current = connection.current_directory if connection.future.current_directory.done() else INBOX.parent
            if escapes_home(current, text):
                user = connection.user.login if connection.future.user.done() else "-"
                remote = connection.client_host
                logger.warning("FTP %s by %s from %s refused: path outside the home", name, user, remote)
                self._metrics.ftp_refusals.labels("path_outside_home").inc()
                connection.response("550", "path outside your home directory: refused")
                return True
            return await command(connection, rest)

        return guarded

    @ConnectionConditions(ConnectionConditions.login_required)  # type: ignore[arg-type]  # aioftp types it for Server only
    async def _not_allowed(self, connection: Any, rest: Any) -> bool:
        self._metrics.ftp_refusals.labels("not_allowed").inc()
        connection.response("550", "not allowed here: upload files into /inbox, fetch and delete receipts in /outbox")
        return True

    @ConnectionConditions(ConnectionConditions.user_required)  # type: ignore[arg-type]  # aioftp types it for Server only
    async def pass_(self, connection: Any, rest: str) -> bool:
        """PASS: check the password (see `PartnerUsers.check`)."""
        if connection.future.logged.done():
            connection.response("503", "already logged in")
            return True
        refusal = await self._partners.check(connection.user, rest, str(connection.client_host))
        if refusal is None:
            connection.logged = True
            connection.current_directory = PurePosixPath("/")
            connection.response("230", "logged in; upload into /inbox, receipts appear in /outbox")
        else:
            connection.response("530", refusal)
        return True

    @ConnectionConditions(ConnectionConditions.login_required)  # type: ignore[arg-type]  # aioftp types it for Server only
    async def dele(self, connection: Any, rest: Any) -> bool:
        """DELE: receipts in /outbox only."""
        real_path, virtual_path = self.get_paths(connection, rest)
        if virtual_path.parent != OUTBOX or not real_path.is_file():
            self._metrics.ftp_refusals.labels("not_allowed").inc()
            connection.response("550", "only receipts in /outbox can be deleted")
            return True
        real_path.unlink(missing_ok=True)
        connection.response("250", "deleted")
        return True

    # --- uploads -------------------------------------------------------------------------------------------

    @ConnectionConditions(  # type: ignore[arg-type]  # aioftp types it for Server only
        ConnectionConditions.login_required, ConnectionConditions.passive_server_started
    )
    async def stor(self, connection: Any, rest: Any, mode: str = "wb") -> bool:
        """STOR /inbox/<name>: admit, then receive into the spool (see the module doc)."""
        _, virtual_path = self.get_paths(connection, rest)
        name = virtual_path.name
        if virtual_path.parent != INBOX or not FILE_NAME.fullmatch(name) or name.endswith(RECEIPT_SUFFIX):
            self._metrics.ftp_refusals.labels("bad_name").inc()
            self._metrics.ftp_uploads.labels("not_allowed").inc()
            connection.response(
                "553", "upload into /inbox/ with a name of letters, digits, '.', '_' and '-' (at most 200)"
            )
            return True
        if connection.restart_offset:
            self._metrics.ftp_uploads.labels("not_allowed").inc()
            connection.response("550", "resuming an upload (REST) is not supported: send the whole file again")
            return True
        login: str = connection.user.login
        settings = self._settings
        if self._uploading[login] >= settings.max_uploads_per_user:
            self._metrics.ftp_uploads.labels("busy").inc()
            connection.response("450", f"at most {settings.max_uploads_per_user} uploads at once; try again later")
            return True
        if self._processor.queued(login) + self._uploading[login] >= settings.max_queued_files_per_user:
            self._metrics.ftp_uploads.labels("queue_full").inc()
            connection.response(
                "452", f"{settings.max_queued_files_per_user} files are waiting for processing; try again later"
            )
            return True
        if not self._uploads.try_acquire():
            self._metrics.ftp_uploads.labels("busy").inc()
            connection.response("450", "the server takes no more uploads right now; try again later")
            return True
        self._uploading[login] += 1
        task = asyncio.create_task(self._upload(connection, login, name))
        connection.extra_workers.add(task)
        connection.response("150", "data transfer started")
        return True

    async def _upload(self, connection: Any, login: str, name: str) -> None:
        # Returns None: aioftp's dispatcher ends the session when a worker returns False.
        upload = await asyncio.to_thread(self._spool.new_upload, login)
        outcome = "aborted"  # unless the transfer says otherwise: ABOR and a lost session cancel it

        @ConnectionConditions(
            ConnectionConditions.data_connection_made, wait=True, fail_code="425", fail_info="no data connection"
        )
        @worker  # type: ignore[arg-type]  # aioftp types it for Server only
        async def receive(server: PartnerFtpServer, connection: Any, rest: Any) -> bool:
            nonlocal outcome
            outcome = await self._receive(connection, upload, login, name)
            return True

        try:
            await receive(self, connection, name)
        finally:
            self._uploads.release()
            self._uploading[login] -= 1
            if self._uploading[login] <= 0:
                del self._uploading[login]
            if outcome != "completed":
                upload.unlink(missing_ok=True)
                if outcome == "aborted":
                    logger.warning("FTP upload %s of %s aborted; nothing was kept", name, login)
            self._metrics.ftp_uploads.labels(outcome).inc()

    async def _receive(self, connection: Any, upload: Path, login: str, name: str) -> str:
        stream = connection.data_connection
        del connection.data_connection
        limit = self._max_file_bytes
        size = 0
        try:
            async with stream:
                with upload.open("wb") as target:
                    async for block in stream.iter_by_block(self._settings.block_size):
                        size += len(block)
                        if size > limit:
                            logger.warning("FTP upload %s of %s cut off: larger than %d bytes", name, login, limit)
                            connection.response("552", f"the file is larger than {limit} bytes: upload refused")
                            return "too_large"
                        target.write(block)
                    target.flush()
                    await asyncio.to_thread(_fsync, target.fileno())
        except (OSError, TimeoutError, aioftp.errors.AIOFTPException) as error:
            logger.warning("FTP upload %s of %s failed: %s", name, login, error)
            connection.response("426", "data connection failed; transfer aborted, nothing was kept")
            return "aborted"
        if connection.command_connection.reader.at_eof():
            # The data ended because the client went away (both connections closed): not a completed upload.
            return "aborted"
        job = await asyncio.to_thread(self._spool.commit, login, upload, name, self._wall_clock())
        self._processor.submit(job)
        connection.response("226", f"{size} bytes received; the receipt will be /outbox/{job.receipt_name}")
        return "completed"


def _fsync(descriptor: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(descriptor)


class FtpIngress:
    """The FTP server and its file processor for the service's lifetime: ``await run()`` until cancelled."""

    def __init__(self, server: PartnerFtpServer, processor: FileProcessor, settings: FtpSettings) -> None:
        self.server = server
        self.processor = processor
        self._settings = settings
        self._started = asyncio.Event()

    @property
    def port(self) -> int:
        """The control port the server listens on (known once started)."""
        return int(self.server.address[1])

    async def wait_started(self, timeout: float) -> None:
        """Wait until the server listens."""
        async with asyncio.timeout(timeout):
            await self._started.wait()

    async def run(self) -> None:
        """Listen and process files until cancelled."""
        settings = self._settings
        await self.server.start(settings.host, settings.port)
        logger.info("FTP ingress listening on %s:%d", settings.host, self.port)
        self._started.set()
        try:
            await self.processor.run()
        finally:
            await self.server.close()


__all__ = ["FtpIngress", "PartnerFtpServer", "PartnerUser", "PartnerUsers", "escapes_home"]
