"""The pipeline from Python: ``emlive.run`` gives the values ``emlive process`` gives on the same
movies, a second call recomputes nothing, and ``emlive.open_session`` reads a session back.

Each call runs in its own Python process, as a notebook or script would (one database per
process: Django's settings are process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emlive.synth.session import write_session

from .conftest import run_emlive
from .runtime.test_slurm import slurm_env  # noqa: F401  (the Slurm tests' fixture)

pytestmark = pytest.mark.slow

RUN = """
import sys
import emlive

def main():
    out, table, *movies = sys.argv[1:]
    frame = emlive.run(
        movies, out=out, acquisition={"pixel_size_a": 1.0, "dose_per_frame_e_a2": 1.0, "voltage_kv": 300.0},
        params={"pick": {"diameter_a": 100}}, cluster={"n_workers": 1}, settings={"watch": {"settle_s": 0}},
    )
    frame.to_parquet(table)

if __name__ == "__main__":  # local Dask workers start by importing the main module
    main()
"""

OPEN = """
import sys
import emlive

results = emlive.open_session(sys.argv[1])
results.micrographs.to_parquet(sys.argv[2])
results.exposures.to_parquet(sys.argv[3])
print(results.name, len(results.steps), results.acquisition.pixel_size_a)
"""


def _python(code: str, *args: str | Path) -> subprocess.CompletedProcess:
    env = os.environ | {"EMLIVE_CONFIG": ""}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Every output file and checkpoint: (size, mtime) — a recomputed step rewrites them."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for step in ("motion", "ctf", "thumbnail", "pick") for p in (out / step).rglob("*") if p.is_file()}


def _comparable(table: pd.DataFrame, out: Path) -> pd.DataFrame:
    """File paths relative to the output folder (the two runs write into different ones)."""
    table = table.copy()
    for column in table.columns:
        if column.endswith("_path"):
            table[column] = [os.path.relpath(value, out) if isinstance(value, str) else value
                             for value in table[column]]
    return table


def test_run_gives_what_process_gives_and_a_second_call_recomputes_nothing(tmp_path):
    write_session(tmp_path, n_movies=2, shape=(512, 512), n_frames=8, formats=("mrc", "tiff"), seed=9, workers=1)
    raw = tmp_path / "raw"
    movies = sorted(str(p) for p in raw.iterdir())
    processed = run_emlive("process", raw, "-o", tmp_path / "cli", "--apix", "1.0", "--dose-per-frame", "1.0",
                           "--kv", "300", "--particle-diameter", "100", "--settle-s", "0", "--workers", "1")
    assert processed.returncode == 0, processed.stderr

    out = tmp_path / "python"
    _python(RUN, out, tmp_path / "first.parquet", *movies)
    first = pd.read_parquet(tmp_path / "first.parquet")
    opened = _python(OPEN, tmp_path / "cli", tmp_path / "cli.parquet", tmp_path / "cli_exposures.parquet")
    assert opened.stdout.split() == [tmp_path.name, "8", "1.0"]  # the session folder; 2 movies x 4 steps
    from_cli = pd.read_parquet(tmp_path / "cli.parquet")

    assert first["exposure"].tolist() == ["movie_0000.mrc", "movie_0001.tif"]
    assert list(first.columns) == list(from_cli.columns)
    assert {"motion.total_drift_a", "ctf.defocus_u_a", "pick.n_particles", "thumbnail.png_path"} <= set(first.columns)
    left, right = _comparable(first, out), _comparable(from_cli, tmp_path / "cli")
    numbers = [c for c in left.columns if pd.api.types.is_float_dtype(left[c])]
    others = [c for c in left.columns if c not in numbers and c != "movie_mtime_ns"]
    np.testing.assert_allclose(left[numbers].to_numpy(float), right[numbers].to_numpy(float), rtol=1e-6)  # float32 CTF search
    pd.testing.assert_frame_equal(left[others], right[others])
    exposures = pd.read_parquet(tmp_path / "cli_exposures.parquet")
    assert exposures["state"].tolist() == ["processed", "processed"]

    # a second call: every checkpoint and output stays as it was, the same table comes back
    before = _stamps(out)
    assert len(before) >= 2 * 4
    _python(RUN, out, tmp_path / "second.parquet", *movies)
    assert _stamps(out) == before
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "second.parquet"), first)
    # even without the database, the checkpoints are reused instead of recomputed
    for name in ("emlive.sqlite3", "emlive.sqlite3-wal", "emlive.sqlite3-shm"):
        (out / name).unlink(missing_ok=True)
    _python(RUN, out, tmp_path / "third.parquet", *movies)
    assert _stamps(out) == before
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "third.parquet"), first)


def test_import_emlive_stays_light():
    done = _python("import sys, emlive; print(sorted(m for m in ('pandas', 'django', 'dask', 'numpy') if m in sys.modules))")
    assert done.stdout.strip() == "[]"
    assert _python("import emlive; print(callable(emlive.run), callable(emlive.open_session))").stdout.split() == [
        "True", "True"]


def test_remote_inputs_are_refused_clearly(tmp_path):
    code = ("import emlive\ntry:\n    emlive.run('s3://bucket/raw', out=r'%s', acquisition={'pixel_size_a': 1, "
            "'dose_per_frame_e_a2': 1})\nexcept ValueError as err:\n    print(err)\n") % (tmp_path / "out")
    assert "remote inputs are not supported yet" in _python(code).stdout


SLURM_RUN = """
import sys
import emlive

def main():
    out, jobs, name, *movies = sys.argv[1:]
    frame = emlive.run(
        movies, out=out, acquisition={"pixel_size_a": 1.0, "dose_per_frame_e_a2": 1.0},
        cluster={"kind": "slurm", "n_workers": 1, "memory": "3GiB", "walltime": "00:10:00",
                 "scheduler_host": "127.0.0.1", "log_directory": jobs, "job_extra_directives": [f"--job-name={name}"]},
        settings={"watch": {"settle_s": 0}, "scheduler": {"retry_backoff_s": 0}},
    )
    print(len(frame), frame["motion.n_frames"].tolist())

if __name__ == "__main__":
    main()
"""


@pytest.mark.slurm
def test_run_on_the_slurm_cluster(slurm_env, tmp_path):
    write_session(tmp_path, n_movies=2, shape=(512, 512), n_frames=8, formats=("mrc",), seed=4, workers=1)
    movies = sorted(str(p) for p in (tmp_path / "raw").iterdir())
    name = f"emlive-run-{os.getpid()}"
    done = subprocess.run([sys.executable, "-c", SLURM_RUN, tmp_path / "out", tmp_path / "jobs", name, *movies],
                          capture_output=True, text=True, timeout=300, env=slurm_env | {"EMLIVE_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "[8,", "8]"]
    assert list((tmp_path / "jobs").glob("*.err")), "no Slurm job ran the work"
