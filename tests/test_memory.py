"""Memory that compaction and resting documents free goes back to the system (``_memory``).

Measured in fresh child processes (``tests/memory_child.py``), with the trim and with it
stubbed out: glibc keeps what a worker thread freed in that thread's arena, and what
the loop's thread freed in the middle of its heap, so without the trim a compaction
leaves its rebuilt document resident and a document that rests gives nothing back.
Nor may SQLite keep a copy of a large update the store wrote.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("memory_child.py")
MIB = 2**20

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def measured(tmp_path: Path, variant: str) -> dict[str, int]:
    # A fixed mmap threshold: glibc's own moves (up to 32 MiB, raised whenever a large
    # block is freed), so whether a snapshot-sized buffer landed in a heap or apart
    # changed from run to run, and both figures with it by tens of MiB.
    run = subprocess.run(
        [sys.executable, str(CHILD), variant, str(tmp_path / variant)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    )
    result: dict[str, int] = json.loads(run.stdout)
    return result


def test_compaction_and_resting_hand_freed_memory_back(tmp_path: Path) -> None:
    trimmed, untrimmed = measured(tmp_path, "trimmed"), measured(tmp_path, "untrimmed")
    # The baseline shows what is at stake: a compaction's document stays, a rest frees nothing.
    assert untrimmed["compaction_growth"] > 4 * MIB
    assert untrimmed["rest_freed"] < 1 * MIB
    assert trimmed["compaction_growth"] < untrimmed["compaction_growth"] / 4
    assert trimmed["rest_freed"] > 4 * MIB


def test_a_large_committed_update_does_not_stay_resident(tmp_path: Path) -> None:
    # SQLite would keep it bound to the cached INSERT until the next one (``BOUND_BLOB_BYTES``).
    assert measured(tmp_path, "trimmed")["commit_held"] < 4 * MIB
