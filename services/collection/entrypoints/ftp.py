"""FTP ingress: an embedded asyncio FTP server (aioftp) where partners drop reading files.

- **Logins**: one account per partner (``ftp_users``, scrypt hashes; ``services.collection.commands.ftpusers``).
  Anonymous logins (``anonymous``, ``ftp``, no user) and names outside `check_login`'s pattern are refused at
  ``USER``. Password checks that are not cached run in a thread and are limited per remote address; a failed
  ``PASS`` is answered after a back-off that doubles per consecutive failure of the address (bounded memory:
  `FailureBackoff`); a partner has at most ``max_connections_per_user`` sessions.
- **Before the login** nothing is kept per user name: a connection holds its own attempt only. ``USER``,
  ``PASS``, ``AUTH``, ``PBSZ`` and ``PROT`` (and every command before the login) are read and answered one at a
  time, so commands pipelined behind a ``PASS`` wait for its answer; a ``USER`` after a successful login is
  refused (503), so a session stays bound to the partner whose password was checked. A connection must log in
  within ``login_timeout_seconds`` (421 then) and one address has at most ``max_unauthenticated_per_address``
  connections that have not logged in (one more: 421 at once).
- **TLS**: explicit FTPS (``AUTH TLS``, RFC 4217) when a certificate is configured; ``tls_control_required``
  refuses ``USER``/``PASS`` before it, ``tls_data_required`` refuses ``PASV``/``EPSV`` before ``PROT P``.
- **Data connections** are passive only and accepted only from the control connection's peer address.
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
import errno
import hashlib
import hmac
import logging
import os
import secrets
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aioftp
from aioftp.server import ConnectionConditions, worker

from libs.flowcontrol.backoff import FailureBackoff
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.quota import Quota
from libs.platform.passwords import hash_password
from services.collection.adapters.ftpusers import RESERVED_LOGINS, FtpUserStore, check_login, matching_hash
from services.collection.filedrop import FILE_NAME, RECEIPT_SUFFIX, FileProcessor, Spool
from services.collection.metrics import CollectionMetrics
from services.collection.settings import FtpSettings

logger = logging.getLogger(__name__)

INBOX = PurePosixPath("/inbox")
OUTBOX = PurePosixPath("/outbox")
_PATH_COMMANDS = ("cwd", "list", "mlsd", "mlst", "stor", "appe", "retr", "dele", "mkd", "rmd", "rnfr", "rnto")
_REFUSED_COMMANDS = ("appe", "mkd", "rmd", "rnfr", "rnto")
# Answered before the next command is read: the login and the TLS upgrade must not race what follows them.
_SERIAL_COMMANDS = ("user", "pass", "auth", "pbsz", "prot")
# Returned by `parse_command` when the login deadline passed; no client can send it (it holds a space).
_LOGIN_TIMEOUT = "login timeout"
_FEATURES = ("AUTH TLS", "PBSZ", "PROT", "EPSV", "PASV", "MLST type*;size*;modify*;", "UTF8")
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
        try:
            # The same pattern `gridhub ftp-user add` enforces: a login is also a folder name, so nothing that
            # could climb out of one (no '/', '\\', '..', NUL, at most 63 characters) gets any further.
            login = check_login(login)
        except ValueError:
            self._metrics.ftp_logins.labels("invalid").inc()
            return responses.ERROR, None, "not a valid login name"
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
        token = hmac.new(self._memory_key, f"{login}\x00{password}".encode(), hashlib.sha256).digest()
        remembered = self._verified.get(login, {}).get(token)
        if remembered is None:
            # Before the database and scrypt: a throttled guess costs neither.
            decision = self._checks.try_acquire(remote)
            if not decision.allowed:
                self._metrics.ftp_logins.labels("throttled").inc()
                return f"too many login attempts; try again in {max(1, round(decision.retry_after))} s"
        try:
            account = await self._store.get(check_login(login))
        except ValueError:
            account = None
        # The current hash, and the previous one while a password rotation overlaps (ftpusers.FtpUser).
        hashes = account.password_hashes(datetime.now(UTC)) if account is not None else ()
        ok = remembered is not None and remembered in hashes
        if not ok:
            # An unknown login costs as much as a wrong password, so timing does not tell which it was.
            encoded = await asyncio.to_thread(matching_hash, password, hashes, self._dummy_hash)
            ok = encoded is not None
            if encoded is not None:
                remembered_tokens = self._verified.setdefault(login, {})
                if len(remembered_tokens) >= _MAX_REMEMBERED:
                    remembered_tokens.clear()
                remembered_tokens[token] = encoded
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
        clock: Clock | None = None,
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
        self._clock = clock or MonotonicClock()
        self._tls = server_tls_context(settings)
        # Per connection (keyed by its writer), gone with it: at most max_connections entries.
        self._sessions: dict[asyncio.StreamWriter, _Session] = {}
        # Connections not logged in yet, per remote address: entries exist only while such connections do.
        self._unauthenticated: Counter[str] = Counter()
        self._backoff = FailureBackoff(
            settings.failed_login_backoff_seconds,
            settings.max_failed_login_backoff_seconds,
            memory=settings.failed_login_memory_seconds,
            max_keys=settings.failed_login_max_addresses,
            clock=self._clock,
        )
        self.commands_mapping["auth"] = self.auth
        self.commands_mapping[_LOGIN_TIMEOUT] = self._login_timed_out
        self.commands_mapping["feat"] = self.feat
        for name in _REFUSED_COMMANDS:
            self.commands_mapping[name] = self._not_allowed
        for name in _PATH_COMMANDS:
            self.commands_mapping[name] = self._jailed(name, self.commands_mapping[name])
        for name, command in list(self.commands_mapping.items()):
            self.commands_mapping[name] = self._serial(command)

    @property
    def unauthenticated_connections(self) -> int:
        """Connections that have not logged in (yet)."""
        return sum(self._unauthenticated.values())

    @property
    def failed_login_addresses(self) -> int:
        """Addresses whose failed logins the back-off remembers (at most ``failed_login_max_addresses``)."""
        return len(self._backoff)

    # --- connections before the login ----------------------------------------------------------------------

    async def dispatcher(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One control connection: the per-address cap and the login timeout around aioftp's dispatcher."""
        host = str(writer.get_extra_info("peername", ("", 0))[0])
        settings = self._settings
        if self._unauthenticated[host] >= settings.max_unauthenticated_per_address:
            self._metrics.ftp_refusals.labels("address_cap").inc()
            logger.info(
                "FTP connection from %s refused: %d connections from it have not logged in",
                host,
                settings.max_unauthenticated_per_address,
            )
            await _refuse(writer, "421 too many connections from your address that have not logged in\r\n")
            return
        session = _Session(host, asyncio.get_running_loop().time() + settings.login_timeout_seconds)
        self._unauthenticated[host] += 1
        self._metrics.ftp_unauthenticated.inc()
        self._sessions[writer] = session
        try:
            await super().dispatcher(reader, writer)
        finally:
            del self._sessions[writer]
            self._authenticated(session)
            reading = session.reading
            if reading is not None and reading.done() and not reading.cancelled():
                # The read that ended with the connection (reset, TLS alert) is nobody's result any more.
                reading.exception()

    def _authenticated(self, session: _Session) -> None:
        # The connection logged in or went away: it no longer counts against its address.
        if session.counted:
            session.counted = False
            self._metrics.ftp_unauthenticated.dec()
            self._unauthenticated[session.host] -= 1
            if self._unauthenticated[session.host] <= 0:
                del self._unauthenticated[session.host]

    async def _login_timed_out(self, connection: Any, rest: Any) -> bool:
        session = self._session(connection)
        self._metrics.ftp_refusals.labels("login_timeout").inc()
        timeout = self._settings.login_timeout_seconds
        logger.info("FTP connection from %s closed: no login within %.0f s", session.host, timeout)
        connection.response("421", "login timeout: closing the connection")
        return False  # aioftp's dispatcher sends the reply, closes the connection and frees its slot

    async def parse_command(self, stream: Any, censor_commands: tuple[str] = ("pass",)) -> tuple[str, str]:
        """Read the next command once the previous serial one (`_SERIAL_COMMANDS`, any before the login) is answered."""
        session = self._sessions.get(stream.writer)
        if session is None:
            return await super().parse_command(stream, censor_commands)
        session.reading = asyncio.current_task()
        while session.counted:  # not logged in: the login deadline bounds the wait for the next command
            try:
                async with asyncio.timeout_at(session.login_deadline) as deadline:
                    await session.answered.wait()
                    command, rest = await super().parse_command(stream, censor_commands)
                break
            except TimeoutError:
                if not deadline.expired():
                    raise  # aioftp's idle timeout
                if session.counted:
                    return _LOGIN_TIMEOUT, ""
        else:
            await session.answered.wait()
            command, rest = await super().parse_command(stream, censor_commands)
        serial = command in _SERIAL_COMMANDS or (session is not None and session.counted)
        if session is not None and serial and command in self.commands_mapping:
            session.answered.clear()  # set again when this command's handler returns (see `_serial`)
        return command, rest

    async def response_writer(self, stream: Any, response_queue: asyncio.Queue[Any]) -> None:
        """aioftp's response writer; its queue is remembered so that AUTH can wait until the 234 is sent."""
        session = self._sessions.get(stream.writer)
        if session is not None:
            session.responses = response_queue
        await super().response_writer(stream, response_queue)

    def _session(self, connection: Any) -> _Session:
        return self._sessions[connection.command_connection.writer]

    def _serial(self, command: Command) -> Command:
        async def answered_first(connection: Any, rest: Any) -> bool:
            session = self._sessions.get(connection.command_connection.writer)
            # Reading is paused only by the command just read, so only this one resumes it: a slower command
            # started before it (a LIST) must not let the next command in while a PASS is being checked.
            paused = session is not None and not session.answered.is_set()
            try:
                return await command(connection, rest)
            finally:
                if paused and session is not None:
                    session.answered.set()

        return answered_first

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
            if connection.future.logged.done() and not self._inside_home(connection, text):
                user = connection.user.login
                logger.warning(
                    "FTP %s by %s from %s refused: resolves outside the home", name, user, connection.client_host
                )
                self._metrics.ftp_refusals.labels("path_outside_home").inc()
                connection.response("550", "path outside your home directory: refused")
                return True
            return await command(connection, rest)

        return guarded

    def _inside_home(self, connection: Any, argument: str) -> bool:
        # The lexical check above sees '..'; this one resolves the real path (symbolic links too) and keeps
        # it inside the partner's home, whatever the path or the home looks like.
        real, _ = self.get_paths(connection, argument or ".")
        home = os.path.realpath(connection.user.base_path)
        return bool(os.path.commonpath([home, os.path.realpath(real)]) == home)

    @ConnectionConditions(ConnectionConditions.login_required)  # type: ignore[arg-type]  # aioftp types it for Server only
    async def _not_allowed(self, connection: Any, rest: Any) -> bool:
        self._metrics.ftp_refusals.labels("not_allowed").inc()
        connection.response("550", "not allowed here: upload files into /inbox, fetch and delete receipts in /outbox")
        return True

    # --- the login ----------------------------------------------------------------------------------------

    def _needs_tls(self, connection: Any) -> bool:
        if self._settings.tls_control_required and not self._session(connection).tls:
            self._metrics.ftp_refusals.labels("tls_required").inc()
            connection.response("530", "this server requires TLS: send AUTH TLS first")
            return True
        return False

    async def user(self, connection: Any, rest: str) -> bool:
        """USER: a new login attempt of this connection; refused once logged in (the session keeps its partner)."""
        if connection.future.logged.done():
            self._metrics.ftp_refusals.labels("user_after_login").inc()
            logger.warning("FTP USER after login as %s from %s refused", connection.user.login, connection.client_host)
            connection.response("503", "already logged in; to log in as someone else, open a new connection")
            return True
        if self._needs_tls(connection):
            return True
        # aioftp's USER would also keep a throttle per user object for the process's lifetime: not here. The
        # attempt lives in this connection only, replaced by the next USER, gone with the connection.
        del connection.user
        state, user, info = await self.user_manager.get_user(rest)
        if state == aioftp.AbstractUserManager.GetUserResponse.PASSWORD_REQUIRED and user is not None:
            connection.user = user
            connection.response("331", info)
        else:
            connection.response("530", info)
        return True

    @ConnectionConditions(ConnectionConditions.user_required)  # type: ignore[arg-type]  # aioftp types it for Server only
    async def pass_(self, connection: Any, rest: str) -> bool:
        """PASS: check the password (see `PartnerUsers.check`); a failure is answered after the back-off."""
        if connection.future.logged.done():
            connection.response("503", "already logged in")
            return True
        if self._needs_tls(connection):
            return True
        session = self._session(connection)
        user = connection.user
        refusal = await self._partners.check(user, rest, session.host)
        if refusal is None and connection.future.user.done() and connection.user is user:
            connection.logged = True
            connection.current_directory = PurePosixPath("/")
            self._authenticated(session)
            self._backoff.succeeded(session.host)
            connection.response("230", "logged in; upload into /inbox, receipts appear in /outbox")
            return True
        if refusal is None:  # cannot happen while PASS is serial; never log in a user other than the checked one
            await self._partners.notify_logout(user)
            refusal = "login incorrect"
        delay = self._backoff.failed(session.host)
        if delay > 0:
            await self._clock.sleep(delay)
        connection.response("530", refusal)
        return True

    # --- explicit TLS (RFC 4217) ---------------------------------------------------------------------------

    async def auth(self, connection: Any, rest: str) -> bool:
        """AUTH TLS: upgrade the control connection; data connections follow PROT."""
        session = self._session(connection)
        if self._tls is None:
            connection.response("502", "TLS is not configured on this server")
            return True
        if rest.strip().upper() not in ("TLS", "TLS-C", "SSL"):
            connection.response("504", "only AUTH TLS is supported")
            return True
        if session.tls or connection.future.user.done():
            connection.response("503", "AUTH TLS comes first, once")
            return True
        writer = connection.command_connection.writer
        # Stop reading before the 234 goes out: a client answers it with its ClientHello at once, and bytes the
        # plain stream read would be lost to the handshake (start_tls resumes reading on the TLS transport).
        writer.transport.pause_reading()
        reader = connection.command_connection.reader
        if getattr(reader, "_buffer", b""):
            # Commands sent behind AUTH before the handshake would be read as if they came over TLS.
            self._metrics.ftp_refusals.labels("tls_injection").inc()
            logger.warning("FTP AUTH TLS from %s refused: plain text sent after AUTH; closing", session.host)
            connection.response("503", "nothing may follow AUTH TLS before the handshake; closing")
            return False
        connection.response("234", "AUTH TLS successful; start the handshake")
        if session.responses is not None:
            await session.responses.join()
        try:
            await writer.start_tls(self._tls, ssl_handshake_timeout=self._settings.socket_timeout_seconds)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            self._metrics.ftp_refusals.labels("tls_handshake_failed").inc()
            logger.info("FTP TLS handshake with %s failed: %s", session.host, error)
            return False
        session.tls = True
        return True

    async def pbsz(self, connection: Any, rest: str | PurePosixPath) -> bool:
        """PBSZ: 0 is the only size TLS needs."""
        if not self._session(connection).tls:
            connection.response("503", "PBSZ needs AUTH TLS first")
        else:
            connection.response("200", "PBSZ=0")
        return True

    async def prot(self, connection: Any, rest: str | PurePosixPath) -> bool:
        """PROT P: data connections over TLS; PROT C: clear data, refused when data TLS is required."""
        session = self._session(connection)
        level = str(rest).strip().upper()
        if not session.tls:
            connection.response("503", "PROT needs AUTH TLS first")
        elif level == "P":
            self._data_protection(connection, session, protected=True)
            connection.response("200", "data connections are protected")
        elif level == "C" and not self._settings.tls_data_required:
            self._data_protection(connection, session, protected=False)
            connection.response("200", "data connections are clear")
        elif level == "C":
            self._metrics.ftp_refusals.labels("tls_required").inc()
            connection.response("534", "this server requires protected data connections (PROT P)")
        else:
            connection.response("504", "PROT P or PROT C")
        return True

    def _data_protection(self, connection: Any, session: _Session, *, protected: bool) -> None:
        # A passive listener opened under the other level would serve the wrong protocol: close it, the next
        # PASV/EPSV opens one that matches.
        if session.protected != protected and connection.future.passive_server.done():
            connection.passive_server.close()
            if self.available_data_ports is not None:
                self.available_data_ports.put_nowait((0, connection.passive_server_port))
            del connection.passive_server
        session.protected = protected

    async def feat(self, connection: Any, rest: str) -> bool:
        """FEAT: what this server supports beyond RFC 959."""
        features = (
            _FEATURES if self._tls is not None else tuple(f for f in _FEATURES if f not in ("AUTH TLS", "PBSZ", "PROT"))
        )
        connection.response("211", ["Features:", *features, "End"], True)
        return True

    # --- data connections ----------------------------------------------------------------------------------

    async def pasv(self, connection: Any, rest: Any) -> bool:
        """PASV, once data TLS is settled."""
        if self._data_needs_tls(connection):
            return True
        return bool(await super().pasv(connection, rest))

    async def epsv(self, connection: Any, rest: Any) -> bool:
        """EPSV, once data TLS is settled."""
        if self._data_needs_tls(connection):
            return True
        return bool(await super().epsv(connection, rest))

    def _data_needs_tls(self, connection: Any) -> bool:
        if not connection.future.logged.done():
            return False  # aioftp answers 503 (not logged in)
        if self._settings.tls_data_required and not self._session(connection).protected:
            self._metrics.ftp_refusals.labels("tls_required").inc()
            connection.response("521", "data connections must be protected: send PROT P first")
            return True
        return False

    async def _start_passive_server(
        self,
        connection: Any,
        handler_callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> asyncio.Server:
        """aioftp's passive listener, with TLS after PROT P and only for the control connection's peer address."""
        client_host = str(connection.client_host)
        login = connection.user.login

        async def from_the_client_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = str(writer.get_extra_info("peername", ("", 0))[0])
            if peer != client_host:
                self._metrics.ftp_refusals.labels("foreign_data_peer").inc()
                logger.warning(
                    "FTP data connection from %s for %s's session (control from %s) refused", peer, login, client_host
                )
                writer.close()
                return
            await handler_callback(reader, writer)

        tls = self._tls if self._session(connection).protected else None
        handshake = self._settings.socket_timeout_seconds if tls is not None else None
        host = connection.server_host
        if self.available_data_ports is None:
            return await asyncio.start_server(from_the_client_only, host, 0, ssl=tls, ssl_handshake_timeout=handshake)
        tried: set[int] = set()
        while True:
            try:
                priority, port = self.available_data_ports.get_nowait()
            except asyncio.QueueEmpty:
                raise aioftp.errors.NoAvailablePort from None
            if port in tried:
                self.available_data_ports.put_nowait((priority, port))
                raise aioftp.errors.NoAvailablePort
            tried.add(port)
            try:
                server = await asyncio.start_server(
                    from_the_client_only, host, port, ssl=tls, ssl_handshake_timeout=handshake
                )
            except OSError as error:
                self.available_data_ports.put_nowait((priority + 1, port))
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            connection.passive_server_port = port
            return server

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


@dataclass
class _Session:
    """What the server knows of one control connection besides aioftp's `Connection`."""

    host: str
    # Event-loop time by which the connection must have logged in.
    login_deadline: float
    # Counted in the per-address cap of connections that have not logged in (until login or disconnect).
    counted: bool = True
    tls: bool = False
    protected: bool = False
    # Set while the next command may be read; cleared while a serial command is being answered.
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    responses: asyncio.Queue[Any] | None = None
    # The task reading the latest command (aioftp starts one per command).
    reading: asyncio.Task[Any] | None = None

    def __post_init__(self) -> None:
        self.answered.set()


def server_tls_context(settings: FtpSettings) -> ssl.SSLContext | None:
    """The TLS context of the FTPS server from ``tls_cert_file`` / ``tls_key_file``; None without them."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as error:
        # At start-up, not in the settings: the files are mounted where the service runs, not where it is configured.
        raise ValueError(
            f"ftp TLS: cannot load the certificate {settings.tls_cert_file} and key {settings.tls_key_file}: {error}"
        ) from error
    return context


async def _refuse(writer: asyncio.StreamWriter, line: str) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(line.encode())
        async with asyncio.timeout(5):
            await writer.drain()
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(5):
            await writer.wait_closed()


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


__all__ = ["FtpIngress", "PartnerFtpServer", "PartnerUser", "PartnerUsers", "escapes_home", "server_tls_context"]
