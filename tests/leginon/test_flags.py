"""Classic Appion's flags, sinedon.cfg discovery and runJob.py's rendering (no database)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from emlive.appion import flags, runjob
from emlive.appion.databases import find_databases, read_sinedon_cfg
from emlive.appion.motioncor import motion_overrides
from emlive.config import LeginonSettings


def _motion(argv: list[str]):
    return flags.parse("makeDDAlignMotionCor2_UCSF.py", [flags.global_parser(), flags.motion_parser()], argv,
                       flags.NO_EFFECT_MOTION)


def test_both_flag_styles_as_the_web_ui_sends_them() -> None:
    spaced = _motion(["--session", "26jan02a", "--preset", "enn", "-p", "7", "--rundir", "/data/ddstack1",
                      "--runname", "ddstack1", "--bin", "2", "--Patchrows", "5", "--Patchcols", "4", "--Iter", "9",
                      "--Tol", "0.2", "--Bft_global", "300", "--doseweight", "--no-wait", "--no-rejects", "--limit", "3",
                      "--no-commit"])
    joined = _motion(["--session=26jan02a", "--preset=enn", "--projectid=7", "--rundir=/data/ddstack1",
                      "--runname=ddstack1", "--bin=2", "--Patchrows=5", "--Patchcols=4", "--Iter=9", "--Tol=0.2",
                      "--Bft_global=300", "--doseweight", "--no-wait", "--no-rejects", "--limit=3", "--no-commit"])
    assert vars(spaced) == vars(joined)
    assert (spaced.sessionname, spaced.preset, spaced.projectid, spaced.limit) == ("26jan02a", "enn", 7, 3)
    assert not spaced.commit and not spaced.wait and spaced.no_rejects and spaced.doseweight
    assert motion_overrides(spaced) == {"bin_factor": 2.0, "patches": (4, 5), "max_iterations": 9,
                                        "tolerance_px": 0.2, "bfactor_px2": 300.0}


def test_defaults_and_runname_from_the_run_folder() -> None:
    args = _motion(["-s", "26jan02a", "-R", "/data/runs/ddstack3", "--commit", "--continue", "--expId=12"])
    assert args.runname == "ddstack3" and args.commit and args.wait and args.expid == 12
    assert motion_overrides(args) == {"bin_factor": 1.0, "patches": (1, 1)}  # classic: whole-frame alignment


def test_unknown_flag_and_missing_session_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _motion(["--session=s", "--no-such-flag=1"])
    assert "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _motion(["--rundir=/x"])
    assert "--session" in capsys.readouterr().err


def test_flags_without_effect_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _motion(["--session=s", "--trim=20", "--alignoffset=2"])
    assert "trim" in caplog.text and "fod" not in caplog.text


def test_ctffind4_flags() -> None:
    args = flags.parse("ctffind4.py", [flags.global_parser(), flags.ctffind4_parser()],
                       ["--session=s", "--preset=enn-a", "--ampcontrast=0.1", "--fieldsize", "512", "--resmin=30",
                        "--resmax=4", "--defstep=0.05", "--dast=0.05", "--phaseplate", "--min_phase_shift=20",
                        "--exhaustive-search"], flags.NO_EFFECT_CTF)
    assert (args.ampcontrast, args.fieldsize, args.resmin, args.resmax) == (0.1, 512, 30.0, 4.0)
    assert args.shift_phase and args.exhaustive and args.min_phase_shift == 20.0


def test_sinedon_cfg_later_files_win_and_emlive_settings_otherwise(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    (home / "sinedon.cfg").write_text("[global]\nhost: dbhost\nuser: appion\npasswd: secret\n\n"
                                      "[leginondata]\ndb: leginondb\n\n[projectdata]\ndb: projectdb\n")
    (cwd / "sinedon.cfg").write_text("[leginondata]\ndb = leginon_test\n")
    dbs = read_sinedon_cfg([tmp_path / "none.cfg", home / "sinedon.cfg", cwd / "sinedon.cfg"])
    assert dbs is not None
    assert (dbs.server.host, dbs.server.user, dbs.server.password) == ("dbhost", "appion", "secret")
    assert (dbs.leginon_db, dbs.project_db) == ("leginon_test", "projectdb")
    settings = LeginonSettings(host="h2", user="u2", leginon_db="l2", project_db="p2")
    fallback = find_databases(settings, paths=[tmp_path / "none.cfg"])
    assert (fallback.server.host, fallback.leginon_db, fallback.project_db) == ("h2", "l2", "p2")
    with pytest.raises(ValueError, match="no sinedon.cfg found"):
        find_databases(LeginonSettings(), paths=[tmp_path / "none.cfg"])


def test_runjob_takes_out_batch_flags_and_renders_the_template(tmp_path: Path) -> None:
    argv = ["makeDDAlignMotionCor2_UCSF.py", "--session=26jan02a", "--rundir", str(tmp_path / "ddstack1"),
            "--runname=ddstack1", "--nodes=1", "--ppn", "4", "--walltime=24", "--queue=gpu", "--doseweight"]
    job = runjob.parse_job(argv)
    assert job.rundir == tmp_path / "ddstack1" and job.runname == "ddstack1"
    assert job.batch == {"nodes": "1", "ppn": "4", "walltime": "24:00:00", "queue": "gpu"}
    assert job.command == ["makeDDAlignMotionCor2_UCSF.py", "--session=26jan02a", f"--rundir={tmp_path / 'ddstack1'}",
                           "--runname=ddstack1", "--doseweight"]
    script = runjob.render(job)
    assert "#SBATCH --cpus-per-task=4\n" in script and "#SBATCH --time=24:00:00\n" in script
    assert "#SBATCH --partition=gpu\n" in script and "#SBATCH --job-name=ddstack1\n" in script
    assert script.rstrip().endswith(f"makeDDAlignMotionCor2_UCSF.py --session=26jan02a "
                                    f"--rundir={tmp_path / 'ddstack1'} --runname=ddstack1 --doseweight")
    (tmp_path / "mine.j2").write_text("run {{ command }} in {{ rundir }}\n")
    assert runjob.render(job, template_dir=tmp_path, template="mine.j2").startswith("run makeDDAlign")
    with pytest.raises(ValueError, match="no batch template nope.j2"):
        runjob.render(job, template_dir=tmp_path, template="nope.j2")
    with pytest.raises(ValueError, match="no --rundir"):
        runjob.parse_job(["ctffind4.py", "--session=x"])


def test_console_scripts_under_classic_names() -> None:
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("makeDDAlignMotionCor2_UCSF.py", "ctffind4.py", "runJob.py"):
        module, function = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_cluster_from_dask_cluster_config_or_emlive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emlive.appion.loop import cluster_settings
    from emlive.config import Settings

    monkeypatch.delenv("DASK_CLUSTER_CONFIG", raising=False)
    assert cluster_settings(Settings(), nproc=3).cluster.n_workers == 3
    (tmp_path / "dask.toml").write_text('[cluster]\nkind = "slurm"\nqueue = "gpu"\nn_workers = 8\n')
    monkeypatch.setenv("DASK_CLUSTER_CONFIG", str(tmp_path / "dask.toml"))
    cluster = cluster_settings(Settings(), nproc=None, gpu_ids=[0, 1]).cluster
    assert (cluster.kind, cluster.queue, cluster.n_workers, cluster.gpu_ids) == ("slurm", "gpu", 8, [0, 1])
    (tmp_path / "dask.toml").write_text("kind = [")
    with pytest.raises(ValueError, match="DASK_CLUSTER_CONFIG=.*cannot be read as TOML"):
        cluster_settings(Settings(), nproc=None)


def test_run_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    from emlive.appion.loop import RunLocked, run_lock

    with run_lock(tmp_path / "run", "ctffind4.py"):
        with pytest.raises(RunLocked, match=r"in use by another ctffind4.py \(pid \d+"):
            with run_lock(tmp_path / "run", "ctffind4.py"):
                pass
    with run_lock(tmp_path / "run", "ctffind4.py"):  # freed when the first ended
        pass


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x * x


def test_follow_limit_failures_and_no_wait() -> None:
    import threading

    from distributed import Client

    from emlive.appion.loop import Task, follow

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        stored: dict[int, int] = {}

        def pending(room: int, skip: set[int]) -> list[Task]:
            return [Task(i, _square, (i,)) for i in range(1, 7) if i not in stored and i not in skip][:room]

        outcome = follow(client, pending=pending, store=stored.__setitem__, wait_for_new=False, limit=None,
                         stop=threading.Event(), max_in_flight=2, poll_interval_s=0.05)
        assert stored == {1: 1, 2: 4, 4: 16, 5: 25, 6: 36}
        assert outcome.done == 5 and list(outcome.failed) == [3] and "three is bad" in outcome.failed[3]

        stored.clear()
        outcome = follow(client, pending=pending, store=stored.__setitem__, wait_for_new=True, limit=2,
                         stop=threading.Event(), max_in_flight=4, poll_interval_s=0.05)
        assert sorted(stored) == [1, 2] and outcome.done == 2  # --limit 2 ends even while following
