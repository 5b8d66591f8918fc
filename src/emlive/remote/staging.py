"""What a worker runs per exposure when the movies or the outputs are remote: the movie is
staged into a local scratch folder (downloaded, processed, deleted: the scratch holds at most
one movie per worker thread), so engines keep reading local files; the outputs, written into the
local working copy, are then uploaded (:func:`emlive.remote.mirror.push_exposure`).

Before downloading, the exposure's checkpoints are looked at with a stand-in of the movie (a
sparse file of its size and time, never read): an exposure already done is not downloaded again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from emlive.io.atomic import atomic_path
from emlive.pipeline.exposure import ExposureResult, ExposureSpec, PipelineParams, completed_result, process_exposure
from emlive.remote.location import Remote, mtime_ns, open_remote
from emlive.remote.mirror import push_exposure


@dataclass(frozen=True)
class StagedTask:
    """``process_exposure`` with the movie staged from ``raw_url`` and the outputs mirrored to
    ``out_url`` (either may be None: local). Picklable: the file systems are opened on the worker."""

    raw_url: str | None
    raw_dir: Path  # the session's raw_dir (the local stand-in of raw_url)
    out_url: str | None
    out_dir: Path  # the local working copy of out_url
    scratch_dir: Path

    def __call__(self, spec: ExposureSpec, params: PipelineParams) -> ExposureResult:
        if self.raw_url is None:
            result = process_exposure(spec, params)
        else:
            result = self._staged(spec, params, open_remote(self.raw_url))
        if self.out_url is not None:
            push_exposure(open_remote(self.out_url), self.out_dir, spec, result)
        return result

    def _staged(self, spec: ExposureSpec, params: PipelineParams, raw: Remote) -> ExposureResult:
        rel_path = spec.movie_path.relative_to(self.raw_dir).as_posix()
        source = raw.path(rel_path)
        info = raw.fs.info(source)
        size, mtime = int(info["size"]), mtime_ns(info)
        folder = self.scratch_dir / hashlib.sha256(raw.url.encode()).hexdigest()[:12]
        local = folder / rel_path
        local.parent.mkdir(parents=True, exist_ok=True)
        staged = spec.model_copy(update={"movie_path": local})
        try:
            with atomic_path(local) as tmp:  # the stand-in: stat() only
                with open(tmp, "wb") as handle:
                    handle.truncate(size)
                os.utime(tmp, ns=(mtime, mtime))
            if (done := completed_result(staged, params)) is not None:
                return done
            with atomic_path(local) as tmp:
                raw.fs.get_file(source, str(tmp))
                if tmp.stat().st_size != size:
                    raise OSError(f"{raw.url}/{rel_path} changed while it was downloaded; it is tried again")
                os.utime(tmp, ns=(mtime, mtime))
            return process_exposure(staged, params)
        finally:
            local.unlink(missing_ok=True)
