"""`emlive demo`: a synthetic session processed end to end must match its ground truth."""

from __future__ import annotations

import sqlite3

import pytest

from emlive.synth.session import load_truth

from .conftest import run_emlive

pytestmark = pytest.mark.slow


def test_demo_recovers_the_ground_truth_of_every_format_and_reruns_without_recomputing(tmp_path):
    demo = tmp_path / "demo"
    proc = run_emlive("demo", demo, "--movies", "3", "--seed", "11")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all exposures match the ground truth" in proc.stdout
    truth = load_truth(demo / "truth.json")
    assert {movie.format for movie in truth.movies} == {"mrc", "tiff", "eer"}
    for movie in truth.movies:
        assert movie.name in proc.stdout
    sidecars = {p: p.read_bytes() for p in (demo / "processed").rglob("*.json")}
    assert len(sidecars) == 3 * 3  # motion, ctf, thumbnail per movie

    again = run_emlive("demo", demo)

    assert again.returncode == 0, again.stdout + again.stderr
    assert {p: p.read_bytes() for p in (demo / "processed").rglob("*.json")} == sidecars
    with sqlite3.connect(demo / "processed" / "emlive.sqlite3") as con:
        assert con.execute("SELECT count(*) FROM emlive_motioncorrection").fetchone() == (3,)
