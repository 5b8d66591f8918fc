"""Discovering movies under raw/: a file becomes an exposure only once it is complete.

Complete means: its size and mtime did not change between two scans, its mtime is at least
``settle_s`` old, and the format's own integrity check passes (``check_movie_complete``). A file
that has settled but still fails the check is given ``incomplete_timeout_s`` to be finished
(transfers can stall) before it is reported broken; in a one-shot run it is reported at once.
A file that changes after it was reported is reported again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from emlive.io.atomic import is_temporary_name
from emlive.io.errors import MovieFormatError
from emlive.io.movie import MOVIE_SUFFIXES as _FORMATS
from emlive.io.movie import check_movie_complete

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


@dataclass
class Watcher:
    """Scans ``raw_dir`` and reports complete (or given-up) movies once each."""

    raw_dir: Path
    settle_s: float
    incomplete_timeout_s: float
    tracked: dict[str, Tracked]

    def poll(self, *, now_s: float, final: bool) -> list[Found]:
        """One scan. ``final``: report settled-but-broken files now (one-shot runs)."""
        self.tracked, settled = settle(
            self.tracked, scan_movies(self.raw_dir), now_s=now_s, settle_s=self.settle_s
        )
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
            self.tracked[rel_path] = replace(item, reported=True)
            found.append(Found(rel_path, item.stat, reason))
        return found

    @property
    def unsettled(self) -> int:
        """Files seen but not reported yet (still growing, or waiting to be completed)."""
        return sum(not item.reported for item in self.tracked.values())


def new_watcher(raw_dir: Path, *, settle_s: float, incomplete_timeout_s: float) -> Watcher:
    return Watcher(raw_dir, settle_s, incomplete_timeout_s, {})
