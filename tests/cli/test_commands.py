"""`emlive motioncorr` and `emlive ctf`: the DESIGN.md §3 contracts, run as a user would."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess

import numpy as np
import pytest
import starfile

from emlive.io.mrc import read_mrc
from emlive.synth.session import write_session

from ..conftest import emlive_command, run_emlive


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("session")
    truth = write_session(folder, n_movies=1, formats=("tiff",), seed=21, shape=(1024, 1024), n_frames=16)
    return folder, truth, truth.movies[0]


def test_motioncorr_writes_relion_outputs_that_recover_the_drift(session, tmp_path):
    folder, truth, movie = session
    proc = run_emlive(
        "motioncorr", folder / "raw" / movie.name, "-o", tmp_path, "--apix", truth.pixel_size_a,
        "--dose-per-frame", truth.dose_per_frame_e_a2, "--kv", truth.voltage_kv,
    )
    assert proc.returncode == 0, proc.stderr
    stem = movie.name.removesuffix(".tif")
    aligned, pixel_size_a = read_mrc(tmp_path / f"{stem}.mrc")
    dose_weighted, _ = read_mrc(tmp_path / f"{stem}_DW.mrc")
    assert aligned.shape == dose_weighted.shape == (1024, 1024) and pixel_size_a == pytest.approx(1.0)
    star = starfile.read(tmp_path / f"{stem}.star", always_dict=True)
    assert star["general"]["rlnImageSizeZ"] == 16
    shifts = star["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    assert list(star["global_shift"]["rlnMicrographFrameNumber"]) == list(range(1, 17))
    rmsd_px = np.sqrt(np.mean(np.sum((-shifts - movie.trajectory) ** 2, axis=1)))
    assert rmsd_px < 0.5
    assert "total drift" in proc.stdout


def test_ctf_writes_ctffind_outputs_that_recover_the_defocus(session, tmp_path):
    folder, truth, movie = session
    motion = tmp_path / "motion"
    assert run_emlive(
        "motioncorr", folder / "raw" / movie.name, "-o", motion, "--apix", 1.0, "--dose-per-frame", 1.0,
    ).returncode == 0
    micrograph = next(motion.glob("*[!W].mrc"))
    proc = run_emlive(
        "ctf", micrograph, "-o", tmp_path / "ctf", "--apix", 1.0, "--kv", 300, "--cs", 2.7, "--amp", 0.07,
    )
    assert proc.returncode == 0, proc.stderr
    row = np.loadtxt(tmp_path / "ctf" / f"{micrograph.stem}.txt", comments="#")
    assert row.shape == (7,)
    mean, true_mean = (row[1] + row[2]) / 2, (movie.defocus_u_a + movie.defocus_v_a) / 2
    assert abs(mean - true_mean) / true_mean < 0.02
    assert np.loadtxt(tmp_path / "ctf" / f"{micrograph.stem}_avrot.txt", comments="#").shape[0] == 6
    assert (tmp_path / "ctf" / f"{micrograph.stem}.png").stat().st_size > 0


def test_a_batch_goes_on_past_a_bad_input_and_says_which_failed(tmp_path):
    write_session(tmp_path, n_movies=2, formats=("mrc",), seed=6, shape=(256, 256), n_frames=4)
    broken = tmp_path / "raw" / "broken.mrc"
    broken.write_bytes(b"\0" * 100)
    movies = sorted((tmp_path / "raw").glob("movie_*.mrc"))
    proc = run_emlive("motioncorr", movies[0], broken, movies[1], "-o", tmp_path / "out", "--apix", 1, "--dose-per-frame", 1,
                      "--patches", 1, 1)
    assert proc.returncode == 2, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("movie_")] == [m.name for m in movies]
    assert "broken.mrc" in proc.stderr and "1 of 3 failed" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*_DW.mrc")) == [f"{m.stem}_DW.mrc" for m in movies]


def test_bad_input_and_bad_parameters_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.mrc"
    broken.write_bytes(b"\0" * 100)
    proc = run_emlive("motioncorr", broken, "-o", tmp_path / "out", "--apix", 1, "--dose-per-frame", 1)
    assert proc.returncode == 2 and "broken.mrc" in proc.stderr
    proc = run_emlive("motioncorr", broken, "-o", tmp_path / "out", "--apix", -1, "--dose-per-frame", 1)
    assert proc.returncode == 2 and "pixel_size_a" in proc.stderr
    proc = run_emlive("ctf", broken, "-o", tmp_path / "out", "--apix", 1, "--engine", "gctf9")
    assert proc.returncode == 2 and "unknown ctf engine 'gctf9'" in proc.stderr
    proc = run_emlive("ctf", broken, "-o", tmp_path / "out", "--apix", 1, "--min-res", 3, "--max-res", 5)
    assert proc.returncode == 2 and "finer" in proc.stderr


def test_process_refuses_a_missing_folder_and_says_when_acquisition_values_changed(tmp_path):
    proc = run_emlive("process", tmp_path / "nowhere", "-o", tmp_path / "out", "--apix", 1, "--dose-per-frame", 1)
    assert proc.returncode == 2 and "nowhere: no such folder" in proc.stderr
    raw = tmp_path / "raw"
    raw.mkdir()
    first = run_emlive("process", raw, "-o", tmp_path / "out", "--apix", 1, "--dose-per-frame", 1, "--workers", 1)
    assert first.returncode == 0, first.stderr
    # the same output folder, other values: taken (results recomputed where they change), and said
    other = run_emlive("process", raw, "-o", tmp_path / "out", "--apix", 1.5, "--dose-per-frame", 1, "--workers", 1)
    assert other.returncode == 0, other.stderr
    assert "acquisition values changed: pixel size 1.0 → 1.5 Å" in other.stderr


def test_process_takes_the_motion_options_of_motioncorr(tmp_path):
    write_session(tmp_path, n_movies=1, formats=("mrc",), seed=4, shape=(512, 512), n_frames=8)
    out = tmp_path / "out"
    proc = run_emlive(
        "process", tmp_path / "raw", "-o", out, "--apix", 1.0, "--dose-per-frame", 1.0, "--patches", 1, 1,
        "--bin", 2, "--workers", 1, "--settle-s", 0,
    )
    assert proc.returncode == 0, proc.stderr
    (micrograph,) = (out / "motion").glob("*[!W].mrc")
    image, pixel_size_a = read_mrc(micrograph)
    assert image.shape == (256, 256) and pixel_size_a == pytest.approx(2.0)
    star = starfile.read(next((out / "motion").glob("*.star")), always_dict=True)
    assert star["general"]["rlnMotionModelVersion"] == 0  # --patches 1 1: global alignment only


def _service_cli(*args: object, data_root, stdin: str = "") -> subprocess.CompletedProcess:
    """A user/token/serve command on the service's default database under ``data_root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMLIVE_")} | {
        "EMLIVE_DATA_ROOT": str(data_root), "EMLIVE_CONFIG": "", "COLUMNS": "200",
    }
    return subprocess.run(emlive_command(*args), input=stdin, capture_output=True, text=True, timeout=120, env=env)


def test_users_and_tokens_are_kept_in_the_services_database_and_tokens_only_hashed(tmp_path):
    added = _service_cli(
        "user", "add", "ann", "--project", "p1", "--project", "p2", "--password-stdin", data_root=tmp_path,
        stdin="correct horse\n",
    )
    assert added.returncode == 0, added.stderr
    assert "user ann added: projects: p1, p2; dashboard login" in added.stdout
    created = _service_cli("token", "create", "ann", data_root=tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"emlive_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}", token)

    database = tmp_path / ".emlive" / "emlive.sqlite3"
    _, key_id, secret = token.split("_", 2)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        stored = con.execute("SELECT key_id, secret_sha256 FROM emlive_apitoken").fetchall()
        password, staff = con.execute("SELECT password, is_staff FROM auth_user WHERE username = 'ann'").fetchone()
    assert stored == [(key_id, hashlib.sha256(secret.encode()).hexdigest())]
    assert secret not in database.read_bytes().decode("latin-1")  # only its hash is stored
    assert password.startswith("pbkdf2_sha256$") and not staff

    again = _service_cli("user", "add", "ann", "--staff", data_root=tmp_path)  # an update keeps the password
    assert again.returncode == 0 and "user ann updated: staff (every project); dashboard login" in again.stdout

    listed = _service_cli("token", "list", "ann", data_root=tmp_path)
    assert listed.returncode == 0 and listed.stdout.startswith(f"{key_id}  made ") and "never used" in listed.stdout
    revoked = _service_cli("token", "revoke", token, data_root=tmp_path)
    assert revoked.returncode == 0 and f"token {key_id} of ann revoked" in revoked.stdout
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        assert con.execute("SELECT count(*) FROM emlive_apitoken").fetchone() == (0,)


def test_user_and_token_mistakes_are_clear_errors(tmp_path):
    unknown = _service_cli("token", "create", "bob", data_root=tmp_path)
    assert _service_cli("token", "revoke", "0123456789abcdef", data_root=tmp_path).returncode == 2
    assert unknown.returncode == 2 and "no user 'bob'" in unknown.stderr and "emlive user add bob" in unknown.stderr
    assert unknown.stdout == ""
    bad = _service_cli("user", "add", "../root", data_root=tmp_path)
    assert bad.returncode == 2 and "user name '../root'" in bad.stderr
    empty = _service_cli("user", "add", "ann", "--password-stdin", data_root=tmp_path, stdin="")
    assert empty.returncode == 2 and "--password-stdin" in empty.stderr
    nowhere = _service_cli("serve", "--port", 0, data_root=tmp_path / "nowhere")
    assert nowhere.returncode == 2 and "nowhere is not a folder" in nowhere.stderr and "EMLIVE_DATA_ROOT" in nowhere.stderr
