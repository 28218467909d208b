"""Devices allowed to publish over MQTT (``gridhub device`` runs this).

``python -m services.collection.commands.devices add <meterpoint> [--password PW]`` or ``remove <meterpoint>``.

A device logs in with its meterpoint id (GSRN-18) as user name; the broker's ACL pattern
(``pattern write gridhub/meters/%u/readings`` and ``.../events``) lets it publish under its own meterpoint only.

Here, for the local stack, a device is a line in the stack's Mosquitto password file (``mosquitto_passwd``),
which the running broker reloads on SIGHUP. Production would not edit files: Mosquitto's dynamic security
plugin manages clients at runtime (``mosquitto_ctrl dynsec createClient <meterpoint>`` plus a role granting
``publishClientSend gridhub/meters/%u/#``, or the same over the ``$CONTROL/dynamic-security/v1`` topic), or the
broker authenticates devices by client certificate with the meterpoint id as the certificate's CN.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from libs.events.gsrn import is_valid_gsrn
from services.collection.settings import CollectionSettings, DeviceSettings

_TOOL_TIMEOUT = 30.0


def _files(settings: DeviceSettings | None) -> tuple[Path, Path | None]:
    settings = CollectionSettings().devices if settings is None else settings
    if settings.password_file is None:
        raise ValueError("no device registry: set COLLECTION_DEVICES__PASSWORD_FILE (and __BROKER_PID_FILE)")
    return settings.password_file, settings.broker_pid_file


def _passwd(arguments: list[str], *, missing_ok: bool = False) -> None:
    result = subprocess.run(  # noqa: S603 - a fixed tool; the user name is a checked GSRN
        ["mosquitto_passwd", *arguments],  # noqa: S607 - Mosquitto's own tool, found on PATH
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0 and not (missing_ok and "not found" in result.stderr + result.stdout):
        raise ValueError(f"mosquitto_passwd failed: {(result.stderr or result.stdout).strip()}")


def _reload(pid_file: Path | None) -> None:
    """SIGHUP the broker named by ``pid_file`` (``<pid> <marker>``), if it runs and is the one recorded."""
    if pid_file is None:
        return
    try:
        fields = pid_file.read_text().split()
        pid, marker = int(fields[0]), fields[1]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return  # no broker running: it reads the file when it starts
    if marker in cmdline:
        os.kill(pid, signal.SIGHUP)


def add_device(meterpoint_id: str, password: str | None = None, *, settings: DeviceSettings | None = None) -> str:
    """Let ``meterpoint_id`` publish, with ``password`` (a random one when None); return the password."""
    if not is_valid_gsrn(meterpoint_id):
        raise ValueError(f"{meterpoint_id!r} is no GSRN-18 with a valid check digit")
    password_file, pid_file = _files(settings)
    password = password or secrets.token_urlsafe(24)
    _passwd(["-b", str(password_file), meterpoint_id, password])
    _reload(pid_file)
    return password


def remove_device(meterpoint_id: str, *, settings: DeviceSettings | None = None) -> None:
    """Remove the device's credentials (none is fine); the broker refuses its next login."""
    password_file, pid_file = _files(settings)
    _passwd(["-D", str(password_file), meterpoint_id], missing_ok=True)
    _reload(pid_file)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <meterpoint> [--password PW]`` prints the password; ``remove <meterpoint>``."""
    parser = argparse.ArgumentParser(prog="python -m services.collection.commands.devices", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="let a meter publish under its meterpoint")
    add.add_argument("meterpoint_id")
    add.add_argument("--password", help="the device's password (default: a new random one, printed once)")
    remove = commands.add_parser("remove", help="take a meter's credentials away")
    remove.add_argument("meterpoint_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            password = add_device(args.meterpoint_id, args.password)
            print(
                f"device {args.meterpoint_id} may publish to gridhub/meters/{args.meterpoint_id}/readings and /events"
            )
            if args.password is None:
                print(f"password (shown once): {password}")
        else:
            remove_device(args.meterpoint_id)
            print(f"device {args.meterpoint_id} removed")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
