"""Reads for the CLI, the API and the exports."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emlive.curation import Curation, accepts


@pytest.fixture
def session(db, tmp_path, acquisition):
    return db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition)


def test_counts_and_filters_by_state(db, session, store_processed):
    ids = [db.store.record_exposure(session, f"m{i}.mrc", 10, 20)[0].pk for i in range(5)]
    db.store.mark_submitted(ids[1])
    store_processed(ids[2], "m2")
    store_processed(ids[3], "m3")
    db.store.mark_failed(ids[4], "truncated")

    assert db.queries.counts_by_state(session) == {"found": 1, "submitted": 1, "processed": 2, "failed": 1}
    assert [e.path for e in db.queries.exposures(session)] == [f"m{i}.mrc" for i in range(5)]
    assert [e.path for e in db.queries.exposures(session, "processed")] == ["m2.mrc", "m3.mrc"]
    with pytest.raises(ValueError, match="not one of: found, submitted, processed, failed"):
        db.queries.exposures(session, "done")


def test_counts_of_an_empty_session_are_zero(db, session):
    assert db.queries.counts_by_state(session.pk) == {"found": 0, "submitted": 0, "processed": 0, "failed": 0}


def test_session_by_raw_dir_accepts_any_spelling(db, session, tmp_path, monkeypatch):
    (tmp_path / "raw").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    assert db.queries.session_by_raw_dir("raw").pk == session.pk
    assert db.queries.session_by_raw_dir(tmp_path / "link").pk == session.pk
    assert db.queries.session_by_raw_dir(tmp_path / "elsewhere") is None
    assert [s.pk for s in db.queries.sessions("default")] == [session.pk]
    assert list(db.queries.sessions("another project")) == []


def test_processed_rows_carry_results_in_one_query(db, session, store_processed, assert_num_queries):
    for i, defocus in enumerate([12000.0, 18000.0]):
        exposure, _ = db.store.record_exposure(session, f"m{i}.mrc", 10, 20)
        store_processed(exposure.pk, f"m{i}", defocus_u_a=defocus, defocus_v_a=defocus - 500)
    db.store.record_exposure(session, "unprocessed.mrc", 10, 20)

    with assert_num_queries(1):
        rows = db.queries.processed_rows(session)
    assert [(r.path, r.defocus_u_a, r.astigmatism_a) for r in rows] == [("m0.mrc", 12000.0, 500.0), ("m1.mrc", 18000.0, 500.0)]
    assert rows[0].total_drift_a == 12.5 and rows[0].fit_resolution_a == 4.2


# --- Curation: the database's verdict is emlive.curation.accepts's --------------------------

RESULTS = [  # (fit resolution Å, total drift Å, defocus U, V Å, fit ok, ice-ring ratio)
    (3.1, 4.0, 15000.0, 14000.0, True, 1.0),
    (4.9, 12.0, 9000.0, 8000.0, True, None),
    (5.0, 30.0, 25000.0, 24000.0, True, 1.3),
    (7.5, 2.0, 15000.0, 15000.0, False, 1.05),
    (12.0, 8.0, 30000.0, 28000.0, True, 2.2),
    (4.0, 20.0, 5000.0, 5000.0, True, 0.95),
]


def _store(db, session, make_results, engines, index, result):
    res, drift, u, v, fit_ok, ice = result
    exposure, _ = db.store.record_exposure(session, f"m{index}.mrc", 10, 20)
    motion, ctf = make_results(f"m{index}", total_drift_a=drift, defocus_u_a=u, defocus_v_a=v, fit_ok=fit_ok, ice_ring_ratio=ice)
    ctf = ctf.model_copy(update={"fit_resolution_a": res})
    return db.store.store_result(exposure.pk, motion, ctf, **engines)


@pytest.fixture
def curated(db, session, make_results, engines):
    """The six RESULTS stored as m0…m5, plus one exposure still waiting and one failed."""
    for i, result in enumerate(RESULTS):
        _store(db, session, make_results, engines, i, result)
    db.store.record_exposure(session, "waiting.mrc", 10, 20)
    failed, _ = db.store.record_exposure(session, "broken.mrc", 10, 20)
    db.store.mark_failed(failed.pk, "truncated")
    return session


def _reference(curation):
    return {
        f"m{i}.mrc"
        for i, (res, drift, u, v, fit_ok, ice) in enumerate(RESULTS)
        if accepts(curation, fit_resolution_a=res, total_drift_a=drift, defocus_u_a=u, defocus_v_a=v, fit_ok=fit_ok, ice_ring_ratio=ice)
    }


def test_default_thresholds_reject_nothing(db, curated):
    assert {e.path for e in db.queries.accepted_exposures(curated)} == {f"m{i}.mrc" for i in range(6)}
    assert list(db.queries.rejected_exposures(curated)) == []
    assert db.queries.curation_counts(curated) == {"processed": 6, "accepted": 6, "rejected": 0}


def test_fit_resolution_worse_than_5_a_is_rejected(db, curated):
    curated.curation_json = Curation(max_fit_resolution_a=5.0).model_dump()
    curated.save()
    assert sorted(e.path for e in db.queries.rejected_exposures(curated)) == ["m3.mrc", "m4.mrc"]
    assert sorted(e.path for e in db.queries.accepted_exposures(curated.pk)) == ["m0.mrc", "m1.mrc", "m2.mrc", "m5.mrc"]
    assert db.queries.curation_counts(curated) == {"processed": 6, "accepted": 4, "rejected": 2}


def test_thresholds_are_read_from_the_database_not_a_stale_object(db, curated):
    stale = db.models.Session.objects.get(pk=curated.pk)
    db.models.Session.objects.filter(pk=curated.pk).update(curation_json={"max_total_drift_a": 10.0})
    assert stale.curation_json == {}
    assert sorted(e.path for e in db.queries.rejected_exposures(stale)) == ["m1.mrc", "m2.mrc", "m5.mrc"]


def test_the_verdict_of_each_exposure_and_none_before_results(db, curated):
    curation = Curation(reject_no_fit=True, max_ice_ring_ratio=1.2)
    rows = dict(db.queries.with_verdict(db.queries.exposures(curated), curation).values_list("path", "accepted"))
    assert rows == {
        "m0.mrc": True, "m1.mrc": True, "m2.mrc": False, "m3.mrc": False, "m4.mrc": False, "m5.mrc": True,
        "waiting.mrc": None, "broken.mrc": None,
    }
    defaults = dict(db.queries.with_verdict(db.queries.exposures(curated), Curation()).values_list("path", "accepted"))
    assert [defaults[f"m{i}.mrc"] for i in range(6)] == [True] * 6 and defaults["waiting.mrc"] is None


def test_curation_splits_a_session_in_one_query(db, curated, assert_num_queries):
    curation = Curation(max_fit_resolution_a=5.0, max_defocus_a=20000.0, max_astigmatism_a=1500.0)
    with assert_num_queries(1):
        rejected = {e.path for e in db.queries.rejected_exposures(curated, curation)}
    assert rejected == {f"m{i}.mrc" for i in range(6)} - _reference(curation)


def _maybe(strategy):
    return st.one_of(st.none(), strategy)


curations = st.builds(
    Curation,
    max_fit_resolution_a=_maybe(st.sampled_from([3.1, 4.0, 4.9, 5.0, 6.0, 12.0, 20.0])),
    max_total_drift_a=_maybe(st.floats(0.5, 40.0)),
    min_defocus_a=_maybe(st.sampled_from([0.0, 5000.0, 8500.0, 14500.0, 15000.0, 24500.0])),
    max_defocus_a=_maybe(st.sampled_from([5000.0, 8500.0, 14500.0, 15000.0, 24500.0, 40000.0])),
    max_astigmatism_a=_maybe(st.sampled_from([0.0, 999.9, 1000.0, 2000.0])),
    max_ice_ring_ratio=_maybe(st.sampled_from([0.9, 1.0, 1.05, 1.3, 3.0])),
    reject_no_fit=st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(curation=curations)
def test_the_database_agrees_with_the_reference_on_any_thresholds(db, curated, curation):
    """Thresholds on the boundaries of the stored values (5.0 Å, 1000 Å astigmatism …) included."""
    expected = _reference(curation)
    assert {e.path for e in db.queries.accepted_exposures(curated, curation)} == expected
    assert {e.path for e in db.queries.rejected_exposures(curated, curation)} == {f"m{i}.mrc" for i in range(6)} - expected
    verdicts = dict(db.queries.with_verdict(db.queries.processed_exposures(curated), curation).values_list("path", "accepted"))
    assert {path for path, ok in verdicts.items() if ok} == expected


results = st.tuples(
    st.floats(2.0, 30.0),
    st.floats(0.0, 100.0),
    st.floats(0.0, 60000.0),
    st.floats(0.0, 60000.0),
    st.booleans(),
    _maybe(st.floats(0.5, 5.0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(result=results, curation=curations)
def test_any_result_gets_the_reference_verdict(db, session, make_results, engines, result, curation):
    db.models.Exposure.objects.filter(session=session).delete()
    exposure = _store(db, session, make_results, engines, 0, result)
    res, drift, u, v, fit_ok, ice = result
    expected = accepts(curation, fit_resolution_a=res, total_drift_a=drift, defocus_u_a=u, defocus_v_a=v, fit_ok=fit_ok, ice_ring_ratio=ice)
    assert db.queries.accepted_exposures(session, curation).filter(pk=exposure.pk).exists() is expected


def test_result_series_are_in_acquisition_order_with_verdicts(db, session, make_results, engines):
    for i, mtime_ns in enumerate([3_000_000_000, 1_000_000_000]):
        exposure, _ = db.store.record_exposure(session, f"m{i}.mrc", 10, mtime_ns)
        motion, ctf = make_results(f"m{i}", defocus_u_a=15000.0 + 1000 * i, defocus_v_a=14000.0)
        db.store.store_result(exposure.pk, motion, ctf.model_copy(update={"fit_resolution_a": 4.0 + 2 * i}), **engines)
    db.store.record_exposure(session, "waiting.mrc", 10, 2_000_000_000)
    series = db.queries.result_series(session, Curation(max_fit_resolution_a=5.0))
    assert series.path == ["m1.mrc", "m0.mrc"]
    assert series.acquired_s == [1.0, 3.0]
    assert series.defocus_a == [15000.0, 14500.0] and series.astigmatism_a == [2000.0, 1000.0]
    assert series.fit_resolution_a == [6.0, 4.0] and series.accepted == [False, True]


def test_the_change_marker_moves_with_exposures_and_thresholds(db, session, store_processed):
    exposure, _ = db.store.record_exposure(session, "m0.mrc", 10, 20)
    first = db.queries.change_marker(session)
    assert db.queries.change_marker(session) == first
    store_processed(exposure.pk, "m0")
    second = db.queries.change_marker(session)
    db.models.Session.objects.filter(pk=session.pk).update(curation_json={"max_total_drift_a": 3.0})
    third = db.queries.change_marker(session)
    assert len({first, second, third}) == 3


def test_sessions_carry_their_progress(db, session, store_processed):
    ids = [db.store.record_exposure(session, f"m{i}.mrc", 10, 20)[0].pk for i in range(3)]
    store_processed(ids[0], "m0")
    db.store.mark_failed(ids[1], "truncated")
    row = db.queries.with_progress(db.queries.sessions()).get(pk=session.pk)
    assert (row.n_exposures, row.n_processed, row.n_failed) == (3, 1, 1)


_PICKED = {"m0.mrc": 5, "m1.mrc": 50, "m2.mrc": 50.5, "m3.mrc": None, "m4.mrc": "missing", "m5.mrc": "no row"}
"""The pick step's n_particles per exposure: numbers (int and float), a JSON null, a result
without the metric, and no pick result at all."""


@pytest.mark.parametrize(
    "bounds",
    [{}, {"min": 10}, {"max": 50}, {"min": 50, "max": 50}, {"min": 50.5}, {"max": 4.5}, {"min": -1e9, "max": 1e9}],
)
def test_limits_on_a_declared_metric_agree_with_the_reference(db, curated, bounds):
    """``metrics__<name>__gte/lte`` on the JSON column compare numbers on every database
    (MariaDB's JSON is text), and an exposure whose metric is null or missing is rejected."""
    by_path = {e.path: e for e in db.queries.processed_exposures(curated)}
    for path, value in _PICKED.items():
        if value == "no row":
            continue
        metrics = {} if value == "missing" else {"n_particles": value}
        db.models.StepResult.objects.create(exposure=by_path[path], step="pick", metrics=metrics)
    curation = Curation(metrics={"pick.n_particles": bounds})
    expected = {
        path
        for i, (path, value) in enumerate(_PICKED.items())
        if accepts(
            curation, fit_resolution_a=RESULTS[i][0], total_drift_a=RESULTS[i][1], defocus_u_a=RESULTS[i][2],
            defocus_v_a=RESULTS[i][3], fit_ok=RESULTS[i][4], ice_ring_ratio=RESULTS[i][5],
            metrics={"pick.n_particles": value if isinstance(value, (int, float)) else None},
        )
    }
    assert {e.path for e in db.queries.accepted_exposures(curated, curation)} == expected
    assert {e.path for e in db.queries.rejected_exposures(curated, curation)} == set(_PICKED) - expected
    assert db.queries.curation_counts(curated, curation)["accepted"] == len(expected)
