"""Every step on the dashboard, from its declaration alone: an exposure's step results and
pictures, metric columns, plots and thresholds — for an installed step (``pick``) and for a
step whose plugin is not installed here (``blob``), with StepResult rows as the store writes."""

from __future__ import annotations

import re
from pathlib import Path

from tests.web.dashboard.conftest import PARTICLES, client_for
from tests.web.dashboard.test_views import PNG_MAGIC, figures_of


def exposure_of(session, name: str):
    return session.exposures.get(path=f"{name}.tif")


def test_the_exposure_page_lists_every_step_with_its_metrics_and_error(web, alice, steps_session):
    html = alice.get(f"/dashboard/exposures/{exposure_of(steps_session, 'm1').pk}/").content.decode()
    steps = re.findall(r'<tr class="step step-(\w+)" data-step="(\w+)">', html)
    assert sorted(steps) == [("done", "blob"), ("done", "ctf"), ("done", "motion"), ("done", "pick")]
    assert "native 2026.12.01" in html and "blobfinder 0.3" in html
    # declared metrics with their labels; a step not installed here by its stored names
    assert re.search(r'data-metric="pick.n_particles"><dt title="pick.n_particles">particles</dt><dd>80</dd>', html)
    assert re.search(r'data-metric="pick.masked_fraction"><dt[^>]*>masked fraction</dt><dd>0.125</dd>', html)
    assert re.search(r'data-metric="ctf.fit_resolution_a"><dt[^>]*>fit resolution</dt><dd>4.00 Å</dd>', html)
    assert re.search(r'data-metric="blob.score"><dt[^>]*>score</dt><dd>1.50</dd>', html)
    assert "(not installed)" in html

    failed = alice.get(f"/dashboard/exposures/{exposure_of(steps_session, 'm2').pk}/").content.decode()
    assert '<tr class="step step-failed" data-step="blob">' in failed
    assert '<pre class="error step-error">no blobs: the micrograph is all carbon</pre>' in failed


def test_the_picks_drawn_on_the_micrograph_are_on_the_exposure_page(web, alice, steps_session):
    exposure = exposure_of(steps_session, "m0")
    html = alice.get(f"/dashboard/exposures/{exposure.pk}/").content.decode()
    url = f"/dashboard/exposures/{exposure.pk}/step/pick/picks_png_path.png"
    assert f'<img class="big step-picture" src="{url}"' in html
    assert "The low-passed micrograph with the picks circled" in html  # the field's description
    picture = alice.get(url)
    assert picture.status_code == 200 and picture.headers["Content-Type"] == "image/png"
    assert picture.content == (Path(steps_session.out_dir) / "pick" / "m0_picks.png").read_bytes()
    # the CTF diagnostic (a Path field of the CTF result too) is shown once, above, not again
    assert html.count(f"/dashboard/exposures/{exposure.pk}/spectrum.png") == 1
    assert f'src="/dashboard/exposures/{exposure.pk}/step/ctf/' not in html
    assert f'href="/dashboard/exposures/{exposure.pk}/step/ctf/diagnostic_png_path.png"' in html  # among its outputs


def test_a_step_picture_is_only_a_png_path_field_of_the_declared_result(web, users, alice, steps_session, other_session, tmp_path):
    exposure = exposure_of(steps_session, "m0")
    base = f"/dashboard/exposures/{exposure.pk}/step"
    assert alice.get(f"{base}/pick/picks_png_path.png").status_code == 200
    assert alice.get(f"{base}/ctf/diagnostic_png_path.png").content.startswith(PNG_MAGIC)
    for url in [
        f"{base}/pick/n_particles.png",  # a metric, not a Path field
        f"{base}/pick/coordinates_path.png",  # a Path field, but a STAR file
        f"{base}/pick/nothing.png",
        f"{base}/blob/score.png",  # a step not installed here declares nothing
        f"{base}/unknown/picks_png_path.png",
        f"/dashboard/exposures/{exposure_of(steps_session, 'waiting').pk}/step/pick/picks_png_path.png",
    ]:
        assert alice.get(url).status_code == 404, url
    assert alice.get(f"{base}/pick/..%2f..%2fsecret.png").status_code in (400, 404)
    assert client_for(users["bob"]).get(f"{base}/pick/picks_png_path.png").status_code == 404

    # the path is the database's: relative, not a PNG, or missing is not served
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    row = web.models.StepResult.objects.get(exposure=exposure, step="pick")
    for stored in ("pick/m0_picks.png", str(secret), str(tmp_path / "gone.png")):
        row.result = {**row.result, "picks_png_path": stored}
        row.save()
        assert alice.get(f"{base}/pick/picks_png_path.png").status_code == 404, stored
    assert "step-picture" not in alice.get(f"/dashboard/exposures/{exposure.pk}/").content.decode()


def test_the_thumbnail_is_the_one_the_thumbnail_step_stored(web, alice, session, tmp_path):
    from django.utils import timezone

    from emlive.io.png import write_png_atomic

    exposure = exposure_of(session, "m1")
    stored = Path(session.out_dir) / "thumbnail" / "2026" / "m1.png"
    stored.parent.mkdir(parents=True)
    write_png_atomic(stored, [[0.0, 1.0], [1.0, 0.0]])
    row = web.models.StepResult.objects.create(
        exposure=exposure, step="thumbnail", engine="native", engine_version="1", result={"png_path": str(stored)},
        finished_at=timezone.now(),
    )
    url = f"/dashboard/exposures/{exposure.pk}/thumbnail.png"
    assert alice.get(url).content == stored.read_bytes()
    assert 'class="big" src="' + url in alice.get(f"/dashboard/exposures/{exposure.pk}/").content.decode()
    # a stored path outside the session's thumbnail folder is refused
    outside = tmp_path / "elsewhere.png"
    write_png_atomic(outside, [[0.0, 1.0], [1.0, 0.0]])
    for path in (str(outside), str(Path(session.out_dir) / "thumbnail" / ".." / "pick" / "m1.png"), "thumbnail/m1.png"):
        row.result = {"png_path": path}
        row.save()
        assert alice.get(url).status_code == 404, path


def test_the_exposure_table_has_a_column_per_declared_metric_of_the_other_steps(web, alice, steps_session):
    html = alice.get(f"/dashboard/sessions/{steps_session.pk}/").content.decode()
    headings = re.findall(r'<th title="([\w.]+)" data-metric="[\w.]+">([^<]+)</th>', html)
    assert headings == [("blob.score", "blob.score"), ("pick.n_particles", "Particles"), ("pick.masked_fraction", "Masked fraction")]
    rows = {
        path: re.findall(r'<td class="num metric">([^<]*)</td>', row)
        for path, row in re.findall(r'<tr class="exposure[^"]*" data-exposure="\d+">.*?>(m\d|waiting|broken)\.tif<(.*?)</tr>', html, re.S)
    }
    assert rows["m0"] == ["0.5", "120", "0"] and rows["m2"] == ["", "40", "0.25"] and rows["m3"] == ["3.50", "10", "0.375"]
    assert rows["waiting"] == ["", "", ""]
    fragment = alice.get(f"/dashboard/sessions/{steps_session.pk}/exposures/?show=accepted").content.decode()
    assert 'data-metric="pick.n_particles">Particles</th>' in fragment


def test_a_session_without_other_steps_has_only_the_fixed_columns(web, alice, session):
    html = alice.get(f"/dashboard/sessions/{session.pk}/").content.decode()
    assert "data-metric=" not in html and 'class="num metric"' not in html


def test_every_declared_metric_of_the_other_steps_is_plotted(web, alice, steps_session):
    html = alice.get(f"/dashboard/sessions/{steps_session.pk}/").content.decode()
    figures = figures_of(html)
    extra = {"pick-n_particles", "pick-n_particles-hist", "pick-masked_fraction", "pick-masked_fraction-hist",
             "blob-score", "blob-score-hist"}
    assert set(figures) == {"rates", "defocus", "resolution", "drift", "ice", "defocus_hist", "resolution_hist",
                            "drift_hist", *extra}
    for key in figures:  # one plot per figure built
        assert f'id="plot-{key}" data-plot="{key}"' in html
    accepted, rejected = figures["pick-n_particles"]["data"]
    assert accepted["y"] == PARTICLES and accepted["x"] == [0.0, 1.0, 2.0, 3.0] and rejected["y"] == []
    assert figures["pick-n_particles"]["layout"]["title"]["text"] == "Particles (pick)"
    assert figures["blob-score"]["data"][0]["x"] == [0.0, 1.0, 3.0]  # m2's blob step failed: no point
    assert figures["blob-score"]["layout"]["yaxis"]["title"]["text"] == "blob.score"
    assert sum(figures["pick-n_particles-hist"]["data"][0]["y"]) == 4


def test_plots_and_table_are_resent_when_a_step_result_changes(web, alice, steps_session, make_results, tmp_path):
    """A result stored again with the same motion and CTF times (a run that reused their
    checkpoints and added a step) changes no exposure column, only its step results."""
    from types import SimpleNamespace

    from django.utils import timezone

    from emlive.pick.types import PickResult

    exposure, _ = web.store.record_exposure(steps_session, "m9.tif", 10, 1_700_000_600 * 10**9)
    motion, ctf = make_results("m9")
    at = timezone.now()
    records = [SimpleNamespace(step=s, engine="native", engine_version="1", finished_at=at) for s in ("motion", "ctf", "pick")]
    web.store.store_exposure_result(exposure.pk, SimpleNamespace(results={"motion": motion, "ctf": ctf}, steps=records[:2], failures={}))

    page = alice.get(f"/dashboard/sessions/{steps_session.pk}/").content.decode()
    marker = re.search(r'data-marker="([0-9a-f]+)"', page).group(1)
    plots_url = f"/dashboard/sessions/{steps_session.pk}/plots/?since={marker}"
    table_url = f"/dashboard/sessions/{steps_session.pk}/exposures/?page=1&show=all&since={marker}"
    assert alice.get(plots_url).status_code == 204 and alice.get(table_url).status_code == 204

    pick = PickResult(coordinates_path=tmp_path / "m9.star", picks_png_path=tmp_path / "m9.png", n_particles=999)
    web.store.store_exposure_result(
        exposure.pk, SimpleNamespace(results={"motion": motion, "ctf": ctf, "pick": pick}, steps=records, failures={})
    )
    fresh = alice.get(plots_url)
    assert fresh.status_code == 200
    assert figures_of(fresh.content.decode())["pick-n_particles"]["data"][0]["y"] == [*PARTICLES, 999]
    table = alice.get(table_url)
    assert table.status_code == 200 and '<td class="num metric">999</td>' in table.content.decode()


def test_a_threshold_on_a_step_metric_rejects_and_is_explained(web, alice, steps_session):
    page = alice.get(f"/dashboard/sessions/{steps_session.pk}/").content.decode()
    assert re.search(r'<label for="id_pick-n_particles-min">Particles \(pick\) smaller than</label>', page)
    assert 'name="blob-score-max"' in page and 'name="pick-masked_fraction-max"' in page
    response = alice.post(f"/dashboard/sessions/{steps_session.pk}/curation/", {"pick-n_particles-min": "50"})
    assert response.status_code == 302
    steps_session.refresh_from_db()
    assert steps_session.curation_json["metrics"] == {"pick.n_particles": {"min": 50.0, "max": None}}
    html = alice.get(response.headers["Location"]).content.decode()
    assert 'id="n-rejected">2<' in html and 'name="pick-n_particles-min" value="50.0"' in html
    accepted, rejected = figures_of(html)["pick-n_particles"]["data"]
    assert accepted["y"] == [120, 80] and rejected["y"] == [40, 10]
    m3 = alice.get(f"/dashboard/exposures/{exposure_of(steps_session, 'm3').pk}/").content.decode()
    assert 'id="verdict">rejected<' in m3 and "pick.n_particles 10 is less than 50" in m3

    # a step that failed has no value: rejected when its metric is limited
    alice.post(f"/dashboard/sessions/{steps_session.pk}/curation/", {"blob-score-max": "10"})
    m2 = alice.get(f"/dashboard/exposures/{exposure_of(steps_session, 'm2').pk}/").content.decode()
    assert "blob.score has no value" in m2 and 'id="verdict">rejected<' in m2
    assert 'id="verdict">accepted<' in alice.get(f"/dashboard/exposures/{exposure_of(steps_session, 'm3').pk}/").content.decode()


def test_step_metric_thresholds_are_validated_and_kept(web, alice, steps_session):
    url = f"/dashboard/sessions/{steps_session.pk}/curation/"
    refused = alice.post(url, {"pick-n_particles-min": "50", "pick-n_particles-max": "20"})
    assert refused.status_code == 400 and "the largest value (20) is below the smallest (50)" in refused.content.decode()
    assert alice.post(url, {"pick-n_particles-min": "many"}).status_code == 400
    steps_session.refresh_from_db()
    assert steps_session.curation_json == {}

    # a limit set through the API on a metric the form does not offer by itself stays
    web.models.Session.objects.filter(pk=steps_session.pk).update(
        curation_json={"metrics": {"ctf.cross_correlation": {"min": 0.1, "max": None}}}
    )
    page = alice.get(f"/dashboard/sessions/{steps_session.pk}/").content.decode()
    assert 'name="ctf-cross_correlation-min" value="0.1"' in page and "CTF fit score (ctf) smaller than" in page
    alice.post(url, {"ctf-cross_correlation-min": "0.1", "max_fit_resolution_a": "7"})
    steps_session.refresh_from_db()
    assert steps_session.curation_json["metrics"] == {"ctf.cross_correlation": {"min": 0.1, "max": None}}
    alice.post(url, {})
    steps_session.refresh_from_db()
    assert steps_session.curation_json["metrics"] == {}


def test_the_session_page_with_steps_reads_a_bounded_number_of_times(web, alice, steps_session, add_processed):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice.get(f"/dashboard/sessions/{steps_session.pk}/").status_code == 200
        return len(captured.captured_queries)

    before = count()
    for i in range(10, 16):
        exposure = add_processed(steps_session, i)
        for step, metrics in (("pick", {"n_particles": i, "masked_fraction": 0.0}), ("blob", {"score": 1.0})):
            web.models.StepResult.objects.create(exposure=exposure, step=step, metrics=metrics, finished_at=timezone.now())
    assert count() == before
