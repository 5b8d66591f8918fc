"""Discovering movies under raw/: a file becomes an exposure only once it is complete.

Complete means: its size and mtime did not change between two scans, its mtime is at least
``settle_s`` old, and the format's own integrity check passes (``check_movie_complete``). A file
that has settled but still fails the check is given ``incomplete_timeout_s`` to be finished
(transfers can stall) before it is reported broken; in a one-shot run it is reported at once.
A file that changes after it was reported is reported again.

What a poll costs does not grow with the folder: only files not reported yet (and broken ones,
watched for a rewrite) are looked at each poll; the others only when something says they may
have changed:

- **events** (Linux, raw/ on a local file system): inotify, through ``watchdog``, names the
  files created, moved, closed after writing or removed, and the folders created or removed;
- **incremental scan** (elsewhere: NFS, SMB and cluster file systems, where inotify does not see
  other machines' writes, or when inotify cannot be had): each poll reads the modification time
  of each folder, and lists only those that changed (a file added, renamed or removed), looking
  at the names it does not know or whose inode changed (a file replaced by a rename). A folder
  is listed again until a listing came at least ``_RACY_S`` after its change was seen, so two
  changes within one tick of a coarse clock are both found.

In both modes every folder is scanned in full every ``full_rescan_s`` (5 min) as a safety net
(a file rewritten in place without renaming, under the incremental scan; lost events).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from emlive.io.atomic import is_temporary_name
from emlive.io.errors import MovieFormatError
from emlive.io.movie import MOVIE_SUFFIXES as _FORMATS
from emlive.io.movie import check_movie_complete

log = logging.getLogger(__name__)

MOVIE_SUFFIXES = tuple(_FORMATS)
"""The suffixes of the files that are movies (every format emlive reads)."""


@dataclass(frozen=True)
class FileStat:
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class Tracked:
    stat: FileStat
    settled_since_s: float | None = None  # when the file was first seen settled
    reported: bool = False


@dataclass(frozen=True)
class Found:
    """A complete movie, or a settled one that is broken (``reason`` says why)."""

    rel_path: str
    stat: FileStat
    reason: str | None = None


def scan_movies(raw_dir: Path) -> dict[str, FileStat]:
    """Movie files under ``raw_dir`` (recursively) by path relative to it; skips temp names."""
    found: dict[str, FileStat] = {}
    root = os.fspath(raw_dir)
    stack = [(root, "")]  # (folder, its path relative to raw_dir with a trailing "/")
    while stack:  # plain strings: this runs over every file of a session each poll
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=True):
                        stack.append((entry.path, f"{prefix}{name}/"))
                    elif name.lower().endswith(MOVIE_SUFFIXES) and not (name[:1] == "." and is_temporary_name(name)):
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue
                        found[prefix + name] = FileStat(st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            continue
    return found


def settle(
    tracked: dict[str, Tracked], observed: dict[str, FileStat], *, now_s: float, settle_s: float
) -> tuple[dict[str, Tracked], list[str]]:
    """Pure: update what is tracked from a scan; return the files newly settled, oldest first."""
    updated: dict[str, Tracked] = {}
    settled: list[str] = []
    for rel_path, stat in observed.items():
        before = tracked.get(rel_path)
        if before is None or before.stat != stat:
            updated[rel_path] = Tracked(stat)  # new or changed: must look the same next scan
            continue
        quiet = now_s - stat.mtime_ns / 1e9 >= settle_s
        item = before
        if quiet and item.settled_since_s is None:
            item = replace(item, settled_since_s=now_s)
        if item.settled_since_s is not None and not item.reported:
            settled.append(rel_path)
        updated[rel_path] = item
    settled.sort(key=lambda p: (updated[p].stat.mtime_ns, p))
    return updated, settled




FULL_RESCAN_S = 300.0
"""How often every folder is scanned in full, whatever the mode."""
_RACY_S = 2.0  # longer than a coarse file-system clock's tick (1 s on ext3, HFS+, some NFS servers)
_EVENT_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "jfs", "reiserfs",
    "bcachefs", "nilfs2", "overlay", "vfat", "exfat", "ntfs3",
})  # local file systems, where inotify sees every write


def _is_movie(name: str) -> bool:
    return name.lower().endswith(MOVIE_SUFFIXES) and not (name[:1] == "." and is_temporary_name(name))


is_movie_name = _is_movie
"""Whether a file name is a movie's (a movie suffix, and not a temporary name)."""


@dataclass
class _Folder:
    mtime_ns: int
    seen_s: float  # when this mtime was first seen (by the caller's clock)
    sure: bool = False  # listed at least _RACY_S after seen_s


@dataclass
class Watcher:
    """Scans ``raw_dir`` and reports complete (or given-up) movies once each (see the module doc).

    ``tracked``: the files being settled, not reported yet or reported broken; ``known``: every
    movie seen, with its inode and stat when last looked at; ``folders``: the folders under
    ``raw_dir`` (``""`` itself) with their modification times."""

    raw_dir: Path
    settle_s: float
    incomplete_timeout_s: float
    tracked: dict[str, Tracked]
    known: dict[str, tuple[int, FileStat]] = field(default_factory=dict)
    folders: dict[str, _Folder] = field(default_factory=dict)
    full_rescan_s: float = FULL_RESCAN_S
    events: _Events | None = None
    next_full_s: float = float("-inf")

    def poll(self, *, now_s: float, final: bool) -> list[Found]:
        """One scan. ``final``: report settled-but-broken files now (one-shot runs)."""
        changed = self._changes(now_s)
        observed = {path: stat for path, stat in changed.items() if stat is not None}
        for rel_path in self.tracked.keys() - changed.keys():  # not settled yet: looked at each poll
            if (stat := self._stat(rel_path)) is not None:
                observed[rel_path] = stat
        self.tracked, settled = settle(self.tracked, observed, now_s=now_s, settle_s=self.settle_s)
        found: list[Found] = []
        for rel_path in settled:
            item = self.tracked[rel_path]
            try:
                check_movie_complete(self.raw_dir / rel_path)
                reason = None
            except MovieFormatError as err:
                reason = str(err)
                waited_s = now_s - (item.settled_since_s or now_s)
                if not final and waited_s < self.incomplete_timeout_s:
                    continue
            if reason is None:  # complete: looked at again only if something says it changed
                del self.tracked[rel_path]
            else:  # broken: watched each poll, reported again once rewritten
                self.tracked[rel_path] = replace(item, reported=True)
            found.append(Found(rel_path, item.stat, reason))
        return found

    @property
    def unsettled(self) -> int:
        """Files seen but not reported yet (still growing, or waiting to be completed)."""
        return sum(not item.reported for item in self.tracked.values())

    @property
    def mode(self) -> str:
        """``"events"`` (inotify) or ``"scan"`` (incremental scan)."""
        return "events" if self.events is not None else "scan"

    def close(self) -> None:
        """Stop watching for events (the watcher scans incrementally if polled again)."""
        if self.events is not None:
            self.events.close()
            self.events = None

    # --- what may have changed since the last poll ------------------------------------------

    def _changes(self, now_s: float) -> dict[str, FileStat | None]:
        """Movies new, changed or (None) gone since last looked at."""
        if self.events is not None and not self.events.alive:
            log.warning("%s: file-system events stopped; scanning incrementally from now on", self.raw_dir)
            self.close()
        if now_s >= self.next_full_s:
            self.next_full_s = now_s + self.full_rescan_s
            if self.events is not None:
                self.events.drain()  # the full scan sees all they could say
            return self._full_scan(now_s)
        changes: dict[str, FileStat | None] = {}
        if self.events is not None:
            files, folders = self.events.drain()
            for rel_dir in sorted(folders):
                if os.path.isdir(self._abs(rel_dir)):
                    self._list(rel_dir, now_s, changes, recursive=True)
                else:
                    self._forget_folder(rel_dir, changes)
            for rel_path in files - changes.keys():
                if _is_movie(os.path.basename(rel_path)):
                    self._look_at(rel_path, changes)
            return changes
        for rel_dir, folder in list(self.folders.items()):
            if rel_dir not in self.folders:  # forgotten with its parent meanwhile
                continue
            try:
                mtime_ns = os.stat(self._abs(rel_dir)).st_mtime_ns
            except FileNotFoundError:
                self._forget_folder(rel_dir, changes)
                continue
            except NotADirectoryError:
                if not rel_dir:
                    raise
                self._forget_folder(rel_dir, changes)
                continue
            if mtime_ns != folder.mtime_ns:
                self.folders[rel_dir] = folder = _Folder(mtime_ns, now_s)
            elif folder.sure:
                continue
            folder.sure = now_s - folder.seen_s >= _RACY_S
            self._list(rel_dir, now_s, changes, recursive=False)
        return changes

    def _abs(self, rel_path: str) -> str:
        return os.path.join(self.raw_dir, rel_path) if rel_path else os.fspath(self.raw_dir)

    def _stat(self, rel_path: str) -> FileStat | None:
        """A file's stat now (None: gone), which becomes what is known of it."""
        try:
            st = os.stat(self._abs(rel_path))
        except (FileNotFoundError, NotADirectoryError):
            self.known.pop(rel_path, None)
            return None
        stat = FileStat(st.st_size, st.st_mtime_ns)
        self.known[rel_path] = (st.st_ino, stat)
        return stat

    def _look_at(self, rel_path: str, changes: dict[str, FileStat | None]) -> None:
        """One file an event named: a change if it differs from what is known."""
        try:
            st = os.stat(self._abs(rel_path))
        except (FileNotFoundError, NotADirectoryError):
            if self.known.pop(rel_path, None) is not None:
                changes[rel_path] = None
            return
        self._seen(rel_path, st.st_ino, FileStat(st.st_size, st.st_mtime_ns), changes)

    def _seen(self, rel_path: str, inode: int, stat: FileStat, changes: dict[str, FileStat | None]) -> None:
        if self.known.get(rel_path) != (inode, stat):
            self.known[rel_path] = (inode, stat)
            changes[rel_path] = stat

    def _forget_folder(self, rel_dir: str, changes: dict[str, FileStat | None]) -> None:
        """A folder that is gone: its files are, too (raw/ itself is looked for again each poll)."""
        prefix = f"{rel_dir}/" if rel_dir else ""
        for name in [d for d in self.folders if d == rel_dir or d.startswith(prefix)]:
            del self.folders[name]
        if not rel_dir:
            self.folders[""] = _Folder(-1, 0.0, sure=True)
        for rel_path in [p for p in self.known if p.startswith(prefix)]:
            del self.known[rel_path]
            changes[rel_path] = None

    def _list(self, rel_dir: str, now_s: float, changes: dict[str, FileStat | None], *, recursive: bool) -> None:
        """List one folder: new names, and names whose inode changed, are looked at; names gone
        are dropped; new subfolders are listed too (all subfolders when ``recursive``)."""
        prefix = f"{rel_dir}/" if rel_dir else ""
        try:
            with os.scandir(self._abs(rel_dir)) as entries:
                listed = list(entries)
        except FileNotFoundError:
            self._forget_folder(rel_dir, changes)
            return
        except NotADirectoryError:
            if not rel_dir:
                raise
            self._forget_folder(rel_dir, changes)
            return
        names: set[str] = set()
        for entry in listed:
            name = entry.name
            rel_path = prefix + name
            if entry.is_dir(follow_symlinks=True):
                if recursive or rel_path not in self.folders:
                    with _suppress_gone():
                        self.folders[rel_path] = _Folder(entry.stat().st_mtime_ns, now_s)
                        self._list(rel_path, now_s, changes, recursive=True)
            elif _is_movie(name):
                names.add(rel_path)
                known = self.known.get(rel_path)
                if known is None or known[0] != entry.inode():
                    with _suppress_gone():
                        st = entry.stat()
                        self._seen(rel_path, st.st_ino, FileStat(st.st_size, st.st_mtime_ns), changes)
        for rel_path in [p for p in self.known if p.startswith(prefix) and "/" not in p[len(prefix):]]:
            if rel_path not in names:
                del self.known[rel_path]
                changes[rel_path] = None

    def _full_scan(self, now_s: float) -> dict[str, FileStat | None]:
        """Every movie and folder under raw/, each file's stat compared with what is known."""
        changes: dict[str, FileStat | None] = {}
        seen: set[str] = set()
        folders: dict[str, _Folder] = {}
        root = os.fspath(self.raw_dir)
        try:
            folders[""] = _Folder(os.stat(root).st_mtime_ns, now_s)
        except FileNotFoundError:
            folders[""] = _Folder(-1, 0.0, sure=True)  # listed once it appears
        stack = [(root, "")]
        while stack:  # plain strings: this runs over every file of a session
            folder, prefix = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        name = entry.name
                        with _suppress_gone():
                            if entry.is_dir(follow_symlinks=True):
                                folders[prefix + name] = _Folder(entry.stat().st_mtime_ns, now_s)
                                stack.append((entry.path, f"{prefix}{name}/"))
                            elif _is_movie(name):
                                st = entry.stat()
                                seen.add(prefix + name)
                                self._seen(prefix + name, st.st_ino, FileStat(st.st_size, st.st_mtime_ns), changes)
            except FileNotFoundError:
                continue
        for rel_path in self.known.keys() - seen:
            del self.known[rel_path]
            changes[rel_path] = None
        self.folders = folders
        return changes


class _suppress_gone:
    """Ignore a file or folder removed between being listed and being looked at."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, (FileNotFoundError, NotADirectoryError))


class _Events:
    """inotify events under a folder (``watchdog``), gathered as the folders and files they name."""

    def __init__(self, raw_dir: Path) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers.inotify import InotifyObserver

        self._root = os.fspath(raw_dir)
        self._lock = threading.Lock()
        self._files: set[str] = set()
        self._folders: set[str] = set()
        events = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: object) -> None:
                events._add(event)

        self._observer = InotifyObserver()
        self._observer.daemon = True
        # no modification events: a movie being written would send one per write call; its
        # stat is read each poll until it settles anyway, and closing it after writing is an event
        self._observer.schedule(
            Handler(), self._root, recursive=True,
            event_filter=[FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
                          DirCreatedEvent, DirDeletedEvent, DirMovedEvent],
        )
        self._observer.start()

    def _rel(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        if path == self._root:
            return ""
        if not path.startswith(self._root + os.sep):
            return None
        return path[len(self._root) + 1 :]

    def _add(self, event: object) -> None:  # in watchdog's thread
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        rels = [rel for path in paths if path and (rel := self._rel(path)) is not None]
        with self._lock:
            for rel in rels:
                if getattr(event, "is_directory", False):
                    self._folders.add(rel)
                else:
                    self._files.add(rel)

    def drain(self) -> tuple[set[str], set[str]]:
        """The files and the folders named since last drained."""
        with self._lock:
            files, folders, self._files, self._folders = self._files, self._folders, set(), set()
        return files, folders

    @property
    def alive(self) -> bool:
        return self._observer.is_alive()

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


def _file_system_type(folder: Path) -> str | None:
    """The type of the file system ``folder`` is on (Linux ``/proc/self/mountinfo``), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return None
    path = os.path.realpath(folder)
    best, best_type = "", None
    for line in mounts:
        fields = line.split(" ")
        if "-" not in fields or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        fs_type = fields[fields.index("-") + 1]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fs_type
    return best_type


def events_supported(folder: Path) -> bool:
    """Whether inotify sees every change under ``folder``: Linux, and a local file system."""
    return sys.platform.startswith("linux") and _file_system_type(folder) in _EVENT_FILE_SYSTEMS


def new_watcher(
    raw_dir: Path,
    *,
    settle_s: float,
    incomplete_timeout_s: float,
    events: bool | None = None,
    full_rescan_s: float = FULL_RESCAN_S,
) -> Watcher:
    """A watcher of ``raw_dir``. ``events``: use inotify (True), scan incrementally (False), or
    inotify where the folder's file system supports it (None); inotify that cannot be had (no
    folder yet, the system's limit on watches reached) falls back to scanning, logged."""
    watcher = Watcher(raw_dir, settle_s, incomplete_timeout_s, {}, full_rescan_s=full_rescan_s)
    if events or (events is None and events_supported(raw_dir)):
        try:
            watcher.events = _Events(raw_dir)
        except (OSError, ImportError) as err:
            log.warning("%s: cannot watch for file-system events (%s); scanning incrementally", raw_dir, err)
    return watcher
