"""PostgreSQL from Debian's package: a private cluster in the stack folder, one database and role per service."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from stack.config import SERVICE_DATABASES, StackConfig
from stack.process import (
    StackError,
    ensure_packages,
    ensure_port_free,
    home_for,
    process_matches,
    run,
    tail,
    wait_until,
)

SUPERUSER = "postgres"


def _bin_dir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return candidates[-1].parent if candidates else None


class Postgres:
    """A cluster of our own (initdb + pg_ctl) rather than Debian's shared ``main`` cluster.

    pg_createcluster would register the cluster under /etc/postgresql, shared by every checkout on the machine;
    a data folder inside the checkout keeps clones independent and ``make stack-down`` precise.
    """

    name = "postgres"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        # initdb refuses to run as root: as root we run the cluster as Debian's postgres user.
        self.os_user = "postgres" if os.geteuid() == 0 else None
        self.home = home_for(config.root, "postgres", self.os_user if self._user_exists() else None)
        self.data = self.home / "data"
        self.sockets = self.home / "run"
        self.log_file = self.home / "postgres.log"

    def _user_exists(self) -> bool:
        try:
            return self.os_user is not None and pwd.getpwnam(self.os_user) is not None
        except KeyError:
            return False  # the package, which creates the user, is not installed yet

    def _bin(self, tool: str) -> str:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise StackError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        return str(bin_dir / tool)

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # postmaster.pid's first line is the PID; the process's command line names our data folder.
        return pid if process_matches(pid, str(self.data)) else None

    def install(self) -> None:
        ensure_packages(["postgresql"], ["/usr/lib/postgresql"])
        if _bin_dir() is None:
            ensure_packages(["postgresql"], ["pg_ctl-not-found"])

    def _chown(self, path: Path) -> None:
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            for p in [path, *path.rglob("*")]:
                os.chown(p, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        print("  initialising a PostgreSQL cluster in", self.data)
        self.home.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.sockets.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.home / "superuser.pw"
        pwfile.write_text(self.config.password(SUPERUSER) + "\n")
        self._chown(self.home)
        run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            user=self.os_user,
            timeout=120,
        )
        pwfile.unlink()
        # Local socket: only the cluster's OS user (peer); TCP on 127.0.0.1 only, with passwords.
        (self.data / "pg_hba.conf").write_text("local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self._chown(self.data / "pg_hba.conf")

    def start(self) -> None:
        if self.pid() is not None:
            return
        ensure_port_free(self.config.host, self.config.postgres_port, "postgres")
        self._initdb()
        options = (
            f"-c listen_addresses={self.config.host} -p {self.config.postgres_port} "
            f"-k {self.sockets} -c max_connections=200 -c shared_buffers=256MB"
        )
        # pg_ctl -w waits until the server accepts connections: a real readiness check with a deadline.
        result = run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(int(self.config.ready_timeout)),
                "start",
            ],
            user=self.os_user,
            check=False,
            timeout=self.config.ready_timeout + 10,
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres did not start ({result.stdout.strip()}); see {self.log_file}\n{tail(self.log_file)}"
            )
        print(f"  postgres started (pid {self.pid()})")

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = run(
            [
                self._bin("psql"),
                "-h",
                str(self.sockets),
                "-p",
                str(self.config.postgres_port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            user=self.os_user,
            timeout=60,
        )
        return result.stdout.strip()

    def wait_ready(self, timeout: float) -> None:
        if not wait_until(lambda: self.pid() is not None, timeout):
            raise StackError(f"postgres is not running; see {self.log_file}\n{tail(self.log_file)}")

    def ensure_databases(self) -> list[str]:
        """One role and one database per service (owner = role), password auth; returns those created."""
        created = []
        for db in SERVICE_DATABASES:
            password = self.config.password(db).replace("'", "''")
            exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{db}'")
            verb = "ALTER" if exists else "CREATE"
            self.psql(f"{verb} ROLE {db} LOGIN PASSWORD '{password}'")
            if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
                self.psql(f"CREATE DATABASE {db} OWNER {db}")
                self.psql(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
                created.append(db)
        return created

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        result = run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
            user=self.os_user,
            check=False,
            timeout=90,
        )
        if result.returncode != 0:
            raise StackError(f"postgres did not stop: {result.stdout}{result.stderr}")
        print(f"  postgres stopped (pid {pid})")

    @staticmethod
    def available() -> bool:
        return shutil.which("psql") is not None and _bin_dir() is not None
