"""The crafted Yjs updates in ``shared/fixtures/hostile-updates`` (they crash or hang pycrdt)."""

from __future__ import annotations

import os
from pathlib import Path


def _fixtures() -> Path:
    """``shared/fixtures/hostile-updates`` beside the checkout (or at $GIGI_SHARED_DIR)."""
    if "GIGI_SHARED_DIR" in os.environ:
        return Path(os.environ["GIGI_SHARED_DIR"]) / "fixtures" / "hostile-updates"
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "fixtures" / "hostile-updates"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/fixtures/hostile-updates not found beside the checkout; set GIGI_SHARED_DIR")


HOSTILE = _fixtures()


def hostile_updates(name: str) -> list[bytes]:
    """The updates of one fixture file (hex, one per line), to apply in order."""
    return [bytes.fromhex(line) for line in (HOSTILE / name).read_text().split()]
