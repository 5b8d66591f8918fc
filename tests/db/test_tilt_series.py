"""Tilt series in the data plane: recorded from a growing mdoc without duplicates, tilts linked to
their exposures, results and exclusions stored (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


@pytest.fixture
def session(db, tmp_path, acquisition):
    return db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition)


def _tilts(db, angles, *, dose=3.0):
    """Tilts named in acquisition order (z = order), pre-exposure accumulated."""
    start = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    return [
        db.store.TiltRow(z_value=z, movie_name=f"TS_01_{z:03d}_{angle:.1f}.tif", tilt_angle_deg=angle,
                         acquisition_index=z, acquired_at=start + timedelta(seconds=8 * z), dose_e_a2=dose,
                         pre_exposure_e_a2=z * dose)
        for z, angle in enumerate(angles)
    ]


def test_a_growing_mdoc_records_one_series_and_each_tilt_once(db, session, tmp_path):
    mdoc = tmp_path / "raw" / "TS_01.mrc.mdoc"
    first, new = db.store.record_tilt_series(session, name="TS_01", mdoc_path=mdoc, tilts=_tilts(db, [0, 3, -3]),
                                             tilt_axis_nominal_deg=85.3)
    assert new == [0, 1, 2]
    again, new_again = db.store.record_tilt_series(session, name="TS_01", mdoc_path=mdoc, tilts=_tilts(db, [0, 3, -3]),
                                                   tilt_axis_nominal_deg=85.3)
    assert (again.pk, new_again) == (first.pk, [])
    grown, added = db.store.record_tilt_series(
        session, name="TS_01", mdoc_path=mdoc, tilts=_tilts(db, [0, 3, -3, -6, 6]), tilt_axis_nominal_deg=85.3,
        problems=["line 40: 'TiltAngle = abc' is not a number"],
    )
    assert (grown.pk, added) == (first.pk, [3, 4])
    assert db.models.TiltSeries.objects.count() == 1 and db.models.Tilt.objects.count() == 5
    assert (grown.tilt_min_deg, grown.tilt_max_deg, grown.tilt_axis_nominal_deg) == (-6, 6, 85.3)
    assert grown.problems_json == ["line 40: 'TiltAngle = abc' is not a number"]
    assert grown.state == "collecting" and grown.mdoc_path == str(mdoc.absolute())
    by_angle = [(t.tilt_angle_deg, t.z_value, t.pre_exposure_e_a2) for t in db.queries.series_tilts(grown)]
    assert by_angle == [(-6, 3, 9.0), (-3, 2, 6.0), (0, 0, 0.0), (3, 1, 3.0), (6, 4, 12.0)]
    assert db.queries.tilt_series_by_name(session, "TS_01").pk == first.pk


def test_tilts_link_to_exposures_and_counts_follow(db, session, tmp_path, store_processed):
    series, _ = db.store.record_tilt_series(session, name="TS_02", mdoc_path=tmp_path / "TS_02.mdoc",
                                            tilts=_tilts(db, [0, 3, -3]))
    recorded = db.store.record_exposures(session, [(f"frames/{t.movie_name}", 10, 1) for t in _tilts(db, [0, 3])])
    ids = [e.pk for e, _ in recorded]
    assert db.store.link_tilts(series, {0: ids[0], 1: ids[1]}) == 2
    assert db.store.link_tilts(series, {0: ids[0]}) == 0  # linking again is a no-op
    store_processed(ids[0], "TS_02_000")
    series = db.store.update_tilt_series_counts(series)
    assert (series.n_tilts_received, series.n_tilts_processed) == (2, 1)
    assert db.queries.tilt_exposure_ids(session) == set(ids)
    tilt = db.models.Exposure.objects.get(pk=ids[0]).tilt
    assert (tilt.series_id, tilt.z_value) == (series.pk, 0)
    with pytest.raises(db.models.Tilt.DoesNotExist, match="no tilt with z value 7"):
        db.store.link_tilts(series, {7: ids[0]})


def test_a_processed_series_that_grows_is_collected_again(db, session, tmp_path):
    mdoc = tmp_path / "TS_03.mdoc"
    series, _ = db.store.record_tilt_series(session, name="TS_03", mdoc_path=mdoc, tilts=_tilts(db, [0, 3]))
    assert db.store.set_tilt_series_state(series, "complete").completed_at is not None
    db.store.set_tilt_series_state(series, "processing")
    stored = db.store.store_tilt_series_result(
        series, state="partial", result={"tomogram_path": "/o/TS_03.mrc", "timings_s": {"align": 1.5}},
        input_hash="ab" * 32, exclusions={1: "dark: mean 12 counts, 8% of the series median"},
        tilt_axis_refined_deg=84.9, alignment_residual_px=0.7, pixel_size_a=10.0, tomogram_path=tmp_path / "t.mrc",
        central_slice_png_path=tmp_path / "c.png", montage_png_path=tmp_path / "m.png",
        error="tilt 2 (TS_03_002.tif): its movie never came",
    )
    assert stored.state == "partial" and stored.processed_at is not None
    assert stored.excluded_json == [{"z_value": 1, "tilt_angle_deg": 3.0, "movie_name": "TS_01_001_3.0.tif",
                                     "reason": "dark: mean 12 counts, 8% of the series median"}]
    assert (stored.tilt_axis_refined_deg, stored.alignment_residual_px, stored.tomogram_path) == (
        84.9, 0.7, str(tmp_path / "t.mrc"))
    assert db.queries.tilt_series_counts(session) == {
        "collecting": 0, "complete": 0, "processing": 0, "done": 0, "partial": 1, "failed": 0}
    grown, added = db.store.record_tilt_series(session, name="TS_03", mdoc_path=mdoc, tilts=_tilts(db, [0, 3, -3]))
    assert added == [2] and grown.state == "collecting" and grown.completed_at is None
    assert grown.tomogram_path  # the last result stays until replaced
    cleared = db.store.exclude_tilts(grown, {1: None})
    assert cleared.excluded_json == [] and not db.models.Tilt.objects.filter(series=grown).exclude(excluded_reason="")


def test_bad_values_are_refused_before_anything_is_written(db, session, tmp_path):
    series, _ = db.store.record_tilt_series(session, name="TS_04", mdoc_path=tmp_path / "TS_04.mdoc",
                                            tilts=_tilts(db, [0]))
    with pytest.raises(ValueError, match="not one of"):
        db.store.set_tilt_series_state(series, "aligned")
    with pytest.raises(ValueError, match="alignment_residual_px is nan"):
        db.store.store_tilt_series_result(
            series, state="done", result={}, input_hash="", exclusions={}, tilt_axis_refined_deg=85.0,
            alignment_residual_px=float("nan"), pixel_size_a=10.0, tomogram_path=None, central_slice_png_path=None,
            montage_png_path=None,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        naive = db.store.TiltRow(z_value=1, movie_name="a.tif", tilt_angle_deg=3.0, acquired_at=datetime(2026, 1, 1))
        db.store.record_tilt_series(session, name="TS_04", mdoc_path=tmp_path / "TS_04.mdoc", tilts=[naive])
    assert db.models.TiltSeries.objects.get(pk=series.pk).state == "collecting"
    assert db.models.Tilt.objects.filter(series=series).count() == 1


def test_series_names_and_mdocs_are_unique_in_a_session(db, session, tmp_path):
    from django.db import IntegrityError, transaction

    db.store.record_tilt_series(session, name="TS_05", mdoc_path=tmp_path / "a" / "TS_05.mdoc", tilts=_tilts(db, [0]))
    with pytest.raises(IntegrityError), transaction.atomic():
        db.store.record_tilt_series(session, name="TS_05", mdoc_path=tmp_path / "b" / "TS_05.mdoc", tilts=[])
    assert db.models.TiltSeries.objects.count() == 1
