"""Private files in the data directory: created 0600 in a 0700 directory, written atomically."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from ..errors import StorageError, StoreFull, StoreReadOnly


def storage_error(exc: OSError, path: Path) -> StorageError:
    """Our exact error for an OS failure on ``path``."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreReadOnly(f"{path}: permission denied or read-only: {exc.strerror}")
    if exc.errno == errno.ENOSPC:
        return StoreFull(f"{path}: disk full")
    return StorageError(f"{path}: {exc.strerror or exc}")


def make_directory(directory: Path) -> None:
    """Create the data directory (0700) if it does not exist yet."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, directory) from exc


def read_private(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` if there is no such file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, path) from exc


def write_private(path: Path, data: bytes, *, replace: bool) -> bool:
    """Durably write ``data`` to ``path`` with mode 0600, all or nothing.

    The bytes go to a fresh draft file that is fsynced and then moved into place. With
    ``replace=False`` an existing file is left alone and ``False`` returned: the draft is
    hard-linked into place, which fails atomically if another process won the race.
    """
    make_directory(path.parent)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    try:
        with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(draft, path)
        else:
            try:
                os.link(draft, path)
            except FileExistsError:
                return False
        _sync_directory(path.parent)
        return True
    except OSError as exc:
        raise storage_error(exc, path) from exc
    finally:
        draft.unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # make the rename or link itself durable
    finally:
        os.close(descriptor)
