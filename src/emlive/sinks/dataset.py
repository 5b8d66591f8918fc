"""A publish-ready dataset of a session's accepted micrographs (``emlive dataset``).

Layout under the destination (a folder, or any fsspec URL whose file system is installed)::

    README.md            what the dataset is: acquisition, counts, figures, how to use it
    provenance.json      emlive's version and source revision, each step's engines, versions,
                         exact parameters and their hashes, hosts, time span, input movies
    manifest.parquet     one row per accepted micrograph (also manifest.csv): every step's
    manifest.csv         results, its files' paths relative to the dataset root, and for each
                         file <column>.size_bytes and <column>.sha256
    SHA256SUMS           every file of the dataset (``sha256sum -c SHA256SUMS`` checks a copy)
    figures/*.png        histograms of the per-micrograph metrics
    exports/             RELION STAR files and cryoSPARC .cs files, paths relative to the root
    motion/ ctf/ …       the steps' output files and checkpoint sidecars, laid out as in the
                         session's output folder

Rerunning into the same destination is incremental: a file whose source has the size and mtime
it had when it was copied (recorded in ``.emlive-dataset.json``) is neither copied nor hashed
again; generated files are rewritten only when their bytes change; files of micrographs no
longer accepted are removed. :func:`verify_dataset` rehashes a copy against its manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd

import emlive
from emlive.pipeline.exposure import ExposureSpec
from emlive.pipeline.sidecar import Sidecar, read_sidecar
from emlive.sinks.figures import histogram_png
from emlive.sinks.tables import micrograph_table, output_columns

if TYPE_CHECKING:
    from emlive.db.models import Session

__all__ = ["DatasetError", "DatasetSummary", "verify_dataset", "write_dataset"]

log = logging.getLogger(__name__)

MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"
PROVENANCE = "provenance.json"
README = "README.md"
CHECKSUMS = "SHA256SUMS"
STATE = ".emlive-dataset.json"
_CHUNK = 1 << 20
_STAR_STAMP = re.compile(rb"^# Created by the starfile Python package.*\n", re.MULTILINE)
_FIGURES = (  # (column, title, unit)
    ("motion.total_drift_a", "total drift", "Å"),
    ("ctf.mean_defocus_a", "mean defocus", "Å"),
    ("ctf.fit_resolution_a", "CTF fit resolution", "Å"),
    ("ctf.cross_correlation", "CTF fit score", ""),
    ("pick.n_particles", "particles per micrograph", ""),
)


class DatasetError(ValueError):
    """A dataset that cannot be written, or a copy that does not match its manifest."""


@dataclass
class DatasetSummary:
    """What a write did: micrographs, files in the dataset, files copied, hashed, removed."""

    micrographs: int = 0
    files: int = 0
    copied: list[str] = field(default_factory=list)
    hashed: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


# --- the destination ------------------------------------------------------------------------


class _Destination:
    """The dataset's root on an fsspec file system (local paths stay local paths)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        text = os.fspath(url)
        self.fs, root = fsspec.core.url_to_fs(text if "://" in text else str(Path(text).absolute()))
        self.root = root.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def size(self, rel: str) -> int | None:
        try:
            return int(self.fs.info(self.path(rel))["size"])
        except FileNotFoundError:
            return None

    def _parent(self, rel: str) -> None:
        parent = str(PurePosixPath(self.path(rel)).parent)
        self.fs.makedirs(parent, exist_ok=True)

    def put_file(self, source: Path, rel: str) -> None:
        """Copy ``source`` to ``rel``: under a temporary name, then renamed."""
        self._parent(rel)
        temporary = self.path(f"{rel}.emlive-partial")
        self.fs.put_file(str(source), temporary)
        self.fs.mv(temporary, self.path(rel))

    def put_bytes(self, data: bytes, rel: str) -> None:
        self._parent(rel)
        temporary = self.path(f"{rel}.emlive-partial")
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, self.path(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            return None

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Writer:
    """Puts files into the destination, skipping what is already there unchanged."""

    dest: _Destination
    before: dict[str, dict[str, Any]]
    summary: DatasetSummary
    after: dict[str, dict[str, Any]] = field(default_factory=dict)
    hash_file: Callable[[Path], str] = _sha256_file

    def copy(self, source: Path, rel: str) -> tuple[int, str]:
        """Copy ``source`` to ``rel`` unless unchanged since the last write; its size and SHA-256."""
        stat = source.stat()
        known = self.before.get(rel)
        if (
            known is not None
            and (known.get("source_size"), known.get("source_mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
            and self.dest.size(rel) == stat.st_size
        ):
            self.after[rel] = known
            return int(known["size"]), str(known["sha256"])
        sha256 = self.hash_file(source)
        self.summary.hashed.append(rel)
        if not (known is not None and known.get("sha256") == sha256 and self.dest.size(rel) == stat.st_size):
            self.dest.put_file(source, rel)
            self.summary.copied.append(rel)
        self.after[rel] = {"size": stat.st_size, "sha256": sha256, "source_size": stat.st_size,
                           "source_mtime_ns": stat.st_mtime_ns}
        return stat.st_size, sha256

    def write(self, data: bytes, rel: str) -> tuple[int, str]:
        """Write generated ``data`` to ``rel`` unless the same bytes are there already."""
        sha256 = hashlib.sha256(data).hexdigest()
        known = self.before.get(rel)
        if known is None or known.get("sha256") != sha256 or self.dest.size(rel) != len(data):
            self.dest.put_bytes(data, rel)
            self.summary.written.append(rel)
        self.after[rel] = {"size": len(data), "sha256": sha256}
        return len(data), sha256


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        raise DatasetError(
            f"{path} is outside the session's output folder {root}; a dataset holds only the session's own files"
        ) from None


def _sidecars(session: Session, table: pd.DataFrame, steps: list[str]) -> dict[str, list[tuple[str, Path]]]:
    """Each micrograph's sidecar per step, by exposure: ``{exposure: [(step, path)]}``."""
    out_dir = Path(session.out_dir)
    found: dict[str, list[tuple[str, Path]]] = {}
    for exposure in table["exposure"]:
        spec = ExposureSpec(
            movie_path=Path(session.raw_dir) / exposure, name=str(PurePosixPath(exposure).with_suffix("")),
            out_dir=out_dir,
        )
        found[exposure] = [(step, spec.sidecar_path(step)) for step in steps if spec.sidecar_path(step).is_file()]
    return found


def _exports(session: Session, out_dir: Path) -> Iterator[tuple[str, bytes]]:
    """The session's RELION and cryoSPARC exports, written afresh from the database with
    paths relative to the dataset root: ``(path under exports/, bytes)``."""
    from emlive.db.export import export_generation, write_exports

    with tempfile.TemporaryDirectory(prefix="emlive-dataset-") as temporary:
        published = Path(temporary) / "exports"
        write_exports(session, published, relative_to=out_dir)
        generation = export_generation(published)
        into_exports = f"{published}{os.sep}".encode()
        into_session = f"{out_dir}{os.sep}".encode()
        for path in sorted(p for p in generation.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if path.suffix == ".star":  # tables that name files absolutely (picking's lists)
                data = data.replace(into_exports, b"exports/").replace(into_session, b"")
                data = _STAR_STAMP.sub(b"", data)  # the writer's clock: unchanged tables stay unchanged
            yield path.relative_to(generation).as_posix(), data


def source_revision() -> dict[str, Any]:
    """emlive's version and, where known, the source revision it runs from: the commit pip
    recorded for a VCS install, else the git checkout the package is imported from."""
    found: dict[str, Any] = {"emlive_version": emlive.__version__}
    try:
        direct = distribution("emlive").read_text("direct_url.json")
    except PackageNotFoundError:
        direct = None
    if direct:
        info = json.loads(direct)
        if commit := info.get("vcs_info", {}).get("commit_id"):
            found |= {"revision": commit, "revision_from": info.get("url", "")}
            return found
    package = Path(emlive.__file__).parent
    try:
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return found
    return found | {"revision": head, "revision_from": "git checkout", "uncommitted_changes": bool(dirty)}


def _provenance(session: Session, table: pd.DataFrame, sidecars: dict[str, list[tuple[str, Path]]]) -> dict[str, Any]:
    steps: dict[str, dict[str, dict[str, Any]]] = {}
    hosts: set[str] = set()
    started: list[datetime] = []
    finished: list[datetime] = []
    for entries in sidecars.values():
        for step, path in entries:
            sidecar: Sidecar | None = read_sidecar(path)
            if sidecar is None:
                continue
            hosts.add(sidecar.host)
            started.append(sidecar.started_at)
            finished.append(sidecar.finished_at)
            # the step's own parameters (not the per-micrograph input stamps) identify a configuration
            own = {key: value for key, value in sidecar.params.items() if key != "inputs"}
            key = f"{sidecar.engine} {sidecar.engine_version} {json.dumps(own, sort_keys=True, default=str)}"
            entry = steps.setdefault(step, {}).setdefault(key, {
                "engine": sidecar.engine, "engine_version": sidecar.engine_version, "code_versions": [],
                "params": own,
                "params_sha256": hashlib.sha256(json.dumps(own, sort_keys=True, default=str).encode()).hexdigest(),
                "micrographs": 0,
            })
            entry["micrographs"] += 1
            if sidecar.code_version not in entry["code_versions"]:
                entry["code_versions"].append(sidecar.code_version)
    return {
        "generator": source_revision(),
        "session": {
            "name": session.name, "project": session.project.name, "raw_dir": session.raw_dir,
            "out_dir": session.out_dir, "acquisition": session.acquisition_json, "curation": session.curation_json,
        },
        "steps": {step: list(configs.values()) for step, configs in steps.items()},
        "hosts": sorted(hosts),
        "time_span": {
            "first_started_at": min(started).isoformat() if started else None,
            "last_finished_at": max(finished).isoformat() if finished else None,
        },
        "input_movies": [
            {"path": row.exposure, "size_bytes": int(row.movie_size_bytes), "mtime_ns": int(row.movie_mtime_ns)}
            for row in table[["exposure", "movie_size_bytes", "movie_mtime_ns"]].itertuples()
        ],
        "note": "Each step's checkpoint key hashes its parameters with the engine, its version and its input "
                "(the per-micrograph sidecars under each step's folder keep that key as params_hash); "
                "params_sha256 here is the SHA-256 of the parameters shown.",
    }


def _figures(table: pd.DataFrame) -> dict[str, bytes]:
    values = table.copy()
    if {"ctf.defocus_u_a", "ctf.defocus_v_a"} <= set(values.columns):
        values["ctf.mean_defocus_a"] = (values["ctf.defocus_u_a"] + values["ctf.defocus_v_a"]) / 2
    figures = {}
    for column, title, unit in _FIGURES:
        if column in values and len(values):
            data = pd.to_numeric(values[column], errors="coerce").to_numpy(dtype=np.float64)
            figures[f"figures/{column.replace('.', '_')}.png"] = histogram_png(data, title=title, unit=unit)
    return figures


def _readme(session: Session, table: pd.DataFrame, provenance: dict[str, Any], figures: list[str],
            counts: dict[str, int], exports: list[str]) -> str:
    acq = session.acquisition
    lines = [
        f"# {session.name}: preprocessed cryo-EM micrographs",
        "",
        f"{len(table)} accepted micrographs of session `{session.name}` (project `{session.project.name}`), "
        f"motion-corrected and CTF-estimated by emlive {provenance['generator']['emlive_version']}"
        + (f" (revision {provenance['generator']['revision']})" if provenance["generator"].get("revision") else "")
        + ".",
        "",
        "## Acquisition",
        "",
        f"- pixel size: {acq.pixel_size_a:g} Å (movie)",
        f"- voltage: {acq.voltage_kv:g} kV; spherical aberration: {acq.cs_mm:g} mm; amplitude contrast: "
        f"{acq.amplitude_contrast:g}",
        f"- exposure: {acq.dose_per_frame_e_a2:g} e/Å² per frame",
        "",
        "## Counts",
        "",
        f"- movies found: {sum(counts.values())}; processed: {counts.get('processed', 0)}; "
        f"failed: {counts.get('failed', 0)}",
        f"- accepted (meeting the session's curation thresholds): {len(table)}",
    ]
    if "pick.n_particles" in table:
        lines.append(f"- particles picked on them: {int(pd.to_numeric(table['pick.n_particles']).sum())}")
    span = provenance["time_span"]
    if span["first_started_at"]:
        lines.append(f"- processed between {span['first_started_at']} and {span['last_finished_at']} "
                     f"on {', '.join(provenance['hosts'])}")
    lines += ["", "## Steps", ""]
    for step, configs in provenance["steps"].items():
        for config in configs:
            lines.append(f"- {step}: engine {config['engine']} {config['engine_version']} "
                         f"({config['micrographs']} micrographs; parameters in provenance.json)")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
    lines += [
        "", "## Files", "",
        "- `manifest.parquet` / `manifest.csv`: one row per micrograph, every step's results; file columns hold "
        "paths relative to this folder, with `<column>.size_bytes` and `<column>.sha256`.",
        "- `provenance.json`: software version and revision, each step's engine, version and exact parameters, "
        "hosts, time span, and the input movies (path under raw/, size, mtime).",
        "- `SHA256SUMS`: every file's SHA-256; check a copy with `emlive dataset --verify DIR` or "
        "`sha256sum -c SHA256SUMS`.",
        "- `exports/`: " + ", ".join(f"`{name}`" for name in exports) + " (paths relative to this folder: run "
        "RELION here; cryoSPARC: see emlive's docs/datasets.md).",
        "",
    ]
    return "\n".join(lines)


def _state(dest: _Destination) -> dict[str, dict[str, Any]]:
    data = dest.read_bytes(STATE)
    if data is None:
        return {}
    try:
        return dict(json.loads(data)["files"])
    except (ValueError, KeyError, TypeError):
        log.warning("%s: unreadable, every file will be hashed again", dest.path(STATE))
        return {}


def write_dataset(
    session: Session, dest: str | os.PathLike[str], *, hash_file: Callable[[Path], str] = _sha256_file
) -> DatasetSummary:
    """Write (or bring up to date) the dataset of ``session``'s accepted micrographs at ``dest``
    (see the module doc). ``hash_file`` hashes a source file (a parameter for tests)."""
    from emlive.db.queries import counts_by_state

    out_dir = Path(session.out_dir)
    destination = _Destination(dest)
    summary = DatasetSummary()
    writer = _Writer(destination, _state(destination), summary, hash_file=hash_file)
    table = micrograph_table(session)
    files = output_columns(table)
    steps = sorted({column.split(".", 1)[0] for column in table.columns if "." in column})
    sidecars = _sidecars(session, table, steps)
    manifest = table.copy()

    def copied(column: str, paths: list[Path | None]) -> None:
        """Copy ``paths`` (None: no file) and set ``column`` and its size and SHA-256 columns."""
        relatives: list[str | None] = []
        sizes: list[int | None] = []
        digests: list[str | None] = []
        for path in paths:
            rel = None if path is None else _relative(str(path), out_dir)
            size, sha256 = (None, None) if path is None or rel is None else writer.copy(path, rel)
            relatives.append(rel)
            sizes.append(size)
            digests.append(sha256)
        manifest[column] = relatives
        manifest[f"{column}.size_bytes"] = pd.array(sizes, dtype="Int64")
        manifest[f"{column}.sha256"] = digests

    for column in files:
        copied(column, [Path(value) if isinstance(value, str) and Path(value).is_file() else None
                        for value in table[column]])
    for step in steps:
        copied(f"{step}.sidecar_path", [dict(sidecars[exposure]).get(step) for exposure in table["exposure"]])
    order = list(table.columns) + [f"{step}.sidecar_path" for step in steps]
    manifest = manifest[[name for c in order for name in (c, f"{c}.size_bytes", f"{c}.sha256") if name in manifest]]
    exports = []
    for rel, data in _exports(session, out_dir):
        writer.write(data, f"exports/{rel}")
        exports.append(rel)
    figures = _figures(table)
    for rel, data in figures.items():
        writer.write(data, rel)
    provenance = _provenance(session, table, sidecars)
    writer.write(json.dumps(provenance, indent=2, sort_keys=False, default=str).encode() + b"\n", PROVENANCE)
    parquet = io.BytesIO()
    manifest.to_parquet(parquet, index=False, engine="pyarrow")
    writer.write(parquet.getvalue(), MANIFEST_PARQUET)
    writer.write(manifest.to_csv(index=False, lineterminator="\n").encode(), MANIFEST_CSV)
    readme = _readme(session, table, provenance, sorted(figures), counts_by_state(session), exports)
    writer.write(readme.encode(), README)
    sums = "".join(f"{writer.after[rel]['sha256']}  {rel}\n" for rel in sorted(writer.after))
    writer.write(sums.encode(), CHECKSUMS)
    for rel in sorted(set(writer.before) - set(writer.after)):  # files of micrographs no longer accepted
        destination.remove(rel)
        summary.removed.append(rel)
    destination.put_bytes(json.dumps({"files": writer.after}, sort_keys=True).encode(), STATE)
    summary.micrographs, summary.files = len(table), len(writer.after)
    return summary


# --- verifying --------------------------------------------------------------------------------


def verify_dataset(dest: str | os.PathLike[str]) -> int:
    """Check a dataset (or a copy of one) against its manifest and ``SHA256SUMS``: every file
    there, with its size and SHA-256. Returns the number of files checked; raises
    :class:`DatasetError` naming each file that is missing or differs."""
    destination = _Destination(dest)
    listing = destination.read_bytes(CHECKSUMS)
    if listing is None:
        raise DatasetError(f"{destination.path(CHECKSUMS)}: missing; {dest} is not an emlive dataset (or is incomplete)")
    expected: dict[str, tuple[str, int | None]] = {}
    for line in listing.decode().splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            expected[rel] = (digest, None)
    manifest_bytes = destination.read_bytes(MANIFEST_PARQUET)
    problems: list[str] = []
    if manifest_bytes is None:
        problems.append(f"{MANIFEST_PARQUET}: missing")
    else:
        manifest = pd.read_parquet(io.BytesIO(manifest_bytes))
        for column in [c for c in manifest.columns if c.endswith(".sha256")]:
            path_column = column.removesuffix(".sha256")
            size_column = f"{path_column}.size_bytes"
            for i, rel in enumerate(manifest[path_column]):
                if not isinstance(rel, str):
                    continue
                size = manifest[size_column].iloc[i] if size_column in manifest else None
                digest = str(manifest[column].iloc[i])
                listed = expected.get(rel)
                if listed is not None and listed[0] != digest:
                    problems.append(f"{rel}: the manifest and {CHECKSUMS} disagree on its SHA-256")
                expected[rel] = (digest, None if size is None or pd.isna(size) else int(size))
    for rel, (digest, size) in sorted(expected.items()):
        actual_size = destination.size(rel)
        if actual_size is None:
            problems.append(f"{rel}: missing")
        elif size is not None and actual_size != size:
            problems.append(f"{rel}: {actual_size} bytes, the manifest says {size}")
        elif destination.sha256(rel) != digest:
            problems.append(f"{rel}: SHA-256 differs from the manifest (the file was changed or damaged)")
    if problems:
        raise DatasetError(f"{dest}: {len(problems)} of {len(expected)} files do not match the manifest:\n  "
                           + "\n  ".join(problems))
    return len(expected)
