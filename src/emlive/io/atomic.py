"""Atomic file writes: a reader sees either the old file, the complete new file, or nothing.

Every writer in emlive goes through :func:`atomic_path`: it yields a temporary name in the
destination's own folder (so the final ``os.replace`` is a rename on one filesystem), and on
success flushes the data to disk, renames it over the destination and flushes the folder entry.
On error the temporary file is removed and the destination is untouched. Temporary names start
with a dot and contain ``.tmp-`` so that watchers and globbing can ignore them.

A writer killed half way (SIGKILL, a node lost) cannot remove its temporary file; whoever takes
the folder up next does (:func:`remove_abandoned_temporaries`). Temporary names say who wrote
them, ``.<stem>.tmp-<pid>@<host>-<random><suffix>`` (:func:`temporary_prefix`), so that:

- one written on this host is removed as soon as its process is gone (no process with that
  pid is running). A live writer is never touched: the pid of a worker of this very run is
  alive. (A pid reused by an unrelated process keeps the file until a later start.)
- one written on another host (a Slurm worker on the shared file system), or whose name does
  not say (older versions, folders made by other tools), cannot be checked from here: it is
  removed only once nothing in it changed for ``stale_after_s`` (an hour by default). A write
  takes seconds and an external program's run minutes, and each touches its files as it goes;
  an hour untouched means its writer is gone. Were one still alive after all, its rename would
  fail and the step be retried: nothing half-written is ever taken for an output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temporary_name",
    "remove_abandoned_temporaries",
    "sync_folder",
    "temporary_prefix",
]

_TMP_MARK = ".tmp-"
STALE_AFTER_S = 3600.0
"""How long a temporary whose writer cannot be checked (another host) must be untouched before
it is taken as abandoned."""


def _host() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def temporary_prefix(stem: str, tag: str = "") -> str:
    """The start of a temporary name for ``stem`` written by this process:
    ``.<stem>.tmp-[<tag>-]<pid>@<host>-`` (a random part and the suffix follow). Folders made
    with ``tempfile`` take it as their ``prefix`` (``tag``: the tool's name)."""
    return f".{stem}{_TMP_MARK}{f'{tag}-' if tag else ''}{os.getpid()}@{_host()}-"


def _writer(name: str) -> tuple[int, str] | None:
    """``(pid, host)`` of the process that made a temporary name, None when it does not say."""
    rest = name.rpartition(_TMP_MARK)[2]
    head, at, tail = rest.partition("@")
    pid, host = head.rpartition("-")[2], tail.rpartition("-")[0]
    if not at or not pid.isdigit() or not host:
        return None
    return int(pid), host


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or link made in it) to disk, where the platform can."""
    _fsync_dir(Path(folder))


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
    tmp = folder / f"{temporary_prefix(dest.stem)}{secrets.token_hex(4)}{dest.suffix}"
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


def _newest_mtime_s(path: str) -> float:
    """The latest modification under ``path`` (itself, or anything in it if it is a folder)."""
    newest = os.lstat(path).st_mtime
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def remove_abandoned_temporaries(
    folder: str | os.PathLike[str],
    *,
    stale_after_s: float = STALE_AFTER_S,
    skip: Iterable[str | os.PathLike[str]] = (),
    now_s: float | None = None,
) -> list[Path]:
    """Remove the temporary files and folders under ``folder`` whose writer is gone (see the
    module doc) and return them; a live writer's are kept. Symbolic links are not followed;
    folders in ``skip`` (a session's raw/ inside its output folder) are not entered."""
    now_s = time.time() if now_s is None else now_s
    here = _host()
    skipped = {os.path.abspath(p) for p in skip}
    removed: list[Path] = []
    stack = [os.path.abspath(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in listed:
            is_dir = entry.is_dir(follow_symlinks=False)
            if not is_temporary_name(entry.name):
                if is_dir and entry.path not in skipped:
                    stack.append(entry.path)
                continue
            writer = _writer(entry.name)
            try:
                if writer is not None and writer[1] == here:
                    if _pid_alive(writer[0]):
                        continue
                elif now_s - _newest_mtime_s(entry.path) < stale_after_s:
                    continue
                if is_dir:
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            removed.append(Path(entry.path))
    return removed
