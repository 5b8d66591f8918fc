"""A plugin's step gets the pipeline for free (the open-pipeline issue's acceptance).

``examples/plugin-step`` is a separate package installed into emlive's environment (``make
test`` installs it; so does CI). With no change to emlive, ``emlive process --steps
motion,ctf,pick,thon_rings`` runs its step after the CTF step, stores its results and metrics,
serves them in ``/api/v1`` and on the dashboard, and a rerun reuses its checkpoints.
"""

from __future__ import annotations

import json
import sqlite3
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from emlive.synth.session import write_session

from .conftest import run_emlive, skip_or_fail

pytestmark = pytest.mark.slow

STEPS = "motion,ctf,pick,thon_rings"
ARGS = ("--apix", "1.0", "--dose-per-frame", "1.0", "--particle-diameter", "120", "--workers", "1")


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> tuple[Path, Path]:
    if not any(ep.name == "thon_rings" for ep in entry_points(group="emlive.steps")):
        skip_or_fail("the example plugin is not installed: pip install -e examples/plugin-step (make test does)")
    root = tmp_path_factory.mktemp("plugin")
    write_session(root, n_movies=2, shape=(1024, 1024), n_frames=20, formats=("mrc",), seed=3)
    out = root / "processed"
    done = run_emlive("process", root / "raw", "-o", out, *ARGS, "--steps", STEPS)
    assert done.returncode == 0, done.stderr
    return root, out


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(sql).fetchall()


def test_the_plugin_step_is_listed_with_its_package():
    done = run_emlive("steps")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "thon_rings" in line)
    assert "emlive-thon-rings" in line


def test_its_results_and_metrics_are_in_the_database(processed):
    _, out = processed
    db = out / "emlive.sqlite3"
    assert _rows(db, "SELECT state, count(*) FROM emlive_exposure GROUP BY state") == [("processed", 2)]
    rows = _rows(db, "SELECT step, state, engine, engine_version, result, metrics FROM emlive_stepresult "
                     "WHERE step = 'thon_rings'")
    assert len(rows) == 2
    for step, state, engine, version, result, metrics in rows:
        assert (state, engine, version) == ("done", "native", "2026.12.3")
        result, metrics = json.loads(result), json.loads(metrics)
        assert metrics["n_thon_rings"] == result["n_thon_rings"] >= 3
        assert Path(result["rings_path"]).is_file() and "/thon_rings/" in result["rings_path"]
    assert {step for (step,) in _rows(db, "SELECT DISTINCT step FROM emlive_stepresult")} == {
        "motion", "ctf", "pick", "thon_rings"
    }


def test_its_results_are_in_the_api_and_on_the_dashboard(processed):
    from django.test import Client

    from emlive.db.setup import sqlite_url
    from tests.db.conftest import activate

    _, out = processed
    activate(sqlite_url(out / "emlive.sqlite3"))
    from emlive.db.models import Exposure
    from emlive.web.access import add_user, create_token

    token = create_token(add_user("plugin-staff", staff=True, password="plugin-staff-pw"))
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    exposure = Exposure.objects.order_by("pk").first()
    detail = client.get(f"/api/v1/sessions/{exposure.session_id}/exposures/{exposure.pk}", **auth).json()
    steps = {s["step"]: s for s in detail["steps"]}
    assert steps["thon_rings"]["metrics"]["n_thon_rings"] >= 3
    page = client.get(f"/api/v1/sessions/{exposure.session_id}/exposures", **auth).json()
    assert all("thon_rings.n_thon_rings" in item["metrics"] for item in page["items"])
    listed = {s["name"]: s for s in client.get("/api/v1/steps", **auth).json()}
    assert listed["thon_rings"]["origin"].startswith("emlive-thon-rings")
    assert [m["key"] for m in listed["thon_rings"]["metrics"]] == ["thon_rings.n_thon_rings", "thon_rings.ring_spacing_px"]
    assert client.login(username="plugin-staff", password="plugin-staff-pw")
    html = client.get(f"/dashboard/exposures/{exposure.pk}/").content.decode()
    assert "thon_rings" in html and "Thon rings" in html


def test_a_rerun_reuses_its_checkpoints(processed):
    root, out = processed
    sidecars = sorted((out / "thon_rings").glob("*.thon_rings.json"))
    assert len(sidecars) == 2
    before = {path: path.stat().st_mtime_ns for path in sidecars}
    # a new database: every result comes back from the checkpoints, nothing is recomputed
    done = run_emlive("process", root / "raw", "-o", out, *ARGS, "--steps", STEPS,
                      "--database-url", f"sqlite:///{out / 'again.sqlite3'}")
    assert done.returncode == 0, done.stderr
    assert {path: path.stat().st_mtime_ns for path in sidecars} == before
    assert _rows(out / "again.sqlite3", "SELECT count(*) FROM emlive_stepresult WHERE step = 'thon_rings'") == [(2,)]
