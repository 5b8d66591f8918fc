"""The tilt-series API and dashboard on a series the pipeline really processed: a synthetic
SerialEM collection (13 tilts, two dark) through ``emlive process``, then the routes read what
the controller stored — the state, the dark tilts excluded with their reason, the dose before
each tilt in acquisition order, and the montage and central slice the series step drew, served
from inside the session's outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emlive.db.setup import sqlite_url
from emlive.synth.tomo_session import collect, plan_collection
from tests.conftest import run_emlive
from tests.db.conftest import activate

pytestmark = pytest.mark.slow  # about 20 s on 2 busy cores

ANGLES = [-36.0 + 6.0 * i for i in range(13)]
DARK = (2, 11)
"""Indices into ANGLES of the two dark tilts."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic session collected and processed once (``emlive process``, no --watch)."""
    folder = tmp_path_factory.mktemp("tomo_web")
    plan = plan_collection(3, movie_shape=(256, 256), upsampling=2, n_frames=4, tilt_angles_deg=ANGLES,
                           thickness_px=16, dark=DARK)
    (folder / "raw").mkdir()
    for _ in collect(folder, plan):
        pass
    config = folder / "emlive.toml"
    config.write_text("[tomo.series]\nthickness_a = 320\n")
    done = run_emlive("process", folder / "raw", "-o", folder / "processed", "--apix", "5.0", "--dose-per-frame", "0.75",
                      "--kv", "300", "--config", config, "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "processed"


def test_the_api_and_dashboard_show_a_processed_series(processed: Path) -> None:
    activate(sqlite_url(processed / "emlive.sqlite3"))
    from django.test import Client, override_settings

    from emlive.db.models import Session, TiltSeries
    from emlive.web.access import add_user, create_token

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        staff = add_user("tomo-staff", staff=True)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {create_token(staff)}"}
    client = Client()
    session, series = Session.objects.get(), TiltSeries.objects.get()

    listed = client.get(f"/api/v1/sessions/{session.pk}/tilt-series", **auth).json()["items"]
    assert [s["name"] for s in listed] == ["TS_01"]
    ts = listed[0]
    assert ts["state"] == "done" and (ts["tilt_min_deg"], ts["tilt_max_deg"]) == (-36.0, 36.0)
    assert ts["counts"] == {"expected": None, "named": 13, "received": 13, "processed": 13, "excluded": 2}
    dark_angles = sorted(ANGLES[i] for i in DARK)
    assert [t["tilt_angle_deg"] for t in ts["excluded"]] == dark_angles
    assert all(t["reason"].startswith("dark: ") for t in ts["excluded"])
    assert ts["alignment_residual_px"] < 1.0 and abs(ts["tilt_axis_refined_deg"] - 85.0) < 1.0
    assert ts["tomogram_path"] == str(processed.resolve() / "tomo" / "TS_01" / "TS_01_rec.mrc")
    for url in (ts["montage_url"], ts["central_slice_url"]):
        picture = client.get(url, **auth)
        assert picture.status_code == 200 and picture.content.startswith(PNG_MAGIC)

    tilts = client.get(f"/api/v1/sessions/{session.pk}/tilt-series/{series.pk}", **auth).json()["tilts"]
    assert [t["tilt_angle_deg"] for t in tilts] == ANGLES
    by_order = sorted(tilts, key=lambda t: t["acquisition_index"])
    assert by_order[0]["tilt_angle_deg"] == 0.0 and by_order[0]["pre_exposure_e_a2"] == 0.0
    doses = [t["pre_exposure_e_a2"] for t in by_order]
    assert doses == sorted(doses) and len(set(doses)) == len(doses)  # accumulated in acquisition order
    assert all(t["exposure_state"] == "processed" and t["total_drift_a"] is not None for t in tilts)

    client.force_login(staff)
    page = client.get(f"/dashboard/tilt-series/{series.pk}/").content.decode()
    pictures = re.findall(r'<img class="big" id="(central-slice|montage)" src="([^"]+)"', page)
    assert [name for name, _ in pictures] == ["central-slice", "montage"]
    assert all(client.get(src).status_code == 200 for _, src in pictures)
    assert page.count('class="tilt rejected excluded"') == 2
