"""Movies under an object-store prefix, found by listing it (the remote counterpart of
:mod:`emlive.runtime.watcher`, with the same ``poll`` interface).

An S3 object (a multipart upload too) appears in a listing only once its upload is complete, so
there is nothing to settle: each poll lists the prefix and reports the movies new or changed
(size or ETag) since the last listing, once each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from emlive.remote.location import Remote, mtime_ns
from emlive.runtime.watcher import FileStat, Found, is_movie_name

log = logging.getLogger(__name__)


@dataclass
class ListingWatcher:
    """Lists ``remote`` each poll; ``known``: each movie reported, with its size and ETag (or mtime)."""

    remote: Remote
    known: dict[str, tuple[int, str]] = field(default_factory=dict)

    def poll(self, *, now_s: float, final: bool) -> list[Found]:
        """The movies new or changed since the last poll (``now_s``, ``final``: as a watcher's)."""
        del now_s, final  # nothing settles: a listed object is complete
        self.remote.fs.invalidate_cache(self.remote.root)
        try:
            listing = self.remote.fs.find(self.remote.root, detail=True)
        except FileNotFoundError:  # nothing uploaded yet
            return []
        found: list[Found] = []
        for path, info in sorted(listing.items()):
            rel_path = self.remote.rel(path)
            if info.get("type") != "file" or not is_movie_name(rel_path.rsplit("/", 1)[-1]):
                continue
            size = int(info.get("size") or 0)
            stat = FileStat(size, mtime_ns(info))
            identity = (size, str(info.get("ETag") or stat.mtime_ns))
            if self.known.get(rel_path) != identity:
                self.known[rel_path] = identity
                found.append(Found(rel_path, stat))
        return found

    @property
    def unsettled(self) -> int:
        return 0

    @property
    def mode(self) -> str:
        return "listing"

    def close(self) -> None:
        return None
