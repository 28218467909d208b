"""Starting, finding and stopping the stack's own processes by recorded PID; waiting on real readiness."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A part of the stack failed; the message says what and where its log is."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (our own child not yet reaped).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def read_pid(pid_file: Path) -> int | None:
    """The PID recorded in ``pid_file`` if that process still runs and is the one we started."""
    try:
        lines = pid_file.read_text().split()
        pid, marker = int(lines[0]), lines[1] if len(lines) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    return pid if process_matches(pid, marker) else None


def process_matches(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line holds ``marker`` (a guard against PID reuse)."""
    if not marker or not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def write_pid(pid_file: Path, pid: int, marker: str) -> None:
    pid_file.write_text(f"{pid} {marker}\n")


def spawn(
    args: Sequence[str],
    log_file: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a long-running process detached from our session, its output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    preexec = _drop_to(user) if user else None
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
            preexec_fn=preexec,
            close_fds=True,
        )
    return proc.pid


def run(
    args: Sequence[str],
    *,
    user: str | None = None,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command, raising StackError with its output when it fails."""
    preexec = _drop_to(user) if user else None
    try:
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=preexec,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(args)} did not finish within {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def _drop_to(user: str) -> Callable[[], None]:
    entry = pwd.getpwnam(user)

    def preexec() -> None:
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)

    return preexec


def stop_pid(pid: int, *, name: str, timeout: float = 30.0) -> None:
    """SIGTERM, wait for the process to exit, SIGKILL when it ignores us past the deadline."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_until(lambda: not pid_alive(pid), timeout):
        return
    print(f"  {name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait_until(lambda: not pid_alive(pid), 10):
        raise StackError(f"{name} (pid {pid}) survived SIGKILL")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_port_free(host: str, port: int, what: str) -> None:
    if port_open(host, port):
        raise StackError(
            f"{what}: port {host}:{port} is already taken by a process the stack did not start. "
            f"Stop it or choose another port (see README, 'Ports')."
        )


def home_for(root: Path, name: str, user: str | None) -> Path:
    """The folder of a part whose processes run as ``user``: inside ``root`` when ``user`` can reach it.

    PostgreSQL and Mosquitto drop from root to their own OS users, which cannot enter a checkout inside a private
    folder (a CI clone in a mode-700 temp dir). Then the part lives in a folder of its own under /var/tmp, named
    after the checkout so two clones never share one.
    """
    if user is None or _reachable(root, user):
        return root / name
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    fallback = Path("/var/tmp") / f"gridhub-stack-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    return fallback / name


def _reachable(root: Path, user: str) -> bool:
    entry = pwd.getpwnam(user)
    for folder in [root, *root.resolve().parents]:
        if not folder.exists():
            continue
        st = folder.stat()
        if st.st_uid != entry.pw_uid and not st.st_mode & 0o001:
            return False
    return True


_apt_updated = False


def ensure_packages(packages: Sequence[str], commands: Sequence[str]) -> None:
    """Install missing Debian packages with apt-get, or say exactly what to install when we cannot."""
    global _apt_updated
    missing = [cmd for cmd in commands if shutil.which(cmd) is None and not Path(cmd).exists()]
    if not missing:
        return
    can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if not can_apt:
        raise StackError(
            f"missing {', '.join(missing)}; install it first: sudo apt-get install -y {' '.join(packages)}"
        )
    print(f"  installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        run(["apt-get", "update", "-q"], env=env, timeout=600)
        _apt_updated = True
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env, timeout=900)
    still = [cmd for cmd in commands if shutil.which(cmd) is None and not Path(cmd).exists()]
    if still:
        raise StackError(f"apt-get installed {' '.join(packages)} but {', '.join(still)} is still missing")
