"""A session run again with other acquisition values: same output folder, results redone where
the values change them, said so; one result per exposure, exports with the new values."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import starfile

from emlive.io.atomic import is_temporary_name
from emlive.synth.session import write_session

from ..conftest import run_emlive

pytestmark = pytest.mark.slow


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return con.execute(sql).fetchall()


def _sidecars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.json")}


def test_emlive_process_again_with_another_pixel_size_recomputes_in_the_same_folder(tmp_path):
    write_session(tmp_path, n_movies=3, formats=("mrc",), seed=11, shape=(128, 128), n_frames=4,
                  pixel_size_a=1.0, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
    raw, out = tmp_path / "raw", tmp_path / "out"
    db = out / "emlive.sqlite3"
    common = ("process", raw, "-o", out, "--dose-per-frame", "1.0", "--settle-s", "0", "--workers", "1")

    first = run_emlive(*common, "--apix", "1.0")
    assert first.returncode == 0, first.stderr
    before = _sidecars(out)
    sessions_before = _rows(db, "SELECT id, out_dir FROM emlive_session")

    again = run_emlive(*common, "--apix", "1.1")

    assert again.returncode == 0, again.stderr
    said = " ".join((again.stdout + again.stderr).split())
    assert "acquisition values changed: pixel size 1.0 → 1.1 Å; 3 exposures will be recomputed" in said, said
    assert _rows(db, "SELECT id, out_dir FROM emlive_session") == sessions_before  # same session and folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "truth.json"]  # no new output folder
    assert _rows(db, "SELECT state, count(*) FROM emlive_exposure GROUP BY state") == [("processed", 3)]
    # one result per exposure, replaced: the new pixel size is what is stored and exported
    assert _rows(db, "SELECT count(*), count(DISTINCT exposure_id) FROM emlive_motioncorrection") == [(3, 3)]
    assert _rows(db, "SELECT count(*), count(DISTINCT exposure_id) FROM emlive_ctfestimate") == [(3, 3)]
    assert {round(v, 3) for (v,) in _rows(db, "SELECT pixel_size_a FROM emlive_motioncorrection")} == {1.1}
    for name in ("micrographs_ctf.star", "corrected_micrographs.star"):
        optics = starfile.read(out / "exports" / name, always_dict=True)["optics"]
        assert set(optics["rlnMicrographOriginalPixelSize"].round(3)) == {1.1}, name
    # every step that depends on the pixel size was recomputed (its checkpoint rewritten)
    after = _sidecars(out)
    assert before.keys() == after.keys()
    assert all(after[name] != before[name] for name in before), [n for n in before if after[n] == before[n]]
    assert [p for p in out.rglob("*") if is_temporary_name(p)] == []

    unchanged = run_emlive(*common, "--apix", "1.1")  # the same values again: nothing redone
    assert unchanged.returncode == 0 and "acquisition values changed" not in unchanged.stdout + unchanged.stderr
    assert _sidecars(out) == after


def test_the_service_starting_a_stopped_session_with_other_values_redoes_it_in_its_folder(tmp_path, caplog):
    from emlive.acquisition import Acquisition
    from emlive.db.setup import sqlite_url

    from ..db.conftest import activate

    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store
    from emlive.web import control

    (tmp_path / "root" / "p1" / "sessions" / "bob" / "grid3" / "raw").mkdir(parents=True)
    first = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    session = control.start_processing(tmp_path / "root", "p1", "bob", "grid3", first)
    done, _ = store.record_exposure(session, "a.mrc", 10, 1)
    store.mark_failed(done.pk, "no Thon rings")
    control.stop_processing(session)
    caplog.set_level("INFO", logger="emlive.web.control")

    again = control.start_processing(
        tmp_path / "root", "p1", "bob", "grid3", Acquisition(pixel_size_a=1.1, dose_per_frame_e_a2=1.2)
    )

    assert (again.pk, again.out_dir, again.state, again.pixel_size_a) == (session.pk, session.out_dir, "processing", 1.1)
    assert list(again.exposures.values_list("state", flat=True)) == ["found"]
    assert [r.getMessage() for r in caplog.records] == [
        "p1/bob/grid3: acquisition values changed: pixel size 1.0 → 1.1 Å, dose per frame 1.0 → 1.2 e/Å²; "
        "1 exposures will be recomputed"
    ]
