"""Atomic file writes: a reader sees either the old file, the complete new file, or nothing.

Every writer in emlive goes through :func:`atomic_path`: it yields a temporary name in the
destination's own folder (so the final ``os.replace`` is a rename on one filesystem), and on
success flushes the data to disk, renames it over the destination and flushes the folder entry.
On error the temporary file is removed and the destination is untouched. Temporary names start
with a dot and contain ``.tmp-`` so that watchers and globbing can ignore them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "is_temporary_name"]

_TMP_MARK = ".tmp-"


def is_temporary_name(path: str | os.PathLike[str]) -> bool:
    """True for a name made by :func:`atomic_path` (an unfinished or abandoned write)."""
    name = Path(path).name
    return name.startswith(".") and _TMP_MARK in name


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms/filesystems cannot open folders; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the destination's suffix (``.mrc``, ``.star``, ``.png``), so
    writers that look at the suffix behave as for the final name. If the block raises, or
    leaves no file behind, the temporary file is removed and the exception propagates.
    """
    dest = Path(path)
    folder = dest.parent
    tmp = folder / f".{dest.stem}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{dest.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{dest}: the writer produced no file at {tmp.name}")
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (newlines written as given)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
