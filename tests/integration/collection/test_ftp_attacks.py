"""Hostile FTP clients against the real FTP server (issue 14): each test performs the attack over real sockets.

The server runs in this process (the ``ftp_service`` fixture), partners live in PostgreSQL and readings go to
the real Kafka. Attackers speak raw FTP over asyncio streams, so that they can pipeline commands in one write
and bind their sockets to other loopback addresses (127.0.0.2, 127.0.0.3) than the partners'.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import gc
import io
import re
import secrets
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.collection.entrypoints.ftp import PartnerFtpServer
from stack.process import ensure_packages
from tests.integration.collection.conftest import FtpFactory, FtpService
from tests.integration.collection.support import CSV_HEADER, csv_line, ftp_login, new_meterpoint, wait_for_file

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

HOST = "127.0.0.1"


class RawFtp:
    """A control connection that writes whatever it is told and reads replies one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, source: str = HOST, greeting: bool = True) -> RawFtp:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        client = cls(reader, writer)
        if greeting:
            code, text = await client.reply()
            assert code == "220", text
        return client

    def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode())

    async def reply(self, timeout: float = 10.0) -> tuple[str, str]:
        async with asyncio.timeout(timeout):
            line = (await self.reader.readline()).decode()
            if not line:
                return "", ""  # closed
            if len(line) > 3 and line[3] == "-":  # a multi-line reply ends with "<code> "
                while not (more := (await self.reader.readline()).decode()).startswith(line[:3] + " "):
                    if not more:
                        return "", ""
                    line += more
            return line[:3], line[4:].strip()

    async def command(self, line: str) -> tuple[str, str]:
        self.send(line)
        return await self.reply()

    async def login(self, login: str, password: str) -> None:
        self.send(f"USER {login}", f"PASS {password}")
        assert (await self.reply())[0] == "331"
        code, text = await self.reply()
        assert code == "230", text

    async def passive(self, *, source: str = HOST) -> tuple[int, Any]:
        """PASV: the announced data port and a function that connects to it from ``source``."""
        code, text = await self.command("PASV")
        assert code == "227", text
        numbers = [int(n) for n in re.search(r"\((\d+(?:,\d+){5})\)", text).group(1).split(",")]  # type: ignore[union-attr]
        port = numbers[4] * 256 + numbers[5]

        async def connect(source: str = source) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(HOST, port, local_addr=(source, 0))

        return port, connect

    async def closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server still sends until it closes the connection (fails after ``timeout``)."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw(port: int, **options: Any) -> AsyncIterator[RawFtp]:
    client = await RawFtp.open(port, **options)
    try:
        yield client
    finally:
        client.close()


async def eventually(condition: Any, *, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def server_of(service: FtpService) -> PartnerFtpServer:
    ftp = service.app.state.parts.ftp
    assert ftp is not None
    return ftp.server  # type: ignore[no-any-return]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def upload_body(meterpoint: str) -> bytes:
    return f"{CSV_HEADER}\n{csv_line(meterpoint, 1)}\n".encode()


async def raw_upload(client: RawFtp, name: str, data: bytes) -> tuple[str, str]:
    """PASV, STOR /inbox/<name> with ``data`` from this client's address; the final reply."""
    _, connect = await client.passive()
    _, writer = await connect()
    code, text = await client.command(f"STOR /inbox/{name}")
    if not code.startswith("1"):
        writer.close()
        return code, text
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    return await client.reply()


# --- 1: unauthenticated memory growth --------------------------------------------------------------------


@pytest.mark.timeout(600)  # 104,000 logins: about a minute alone, several on a machine busy with other work
async def test_unauthenticated_logins_keep_no_state_and_memory_stays_flat(ftp_service: FtpFactory) -> None:
    # Back-off at 0 s keeps 100,000 attempts fast; the failures are still recorded per address (bounded). Each
    # connection makes 25,000 attempts, which on a loaded machine outlast the login timeout (30 s by default): the
    # timeout is another attack's test (5), so here it is out of the way.
    async with ftp_service(
        failed_login_backoff_seconds=0, max_failed_login_backoff_seconds=0, login_timeout_seconds=600
    ) as service:
        server = server_of(service)
        connections = 4  # the per-address cap of connections that have not logged in
        pairs_per_write = 500

        async def attack(client: RawFtp, attempts: int, tag: str) -> None:
            for start in range(0, attempts, pairs_per_write):
                count = min(pairs_per_write, attempts - start)
                # Every attempt a new user name: aioftp kept a throttle per user object for the process's life.
                client.send(*(f"USER {tag}{start + n}\r\nPASS wrong-password" for n in range(count)))
                replies, pending = 0, b""
                async with asyncio.timeout(30):
                    while replies < 2 * count:
                        chunk = await client.reader.read(256 * 1024)
                        assert chunk, "the server closed the connection"
                        *lines, pending = (pending + chunk).split(b"\r\n")
                        assert all(line[:4] in (b"331 ", b"530 ") for line in lines), lines[:3]
                        replies += len(lines)

        async def run(total: int, tag: str) -> None:
            clients = [await RawFtp.open(service.port) for _ in range(connections)]
            try:
                each = total // connections
                await asyncio.gather(*(attack(c, each, f"{tag}{i}x") for i, c in enumerate(clients)))
            finally:
                for client in clients:
                    client.close()
            await eventually(lambda: server.unauthenticated_connections == 0)

        await run(4_000, "warm")  # the first round allocates what every later one reuses
        gc.collect()
        before = rss_bytes()
        await run(100_000, "mallory")
        gc.collect()
        grown = rss_bytes() - before

        assert (
            service.metric("gridhub_collection_ftp_logins_total", outcome="failed")
            + service.metric("gridhub_collection_ftp_logins_total", outcome="throttled")
            >= 104_000
        )
        assert len(server.throttle_per_user) == 0  # aioftp's per-user map: never filled
        assert server.failed_login_addresses <= 1  # one address failed, one entry
        assert server.unauthenticated_connections == 0
        assert server._partners._sessions == {}
        assert server._partners._verified == {}
        assert grown < 5 * 1024 * 1024, f"RSS grew by {grown / 1024 / 1024:.1f} MiB over 100,000 attempts"


# --- 2: pipelined logins ---------------------------------------------------------------------------------


async def test_pipelined_logins_never_yield_another_partners_session(ftp_service: FtpFactory) -> None:
    async with ftp_service() as service:
        server = server_of(service)
        a, a_password = await service.add_partner()
        b, b_password = await service.add_partner()
        b_home = service.root / "users" / b
        b_spool = service.root / "spool" / b
        for tail in ([], ["PASS b-wrong-password"], [f"PASS {b_password}"]):
            async with raw(service.port) as client:
                client.send(f"USER {a}", f"PASS {a_password}", f"USER {b}", *tail)  # one write
                assert (await client.reply())[0] == "331"
                assert (await client.reply())[0] == "230"
                assert (await client.reply())[0] == "503"  # USER after a successful login is refused
                for _ in tail:
                    assert (await client.reply())[0] == "503"  # already logged in
                name = f"race-{len(tail)}.csv"
                code, text = await raw_upload(client, name, upload_body(new_meterpoint()))
                assert code == "226", text
                # The upload is A's: its receipt appears in A's outbox, nothing in B's home or spool.
                await wait_for_file(service.outbox(a) / f"{name}.receipt.json")
        assert not b_home.exists() or [p for p in b_home.rglob("*") if p.is_file()] == []
        assert not b_spool.exists()
        # No session slot leaked: once the connections are gone A holds none and logs in 10 times in a row.
        await eventually(lambda: server._partners._sessions.get(a, 0) == 0)
        for _ in range(10):
            partner = await ftp_login(service.port, a, a_password)
            await partner.quit()
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="user_after_login") == 3


# --- 3: traversal logins ---------------------------------------------------------------------------------


async def test_traversal_logins_are_refused_and_nothing_is_written_outside_the_root(
    ftp_service: FtpFactory, tmp_path: Path
) -> None:
    marker = f"escaped{secrets.token_hex(4)}"
    names = [
        f"../../{marker}",
        f"../../../../../../tmp/{marker}",
        f"a/{marker}",
        "..",
        ".",
        f"{marker}\x00b",
        f"a\\..\\..\\{marker}",
        "x" * 64,
        f"/{marker}",
        f"{marker.upper()}",
    ]
    places = [tmp_path, tmp_path.parent, tmp_path.parent.parent, Path("/tmp")]
    async with ftp_service() as service:
        a, a_password = await service.add_partner()
        before = tree(tmp_path)
        for name in names:
            # Directly: refused at USER, PASS has no user to check.
            async with raw(service.port) as client:
                client.send(f"USER {name}", "PASS whatever-password")
                assert (await client.reply())[0] == "530", name
                assert (await client.reply())[0] == "503", name
            # Through the race: USER after a successful login is refused, uploads stay in A's home.
            async with raw(service.port) as client:
                client.send(f"USER {a}", f"PASS {a_password}", f"USER {name}", "PASS whatever-password")
                assert [(await client.reply())[0] for _ in range(4)] == ["331", "230", "503", "503"], name
                code, text = await raw_upload(client, f"t{names.index(name)}.csv", upload_body(new_meterpoint()))
                assert code == "226", text
        await wait_for_file(service.outbox(a) / f"t{len(names) - 1}.csv.receipt.json")
        assert service.metric("gridhub_collection_ftp_logins_total", outcome="invalid") >= len(names) - 1
    created = tree(tmp_path) - before
    # Only A's home and spool folders (and the folders that hold them) were created, nothing else.
    folders = {"ftp", "ftp/users", "ftp/spool", f"ftp/users/{a}", f"ftp/spool/{a}"}
    inside = (f"ftp/users/{a}/", f"ftp/spool/{a}/")
    assert sorted(path for path in created if path not in folders and not path.startswith(inside)) == []
    for place in places:
        assert not list(place.glob(f"*{marker}*")), place


# --- 4: data connections from another address ------------------------------------------------------------


async def test_a_data_connection_from_another_address_is_refused_and_the_transfer_completes(
    ftp_service: FtpFactory,
) -> None:
    meterpoint = new_meterpoint()
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        async with raw(service.port) as client:
            await client.login(login, password)
            _, connect = await client.passive()
            # The attacker on 127.0.0.2 connects to the announced port first: the server closes it unserved.
            thief_reader, thief_writer = await connect("127.0.0.2")
            async with asyncio.timeout(10):
                assert await thief_reader.read() == b""
            thief_writer.close()
            await eventually(
                lambda: service.metric("gridhub_collection_ftp_refusals_total", reason="foreign_data_peer") == 1
            )
            # The partner's own connection is the data connection: its upload completes.
            reader, writer = await connect()
            code, text = await client.command("STOR /inbox/mine.csv")
            assert code == "150", text
            writer.write(upload_body(meterpoint))
            await writer.drain()
            writer.close()
            assert (await client.reply())[0] == "226"
            receipt = orjson.loads(await wait_for_file(service.outbox(login) / "mine.csv.receipt.json"))
            assert receipt["accepted"] == 1
            # And a listing goes to the partner only, never to a third party that is faster.
            _, connect = await client.passive()
            thief_reader, thief_writer = await connect("127.0.0.2")
            async with asyncio.timeout(10):
                assert await thief_reader.read() == b""
            thief_writer.close()
            reader, writer = await connect()
            assert (await client.command("LIST /outbox"))[0] == "150"
            async with asyncio.timeout(10):
                listing = await reader.read()
            writer.close()
            assert b"mine.csv.receipt.json" in listing
            assert (await client.reply())[0] == "226"
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="foreign_data_peer") == 2


# --- 5: slot hogging -------------------------------------------------------------------------------------


async def test_slot_hogging_ends_at_the_login_timeout_and_partners_log_in_meanwhile(ftp_service: FtpFactory) -> None:
    settings = {"login_timeout_seconds": 2.0, "max_unauthenticated_per_address": 4, "max_connections": 8}
    async with ftp_service(**settings) as service:
        server = server_of(service)
        login, password = await service.add_partner()
        hogs = [await RawFtp.open(service.port, source="127.0.0.2") for _ in range(4)]
        # Past the cap, the hog's address gets 421 at once and holds nothing.
        for _ in range(6):
            late = await RawFtp.open(service.port, source="127.0.0.2", greeting=False)
            code, text = await late.reply()
            assert code == "421", text
            assert await late.closed() == b""
            late.close()
        assert server.unauthenticated_connections == 4
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="address_cap") == 6
        # Meanwhile a partner from another address logs in and works.
        async with raw(service.port, source="127.0.0.3") as partner:
            await partner.login(login, password)
            assert (await partner.command("PWD"))[0] == "257"
            # The hog's connections are closed at the login timeout with a 421 (the partner's is not).
            for hog in hogs:
                assert (await hog.closed(timeout=15)).startswith(b"421 login timeout")
                hog.close()
            assert service.metric("gridhub_collection_ftp_refusals_total", reason="login_timeout") == 4
            await eventually(lambda: server.unauthenticated_connections == 0)
            assert (await partner.command("PWD"))[0] == "257"
        # The address may connect again once its connections are gone.
        async with raw(service.port, source="127.0.0.2") as again:
            await again.login(login, password)


async def test_a_session_that_starts_logging_in_but_never_finishes_is_closed_too(ftp_service: FtpFactory) -> None:
    async with (
        ftp_service(login_timeout_seconds=1.0, failed_login_backoff_seconds=0.1) as service,
        raw(service.port, source="127.0.0.2") as client,
    ):
        client.send("USER someone", "PASS not-the-password")
        assert [(await client.reply())[0] for _ in range(2)] == ["331", "530"]
        assert (await client.closed(timeout=15)).startswith(b"421 login timeout")


async def test_failed_logins_are_answered_after_a_growing_back_off(ftp_service: FtpFactory) -> None:
    async with ftp_service(failed_login_backoff_seconds=0.2, max_failed_login_backoff_seconds=0.4) as service:
        server = server_of(service)
        login, password = await service.add_partner()
        async with raw(service.port, source="127.0.0.2") as client:
            loop = asyncio.get_running_loop()
            waited = []
            for _ in range(3):
                started = loop.time()
                client.send(f"USER {login}", "PASS wrong-password-here")
                assert [(await client.reply())[0] for _ in range(2)] == ["331", "530"]
                waited.append(loop.time() - started)
            assert server._backoff.failures("127.0.0.2") == 3
            # 0.2, 0.4, 0.4 s at least (never less; a loaded machine may add to it).
            assert [w >= d for w, d in zip(waited, (0.2, 0.4, 0.4), strict=True)] == [True, True, True], waited
            await client.login(login, password)  # a success resets the address
            assert server._backoff.failures("127.0.0.2") == 0


# --- 6: FTPS ---------------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    ensure_packages(["openssl"], ["openssl"])
    ca_key, ca, key, request, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")

    def openssl(*arguments: str | Path) -> None:
        subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key,
            "-out", ca, "-days", "2", "-subj", "/CN=GridHub test CA")  # fmt: skip
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
            "-out", request, "-subj", "/CN=127.0.0.1")  # fmt: skip
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "2", "-extfile", extensions)  # fmt: skip
    return ca, cert, key


async def test_ftps_works_end_to_end_and_plain_text_is_refused(ftp_service: FtpFactory, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls = {"tls_cert_file": cert, "tls_key_file": key, "tls_control_required": True, "tls_data_required": True}
    meterpoint = new_meterpoint()
    async with ftp_service(**tls) as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        port = service.port

        # Plain FTP: no password is taken in clear text.
        async with raw(port) as plain:
            plain.send(f"USER {login}", f"PASS {password}")
            # USER is refused before AUTH TLS, so the PASS has no user to check it against.
            assert [(await plain.reply())[0] for _ in range(2)] == ["530", "503"]
            code, text = await plain.command("FEAT")
            assert code == "211"
            assert "AUTH TLS" in text

        def tls_client(cafile: Path | None = ca) -> ftplib.FTP_TLS:
            context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
            client = ftplib.FTP_TLS(context=context, timeout=15)
            client.connect(HOST, port)
            return client

        def partner_session() -> str:
            client = tls_client()
            try:
                client.login(login, password)  # AUTH TLS first, then USER/PASS over TLS
                with pytest.raises(ftplib.error_perm, match=r"^521"):
                    client.retrlines("LIST /outbox")  # data in clear: refused before PROT P
                with pytest.raises(ftplib.error_perm, match=r"^534"):
                    client.prot_c()
                client.prot_p()
                # The data connection is TLS too: ftplib's handshake on it fails otherwise.
                client.storbinary("STOR /inbox/tls.csv", io.BytesIO(upload_body(meterpoint)))
                version = client.sock.version()  # type: ignore[union-attr]
                client.quit()
                return version or ""
            finally:
                client.close()

        assert await asyncio.to_thread(partner_session) in ("TLSv1.2", "TLSv1.3")
        await wait_for_file(service.outbox(login) / "tls.csv.receipt.json")

        def fetch_receipt() -> tuple[list[str], bytes]:
            client = tls_client()
            try:
                client.login(login, password)
                client.prot_p()
                names = [name for name, _ in client.mlsd("/outbox")]
                out = io.BytesIO()
                client.retrbinary("RETR /outbox/tls.csv.receipt.json", out.write)
                client.quit()
                return names, out.getvalue()
            finally:
                client.close()

        names, body = await asyncio.to_thread(fetch_receipt)
        assert names == ["tls.csv.receipt.json"]
        assert orjson.loads(body)["accepted"] == 1
        # USER before AUTH, LIST before PROT P, PROT C: each refused and counted.
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="tls_required") == 3
        assert service.metric("gridhub_collection_ftp_logins_total", outcome="ok") == 2

        # A client that does not trust the certificate gets no session (the handshake fails on its side).
        def untrusting() -> None:
            client = tls_client(cafile=None)
            try:
                client.auth()
            finally:
                client.close()

        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(untrusting)


async def test_ftps_data_protection_may_change_where_it_is_not_required(
    ftp_service: FtpFactory, tmp_path: Path
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls = {"tls_cert_file": cert, "tls_key_file": key, "tls_control_required": True, "tls_data_required": False}
    meterpoint = new_meterpoint()
    async with ftp_service(**tls) as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        port = service.port

        # Plain text behind AUTH TLS, before the handshake, would pass as if it came over TLS: the server closes.
        async with raw(port) as injector:
            injector.send("AUTH TLS", f"USER {login}")
            assert await injector.reply() == ("503", "nothing may follow AUTH TLS before the handshake; closing")
            assert await injector.closed() == b""
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="tls_injection") == 1

        def clear_then_protected() -> list[str]:
            client = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(ca)), timeout=15)
            client.connect(HOST, port)
            try:
                client.login(login, password)
                listing: list[str] = []
                client.retrlines("LIST /outbox", listing.append)  # data in clear: allowed here
                # PROT P closes the clear listener, so the next transfer's data connection is TLS.
                client.prot_p()
                client.storbinary("STOR /inbox/mixed.csv", io.BytesIO(upload_body(meterpoint)))
                client.quit()
                return listing
            finally:
                client.close()

        assert await asyncio.to_thread(clear_then_protected) == []
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "mixed.csv.receipt.json"))
        assert receipt["accepted"] == 1


async def test_ftps_with_curl_as_a_partner_would(ftp_service: FtpFactory, tmp_path: Path) -> None:
    ensure_packages(["curl"], ["curl"])
    ca, cert, key = make_certificates(tmp_path)
    tls = {"tls_cert_file": cert, "tls_key_file": key, "tls_control_required": True, "tls_data_required": True}
    upload = tmp_path / "curl.csv"
    meterpoint = new_meterpoint()
    upload.write_bytes(upload_body(meterpoint))
    async with ftp_service(**tls) as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        base = f"ftp://127.0.0.1:{service.port}"

        def curl(*arguments: str) -> subprocess.CompletedProcess[bytes]:
            command = ["curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", str(ca), "--max-time", "30"]
            return subprocess.run(
                [*command, "--user", f"{login}:{password}", *arguments], capture_output=True, timeout=60, check=False
            )

        sent = await asyncio.to_thread(curl, "--upload-file", str(upload), f"{base}/inbox/curl.csv")
        assert sent.returncode == 0, sent.stderr
        await wait_for_file(service.outbox(login) / "curl.csv.receipt.json")
        fetched = await asyncio.to_thread(curl, f"{base}/outbox/curl.csv.receipt.json")
        assert fetched.returncode == 0, fetched.stderr
        assert orjson.loads(fetched.stdout)["accepted"] == 1
        # Without TLS curl gets no login at all.
        plain = await asyncio.to_thread(
            subprocess.run,
            ["curl", "--silent", "--max-time", "30", "--user", f"{login}:{password}", f"{base}/outbox/"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert plain.returncode != 0
