"""The `gridhub` command (operator tasks); filled in by the operations work."""


def main() -> None:
    raise SystemExit("gridhub: no commands yet")
