"""`emlive process` with external tools: RELION for real, and stand-in tools that crash, hang or
are missing — each fails its exposure with the tool's stderr tail, and the session always ends.
(Garbage output and wrong versions are tested per engine, e.g. tests/motion/test_motioncor.py.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import starfile

from emlive.synth.session import write_session

from .conftest import run_emlive
from .motion.test_relion import relion_binary  # noqa: F401  (fixture)
from .tools.fakes import fake_tool

pytestmark = pytest.mark.slow

SMALL = {"shape": (512, 512), "n_frames": 12}
ACQ = ("--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300")


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return con.execute(sql).fetchall()


def _table(db: Path, table: str) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        con.row_factory = sqlite3.Row
        return [dict(row) for row in con.execute(f"SELECT * FROM {table} ORDER BY exposure_id")]


def test_a_whole_session_with_relion_lands_in_the_database_like_the_native_engine(tmp_path, relion_binary):  # noqa: F811
    write_session(tmp_path, n_movies=2, formats=("mrc",), seed=12, **SMALL)
    raw = tmp_path / "raw"
    runs = {}
    for name in ("native", "relion"):
        out = tmp_path / f"out-{name}"
        proc = run_emlive("process", raw, "-o", out, *ACQ, "--settle-s", "0", "--workers", "2", "--motion-engine", name)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out / "emlive.sqlite3"
    native, relion = (_table(runs[n], "emlive_motioncorrection") for n in ("native", "relion"))
    assert [row["engine"] for row in relion] == ["relion", "relion"]
    assert [row["engine_version"] for row in relion] == ["relion-1", "relion-1"]
    assert _rows(runs["relion"], "SELECT state, count(*) FROM emlive_exposure GROUP BY state") == [("processed", 2)]
    for ours, theirs in zip(native, relion, strict=True):
        assert set(ours) == set(theirs)
        # the same columns filled; native's optional extras (local model, drift plot) may be empty in RELION's
        assert {k for k, v in ours.items() if v is None} <= {k for k, v in theirs.items() if v is None}
        assert theirs["n_frames"] == ours["n_frames"] == 12
        assert abs(theirs["total_drift_a"] - ours["total_drift_a"]) < 0.15 * ours["total_drift_a"] + 1.0
        assert Path(theirs["micrograph_path"]).name == Path(ours["micrograph_path"]).name
        assert Path(theirs["dose_weighted_path"]).exists() and Path(theirs["star_path"]).exists()
    ctf_native, ctf_relion = (_table(runs[n], "emlive_ctfestimate") for n in ("native", "relion"))
    assert len(ctf_relion) == 2  # the CTF step ran on RELION's micrographs
    for ours, theirs in zip(ctf_native, ctf_relion, strict=True):
        assert set(ours) == set(theirs)
        assert {k for k, v in ours.items() if v is None} == {k for k, v in theirs.items() if v is None}
    for export in ("micrographs_ctf.star", "corrected_micrographs.star"):
        ours = starfile.read(runs["native"].parent / "exports" / export, always_dict=True)["micrographs"]
        theirs = starfile.read(runs["relion"].parent / "exports" / export, always_dict=True)["micrographs"]
        assert list(theirs.columns) == list(ours.columns) and len(theirs) == len(ours)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "emlive.toml"
    path.write_text("[scheduler]\nmax_attempts = 1\n\n" + text)
    return path


RELION_CRASH = "sys.stderr.write('in: ./src/jaz/obs_model.cpp, line 198\\nERROR: cannot open movie frames\\n')\nsys.exit(1)\n"
CTFFIND_HANG = "print('Reading micrograph...', file=sys.stderr, flush=True)\ntime.sleep(600)\n"


@pytest.mark.parametrize(
    ("case", "engine_flag", "tool", "version", "body", "reason"),
    [
        ("crash", ("--motion-engine", "relion"), "relion", "RELION version: 3.1.3\n", RELION_CRASH, "cannot open movie frames"),
        ("hang", ("--ctf-engine", "ctffind4"), "ctffind4", "4.1.14\n", CTFFIND_HANG, "did not finish within 3 s"),
        ("missing", ("--ctf-engine", "ctffind5"), "ctffind5", None, None, "not found"),
    ],
)
def test_a_failing_tool_fails_its_exposures_with_its_stderr_and_the_session_ends(
    tmp_path, case, engine_flag, tool, version, body, reason
):
    write_session(tmp_path, n_movies=1, formats=("mrc",), seed=13, **SMALL)
    executable = tmp_path / "bin" / tool
    executable.parent.mkdir()
    if body is not None:
        fake_tool(executable, version=version, body=body)
    config = _config(tmp_path, f'[tools.{tool}]\nexecutable = "{executable}"\ntimeout_s = 3\n')
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run_emlive(
        "process", tmp_path / "raw", "-o", out, *ACQ, "--settle-s", "0", "--workers", "1", *engine_flag,
        "--config", config, timeout_s=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 120, "the session took too long: a tool was not stopped"
    failed = _rows(out / "emlive.sqlite3", "SELECT path, fail_reason FROM emlive_exposure")
    assert len(failed) == 1
    for path, fail_reason in failed:
        assert reason in fail_reason, f"{case}: {path} failed with {fail_reason!r}"
    if case == "hang":
        assert "Reading micrograph..." in failed[0][1]  # the stderr tail is kept
    assert _rows(out / "emlive.sqlite3", "SELECT DISTINCT state FROM emlive_exposure") == [("failed",)]
    assert "failed" in proc.stdout


MOTIONCOR_STAND_IN = """
movie = args[args.index("-InMrc") + 1]
frames = mrcfile.read(movie).astype(np.float32)
out = flag("-OutMrc")
for name in (out, out[:-4] + "_DW.mrc"):
    with mrcfile.new(name, overwrite=True) as mrc:
        mrc.set_data(frames.sum(axis=0))
        mrc.voxel_size = 1.0
print("Full-frame alignment shift")
for i in range(len(frames)):
    print(f"...... Frame ({i + 1:3d}) shift:    {0.5 * i:.2f}    {-0.25 * i:.2f}")
"""


def test_a_gpu_engine_runs_only_on_gpu_workers_and_gets_their_device(tmp_path):
    from .tools.fakes import calls

    write_session(tmp_path, n_movies=1, formats=("mrc",), seed=14, **SMALL)
    tool = tmp_path / "bin" / "MotionCor2"
    tool.parent.mkdir()
    fake_tool(tool, version="MotionCor2 version 1.6.4\n", body=MOTIONCOR_STAND_IN)
    config = _config(tmp_path, f'[tools.motioncor2]\nexecutable = "{tool}"\ntimeout_s = 60\n')
    args = ("process", tmp_path / "raw", *ACQ, "--settle-s", "0", "--motion-engine", "motioncor2", "--config", config)

    without_gpu = run_emlive(*args, "-o", tmp_path / "out-cpu", "--workers", "1", timeout_s=240)
    assert without_gpu.returncode == 2
    assert "motion engine motioncor2 need a GPU and no worker has one" in " ".join(without_gpu.stderr.split())

    proc = run_emlive(*args, "-o", tmp_path / "out", "--gpu-ids", "3", timeout_s=240)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "out" / "emlive.sqlite3"
    assert _rows(db, "SELECT state FROM emlive_exposure") == [("processed",)]
    (motion,) = _table(db, "emlive_motioncorrection")
    assert motion["engine"] == "motioncor2"
    (call,) = calls(tool)
    assert call["cuda"] == "3"  # the worker's GPU, seen by the tool as device 0
    assert call["argv"][call["argv"].index("-Gpu") + 1] == "0"


def test_motioncorr_with_a_crashing_tool_ends_with_its_stderr_and_exit_code_2(tmp_path):
    truth = write_session(tmp_path, n_movies=1, formats=("mrc",), seed=15, shape=(64, 64), n_frames=4)
    tool = tmp_path / "bin" / "relion_run_motioncorr"
    tool.parent.mkdir()
    fake_tool(tool, version="RELION version: 3.1.3\n", body=RELION_CRASH)
    config = _config(tmp_path, f'[tools.relion]\nexecutable = "{tool}"\n')
    proc = run_emlive(
        "motioncorr", tmp_path / "raw" / truth.movies[0].name, "-o", tmp_path / "out", *ACQ,
        "--engine", "relion", "--config", config,
    )
    assert proc.returncode == 2
    assert "cannot open movie frames" in proc.stderr and "exit code 1" in proc.stderr
