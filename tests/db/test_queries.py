"""Reads for the CLI, the API and the exports."""

from __future__ import annotations

import pytest


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
