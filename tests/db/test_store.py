"""The controller's writes: idempotent, one transaction each, states that only move forward."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from emlive.acquisition import Acquisition


@pytest.fixture
def session(db, tmp_path, acquisition):
    return db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition)


def test_session_is_created_once_and_keeps_its_acquisition(db, tmp_path, acquisition):
    first = db.store.get_or_create_session(tmp_path / "s1" / "raw", tmp_path / "out", acquisition, project="facility")
    again = db.store.get_or_create_session(tmp_path / "s1" / "raw", tmp_path / "out", acquisition, project="facility")
    assert again.pk == first.pk
    assert db.models.Session.objects.count() == 1
    assert first.name == "s1"  # facility layout <session_id>/raw
    assert first.raw_dir == str((tmp_path / "s1" / "raw").resolve())
    assert first.project.name == "facility"
    assert first.state == "idle"
    stored = db.models.Session.objects.get(pk=first.pk)
    assert stored.acquisition == acquisition


def test_session_given_other_acquisition_values_keeps_its_folder_and_redoes_what_was_done(
    db, tmp_path, acquisition, make_results, engines, caplog
):
    session = db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition)
    done, _ = db.store.record_exposure(session, "a.mrc", 10, 1)
    failed, _ = db.store.record_exposure(session, "b.mrc", 10, 1)
    waiting, _ = db.store.record_exposure(session, "c.mrc", 10, 1)
    db.store.mark_submitted(done.pk)
    db.store.store_result(done.pk, *make_results("a"), **engines)
    db.store.mark_failed(failed.pk, "no Thon rings")
    other = Acquisition(**{**acquisition.model_dump(), "pixel_size_a": 1.1, "voltage_kv": 200.0})
    caplog.set_level("INFO", logger="emlive.db.store")
    again = db.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", other)
    assert again.pk == session.pk and again.out_dir == session.out_dir and again.acquisition == other
    assert db.models.Session.objects.count() == 1
    states = dict(db.models.Exposure.objects.values_list("path", "state"))
    assert states == {"a.mrc": "found", "b.mrc": "found", "c.mrc": "found"}
    assert db.models.Exposure.objects.get(pk=failed.pk).fail_reason == ""
    said = [r.getMessage() for r in caplog.records if "acquisition values changed" in r.getMessage()]
    assert said == [
        f"{session.name}: acquisition values changed: pixel size 1.05 → 1.1 Å, voltage 300.0 → 200.0 kV; "
        "2 exposures will be recomputed"
    ], said
    assert db.store.change_acquisition(session, other) is None  # the same values again: nothing to redo
    with pytest.raises(db.store.SessionConflict, match=r"out_dir: stored .*out', given .*elsewhere'"):
        db.store.get_or_create_session(tmp_path / "raw", tmp_path / "elsewhere", other)


def test_record_twice_gives_one_row(db, session):
    first, created = db.store.record_exposure(session, "movies/a.tif", 1000, 111)
    again, created_again = db.store.record_exposure(session, Path("movies") / "a.tif", 1000, 111)
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert db.models.Exposure.objects.count() == 1
    assert again.state == "found" and again.found_at is not None and timezone.is_aware(again.found_at)
    assert again.movie_path == Path(session.raw_dir) / "movies" / "a.tif"


def test_long_paths_and_paths_that_differ_in_case_or_trailing_space_are_kept_apart(db, tmp_path, acquisition):
    """A session folder and movie paths of PATH_MAX_CHARS characters (too long for a MySQL
    index: the digest columns carry the uniqueness) are unique; ``a.tif``, ``A.tif`` and
    ``a.tif `` are three movies on every database (MySQL's default collation would say one)."""
    limit = db.models.PATH_MAX_CHARS
    raw = tmp_path / "r"
    raw = raw.parent / (raw.name + "é" * (limit - len(str(raw))))  # 2 bytes a character in UTF-8
    assert len(str(raw)) == limit
    session = db.store.get_or_create_session(raw, tmp_path / "out", acquisition, name="long")
    assert db.store.get_or_create_session(raw, tmp_path / "out", acquisition).pk == session.pk
    assert db.queries.session_by_raw_dir(raw).pk == session.pk
    assert db.queries.session_by_raw_dir(str(raw).upper()) is None
    long_a, long_b = "d/" + "x" * (limit - 3) + "a", "d/" + "x" * (limit - 3) + "b"
    names = ["a.tif", "A.tif", "a.tif ", long_a, long_b]
    recorded = db.store.record_exposures(session, [(name, 1, 1) for name in names])
    assert [created for _, created in recorded] == [True] * 5
    assert [e.path for e, _ in recorded] == names
    again = db.store.record_exposures(session, [(name, 1, 1) for name in reversed(names)])
    assert [(e.pk, created) for e, created in again] == [(e.pk, False) for e, _ in reversed(recorded)]
    for exposure, _ in recorded:
        assert db.store.record_exposure(session, exposure.path, 1, 1) == (exposure, False)
    assert sorted(db.models.Exposure.objects.values_list("path", flat=True)) == sorted(names)


def test_paths_too_long_to_store_are_a_clear_error(db, session, tmp_path, acquisition):
    limit = db.models.PATH_MAX_CHARS
    with pytest.raises(ValueError, match=f"has {limit + 1} characters; at most {limit} are stored"):
        db.store.record_exposures(session, [("x" * (limit + 1), 1, 1)])
    with pytest.raises(ValueError, match="at most"):
        db.store.record_exposure(session, "x" * (limit + 1), 1, 1)
    raw = tmp_path / ("y" * (limit + 1 - len(str(tmp_path)) - 1))
    with pytest.raises(ValueError, match=f"session folder .* at most {limit} are stored"):
        db.store.get_or_create_session(raw, tmp_path / "out", acquisition)
    assert db.models.Exposure.objects.count() == 0


def test_a_session_path_digest_is_unique_however_the_row_is_written(db, session):
    """The digest is set by every write (save, create, bulk_create), so a second row for the
    same folder or movie is refused by the database itself."""
    from django.db import IntegrityError, transaction

    assert session.raw_dir_sha256 == db.models.path_digest(session.raw_dir)
    exposure, _ = db.store.record_exposure(session, "a.tif", 1, 1)
    assert exposure.path_sha256 == db.models.path_digest("a.tif")
    with pytest.raises(IntegrityError), transaction.atomic():
        db.models.Exposure.objects.bulk_create(
            [db.models.Exposure(session=session, path="a.tif", size_bytes=1, mtime_ns=1, found_at=timezone.now())]
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        db.models.Session.objects.create(
            project=session.project, name="again", raw_dir=session.raw_dir, out_dir="/o", pixel_size_a=1, voltage_kv=300,
            cs_mm=2.7, amplitude_contrast=0.07, dose_per_frame_e_a2=1,
        )


@pytest.mark.parametrize("bad", ["/abs/a.mrc", "../a.mrc", "a/../../b.mrc", ""])
def test_record_rejects_paths_outside_raw_dir(db, session, bad):
    with pytest.raises(ValueError, match="relative to the session's raw_dir"):
        db.store.record_exposure(session, bad, 1, 1)
    assert db.models.Exposure.objects.count() == 0


def test_concurrent_rescans_never_duplicate(db, session):
    from django.db import connections

    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def rescan() -> None:
        try:
            barrier.wait()
            for i in range(5):
                db.store.record_exposure(session.pk, f"m{i}.mrc", 10, 20)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rescan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.models.Exposure.objects.count() == 5


def test_store_result_twice_keeps_one_result_and_processes_once(db, session, make_results, engines):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    db.store.mark_submitted(exposure.pk)
    motion, ctf = make_results("a", total_drift_a=12.5, defocus_u_a=15000.0)
    first = db.store.store_result(exposure.pk, motion, ctf, **engines)
    assert first.state == "processed"
    processed_at = first.processed_at

    motion2, ctf2 = make_results("a", total_drift_a=13.0, defocus_u_a=15100.0)
    second = db.store.store_result(exposure.pk, motion2, ctf2, **engines)

    assert db.models.MotionCorrection.objects.count() == 1
    assert db.models.CtfEstimate.objects.count() == 1
    stored = db.models.Exposure.objects.select_related("motion", "ctf").get(pk=exposure.pk)
    assert stored.state == "processed"
    assert second.processed_at == processed_at == stored.processed_at
    assert stored.motion.total_drift_a == 13.0 and stored.ctf.defocus_u_a == 15100.0
    assert stored.motion.shifts_px == [[0.0, 0.0], [-1.25, 0.5], [-2.5, 1.0]]
    assert stored.motion.engine == "native" and stored.ctf.engine_version == "test-1"
    assert Path(stored.motion.dose_weighted_path) == motion.dose_weighted_path
    assert stored.ctf.astigmatism_a == 1100.0
    assert stored.ctf.fit_ok is True and stored.ctf.ice_ring_ratio == 1.02


@pytest.mark.parametrize(("fit_ok", "ice"), [(False, 1.7), (True, None)], ids=["no-fit", "no-ice-measure"])
def test_the_ctf_quality_flags_are_stored(db, session, make_results, engines, fit_ok, ice):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    motion, ctf = make_results("a", fit_ok=fit_ok, ice_ring_ratio=ice)
    db.store.store_result(exposure.pk, motion, ctf, **engines)
    stored = db.models.CtfEstimate.objects.get(exposure=exposure)
    assert stored.fit_ok is fit_ok
    assert stored.ice_ring_ratio == ice


def test_store_result_records_step_timestamps(db, session, make_results, engines):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    motion_at = timezone.now() - timedelta(seconds=30)
    ctf_at = motion_at + timedelta(seconds=10)
    motion, ctf = make_results("a")
    stored = db.store.store_result(exposure.pk, motion, ctf, **engines, motion_done_at=motion_at, ctf_done_at=ctf_at)
    stored = db.models.Exposure.objects.get(pk=stored.pk)
    assert stored.motion_done_at == motion_at
    assert stored.ctf_done_at == ctf_at
    assert stored.processed_at >= ctf_at


def test_store_result_refuses_naive_times_and_nan_without_writing(db, session, make_results, engines):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    motion, ctf = make_results("a")
    with pytest.raises(ValueError, match="timezone-aware"):
        db.store.store_result(exposure.pk, motion, ctf, **engines, motion_done_at=datetime(2026, 1, 1))
    nan_ctf = ctf.model_copy(update={"fit_resolution_a": math.nan})
    with pytest.raises(ValueError, match=r"ctf\.fit_resolution_a is nan"):
        db.store.store_result(exposure.pk, motion, nan_ctf, **engines)
    nan_motion = motion.model_copy(update={"shifts_px": [(0.0, 0.0), (math.inf, 1.0)]})
    with pytest.raises(ValueError, match=r"shifts_px\[1\]\[0\] is inf"):
        db.store.store_result(exposure.pk, nan_motion, ctf, **engines)
    assert db.models.MotionCorrection.objects.count() == 0
    assert db.models.Exposure.objects.get(pk=exposure.pk).state == "found"


def test_mark_failed_records_reason_and_counts(db, session):
    exposure, _ = db.store.record_exposure(session, "bad.tif", 10, 20)
    db.store.mark_submitted(exposure.pk)
    db.store.mark_failed(exposure.pk, "bad.tif: LZW strip 3 is corrupt")
    db.store.mark_submitted(exposure.pk)  # the controller retries
    failed = db.store.mark_failed(exposure.pk, "bad.tif: LZW strip 3 is corrupt (again)")
    stored = db.models.Exposure.objects.get(pk=exposure.pk)
    assert stored.state == failed.state == "failed"
    assert stored.fail_count == 2
    assert stored.fail_reason == "bad.tif: LZW strip 3 is corrupt (again)"
    assert stored.failed_at is not None


def test_long_failure_reason_keeps_its_end(db, session):
    exposure, _ = db.store.record_exposure(session, "bad.tif", 10, 20)
    reason = "x" * 30_000 + " the actual error"
    stored = db.store.mark_failed(exposure.pk, reason)
    assert len(stored.fail_reason) == db.store.FAIL_REASON_MAX_CHARS
    assert stored.fail_reason.endswith(" the actual error")


def test_processed_exposure_is_never_failed_or_resubmitted(db, session, store_processed):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    store_processed(exposure.pk, "a")
    db.store.mark_failed(exposure.pk, "late duplicate task crashed")
    stored = db.models.Exposure.objects.get(pk=exposure.pk)
    assert (stored.state, stored.fail_count, stored.fail_reason) == ("processed", 0, "")
    with pytest.raises(db.store.InvalidTransition, match="already processed"):
        db.store.mark_submitted(exposure.pk)


def test_reset_in_flight_returns_submitted_to_found(db, session, tmp_path, acquisition, store_processed):
    ids = [db.store.record_exposure(session, f"m{i}.mrc", 10, 20)[0].pk for i in range(4)]
    for pk in ids[:3]:
        db.store.mark_submitted(pk)
    store_processed(ids[0], "m0")
    other = db.store.get_or_create_session(tmp_path / "other" / "raw", tmp_path / "other_out", acquisition)
    other_exposure, _ = db.store.record_exposure(other, "x.mrc", 1, 1)
    db.store.mark_submitted(other_exposure.pk)

    assert db.store.reset_in_flight(session) == 2
    states = dict(db.models.Exposure.objects.filter(session=session).values_list("path", "state"))
    assert states == {"m0.mrc": "processed", "m1.mrc": "found", "m2.mrc": "found", "m3.mrc": "found"}
    assert db.models.Exposure.objects.get(pk=ids[1]).submitted_at is None
    assert db.models.Exposure.objects.get(pk=other_exposure.pk).state == "submitted"
    assert db.store.reset_in_flight(session) == 0


def test_failed_then_rewritten_file_is_found_again(db, session):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 0, 100)
    db.store.mark_failed(exposure.pk, "a.mrc: zero bytes")

    unchanged, created = db.store.record_exposure(session, "a.mrc", 0, 100)
    assert not created and unchanged.state == "failed"  # same file: stays failed

    rewritten, created = db.store.record_exposure(session, "a.mrc", 4096, 200)
    assert not created
    stored = db.models.Exposure.objects.get(pk=exposure.pk)
    assert stored.state == rewritten.state == "found"
    assert (stored.size_bytes, stored.mtime_ns, stored.fail_count, stored.fail_reason) == (4096, 200, 0, "")
    assert stored.failed_at is None
    assert db.models.Exposure.objects.count() == 1


def test_processed_file_changing_on_disk_stays_processed(db, session, store_processed):
    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 100)
    store_processed(exposure.pk, "a")
    again, created = db.store.record_exposure(session, "a.mrc", 20, 200)
    assert not created
    assert (again.state, again.size_bytes) == ("processed", 10)


def test_set_session_state(db, session):
    updated = db.store.set_session_state(session, "processing")
    assert updated.state == "processing"
    assert db.models.Session.objects.get(pk=session.pk).state == "processing"
    assert updated.updated_at >= session.updated_at
    with pytest.raises(ValueError, match="not one of: idle, processing, stopped, complete, failed"):
        db.store.set_session_state(session, "running")


def test_unknown_exposure_names_its_id(db):
    with pytest.raises(db.models.Exposure.DoesNotExist, match="no exposure with id 987654"):
        db.store.mark_submitted(987654)


def test_a_pipeline_result_is_stored_with_its_step_provenance(db, session, make_results, tmp_path):
    from types import SimpleNamespace

    from emlive.pipeline.thumbnail import Thumbnail

    exposure, _ = db.store.record_exposure(session, "a.mrc", 10, 20)
    motion, ctf = make_results("a")
    motion_at = timezone.now() - timedelta(seconds=20)
    ctf_at = motion_at + timedelta(seconds=5)
    steps = [
        SimpleNamespace(step="motion", engine="native", engine_version="2026.11.21", finished_at=motion_at),
        SimpleNamespace(step="ctf", engine="ctffind", engine_version="4.1.14", finished_at=ctf_at),
        SimpleNamespace(step="thumbnail", engine="native", engine_version="1", finished_at=ctf_at),
    ]
    results = {"motion": motion, "ctf": ctf, "thumbnail": Thumbnail(png_path=tmp_path / "a.png")}
    failures = {"pick": "all carbon: nothing to pick"}
    db.store.store_exposure_result(exposure.pk, SimpleNamespace(results=results, steps=steps, failures=failures))
    stored = db.models.Exposure.objects.select_related("motion", "ctf").get(pk=exposure.pk)
    assert stored.state == "processed"
    assert (stored.motion.engine, stored.motion.engine_version) == ("native", "2026.11.21")
    assert (stored.ctf.engine, stored.ctf.engine_version) == ("ctffind", "4.1.14")
    assert (stored.motion_done_at, stored.ctf_done_at) == (motion_at, ctf_at)
    # every step's result, with its declared metrics, in the generic table; a failed step with its reason
    rows = {row.step: row for row in db.models.StepResult.objects.filter(exposure=exposure)}
    assert set(rows) == {"motion", "ctf", "thumbnail", "pick"}
    assert rows["motion"].metrics == {
        "total_drift_a": motion.total_drift_a, "early_drift_a": motion.early_drift_a, "late_drift_a": motion.late_drift_a
    }
    assert rows["ctf"].metrics["fit_resolution_a"] == ctf.fit_resolution_a
    assert rows["ctf"].result["defocus_u_a"] == ctf.defocus_u_a and rows["ctf"].finished_at == ctf_at
    assert rows["thumbnail"].result == {"png_path": str(tmp_path / "a.png")} and rows["thumbnail"].metrics == {}
    assert (rows["pick"].state, rows["pick"].error, rows["pick"].result) == ("failed", failures["pick"], {})

    with pytest.raises(ValueError, match="the result has no ctf step"):
        db.store.store_exposure_result(exposure.pk, SimpleNamespace(results=results, steps=steps[:1], failures={}))


def _pipeline_result(make_results, stem: str, **options):
    from types import SimpleNamespace

    motion, ctf = make_results(stem, **options)
    at = timezone.now()
    steps = [
        SimpleNamespace(step=step, engine="native", engine_version="1", finished_at=at) for step in ("motion", "ctf")
    ]
    return SimpleNamespace(results={"motion": motion, "ctf": ctf}, steps=steps, failures={})


@pytest.mark.parametrize("n", [3, 40])
def test_a_loop_turn_costs_the_same_statements_for_any_number_of_exposures(
    db, session, make_results, assert_num_queries, n
):
    found = [(f"m{i:03d}.mrc", 10, 20) for i in range(n)]
    # each call is one transaction: BEGIN and COMMIT, and between them a fixed number of statements
    with assert_num_queries(2 + 3):  # existing rows, insert the new ones, read them back
        recorded = db.store.record_exposures(session, found)
    assert [(e.path, created) for e, created in recorded] == [(p, True) for p, _, _ in found]
    ids = [e.pk for e, _ in recorded]
    with assert_num_queries(2 + 1):
        assert db.store.mark_submitted_many(ids) == n
    results = [(pk, _pipeline_result(make_results, f"m{i:03d}", total_drift_a=float(i))) for i, pk in enumerate(ids)]
    # lock the exposures, upsert motion, CTF and every step's result, mark them processed, their steps' times
    with assert_num_queries(2 + 6):
        db.store.store_exposure_results(results)
    with assert_num_queries(2 + 1):  # a rescan of a recorded folder
        again = db.store.record_exposures(session, found)
    assert [(e.pk, created) for e, created in again] == [(pk, False) for pk in ids]
    stored = db.models.Exposure.objects.filter(session=session).select_related("motion")
    assert {e.state for e in stored} == {"processed"}
    assert sorted(e.motion.total_drift_a for e in stored) == [float(i) for i in range(n)]


def test_storing_many_again_keeps_one_result_each_and_the_first_processed_time(db, session, make_results):
    ids = [e.pk for e, _ in db.store.record_exposures(session, [("a.mrc", 1, 1), ("b.mrc", 1, 1)])]
    first = db.store.store_exposure_results(
        [(pk, _pipeline_result(make_results, "a", total_drift_a=1.0)) for pk in ids]
    )
    again = db.store.store_exposure_results(
        [(ids[0], _pipeline_result(make_results, "a", total_drift_a=2.0)),
         (ids[0], _pipeline_result(make_results, "a", total_drift_a=3.0))]  # the last of an id given twice wins
    )
    assert db.models.MotionCorrection.objects.count() == 2 and db.models.CtfEstimate.objects.count() == 2
    stored = db.models.Exposure.objects.select_related("motion").get(pk=ids[0])
    assert stored.motion.total_drift_a == 3.0
    assert stored.processed_at == first[0].processed_at == again[0].processed_at


def test_bulk_writes_keep_the_single_exposure_rules(db, session, make_results, store_processed):
    (done, _), (bad, _) = db.store.record_exposures(session, [("done.mrc", 10, 100), ("bad.mrc", 0, 100)])
    store_processed(done.pk, "done")
    db.store.mark_failed(bad.pk, "zero bytes")
    rescanned = db.store.record_exposures(
        session, [("done.mrc", 20, 200), ("bad.mrc", 4096, 200), ("bad.mrc", 4096, 200)]
    )
    assert [(e.state, created) for e, created in rescanned] == [
        ("processed", False), ("found", False), ("found", False)
    ]
    with pytest.raises(ValueError, match="relative to the session's raw_dir"):
        db.store.record_exposures(session, [("ok.mrc", 1, 1), ("../escape.mrc", 1, 1)])
    assert not db.models.Exposure.objects.filter(path="ok.mrc").exists()  # checked before writing

    with pytest.raises(db.store.InvalidTransition, match=f"exposures {done.pk} are already processed"):
        db.store.mark_submitted_many([bad.pk, done.pk])
    assert db.models.Exposure.objects.get(pk=bad.pk).state == "found"  # none marked
    with pytest.raises(db.models.Exposure.DoesNotExist, match="no exposure with id 987654"):
        db.store.mark_submitted_many([bad.pk, 987654])
    assert db.store.mark_submitted_many([bad.pk, 987654], skip_missing=True) == 1

    broken = _pipeline_result(make_results, "bad")
    broken.results["motion"] = broken.results["motion"].model_copy(update={"total_drift_a": math.nan})
    with pytest.raises(ValueError, match="total_drift_a is nan"):
        db.store.store_exposure_results([(bad.pk, _pipeline_result(make_results, "bad")), (done.pk, broken)])
    with pytest.raises(db.models.Exposure.DoesNotExist, match="no exposure with id 987654"):
        db.store.store_exposure_results(
            [(bad.pk, _pipeline_result(make_results, "bad")), (987654, _pipeline_result(make_results, "x"))]
        )
    assert db.models.Exposure.objects.get(pk=bad.pk).state == "submitted"  # nothing written
    stored = db.store.store_exposure_results(
        [(bad.pk, _pipeline_result(make_results, "bad")), (987654, _pipeline_result(make_results, "x"))],
        skip_missing=True,
    )
    assert [e.pk for e in stored] == [bad.pk] and db.models.Exposure.objects.get(pk=bad.pk).state == "processed"
