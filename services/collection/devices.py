"""Devices allowed to publish over MQTT: ``python -m services.collection.devices add <meterpoint> [--password PW]``.

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
import sys

from libs.events.gsrn import is_valid_gsrn


def add_device(meterpoint_id: str, password: str | None = None) -> str:
    """Let ``meterpoint_id`` publish, with ``password`` (a random one when None); return the password."""
    if not is_valid_gsrn(meterpoint_id):
        raise ValueError(f"{meterpoint_id!r} is no GSRN-18 with a valid check digit")
    from stack.config import StackConfig  # the local stack's tooling, not part of the service image
    from stack.mosquitto import Mosquitto

    password = password or secrets.token_urlsafe(24)
    Mosquitto(StackConfig()).add_user(meterpoint_id, password)
    return password


def remove_device(meterpoint_id: str) -> None:
    """Remove the device's credentials; the broker refuses its next login."""
    from stack.config import StackConfig
    from stack.mosquitto import Mosquitto
    from stack.process import run

    broker = Mosquitto(StackConfig())
    run(["mosquitto_passwd", "-D", str(broker.passwd), meterpoint_id], timeout=30)
    pid = broker.pid()
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <meterpoint> [--password PW]`` prints the password; ``remove <meterpoint>``."""
    parser = argparse.ArgumentParser(prog="python -m services.collection.devices", description=__doc__)
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
