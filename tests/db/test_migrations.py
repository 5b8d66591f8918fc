"""An existing database migrates with its results: 0005 copies every motion and CTF result into
the generic StepResult table, with the declared metrics (run in a fresh process: Django's
migration state is process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_motion_and_ctf_results_move_into_step_results(tmp_path):
    script = textwrap.dedent(
        f"""
        import json
        from django.core.management import call_command
        from django.db import connection
        from emlive.db.setup import configure_django, sqlite_url

        configure_django(sqlite_url({str(tmp_path / "old.sqlite3")!r}))
        call_command("migrate", "emlive", "0004", verbosity=0)
        with connection.cursor() as c:
            c.execute("INSERT INTO emlive_project (name, created_at) VALUES ('p', '2026-11-01 00:00:00')")
            c.execute(
                "INSERT INTO emlive_session (project_id, name, raw_dir, out_dir, pixel_size_a, voltage_kv, cs_mm, "
                "amplitude_contrast, dose_per_frame_e_a2, pre_exposure_e_a2, gain_path, eer_fractions, acquisition_json, "
                "owner, params_json, curation_json, state, created_at, updated_at) VALUES (1, 's', '/r', '/o', 1, 300, "
                "2.7, 0.07, 1, 0, '', 40, '{{}}', '', '{{}}', '{{}}', 'complete', '2026-11-01', '2026-11-01')"
            )
            c.execute(
                "INSERT INTO emlive_exposure (session_id, path, size_bytes, mtime_ns, state, fail_count, fail_reason, "
                "found_at, motion_done_at, ctf_done_at, processed_at) VALUES (1, 'a.tif', 1, 1, 'processed', 0, '', "
                "'2026-11-01', '2026-11-01 00:01:00', '2026-11-01 00:02:00', '2026-11-01 00:02:00')"
            )
            c.execute(
                "INSERT INTO emlive_motioncorrection (exposure_id, engine, engine_version, shifts_px, total_drift_a, "
                "early_drift_a, late_drift_a, n_frames, pixel_size_a, micrograph_path, dose_weighted_path, star_path, "
                "created_at, updated_at) VALUES (1, 'native', '1', '[[0, 0], [1, 1]]', 7.5, 5.0, 2.5, 2, 1.0, '/o/a.mrc', "
                "'/o/a_DW.mrc', '/o/a.star', '2026-11-01', '2026-11-01')"
            )
            c.execute(
                "INSERT INTO emlive_ctfestimate (exposure_id, engine, engine_version, defocus_u_a, defocus_v_a, "
                "azimuth_deg, phase_shift_rad, cross_correlation, fit_resolution_a, fit_ok, ice_ring_ratio, "
                "output_txt_path, avrot_path, diagnostic_png_path, created_at, updated_at) VALUES (1, 'ctffind4', "
                "'4.1.14', 15000, 14000, 30, 0, 0.2, 3.5, 1, NULL, '/o/a.txt', '/o/a_avrot.txt', '/o/a.png', "
                "'2026-11-01', '2026-11-01')"
            )
        call_command("migrate", verbosity=0)
        from emlive.db.models import StepResult
        rows = {{r.step: r for r in StepResult.objects.all()}}
        print(json.dumps({{step: [r.engine, r.engine_version, r.metrics, r.result, str(r.finished_at)]
                          for step, r in rows.items()}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(rows) == {"motion", "ctf"}
    engine, version, metrics, result, finished = rows["motion"]
    assert (engine, version, finished) == ("native", "1", "2026-11-01 00:01:00+00:00")
    assert metrics == {"total_drift_a": 7.5, "early_drift_a": 5.0, "late_drift_a": 2.5}
    assert result["shifts_px"] == [[0, 0], [1, 1]] and result["dose_weighted_path"] == "/o/a_DW.mrc"
    engine, version, metrics, result, finished = rows["ctf"]
    assert (engine, version, finished) == ("ctffind4", "4.1.14", "2026-11-01 00:02:00+00:00")
    assert metrics == {"defocus_u_a": 15000.0, "defocus_v_a": 14000.0, "fit_resolution_a": 3.5,
                       "cross_correlation": 0.2, "ice_ring_ratio": None}
    assert result["fit_ok"] is True and result["output_txt_path"] == "/o/a.txt"
    # the copied results validate against today's result models
    from emlive.ctf.types import CtfResult
    from emlive.motion.types import MotionResult

    MotionResult.model_validate(rows["motion"][3])
    CtfResult.model_validate(rows["ctf"][3])


def test_path_digests_are_filled_for_existing_rows_and_carry_the_uniqueness(tmp_path):
    """0006: existing sessions and exposures get the SHA-256 of their paths, and a duplicate
    path is still refused (now by the digest's constraint; the old index on the path is gone)."""
    script = textwrap.dedent(
        f"""
        import json
        from django.core.management import call_command
        from django.db import IntegrityError, connection
        from emlive.db.setup import configure_django, sqlite_url

        configure_django(sqlite_url({str(tmp_path / "old.sqlite3")!r}))
        call_command("migrate", "emlive", "0005", verbosity=0)
        with connection.cursor() as c:
            c.execute("INSERT INTO emlive_project (name, created_at) VALUES ('p', '2026-11-01 00:00:00')")
            c.execute(
                "INSERT INTO emlive_session (project_id, name, raw_dir, out_dir, pixel_size_a, voltage_kv, cs_mm, "
                "amplitude_contrast, dose_per_frame_e_a2, pre_exposure_e_a2, gain_path, eer_fractions, acquisition_json, "
                "owner, params_json, curation_json, state, created_at, updated_at) VALUES (1, 's', '/r/é', '/o', 1, 300, "
                "2.7, 0.07, 1, 0, '', 40, '{{}}', '', '{{}}', '{{}}', 'complete', '2026-11-01', '2026-11-01')"
            )
            for path in ("a.tif", "A.tif"):
                c.execute(
                    "INSERT INTO emlive_exposure (session_id, path, size_bytes, mtime_ns, state, fail_count, "
                    "fail_reason, found_at) VALUES (1, %s, 1, 1, 'found', 0, '', '2026-11-01')", [path]
                )
        call_command("migrate", verbosity=0)
        from emlive.db.models import Exposure, Session
        from django.db import transaction
        out = {{"session": Session.objects.get().raw_dir_sha256,
                "exposures": dict(Exposure.objects.values_list("path", "path_sha256"))}}
        try:
            with transaction.atomic():
                c = connection.cursor()
                c.execute(
                    "INSERT INTO emlive_exposure (session_id, path, path_sha256, size_bytes, mtime_ns, state, "
                    "fail_count, fail_reason, found_at) VALUES (1, 'a.tif', %s, 1, 1, 'found', 0, '', '2026-11-01')",
                    [out["exposures"]["a.tif"]],
                )
        except IntegrityError as exc:
            out["duplicate"] = str(exc)
        with connection.cursor() as c:
            out["indexes"] = sorted(
                name for name, info in connection.introspection.get_constraints(c, "emlive_exposure").items()
                if info["unique"] and not info["primary_key"]
            )
        print(json.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import hashlib
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["session"] == hashlib.sha256("/r/é".encode()).hexdigest()
    assert out["exposures"] == {p: hashlib.sha256(p.encode()).hexdigest() for p in ("a.tif", "A.tif")}
    assert "UNIQUE" in out["duplicate"] and "path_sha256" in out["duplicate"]
    assert out["indexes"] == ["emlive_exposure_unique_path_sha256"]
