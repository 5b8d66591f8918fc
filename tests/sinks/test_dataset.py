"""``emlive dataset``: a processed session's dataset written, verified, checked after one byte
changes, and brought up to date without copying or hashing what did not change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import starfile

from ..conftest import run_emlive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(processed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("dataset") / "published"
    done = run_emlive("dataset", processed, "-o", dest, "--verify")
    assert done.returncode == 0, done.stderr
    assert "2 micrographs" in done.stdout and "match the manifest" in done.stdout
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_dataset_has_manifest_provenance_readme_figures_exports_and_files(dataset, processed):
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    assert manifest["exposure"].tolist() == ["movie_0000.mrc", "movie_0001.tif"]
    assert pd.read_csv(dataset / "manifest.csv")["exposure"].tolist() == manifest["exposure"].tolist()
    for column in ["motion.total_drift_a", "ctf.defocus_u_a", "ctf.fit_resolution_a", "pick.n_particles"]:
        assert manifest[column].notna().all(), column
    files = [c for c in manifest.columns if f"{c}.sha256" in manifest.columns]
    assert {"motion.dose_weighted_path", "ctf.output_txt_path", "pick.coordinates_path",
            "motion.sidecar_path"} <= set(files)
    for column in files:
        for rel, digest in zip(manifest[column], manifest[f"{column}.sha256"], strict=True):
            assert not Path(rel).is_absolute()
            assert _sha256(dataset / rel) == digest, rel
            assert (dataset / rel).read_bytes() == (processed / rel).read_bytes()
    sizes = manifest["motion.dose_weighted_path.size_bytes"].tolist()
    assert sizes == [(dataset / rel).stat().st_size for rel in manifest["motion.dose_weighted_path"]]

    provenance = json.loads((dataset / "provenance.json").read_text())
    assert provenance["generator"]["emlive_version"]
    assert set(provenance["steps"]) == {"motion", "ctf", "thumbnail", "pick"}
    (pick,) = provenance["steps"]["pick"]
    assert pick["engine"] == "native" and pick["micrographs"] == 2 and pick["params"]["pick"]["diameter_a"] == 100.0
    assert len(pick["params_sha256"]) == 64
    raw = processed.parent / "raw"
    assert provenance["input_movies"] == [
        {"path": name, "size_bytes": (raw / name).stat().st_size, "mtime_ns": (raw / name).stat().st_mtime_ns}
        for name in ["movie_0000.mrc", "movie_0001.tif"]
    ]
    assert provenance["hosts"] and provenance["time_span"]["first_started_at"] <= provenance["time_span"][
        "last_finished_at"]
    readme = (dataset / "README.md").read_text()
    assert "2 accepted micrographs" in readme and "1 Å" in readme and "300 kV" in readme
    for figure in ["figures/motion_total_drift_a.png", "figures/ctf_mean_defocus_a.png"]:
        assert f"]({figure})" in readme and (dataset / figure).read_bytes().startswith(b"\x89PNG")
    # RELION's exports name the dataset's own files, relative to its root
    micrographs = starfile.read(dataset / "exports" / "micrographs_ctf.star", always_dict=True)["micrographs"]
    assert all((dataset / name).is_file() for name in micrographs["rlnMicrographName"])
    listed = starfile.read(dataset / "exports" / "autopick.star", always_dict=True)["coordinate_files"]
    assert all((dataset / name).is_file() for name in listed["rlnMicrographCoordinates"])
    assert (dataset / "exports" / "cryosparc" / "exposures.cs").is_file()
    # every file is listed with its SHA-256, as sha256sum writes them
    sums = dict(line.split("  ", 1)[::-1] for line in (dataset / "SHA256SUMS").read_text().splitlines())
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    assert set(sums) == on_disk - {"SHA256SUMS", ".emlive-dataset.json"}
    assert all(_sha256(dataset / rel) == digest for rel, digest in sums.items())


def test_verify_passes_on_a_copy_and_fails_naming_the_file_after_one_byte_changes(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    ok = run_emlive("dataset", "--verify", f"file://{copy}")  # DEST through fsspec
    assert ok.returncode == 0, ok.stderr
    target = copy / pd.read_parquet(copy / "manifest.parquet")["ctf.output_txt_path"].iloc[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    failed = run_emlive("dataset", "--verify", copy)
    assert failed.returncode == 1
    named = " ".join(failed.stderr.split())
    assert "ctf/movie_0001.txt" in named and "SHA-256 differs" in named
    assert "movie_0000" not in named  # only the changed file is named

    (copy / "README.md").unlink()
    missing = run_emlive("dataset", "--verify", copy)
    assert missing.returncode == 1 and "README.md: missing" in " ".join(missing.stderr.split())


def test_a_rerun_copies_and_hashes_nothing_unchanged(processed, tmp_path):
    dest = tmp_path / "dataset"
    first = run_emlive("dataset", processed, "-o", dest)
    assert first.returncode == 0, first.stderr
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*.mrc")}
    again = run_emlive("dataset", processed, "-o", dest)
    assert again.returncode == 0, again.stderr
    assert "(0 copied, 0 hashed, 0 written" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.mrc")} == stamps
    # a source touched but not changed is hashed again, not copied
    thumbnail = next((processed / "thumbnail").glob("*.png"))
    os.utime(thumbnail, ns=(thumbnail.stat().st_atime_ns, thumbnail.stat().st_mtime_ns + 1_000_000_000))
    touched = run_emlive("dataset", processed, "-o", dest, "--verify")
    assert touched.returncode == 0, touched.stderr
    assert "(0 copied, 1 hashed" in touched.stdout

    # a micrograph rejected since (a curation threshold): its files leave the dataset
    db = processed / "emlive.sqlite3"
    drifts = pd.read_parquet(dest / "manifest.parquet")["motion.total_drift_a"].tolist()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE emlive_session SET curation_json = ?", (json.dumps({"max_total_drift_a": min(drifts)}),))
    try:
        fewer = run_emlive("dataset", processed, "-o", dest, "--verify")
    finally:
        with sqlite3.connect(db) as con:
            con.execute("UPDATE emlive_session SET curation_json = '{}'")
    assert fewer.returncode == 0, fewer.stderr
    manifest = pd.read_parquet(dest / "manifest.parquet")
    assert len(manifest) == 1 and "1 micrographs" in fewer.stdout
    gone = "movie_0001" if manifest["exposure"].iloc[0] == "movie_0000.mrc" else "movie_0000"
    assert not [p for p in dest.rglob(f"{gone}*")]


def test_a_folder_without_a_session_is_a_clear_error(tmp_path):
    done = run_emlive("dataset", tmp_path, "-o", tmp_path / "dest")
    assert done.returncode == 2 and "no emlive database here" in done.stderr


def test_verify_reads_any_fsspec_file_system(dataset):
    """The destination goes through fsspec: a copy in its in-memory file system verifies, and a
    changed byte there is named."""
    import fsspec

    from emlive.sinks.dataset import DatasetError, verify_dataset

    memory = fsspec.filesystem("memory")
    root = f"/emlive-test-{os.getpid()}"
    try:
        for path in dataset.rglob("*"):
            if path.is_file():
                memory.pipe_file(f"{root}/{path.relative_to(dataset).as_posix()}", path.read_bytes())
        assert verify_dataset(f"memory://{root}") == len((dataset / "SHA256SUMS").read_text().splitlines())
        rel = pd.read_parquet(dataset / "manifest.parquet")["motion.star_path"].iloc[0]
        data = bytearray(memory.cat_file(f"{root}/{rel}"))
        data[0] ^= 0xFF
        memory.pipe_file(f"{root}/{rel}", bytes(data))
        with pytest.raises(DatasetError, match=f"{rel}: SHA-256 differs"):
            verify_dataset(f"memory://{root}")
    finally:
        memory.rm(root, recursive=True)


def test_a_session_of_the_service_is_found_in_its_database(tmp_path, monkeypatch):
    """``emlive serve`` keeps its sessions in ``<data_root>/.emlive/emlive.sqlite3``: found there
    when the output folder has no database of its own."""
    from emlive.db.setup import sqlite_url
    from emlive.synth.session import write_session

    root = tmp_path / "facility"
    (root / ".emlive").mkdir(parents=True)
    write_session(tmp_path, n_movies=1, shape=(256, 256), n_frames=6, formats=("mrc",), seed=1, workers=1)
    out = root / "p1" / "processed"
    done = run_emlive("process", tmp_path / "raw", "-o", out, "--apix", "1.0", "--dose-per-frame", "1.0",
                      "--settle-s", "0", "--workers", "1",
                      "--database-url", sqlite_url(root / ".emlive" / "emlive.sqlite3"))
    assert done.returncode == 0, done.stderr
    assert not (out / "emlive.sqlite3").exists()
    monkeypatch.setenv("EMLIVE_DATA_ROOT", str(root))
    written = run_emlive("dataset", out, "-o", tmp_path / "dataset", "--verify")
    assert written.returncode == 0, written.stderr
    assert "1 micrographs" in written.stdout
