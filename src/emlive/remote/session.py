"""A session whose movies (RAW) or outputs (OUT) are URLs, run as a local one (``emlive process``).

- RAW a URL: the session's raw folder is a local stand-in (under ``[remote] cache_dir``), its
  movies are found by listing the prefix (:class:`~emlive.remote.listing.ListingWatcher`) and
  staged by the workers (:class:`~emlive.remote.staging.StagedTask`).
- OUT a URL: the session is processed into a local working copy (under ``cache_dir``, with the
  SQLite database unless ``--database-url``), mirrored to OUT as exposures are stored
  (:mod:`emlive.remote.mirror`); a missing working copy is first pulled back from OUT.

Both locations are checked before anything is processed (:func:`~emlive.remote.location.check_access`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emlive.remote.listing import ListingWatcher
from emlive.remote.location import Remote, check_access, is_url, open_remote
from emlive.remote.mirror import pull, push_checkpoints, push_tree
from emlive.remote.staging import StagedTask

if TYPE_CHECKING:
    from emlive.db.models import Session

log = logging.getLogger(__name__)

_EXPORTS_EVERY_S = 5.0  # how often the exports are mirrored while a session runs


@dataclass
class RemoteRun:
    """Where a session with remote locations runs locally, and what mirrors it."""

    raw_dir: Path
    out_dir: Path
    raw: Remote | None
    out: Remote | None
    task: StagedTask
    exports_pushed_s: float = 0.0

    def watcher_of(self, session: Session) -> ListingWatcher:
        assert self.raw is not None
        return ListingWatcher(self.raw)

    def mirror_exports(self, *, force: bool = False) -> None:
        """Upload the exports that changed (at most every few seconds unless ``force``)."""
        now_s = time.monotonic()
        if self.out is None or not (force or now_s - self.exports_pushed_s >= _EXPORTS_EVERY_S):
            return
        self.exports_pushed_s = now_s
        exports = self.out_dir / "exports"
        if exports.is_dir():
            try:
                push_tree(self.out, self.out_dir, exports)
            except OSError as err:
                log.error("%s: cannot upload the exports (%s); tried again later", self.out.url, err)


def plan_remote(raw_text: str, out_text: str, cache_dir: Path) -> RemoteRun | None:
    """The local folders and mirrors of a session given as RAW and OUT (None: both local). Raises
    :class:`~emlive.remote.location.RemoteError` when a location cannot be used."""
    if not is_url(raw_text) and not is_url(out_text):
        return None
    raw = open_remote(raw_text) if is_url(raw_text) else None
    out = open_remote(out_text) if is_url(out_text) else None
    for remote in (raw, out):
        if remote is not None:
            check_access(remote)
    raw_dir = raw.local_copy(cache_dir) if raw is not None else Path(raw_text)
    out_dir = out.local_copy(cache_dir) if out is not None else Path(out_text)
    raw_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out is not None:
        pull(out, out_dir)
        push_checkpoints(out, out_dir)
    task = StagedTask(
        raw_url=None if raw is None else raw.url, raw_dir=raw_dir.resolve(),
        out_url=None if out is None else out.url, out_dir=out_dir.resolve(),
        scratch_dir=cache_dir.expanduser().absolute() / "scratch",
    )
    return RemoteRun(raw_dir, out_dir, raw, out, task)


def local_output(text: str, cache_dir: Path) -> str:
    """The folder a session given as OUT was processed into: ``text`` itself when local; for a
    URL its working copy under ``cache_dir`` (the database is there unless ``--database-url``),
    with what the remote has and it lacks pulled first. Raises
    :class:`~emlive.remote.location.RemoteError` when the URL cannot be used."""
    if not is_url(text):
        return text
    out = open_remote(text)
    check_access(out)
    local = out.local_copy(cache_dir)
    local.mkdir(parents=True, exist_ok=True)
    pull(out, local)
    return str(local)
