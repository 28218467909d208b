"""Committed contract documents generated from code, and the one command that writes or checks them.

A service lists its generated documents (OpenAPI, AsyncAPI) in its ``contracts.py``::

    DOCUMENTS = [ContractDocument(CONTRACTS / "openapi" / "workorders.json", openapi_bytes)]

    if __name__ == "__main__":
        sys.exit(contracts_main(DOCUMENTS, prog="python -m services.workorders.contracts"))

``python -m services.<name>.contracts`` rewrites the files; ``--check`` only compares and exits 1 naming every
file that differs from the code, which is what the contract tests and CI run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
"""The repository's ``contracts/`` folder (generators run from a checkout, never from an installed wheel)."""


@dataclass(frozen=True)
class ContractDocument:
    """A committed file and the function that renders it from the code (with default settings)."""

    path: Path
    generate: Callable[[], bytes]

    def differs(self) -> bool:
        """Whether the committed file is missing or not what the code renders."""
        return not self.path.exists() or self.path.read_bytes() != self.generate()

    def write(self) -> None:
        """Write the rendered document."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(self.generate())


def render_json(document: dict[str, Any]) -> bytes:
    """The committed spelling of a JSON document: two-space indent, keys in code order, final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def contracts_main(documents: Sequence[ContractDocument], *, prog: str, argv: Sequence[str] | None = None) -> int:
    """Write every document, or with ``--check`` exit 1 when any committed file differs from the code."""
    parser = argparse.ArgumentParser(prog=prog, description="Write the contract documents generated from the code.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file and the code differ")
    args = parser.parse_args(argv)
    if args.check:
        stale = [document.path for document in documents if document.differs()]
        for path in stale:
            print(f"{path} differs from the code; run {prog}", file=sys.stderr)
        return 1 if stale else 0
    for document in documents:
        document.write()
        print(f"wrote {document.path}")
    return 0


__all__ = ["CONTRACTS", "ContractDocument", "contracts_main", "render_json"]
