"""Dashboard fixtures: users, a project with a session whose results have real PNG pictures,
and a logged-in Django test client (the data-plane fixtures come from tests/web/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from emlive.io.png import write_png_atomic

PASSWORD = "correct horse battery staple"


def write_pictures(out_dir: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A thumbnail at the pipeline's place (thumbnail/<name>.png) and a CTF diagnostic PNG."""
    rng = np.random.default_rng(seed)
    thumb = out_dir / "thumbnail" / f"{name}.png"
    spectrum = out_dir / "diagnostics" / f"{name}.png"
    for path in (thumb, spectrum):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png_atomic(path, rng.normal(size=(48, 48)))
    return thumb, spectrum


@pytest.fixture
def web(db):
    """The data plane with no users left from other tests."""
    from django.contrib.auth.models import User

    User.objects.all().delete()
    return db


@pytest.fixture
def users(web):
    """alice (project p1), bob (p2) and a staff user, each with PASSWORD (hashed quickly here:
    the default hasher's 10⁶ rounds would dominate the tests' time)."""
    from django.test import override_settings

    from emlive.web.access import add_user

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield {
            "alice": add_user("alice", password=PASSWORD, projects=("p1",)),
            "bob": add_user("bob", password=PASSWORD, projects=("p2",)),
            "staff": add_user("staff", staff=True, password=PASSWORD),
        }


def client_for(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice(users):
    return client_for(users["alice"])


@pytest.fixture
def add_processed(web, make_results, engines) -> Callable[..., object]:
    """Record movie ``i`` of a session and store results for it, pictures included."""

    def add(session, i: int, *, fit_resolution_a: float = 4.0, mtime_ns: int | None = None, **options):
        exposure, _ = web.store.record_exposure(session, f"m{i}.tif", 10, mtime_ns or (1_700_000_000 + 60 * i) * 10**9)
        motion, ctf = make_results(f"m{i}", **options)
        _, spectrum = write_pictures(Path(session.out_dir), f"m{i}", seed=i)
        ctf = ctf.model_copy(update={"fit_resolution_a": fit_resolution_a, "diagnostic_png_path": spectrum})
        return web.store.store_result(exposure.pk, motion, ctf, **engines)

    return add


@pytest.fixture
def session(web, users, tmp_path, acquisition, add_processed):
    """Session s1 of project p1 (alice's): m0…m3 processed (fit resolution 3, 4, 6, 8 Å), one
    movie waiting, one failed."""
    session = web.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition, project="p1", name="s1")
    for i, resolution in enumerate([3.0, 4.0, 6.0, 8.0]):
        add_processed(session, i, fit_resolution_a=resolution, total_drift_a=5.0 + i)
    web.store.record_exposure(session, "waiting.tif", 10, 1_700_001_000 * 10**9)
    failed, _ = web.store.record_exposure(session, "broken.tif", 0, 1_700_001_000 * 10**9)
    web.store.mark_failed(failed.pk, "zero bytes")
    return web.store.set_session_state(session, "processing")


@pytest.fixture
def other_session(web, users, tmp_path, acquisition, add_processed):
    """Session s2 of project p2 (bob's), one exposure processed."""
    session = web.store.get_or_create_session(tmp_path / "raw2", tmp_path / "out2", acquisition, project="p2", name="s2")
    add_processed(session, 0)
    return session


PARTICLES = [120, 80, 40, 10]
"""Particles picked on m0…m3 of :func:`steps_session`."""


@pytest.fixture
def steps_session(web, session, tmp_path):
    """Session s1 with the results of steps besides motion and CTF, stored as the controller
    stores them (one StepResult per step and exposure): ``pick`` (installed; PARTICLES, its
    picks drawn on the micrograph in pick/<name>_picks.png) on m0…m3, failed on m2 only for
    ``blob`` — a plugin's step that is not installed here (metric ``score``) — which ran on
    m0, m1 and m3."""
    from django.utils import timezone

    from emlive.db.models import StepResult

    out = Path(session.out_dir)
    rows = []
    for i, exposure in enumerate(session.exposures.filter(state="processed").order_by("path")):
        name = f"m{i}"
        picks = out / "pick" / f"{name}_picks.png"
        picks.parent.mkdir(parents=True, exist_ok=True)
        write_png_atomic(picks, np.random.default_rng(100 + i).normal(size=(40, 40)))
        result = {"coordinates_path": str(out / "pick" / f"{name}_autopick.star"), "picks_png_path": str(picks),
                  "n_particles": PARTICLES[i], "masked_fraction": 0.125 * i}
        rows.append(StepResult(exposure=exposure, step="pick", engine="native", engine_version="2026.12.01",
                               result=result, metrics={"n_particles": PARTICLES[i], "masked_fraction": 0.125 * i},
                               finished_at=timezone.now()))
        if i == 2:
            rows.append(StepResult(exposure=exposure, step="blob", state=StepResult.State.FAILED,
                                   error="no blobs: the micrograph is all carbon", finished_at=timezone.now()))
        else:
            rows.append(StepResult(exposure=exposure, step="blob", engine="blobfinder", engine_version="0.3",
                                   result={"score": 0.5 + i}, metrics={"score": 0.5 + i}, finished_at=timezone.now()))
    StepResult.objects.bulk_create(rows)
    return session
