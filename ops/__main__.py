"""``python -m ops``: the ``gridhub`` command where only ``python -m`` runs (the image's entry point)."""

from __future__ import annotations

from ops.cli import main

if __name__ == "__main__":
    main()
