"""The output folder's remote copy: a session whose OUT is a URL is processed into a local working
copy (``[remote] cache_dir``), exactly as a local run, and each exposure's output files are
uploaded as it is stored — its outputs first, its step sidecars last, so a sidecar on the remote
always stands for outputs that are all there (the same all-or-nothing rule as local files; an
object appears only once its upload is complete). Exports are uploaded after they are rewritten.

Sidecars name their files by absolute local paths, so each exposure's upload also writes
``.emlive-remote/<name>.json`` (before its sidecars): the working copy's root then, and each
file's modification time (a step's checkpoint is matched by its input's size and mtime). A
machine without the working copy pulls the remote files back (:func:`pull`), sidecars last,
with their paths rewritten to its own working copy and the files' mtimes restored, so the
checkpoints are reused and nothing is recomputed; then the working copy's checkpoints the
remote lacks are uploaded (:func:`push_checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from emlive.io.atomic import atomic_path, atomic_write_bytes
from emlive.pipeline.exposure import ExposureResult, ExposureSpec
from emlive.pipeline.step import output_paths
from emlive.remote.location import Remote

log = logging.getLogger(__name__)

STAMPS = ".emlive-remote"
"""The folder under the remote OUT that holds each exposure's file times and working-copy root."""


def push_exposure(remote: Remote, out_dir: Path, spec: ExposureSpec, result: ExposureResult) -> int:
    """Upload one exposure's output files, then its stamps, then its step sidecars. Files whose
    remote copy has the local size are skipped unless their step was just computed. Returns how
    many files were uploaded."""
    computed = {record.step for record in result.steps if not record.reused}
    outputs: list[tuple[Path, bool]] = []
    sidecars: list[tuple[Path, bool]] = []
    for step, step_result in result.results.items():
        for path in output_paths(step_result):
            if path.is_relative_to(out_dir) and path.is_file():
                outputs.append((path, step in computed))
        sidecars.append((spec.sidecar_path(step), step in computed))
    files = [path for path, _ in outputs + sidecars]
    if not files:
        return 0
    uploaded = _put(remote, out_dir, outputs)
    stamps = {"root": str(out_dir), "mtime_ns": {_rel(p, out_dir): p.stat().st_mtime_ns for p in files}}
    stamp_path = remote.path(f"{STAMPS}/{spec.name}.json")
    if uploaded or not remote.fs.exists(stamp_path):
        remote.fs.pipe_file(stamp_path, json.dumps(stamps, indent=1).encode())
    # a reused sidecar pulled by another machine differs only in its paths: kept as it is
    return uploaded + _put(remote, out_dir, sidecars, force=bool(uploaded), exists_only=True)


def push_tree(remote: Remote, out_dir: Path, folder: Path) -> int:
    """Upload the files under ``folder`` (the exports) whose remote copy differs in size or is older."""
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    return _put(remote, out_dir, [(path, False) for path in files], newer=True)


def _put(remote: Remote, out_dir: Path, files: Iterable[tuple[Path, bool]], *, force: bool = False,
         newer: bool = False, exists_only: bool = False) -> int:
    uploaded = 0
    for path, changed in files:
        target = remote.path(_rel(path, out_dir))
        if not (changed or force) and _same(remote, target, path, newer=newer, exists_only=exists_only):
            continue
        remote.fs.put_file(str(path), target)
        uploaded += 1
    return uploaded


def _same(remote: Remote, target: str, path: Path, *, newer: bool, exists_only: bool = False) -> bool:
    try:
        info = remote.fs.info(target)
    except FileNotFoundError:
        return False
    if exists_only:
        return True
    st = path.stat()
    if int(info.get("size") or -1) != st.st_size:
        return False
    if newer:
        from emlive.remote.location import mtime_ns

        return mtime_ns(info) >= st.st_mtime_ns
    return True


def _rel(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix()


def pull(remote: Remote, out_dir: Path) -> int:
    """Bring the remote OUT's checkpoints into the working copy ``out_dir`` where they are missing
    (or differ in size): every file, the sidecars of an exposure after its outputs, with the
    paths and times of :data:`STAMPS` applied. Returns how many files were downloaded."""
    remote.fs.invalidate_cache(remote.root)
    try:
        listing = remote.fs.find(remote.root, detail=True)
    except FileNotFoundError:
        return 0
    sizes = {remote.rel(path): int(info.get("size") or 0) for path, info in listing.items() if info.get("type") == "file"}
    stamps: dict[str, dict[str, object]] = {}
    for rel_path in [p for p in sizes if p.startswith(f"{STAMPS}/")]:
        stamp = json.loads(remote.fs.cat_file(remote.path(rel_path)))
        for file_rel in stamp["mtime_ns"]:
            stamps[file_rel] = stamp
    wanted = [p for p in sizes if not p.startswith(f"{STAMPS}/") and not p.startswith("exports/")
              and not _present(out_dir / p, sizes[p], stamps.get(p))]
    wanted.sort(key=lambda p: (p.endswith(".json"), p))  # sidecars (JSON) last
    for rel_path in wanted:
        target = out_dir / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        stamp = stamps.get(rel_path)
        data = remote.fs.cat_file(remote.path(rel_path))
        if stamp is not None and rel_path.endswith(".json") and stamp["root"] != str(out_dir):
            data = data.replace(json.dumps(str(stamp["root"]) + "/")[:-1].encode(),
                                json.dumps(str(out_dir) + "/")[:-1].encode())
        if stamp is not None and not rel_path.endswith(".json"):
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
                mtime = int(stamp["mtime_ns"][rel_path])  # type: ignore[index]
                os.utime(tmp, ns=(mtime, mtime))
        else:
            atomic_write_bytes(target, data)
    if wanted:
        log.info("%s: %d files pulled into the working copy %s", remote.url, len(wanted), out_dir)
    return len(wanted)


def _present(path: Path, size: int, stamp: dict[str, object] | None) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == size or (stamp is not None and path.suffix == ".json")


def push_checkpoints(remote: Remote, out_dir: Path) -> int:
    """Upload the checkpoints of the working copy the remote lacks (a run killed after an
    exposure's sidecars were written and before they were uploaded): per exposure, the files its
    sidecars name, then its stamps, then the sidecars. Returns how many files were uploaded."""
    remote.fs.invalidate_cache(remote.root)
    try:
        listed = {remote.rel(path) for path in remote.fs.find(remote.root)}
    except FileNotFoundError:
        listed = set()
    exposures: dict[str, list[Path]] = {}
    for path in sorted(out_dir.rglob("*.json")):
        rel = path.relative_to(out_dir)
        step = rel.parts[0]
        if len(rel.parts) < 2 or not rel.name.endswith(f".{step}.json") or rel.as_posix() in listed:
            continue
        name = PurePosixPath(*rel.parts[1:]).as_posix()[: -len(f".{step}.json")]
        exposures.setdefault(name, []).append(path)
    uploaded = 0
    root = f"{out_dir}/"
    for name, sidecars in exposures.items():
        outputs: list[Path] = []
        for sidecar in sidecars:
            try:
                result = json.loads(sidecar.read_text())["result"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a step sidecar
            outputs += [Path(v) for v in result.values() if isinstance(v, str) and v.startswith(root) and Path(v).is_file()]
        files = outputs + sidecars
        uploaded += _put(remote, out_dir, [(path, False) for path in outputs])
        stamps = {"root": str(out_dir), "mtime_ns": {_rel(p, out_dir): p.stat().st_mtime_ns for p in files}}
        remote.fs.pipe_file(remote.path(f"{STAMPS}/{name}.json"), json.dumps(stamps, indent=1).encode())
        uploaded += _put(remote, out_dir, [(path, True) for path in sidecars])
    if uploaded:
        log.info("%s: %d files of checkpoints done before were uploaded", remote.url, uploaded)
    return uploaded
