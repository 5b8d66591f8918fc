"""The dashboard in a real browser: Playwright drives Debian's Chromium against the ASGI app
served by uvicorn, while a thread stores results the way the controller does.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); never ``playwright install``.
Screenshots (and the downloaded export) go to ``$EMLIVE_TEST_ARTIFACTS`` (default: the
test's tmp folder); their paths are printed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import starfile

from emlive.acquisition import Acquisition
from emlive.db.setup import sqlite_url
from emlive.io.png import write_png_atomic
from emlive.synth.movies import specimen_image
from tests.conftest import skip_or_fail
from tests.db.conftest import ENGINES, activate
from tests.web.dashboard.conftest import PASSWORD

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIRST = 2
"""Exposures processed before the page opens; LATER more arrive while it is open."""
LATER = 5
ARRIVAL_INTERVAL_S = 1.0
RESOLUTION_LIMIT_A = 5.0


def fit_resolution_a(i: int) -> float:
    """Every third exposure fits only to 7 Å: rejected by the 5 Å threshold the test sets."""
    return 7.0 if i % 3 == 2 else 3.5


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EMLIVE_TEST_ARTIFACTS") or tmp_path / "artifacts") / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser_db(tmp_path: Path) -> Iterator[None]:
    """A fresh SQLite database of this test's own (the server thread and the producer use it)."""
    activate(sqlite_url(tmp_path / "browser.sqlite3"))
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(browser_db: None) -> Iterator[str]:
    """The real ASGI app (uvicorn, in a thread) on a free port; yields its base URL."""
    import uvicorn
    from django.core.asgi import get_asgi_application

    config = uvicorn.Config(
        get_asgi_application(), host="127.0.0.1", port=_free_port(), log_config=None, log_level="warning",
        lifespan="off", ws="none", http="h11", access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def n_particles(i: int) -> int:
    """Particles picked on exposure i: picking is enabled from the LATER exposures on (its
    column and plots appear while the page is open)."""
    return 40 + 7 * i


def _pictures(out_dir: Path, name: str, acquisition: Acquisition, defocus_a: float, seed: int) -> tuple[Path, Path, Path]:
    """A real micrograph thumbnail (synthetic specimen with a known CTF) where the pipeline puts
    it, its power spectrum as the CTF diagnostic, and the micrograph with picks circled as the
    pick step draws it; returns their paths."""
    rng = np.random.default_rng(seed)
    image = specimen_image(
        rng, (256, 256), optics=acquisition, defocus_u_a=defocus_a, defocus_v_a=defocus_a - 300, azimuth_deg=30.0,
        contrast=0.6,
    )
    image = image + rng.normal(scale=0.05, size=image.shape)
    for folder in ("thumbnail", "ctf", "pick"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    thumbnail = out_dir / "thumbnail" / f"{name}.png"
    write_png_atomic(thumbnail, image)
    power = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2)
    spectrum = out_dir / "ctf" / f"{name}.png"
    write_png_atomic(spectrum, power)
    picked = image.copy()
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    for y, x in rng.uniform(20, image.shape[0] - 20, size=(n_particles(seed), 2)):
        ring = np.abs(np.hypot(rows - y, cols - x) - 9) < 1.0
        picked[ring] = image.max()
    picks = out_dir / "pick" / f"{name}_picks.png"
    write_png_atomic(picks, picked)
    return thumbnail, spectrum, picks


def _store_one(session, i: int, acquisition: Acquisition, out_dir: Path) -> None:
    """What the controller does for one movie: record it, then store every step's result
    (motion, CTF, thumbnail, and from exposure FIRST on particle picking)."""
    from types import SimpleNamespace

    from django.utils import timezone

    from emlive.ctf.types import CtfResult
    from emlive.db import store
    from emlive.motion.types import MotionResult
    from emlive.pick.types import PickResult
    from emlive.pipeline.thumbnail import Thumbnail

    name = f"movie_{i:03d}"
    exposure, _ = store.record_exposure(session, f"{name}.tif", 1000, time.time_ns())
    defocus_a = 12000.0 + 1500.0 * i
    thumbnail, spectrum, picks = _pictures(out_dir, name, acquisition, defocus_a, seed=i)
    motion_dir = out_dir / "motion"
    motion = MotionResult(
        shifts_px=[(0.0, 0.0), (-0.8 * i, 0.3), (-1.5 * i, 0.7), (-1.9 * i, 1.2)],
        total_drift_a=4.0 + i, early_drift_a=1.0, late_drift_a=3.0 + i,
        micrograph_path=motion_dir / f"{name}.mrc", dose_weighted_path=motion_dir / f"{name}_DW.mrc",
        star_path=motion_dir / f"{name}.star", pixel_size_a=acquisition.pixel_size_a, n_frames=4,
    )
    ctf = CtfResult(
        defocus_u_a=defocus_a, defocus_v_a=defocus_a - 300, azimuth_deg=30.0, cross_correlation=0.2,
        fit_resolution_a=fit_resolution_a(i), fit_ok=True, ice_ring_ratio=1.0 + 0.02 * i,
        output_txt_path=out_dir / "ctf" / f"{name}.txt", avrot_path=out_dir / "ctf" / f"{name}_avrot.txt",
        diagnostic_png_path=spectrum,
    )
    pick = PickResult(
        coordinates_path=out_dir / "pick" / f"{name}_autopick.star", picks_png_path=picks, n_particles=n_particles(i),
        masked_fraction=0.1,
    )
    results = {"motion": motion, "ctf": ctf, "thumbnail": Thumbnail(png_path=thumbnail), **({"pick": pick} if i >= FIRST else {})}
    now = timezone.now()
    records = [
        SimpleNamespace(step=step, engine=ENGINES.get(f"{step}_engine", "native"),
                        engine_version=ENGINES.get(f"{step}_engine_version", "1"), finished_at=now)
        for step in results
    ]
    store.store_exposure_result(exposure.pk, SimpleNamespace(results=results, steps=records, failures={}))


class Producer(threading.Thread):
    """Stores LATER results, one every ARRIVAL_INTERVAL_S, from its own thread and connection."""

    def __init__(self, session, acquisition: Acquisition, out_dir: Path) -> None:
        super().__init__(name="producer", daemon=True)
        self.session, self.acquisition, self.out_dir = session, acquisition, out_dir
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connections

        try:
            for i in range(FIRST, FIRST + LATER):
                time.sleep(ARRIVAL_INTERVAL_S)
                _store_one(self.session, i, self.acquisition, self.out_dir)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connections.close_all()


def _shot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_a_live_session_in_the_browser(server: str, tmp_path: Path, artifacts: Path) -> None:
    if not CHROMIUM.is_file():
        skip_or_fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    from emlive.db import store
    from emlive.web.access import add_user

    acquisition = Acquisition(pixel_size_a=1.05, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, dose_per_frame_e_a2=1.2)
    out_dir = tmp_path / "out"
    session = store.get_or_create_session(tmp_path / "raw", out_dir, acquisition, project="p1", name="live1")
    session = store.set_session_state(session, "processing")
    add_user("alice", password=PASSWORD, projects=("p1",))
    for i in range(FIRST):
        _store_one(session, i, acquisition, out_dir)
    producer = Producer(session, acquisition, out_dir)
    started = time.monotonic()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(20_000)

            # Log in; the dashboard lists the session.
            page.goto(f"{server}/")
            expect(page).to_have_url(f"{server}/login/?next=/dashboard/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{server}/dashboard/")
            _shot(page, artifacts, "01_sessions")
            page.click("text=live1")

            # The session page: plots drawn, the first exposures with their pictures.
            expect(page.locator("#plot-resolution .main-svg").first).to_be_visible()
            thumbs = page.locator("#exposures img.thumb")
            expect(thumbs).to_have_count(FIRST)
            assert page.evaluate("document.getElementById('plot-resolution').data[0].x.length") == FIRST
            # no step besides motion, CTF and thumbnails yet: no column or plot of a step metric
            assert page.locator("#exposures th[data-metric]").count() == 0
            assert page.locator("#plot-pick-n_particles").count() == 0
            _shot(page, artifacts, "02_session_start")

            # Results arrive while the page is open: the table and the plots follow, no reload.
            producer.start()
            expect(thumbs).to_have_count(FIRST + LATER, timeout=30_000)
            page.wait_for_function(
                f"document.getElementById('plot-resolution').data.reduce((n, t) => n + t.x.length, 0) === {FIRST + LATER}",
                timeout=15_000,
            )
            expect(page.locator("#n-processed")).to_have_text(str(FIRST + LATER), timeout=10_000)
            # the pick step's results arrived: its declared metric has a column and plots of its own
            expect(page.locator("#exposures th[data-metric='pick.n_particles']")).to_have_text("Particles")
            particles_column = page.locator("#exposures thead th").all_inner_texts().index("Particles")
            cells = page.locator(f"#exposures tbody tr td:nth-child({particles_column + 1})").all_inner_texts()
            assert sorted(cells) == sorted([""] * FIRST + [str(n_particles(i)) for i in range(FIRST, FIRST + LATER)])
            page.wait_for_function(
                f"document.getElementById('plot-pick-n_particles').data.reduce((n, t) => n + t.x.length, 0) === {LATER}",
                timeout=15_000,
            )
            expect(page.locator("#plot-pick-n_particles-hist .main-svg").first).to_be_visible()
            producer.join(timeout=30)
            assert producer.error is None, producer.error
            page.locator("#exposures").scroll_into_view_if_needed()  # thumbnails load lazily, when near the view
            count_loaded = "Array.from(document.querySelectorAll('#exposures img.thumb')).filter(i => i.complete && i.naturalWidth > 0).length"
            with contextlib.suppress(PlaywrightTimeout):  # the last swap's pictures may still be loading
                page.wait_for_function(f"{count_loaded} === {FIRST + LATER}", timeout=10_000)
            loaded = page.evaluate(count_loaded)
            assert loaded == FIRST + LATER, "every thumbnail is a loadable picture"
            _shot(page, artifacts, "03_session_live")

            # A threshold: fits worse than 5 Å are rejected, marked, and left out of the export.
            rejected = [i for i in range(FIRST + LATER) if fit_resolution_a(i) > RESOLUTION_LIMIT_A]
            page.fill("#id_max_fit_resolution_a", str(RESOLUTION_LIMIT_A))
            page.click("#save-curation")
            expect(page.locator("#curation-notice")).to_be_visible()
            expect(page.locator("#exposures tr.exposure.rejected")).to_have_count(len(rejected))
            expect(page.locator("#n-rejected")).to_have_text(str(len(rejected)))
            page.wait_for_function(
                f"document.getElementById('plot-resolution').data[1].x.length === {len(rejected)}", timeout=15_000
            )
            _shot(page, artifacts, "04_curated")

            with page.expect_download() as info:
                page.click("a[data-export='micrographs_ctf.star']")
            download = artifacts / "micrographs_ctf.star"
            info.value.save_as(download)
            print(f"export: {download}")
            mics = starfile.read(download, always_dict=True)["micrographs"]
            kept = sorted(Path(p).stem for p in mics["rlnMicrographNameNoDW"])
            assert kept == [f"movie_{i:03d}" for i in range(FIRST + LATER) if i not in rejected]
            assert (mics["rlnCtfMaxResolution"] <= RESOLUTION_LIMIT_A).all()

            # A rejected exposure's own page, reached by clicking its point in a plot (the
            # handler Plotly calls): verdict, drift plot, pictures.
            rejected_id = page.evaluate("document.getElementById('plot-resolution').data[1].customdata[0]")
            page.evaluate(f"document.getElementById('plot-resolution').emit('plotly_click', {{points: [{{customdata: {rejected_id}}}]}})")
            expect(page).to_have_url(f"{server}/dashboard/exposures/{rejected_id}/")
            expect(page.locator("h1")).to_have_text(f"movie_{rejected[0]:03d}.tif")
            expect(page.locator("#verdict")).to_have_text("rejected")
            expect(page.locator("#plot-drift .main-svg").first).to_be_visible()
            # the picks the pick step drew on the micrograph, and its row among the steps
            picks = page.locator("img.step-picture")
            expect(picks).to_have_count(1)
            expect(picks).to_have_attribute("src", f"/dashboard/exposures/{rejected_id}/step/pick/picks_png_path.png")
            expect(page.locator("#steps tr[data-step='pick'] [data-metric='pick.n_particles'] dd")).to_have_text(
                str(n_particles(rejected[0]))
            )
            page.wait_for_function("Array.from(document.querySelectorAll('img.big')).every(i => i.complete)")
            assert page.evaluate("Array.from(document.querySelectorAll('img.big')).every(i => i.complete && i.naturalWidth > 0)")
            assert page.evaluate("document.querySelectorAll('img.big').length") == 3  # thumbnail, CTF fit, picks
            _shot(page, artifacts, "05_exposure")
            assert errors == [], f"JavaScript errors: {errors}"
        finally:
            browser.close()
    assert time.monotonic() - started < 60
