"""Settling rules of the watcher: what counts as a complete movie, and when."""

import os

import numpy as np

from emlive.io.mrc import write_mrc_atomic
from emlive.runtime.watcher import FileStat, new_watcher, settle


def test_a_file_settles_only_after_two_identical_scans_and_settle_time():
    stat = FileStat(100, 1_000_000_000_000)  # mtime t=1000 s
    tracked, ready = settle({}, {"a.mrc": stat}, now_s=1001, settle_s=5)
    assert ready == []  # first sight
    tracked, ready = settle(tracked, {"a.mrc": stat}, now_s=1002, settle_s=5)
    assert ready == []  # too recent
    tracked, ready = settle(tracked, {"a.mrc": stat}, now_s=1006, settle_s=5)
    assert ready == ["a.mrc"]


def test_a_growing_file_never_settles_until_it_stops_growing():
    tracked = {}
    for i in range(5):
        tracked, ready = settle(tracked, {"g.tif": FileStat(100 * (i + 1), i)}, now_s=10_000, settle_s=1)
        assert ready == []
    tracked, ready = settle(tracked, {"g.tif": FileStat(500, 4)}, now_s=10_000, settle_s=1)
    assert ready == ["g.tif"]


def _write_movie(path, n=3):
    write_mrc_atomic(path, np.ones((n, 16, 16), np.float32), pixel_size_a=1.0)
    old = 1_000_000_000
    os.utime(path, (old, old))


def test_watcher_reports_complete_movies_once_and_broken_ones_with_a_reason(tmp_path):
    _write_movie(tmp_path / "good.mrc")
    sub = tmp_path / "sub"
    sub.mkdir()
    _write_movie(sub / "deep.mrc")
    (tmp_path / "empty.mrc").write_bytes(b"")
    os.utime(tmp_path / "empty.mrc", (1_000_000_000, 1_000_000_000))
    (tmp_path / ".x.tmp-1-ab.mrc").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a movie")

    watcher = new_watcher(tmp_path, settle_s=1, incomplete_timeout_s=60)
    assert watcher.poll(now_s=2e9, final=False) == []
    found = {f.rel_path: f for f in watcher.poll(now_s=2e9, final=False)}
    assert set(found) == {"good.mrc", "sub/deep.mrc"}  # the empty file gets time to be written
    assert all(f.reason is None for f in found.values())
    assert watcher.unsettled == 1

    found = watcher.poll(now_s=2e9 + 61, final=False)
    assert [f.rel_path for f in found] == ["empty.mrc"]
    assert "empty.mrc" in found[0].reason
    assert watcher.poll(now_s=2e9 + 62, final=False) == []


def test_a_rewritten_movie_is_reported_again(tmp_path):
    _write_movie(tmp_path / "m.mrc")
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=0)
    watcher.poll(now_s=2e9, final=True)
    assert len(watcher.poll(now_s=2e9, final=True)) == 1
    _write_movie(tmp_path / "m.mrc", n=4)
    os.utime(tmp_path / "m.mrc", (1_000_000_100, 1_000_000_100))
    assert watcher.poll(now_s=2e9, final=True) == []
    assert len(watcher.poll(now_s=2e9, final=True)) == 1
