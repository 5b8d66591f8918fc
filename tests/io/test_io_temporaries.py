"""Temporaries left by killed writers: removed when their writer is gone, never a live one's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from emlive.io.atomic import atomic_path, is_temporary_name, remove_abandoned_temporaries, temporary_prefix

NOW_S = 2_000_000_000.0
HOUR_S = 3600.0


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _aged(path, age_s: float):
    os.utime(path, (NOW_S - age_s, NOW_S - age_s))
    return path


def test_temporary_names_say_which_process_on_which_host_wrote_them(tmp_path):
    prefix = temporary_prefix("m0")
    assert prefix.startswith(f".m0.tmp-{os.getpid()}@") and prefix.endswith("-")
    with atomic_path(tmp_path / "m0.png") as tmp:
        assert tmp.name.startswith(prefix) and tmp.suffix == ".png" and is_temporary_name(tmp)
        tmp.write_bytes(b"x")


def test_a_dead_writers_temporaries_on_this_host_go_at_once_a_live_ones_stay(tmp_path):
    here = temporary_prefix("x").split("@", 1)[1]  # "<host>-"
    thumbs = tmp_path / "thumbnail"
    thumbs.mkdir()
    dead = thumbs / f".m0.tmp-{_dead_pid()}@{here}0a1b2c3d.png"
    dead.write_bytes(b"half a picture")
    live = thumbs / f"{temporary_prefix('m1')}0a1b2c3d.png"  # this process: alive
    live.write_bytes(b"being written")
    work = tmp_path / "ctf" / f".m2.tmp-ctffind-{_dead_pid()}@{here}k3j_x9qz"  # a tool's work folder
    work.mkdir(parents=True)
    (work / "out.txt").write_text("partial")
    with tempfile.TemporaryDirectory(prefix=temporary_prefix("m3", "relion"), dir=tmp_path) as running:
        removed = remove_abandoned_temporaries(tmp_path, now_s=NOW_S)
        assert os.path.isdir(running)
    assert sorted(removed) == sorted([dead, work])
    assert not dead.exists() and not work.exists() and live.exists()


def test_other_hosts_and_unsigned_temporaries_go_only_once_untouched_for_an_hour(tmp_path):
    young = tmp_path / ".m0.tmp-12@gpu-node-07-0a1b2c3d.mrc"  # a Slurm worker writing it
    young.write_bytes(b"x")
    _aged(young, 10 * 60)
    old = tmp_path / ".m1.tmp-12@gpu-node-07-0a1b2c3d.mrc"
    old.write_bytes(b"x")
    _aged(old, 2 * HOUR_S)
    legacy = tmp_path / ".m2.tmp-4242-0a1b2c3d.mrc"  # an older version's name: no host
    legacy.write_bytes(b"x")
    _aged(legacy, 2 * HOUR_S)
    busy = tmp_path / ".m3.tmp-ctffind-abc123"  # a folder whose files are still being written
    busy.mkdir()
    (busy / "spectrum.mrc").write_bytes(b"x")
    _aged(busy, 2 * HOUR_S)
    _aged(busy / "spectrum.mrc", 60)
    kept = tmp_path / "m4.mrc"  # not a temporary
    kept.write_bytes(b"x")
    _aged(kept, 100 * HOUR_S)

    removed = remove_abandoned_temporaries(tmp_path, now_s=NOW_S)

    assert sorted(removed) == sorted([old, legacy])
    assert young.exists() and busy.exists() and kept.exists()


def test_skipped_folders_and_symbolic_links_are_not_entered(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    movie = raw / ".m0.tmp-12-0a1b2c3d.tif"  # some transfer program's, in the movies' folder
    movie.write_bytes(b"x")
    _aged(movie, 2 * HOUR_S)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    other = elsewhere / ".m1.tmp-12-0a1b2c3d.mrc"
    other.write_bytes(b"x")
    _aged(other, 2 * HOUR_S)
    (tmp_path / "link").symlink_to(elsewhere)

    assert remove_abandoned_temporaries(tmp_path, now_s=NOW_S, skip=[raw]) == []
    assert movie.exists() and other.exists()
