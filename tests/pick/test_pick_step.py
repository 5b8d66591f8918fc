"""Picking as a step of the pipeline: a micrograph that cannot be picked fails only that step,
and the exports RELION's Extract job and cryoSPARC take follow the curation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import starfile

from emlive.pick.outputs import write_autopick_star
from emlive.pick.step import AUTOPICK_STAR, COORDINATES_DIR, PARTICLES_STAR, export_picks
from emlive.pick.types import PickResult
from emlive.pipeline.step import ExportRow
from emlive.synth.session import write_session

from ..conftest import run_emlive


def _picked(tmp_path: Path, name: str, xy: list[tuple[float, float]]) -> PickResult:
    path = tmp_path / "pick" / f"{name}_autopick.star"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_autopick_star(path, np.array(xy, dtype=float).reshape(-1, 2), np.linspace(5, 6, len(xy)))
    return PickResult(coordinates_path=path, picks_png_path=tmp_path / f"{name}.png", n_particles=len(xy))


def test_exports_list_each_accepted_micrograph_with_its_coordinates(tmp_path):
    rows = [
        ExportRow(name="sq1/a", micrograph_name="/o/motion/sq1/a_DW.mrc", results={"pick": _picked(tmp_path, "a", [(10, 20), (30, 40)])}),
        ExportRow(name="b", micrograph_name="/o/motion/b_DW.mrc", results={"pick": _picked(tmp_path, "b", [(5, 6)])}),
        ExportRow(name="c", micrograph_name="/o/motion/c_DW.mrc", results={}),  # picking failed: not listed
    ]
    exports = tmp_path / "exports"
    written = export_picks(rows, exports)
    assert written == [exports / AUTOPICK_STAR, exports / PARTICLES_STAR]
    listed = starfile.read(exports / AUTOPICK_STAR, always_dict=True)["coordinate_files"]
    assert list(listed["rlnMicrographName"]) == ["/o/motion/sq1/a_DW.mrc", "/o/motion/b_DW.mrc"]
    coordinate_files = [Path(p) for p in listed["rlnMicrographCoordinates"]]
    assert coordinate_files == [exports / COORDINATES_DIR / "sq1" / "a_autopick.star", exports / COORDINATES_DIR / "b_autopick.star"]
    first = starfile.read(coordinate_files[0])
    assert list(zip(first["rlnCoordinateX"], first["rlnCoordinateY"], strict=True)) == [(10, 20), (30, 40)]
    particles = starfile.read(exports / PARTICLES_STAR)
    assert len(particles) == 3 and list(particles["rlnMicrographName"]).count("/o/motion/sq1/a_DW.mrc") == 2

    # a micrograph rejected later (curation) leaves the list, its coordinate file and the particles
    export_picks(rows[1:], exports)
    listed = starfile.read(exports / AUTOPICK_STAR, always_dict=True)["coordinate_files"]
    assert list(listed["rlnMicrographName"]) == ["/o/motion/b_DW.mrc"]
    assert not (exports / COORDINATES_DIR / "sq1" / "a_autopick.star").exists()
    assert len(starfile.read(exports / PARTICLES_STAR)) == 1


@pytest.mark.slow
def test_a_micrograph_that_cannot_be_picked_fails_that_step_only(tmp_path):
    write_session(tmp_path, n_movies=2, shape=(512, 512), n_frames=8, formats=("mrc",), seed=5)
    out = tmp_path / "processed"
    # a 450 Å particle on a 512 Å micrograph: nothing is far enough from the edges to pick
    done = run_emlive("process", tmp_path / "raw", "-o", out, "--apix", "1.0", "--dose-per-frame", "1.0",
                      "--particle-diameter", "450", "--workers", "1")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(out / "emlive.sqlite3") as con:
        states = con.execute("SELECT state, count(*) FROM emlive_exposure GROUP BY state").fetchall()
        steps = con.execute("SELECT step, state, error FROM emlive_stepresult ORDER BY exposure_id, step").fetchall()
        typed = con.execute("SELECT count(*) FROM emlive_motioncorrection JOIN emlive_ctfestimate USING (exposure_id)").fetchall()
    assert states == [("processed", 2)] and typed == [(2,)]  # motion and CTF results stay
    failed = [(step, error) for step, state, error in steps if state == "failed"]
    assert [step for step, _ in failed] == ["pick", "pick"]
    assert all("movie_000" in error and "excluded" in error for _, error in failed), failed
    assert {step for step, state, _ in steps if state == "done"} == {"motion", "ctf", "thumbnail"}
    # the exports are written all the same; no micrograph has coordinates
    assert len(starfile.read(out / "exports" / "micrographs_ctf.star", always_dict=True)["micrographs"]) == 2
    assert len(starfile.read(out / "exports" / AUTOPICK_STAR, always_dict=True)["coordinate_files"]) == 0
