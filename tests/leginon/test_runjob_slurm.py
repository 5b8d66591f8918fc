"""runJob.py as Appion's web UI calls it: the batch script rendered from the default template
and submitted to the one-node Slurm (scripts/start-slurm.sh), where the job runs
makeDDAlignMotionCor2_UCSF.py on a fake Leginon session to the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emlive.synth.session import plan_session
from tests.leginon.conftest import LeginonDatabases
from tests.leginon.fake import count, rows
from tests.runtime.test_slurm import slurm_env  # noqa: F401  (the fixture: skips or fails without Slurm)

pytestmark = [pytest.mark.mysql, pytest.mark.slurm, pytest.mark.slow]

MAG = 105000


def test_runjob_renders_and_the_job_runs_on_slurm(
    leginon_dbs: LeginonDatabases, tmp_path: Path, slurm_env: dict[str, str]  # noqa: F811
) -> None:
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=3, shape=(128, 128), n_frames=6, formats=("mrc", "tiff"), seed=31)
    session_id = fake.session("26jan06a")
    fake.calibrate(session_id, magnification=MAG, pixel_size_a=truth.pixel_size_a)
    preset = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=6.0, shape=truth.shape)
    ids = [fake.image(session_id, preset, f"26jan06a_{m.index:03d}_enn", truth, m, magnification=MAG)
           for m in truth.movies]
    rundir = tmp_path / "ddstack1"
    rundir.mkdir()
    leginon_dbs.sinedon_cfg(rundir)  # the job runs in the run folder: sinedon.cfg of the current folder
    bin_dir = tmp_path / "bin"  # the console scripts as installed (this checkout's code)
    bin_dir.mkdir()
    script = bin_dir / "makeDDAlignMotionCor2_UCSF.py"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m emlive.appion.motioncor \"$@\"\n")
    script.chmod(0o755)
    env = slurm_env | {"PATH": f"{bin_dir}{os.pathsep}{slurm_env['PATH']}", "PYTHONPATH": os.pathsep.join(sys.path),
                       "EMLIVE_CONFIG": ""}
    env.pop("APPION_TEMPLATE_DIR", None), env.pop("APPION_JOB_TEMPLATE", None)  # emlive's default template
    submitted = subprocess.run(
        [sys.executable, "-m", "emlive.appion.runjob", "makeDDAlignMotionCor2_UCSF.py", "--session=26jan06a",
         "--preset=enn", f"--projectid={leginon_dbs.project_id}", f"--rundir={rundir}", "--runname=ddstack1",
         "--nodes=1", "--ppn=1", "--walltime=1", "--commit", "--no-wait", "--doseweight", "--nproc", "1"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()
    batch = (rundir / "batch.sh").read_text()
    assert "#SBATCH --time=1:00:00" in batch and "--walltime" not in batch.splitlines()[-1]
    assert "runJob.py makeDDAlignMotionCor2_UCSF.py --session=26jan06a" in (rundir / "run_command.txt").read_text()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and count(fake.appion, "ApAppionJobData", "status = 'D'") == 0:
        time.sleep(1)
    log = next(iter(rundir.glob(f"ddstack1.{job_id}.out")), None)
    assert count(fake.appion, "ApAppionJobData", "status = 'D'") == 1, log.read_text() if log else "no job output"
    pairs = rows(fake.appion, "SELECT `REF|leginondata|AcquisitionImageData|source` AS s FROM ApDDAlignImagePairData")
    assert sorted(row["s"] for row in pairs) == sorted(ids * 2)
