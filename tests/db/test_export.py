"""RELION 3.1+ exports: the column names and units RELION reads, one row per processed micrograph."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import starfile

OPTICS_COLUMNS = [
    "rlnOpticsGroupName",
    "rlnOpticsGroup",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographPixelSize",
]
CORRECTED_COLUMNS = [
    "rlnMicrographName",
    "rlnMicrographNameNoDW",
    "rlnMicrographMetadata",
    "rlnOpticsGroup",
    "rlnAccumMotionTotal",
    "rlnAccumMotionEarly",
    "rlnAccumMotionLate",
]
CTF_STAR, CORRECTED_STAR = "micrographs_ctf.star", "corrected_micrographs.star"
CTF_COLUMNS = [
    *CORRECTED_COLUMNS,
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnCtfAstigmatism",
    "rlnDefocusAngle",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
    "rlnCtfIceRingDensity",
]


@pytest.fixture
def session(db, tmp_path, acquisition):
    return db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition)


@pytest.fixture
def three_processed(db, session, store_processed):
    """m0, m1, m2 processed (different drift and defocus); a found and a failed one besides."""
    for i in range(3):
        exposure, _ = db.store.record_exposure(session, f"m{i}.tif", 10, 20)
        store_processed(exposure.pk, f"m{i}", total_drift_a=10.0 + i, defocus_u_a=15000.0 + 1000 * i)
    db.store.record_exposure(session, "waiting.tif", 10, 20)
    failed, _ = db.store.record_exposure(session, "broken.tif", 0, 20)
    db.store.mark_failed(failed.pk, "zero bytes")
    return session


def test_exports_load_with_relion_columns(db, three_processed, tmp_path):
    exports = tmp_path / "out" / "exports"
    written = db.export.write_exports(three_processed, exports)
    assert written == [
        exports / "micrographs_ctf.star", exports / "corrected_micrographs.star", exports / "cryosparc" / "exposures.cs"
    ]

    for path, columns in [(written[0], CTF_COLUMNS), (written[1], CORRECTED_COLUMNS)]:
        blocks = starfile.read(path, always_dict=True)
        assert list(blocks) == ["optics", "micrographs"]
        optics, mics = blocks["optics"], blocks["micrographs"]
        assert list(optics.columns) == OPTICS_COLUMNS
        assert optics.iloc[0].to_dict() == {
            "rlnOpticsGroupName": "opticsGroup1",
            "rlnOpticsGroup": 1,
            "rlnMicrographOriginalPixelSize": 1.05,
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.07,
            "rlnMicrographPixelSize": 1.05,
        }
        assert list(mics.columns) == columns
        assert len(mics) == 3  # processed only
        assert mics["rlnOpticsGroup"].tolist() == [1, 1, 1]
        assert mics["rlnAccumMotionTotal"].tolist() == [10.0, 11.0, 12.0]
        assert mics["rlnAccumMotionEarly"].tolist() == pytest.approx([2.5, 2.75, 3.0])
        names = [Path(p) for p in mics["rlnMicrographName"]]
        assert [p.name for p in names] == ["m0_DW.mrc", "m1_DW.mrc", "m2_DW.mrc"]
        assert all(p.is_absolute() and p.exists() for p in names)
        assert all(Path(p).exists() for p in mics["rlnMicrographNameNoDW"])
        assert [Path(p).name for p in mics["rlnMicrographMetadata"]] == ["m0.star", "m1.star", "m2.star"]

    ctf = starfile.read(written[0], always_dict=True)["micrographs"]
    assert ctf["rlnDefocusU"].tolist() == [15000.0, 16000.0, 17000.0]
    assert ctf["rlnDefocusV"].tolist() == [14000.0, 14000.0, 14000.0]
    assert ctf["rlnCtfAstigmatism"].tolist() == [1000.0, 2000.0, 3000.0]
    assert ctf["rlnDefocusAngle"].tolist() == [33.0] * 3
    assert ctf["rlnCtfFigureOfMerit"].tolist() == [0.21] * 3
    assert ctf["rlnCtfMaxResolution"].tolist() == [4.2] * 3
    assert ctf["rlnCtfIceRingDensity"].tolist() == [1.02] * 3


def test_a_micrograph_without_a_ctf_fit_keeps_its_row_and_its_flag(db, session, store_processed, tmp_path):
    for i, fit_ok in enumerate([True, False, True]):
        exposure, _ = db.store.record_exposure(session, f"m{i}.tif", 10, 20)
        store_processed(exposure.pk, f"m{i}", defocus_u_a=15000.0 + 1000 * i, fit_ok=fit_ok)
    ctf_star, _ = db.export.write_exports(session, tmp_path / "exports")[:2]
    ctf = starfile.read(ctf_star, always_dict=True)["micrographs"]
    assert ctf["rlnDefocusU"].tolist() == [15000.0, 16000.0, 17000.0]
    flags = dict(db.models.CtfEstimate.objects.values_list("defocus_u_a", "fit_ok"))
    assert flags == {15000.0: True, 16000.0: False, 17000.0: True}


def test_the_ice_ring_column_needs_a_value_for_every_micrograph(db, session, store_processed, tmp_path):
    for i, ice in enumerate([1.1, None]):
        exposure, _ = db.store.record_exposure(session, f"m{i}.tif", 10, 20)
        store_processed(exposure.pk, f"m{i}", ice_ring_ratio=ice)
    ctf_star, _ = db.export.write_exports(session, tmp_path / "exports")[:2]
    ctf = starfile.read(ctf_star, always_dict=True)["micrographs"]
    assert len(ctf) == 2
    assert "rlnCtfIceRingDensity" not in ctf.columns


def test_exports_follow_the_session_and_leave_no_temporary_files(db, three_processed, tmp_path, store_processed):
    exports = tmp_path / "exports"
    db.export.write_exports(three_processed, exports)
    waiting = db.queries.exposures(three_processed, "found").get()
    store_processed(waiting.pk, "waiting")
    db.export.write_exports(three_processed, exports)

    assert sorted(p.name for p in exports.iterdir()) == ["corrected_micrographs.star", "cryosparc", "micrographs_ctf.star"]
    for name in ["corrected_micrographs.star", "micrographs_ctf.star"]:
        assert len(starfile.read(exports / name, always_dict=True)["micrographs"]) == 4


def test_a_failed_write_keeps_the_previous_export(db, three_processed, tmp_path, monkeypatch):
    exports = tmp_path / "exports"
    db.export.write_exports(three_processed, exports)
    before = {p.name: p.read_bytes() for p in exports.rglob("*") if p.is_file()}

    real_write = starfile.write

    def write_half_then_fail(data, filename, **kwargs):
        real_write(data, filename, **kwargs)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(starfile, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        db.export.write_exports(three_processed, exports)
    assert {p.name: p.read_bytes() for p in exports.rglob("*") if p.is_file()} == before


def test_phase_shift_is_exported_in_degrees(db, session, store_processed, tmp_path):
    exposure, _ = db.store.record_exposure(session, "vpp.tif", 10, 20)
    store_processed(exposure.pk, "vpp", phase_shift_rad=math.pi / 2)
    ctf_star, corrected_star = db.export.write_exports(session, tmp_path / "exports")[:2]
    ctf = starfile.read(ctf_star, always_dict=True)["micrographs"]
    assert ctf["rlnPhaseShift"].tolist() == [90.0]
    assert "rlnPhaseShift" not in starfile.read(corrected_star, always_dict=True)["micrographs"]


def test_paths_relative_to_a_relion_project(db, three_processed, tmp_path):
    project = tmp_path / "relion_project"
    project.mkdir()
    ctf_star, _ = db.export.write_exports(three_processed, tmp_path / "exports", relative_to=project)[:2]
    mics = starfile.read(ctf_star, always_dict=True)["micrographs"]
    assert mics["rlnMicrographName"].tolist()[0] == "../out/motion/m0_DW.mrc"
    assert all((project / p).exists() for p in mics["rlnMicrographName"])


def test_binned_micrographs_get_their_own_pixel_size(db, session, store_processed, tmp_path):
    exposure, _ = db.store.record_exposure(session, "binned.tif", 10, 20)
    store_processed(exposure.pk, "binned", pixel_size_a=2.1)
    ctf_star, _ = db.export.write_exports(session, tmp_path / "exports")[:2]
    optics = starfile.read(ctf_star, always_dict=True)["optics"]
    assert optics[["rlnMicrographOriginalPixelSize", "rlnMicrographPixelSize"]].iloc[0].tolist() == [1.05, 2.1]


def test_a_session_with_nothing_processed_exports_empty_tables(db, session, tmp_path):
    db.store.record_exposure(session, "waiting.tif", 10, 20)
    for path in db.export.write_exports(session.pk, tmp_path / "exports")[:2]:
        blocks = starfile.read(path, always_dict=True)
        assert len(blocks["optics"]) == 1
        assert len(blocks["micrographs"]) == 0


def test_a_threshold_removes_rejected_micrographs_from_both_files(db, three_processed, tmp_path):
    """m0, m1, m2 drift 10, 11, 12 Å: a 10.5 Å limit keeps m0 only; lifting it brings all back."""
    exports = tmp_path / "exports"
    db.models.Session.objects.filter(pk=three_processed.pk).update(curation_json={"max_total_drift_a": 10.5})
    ctf_star, corrected_star = db.export.write_exports(three_processed, exports)[:2]  # a stale object: read afresh
    for path in (ctf_star, corrected_star):
        mics = starfile.read(path, always_dict=True)["micrographs"]
        assert mics["rlnMicrographNameNoDW"].map(lambda p: Path(p).name).tolist() == ["m0.mrc"]
        assert mics["rlnAccumMotionTotal"].tolist() == [10.0]
    assert db.models.Exposure.objects.filter(session=three_processed, state="processed").count() == 3

    db.models.Session.objects.filter(pk=three_processed.pk).update(curation_json={})
    for path in db.export.write_exports(three_processed.pk, exports)[:2]:
        assert len(starfile.read(path, always_dict=True)["micrographs"]) == 3


def test_rejecting_micrographs_without_a_fit_drops_their_rows(db, session, store_processed, tmp_path):
    for i, fit_ok in enumerate([True, False]):
        exposure, _ = db.store.record_exposure(session, f"m{i}.tif", 10, 20)
        store_processed(exposure.pk, f"m{i}", defocus_u_a=15000.0 + 1000 * i, fit_ok=fit_ok)
    db.models.Session.objects.filter(pk=session.pk).update(curation_json={"reject_no_fit": True})
    for path in db.export.write_exports(session, tmp_path / "exports")[:2]:
        assert len(starfile.read(path, always_dict=True)["micrographs"]) == 1
    ctf = starfile.read(tmp_path / "exports" / "micrographs_ctf.star", always_dict=True)["micrographs"]
    assert ctf["rlnDefocusU"].tolist() == [15000.0]


def test_when_every_micrograph_is_rejected_the_tables_are_empty(db, three_processed, tmp_path):
    db.models.Session.objects.filter(pk=three_processed.pk).update(curation_json={"max_total_drift_a": 1.0})
    for path in db.export.write_exports(three_processed, tmp_path / "exports")[:2]:
        blocks = starfile.read(path, always_dict=True)
        assert len(blocks["optics"]) == 1 and len(blocks["micrographs"]) == 0


# --- all files replaced together -------------------------------------------------------------


def _micrographs(path: Path) -> list[str]:
    return starfile.read(path, always_dict=True)["micrographs"]["rlnMicrographName"].tolist()


def test_a_reader_never_sees_one_new_file_and_one_old(db, three_processed, tmp_path, store_processed):
    """A reader polling both files while the exports are rewritten (a micrograph more each time)
    reads matched pairs only: it resolves the folder once, as ``export_generation`` does."""
    import threading

    exports = tmp_path / "out" / "exports"
    db.export.write_exports(three_processed, exports)
    stop, pairs, mismatched = threading.Event(), [], []

    def read_pairs() -> None:
        while not stop.is_set():
            generation = db.export.export_generation(exports)
            try:
                ctf, corrected = (_micrographs(generation / name) for name in (CTF_STAR, CORRECTED_STAR))
            except FileNotFoundError:  # two rewrites came while it read: that generation is gone
                continue
            (pairs if ctf == corrected else mismatched).append((len(ctf), len(corrected)))

    reader = threading.Thread(target=read_pairs)
    reader.start()
    try:
        for i in range(12):
            exposure, _ = db.store.record_exposure(three_processed, f"more{i}.tif", 10, 20)
            store_processed(exposure.pk, f"more{i}")
            db.export.write_exports(three_processed, exports)
    finally:
        stop.set()
        reader.join()
    assert mismatched == []
    assert len({n for n, _ in pairs}) > 1, "the reader never saw a rewrite"
    assert len(_micrographs(exports / CTF_STAR)) == 15


def test_exports_is_a_link_to_the_newest_generation_and_only_the_one_before_is_kept(db, three_processed, tmp_path):
    exports = tmp_path / "out" / "exports"
    for _ in range(4):
        db.export.write_exports(three_processed, exports)
    assert exports.is_symlink() and not os.path.isabs(os.readlink(exports))
    beside = sorted(p.name for p in (tmp_path / "out").iterdir() if "exports" in p.name)
    assert beside == [".exports-3", ".exports-4", ".exports.lock", "exports"]
    assert os.readlink(exports) == ".exports-4"
    assert sorted(p.name for p in exports.iterdir()) == [CORRECTED_STAR, "cryosparc", CTF_STAR]


def test_an_older_versions_exports_folder_becomes_the_first_generation(db, three_processed, tmp_path):
    exports = tmp_path / "out" / "exports"
    exports.mkdir(parents=True)
    (exports / CTF_STAR).write_text("written by an older version")
    db.export.write_exports(three_processed, exports)
    assert exports.is_symlink() and len(_micrographs(exports / CTF_STAR)) == 3
    assert (tmp_path / "out" / ".exports-1" / CTF_STAR).read_text() == "written by an older version"


def test_coordinate_files_listed_in_autopick_star_stay_valid_after_later_rewrites(db, three_processed, tmp_path):
    """Picking's exporter writes absolute paths of its coordinate files: they name them through
    ``exports/``, never through a generation folder that a later rewrite removes."""
    from emlive.pick.outputs import write_autopick_star
    from emlive.pick.types import PickResult

    for exposure in db.models.Exposure.objects.filter(session=three_processed, state="processed"):
        stem = Path(exposure.path).stem
        picked = tmp_path / "out" / "pick" / f"{stem}_autopick.star"
        picked.parent.mkdir(parents=True, exist_ok=True)
        write_autopick_star(picked, np.array([[10.0, 20.0], [30.0, 40.0]]), np.array([5.0, 6.0]))
        result = PickResult(coordinates_path=picked, picks_png_path=picked.with_suffix(".png"), n_particles=2)
        db.models.StepResult.objects.create(exposure=exposure, step="pick", result=result.model_dump(mode="json"))
    exports = tmp_path / "out" / "exports"
    for _ in range(3):
        db.export.write_exports(three_processed, exports)
        listed = starfile.read(exports / "autopick.star", always_dict=True)["coordinate_files"]
        paths = [Path(p) for p in listed["rlnMicrographCoordinates"]]
        assert paths == [exports / "coordinates" / f"m{i}_autopick.star" for i in range(3)]
        assert all(len(starfile.read(p)) == 2 for p in paths)
    # unchanged coordinate files were carried over (hard links), not written anew
    generations = sorted((tmp_path / "out").glob(".exports-*"))
    assert os.path.samefile(generations[0] / "coordinates" / "m0_autopick.star",
                            generations[1] / "coordinates" / "m0_autopick.star")
