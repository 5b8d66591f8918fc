"""Settling rules of the watcher: what counts as a complete movie, and when."""

import os
import time

import numpy as np
import pytest

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


@pytest.mark.parametrize("events", [False, True], ids=["scan", "events"])
def test_watcher_reports_complete_movies_once_and_broken_ones_with_a_reason(tmp_path, events):
    _write_movie(tmp_path / "good.mrc")
    sub = tmp_path / "sub"
    sub.mkdir()
    _write_movie(sub / "deep.mrc")
    (tmp_path / "empty.mrc").write_bytes(b"")
    os.utime(tmp_path / "empty.mrc", (1_000_000_000, 1_000_000_000))
    (tmp_path / ".x.tmp-1-ab.mrc").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a movie")

    watcher = new_watcher(tmp_path, settle_s=1, incomplete_timeout_s=60, events=events)
    assert watcher.poll(now_s=2e9, final=False) == []
    found = {f.rel_path: f for f in watcher.poll(now_s=2e9, final=False)}
    assert set(found) == {"good.mrc", "sub/deep.mrc"}  # the empty file gets time to be written
    assert all(f.reason is None for f in found.values())
    assert watcher.unsettled == 1

    found = watcher.poll(now_s=2e9 + 61, final=False)
    assert [f.rel_path for f in found] == ["empty.mrc"]
    assert "empty.mrc" in found[0].reason
    assert watcher.poll(now_s=2e9 + 62, final=False) == []
    watcher.close()


@pytest.mark.parametrize("events", [False, True], ids=["scan", "events"])
def test_a_rewritten_movie_is_reported_again(tmp_path, events):
    _write_movie(tmp_path / "m.mrc")
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=0, events=events)
    watcher.poll(now_s=2e9, final=True)
    assert len(watcher.poll(now_s=2e9, final=True)) == 1
    _write_movie(tmp_path / "m.mrc", n=4)
    os.utime(tmp_path / "m.mrc", (1_000_000_100, 1_000_000_100))
    assert watcher.poll(now_s=2e9, final=True) == []  # changed: must look the same next time
    assert _found_within(watcher, now_s=2e9) == ["m.mrc"]  # (events come a moment later)
    watcher.close()


def _found_within(watcher, *, now_s, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := watcher.poll(now_s=now_s, final=True):
            return [f.rel_path for f in found]
        time.sleep(0.05)
    return []


# --- the cost of a poll does not grow with the folder -------------------------------------------


def test_an_incremental_scan_lists_only_folders_that_changed(tmp_path, monkeypatch):
    """Once its movies are reported, a quiet folder is not listed again (its files not looked at);
    a folder where a movie arrives is, and the new movie is found."""
    import emlive.runtime.watcher as watcher_module

    for square in ("sq1", "sq2"):
        (tmp_path / square).mkdir()
        for i in range(20):
            _write_movie(tmp_path / square / f"m{i}.mrc")
    os.utime(tmp_path / "sq1", (1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "sq2", (1_000_000_000, 1_000_000_000))
    os.utime(tmp_path, (1_000_000_000, 1_000_000_000))
    watcher = new_watcher(tmp_path, settle_s=1, incomplete_timeout_s=60, events=False)
    watcher.poll(now_s=2e9, final=False)
    assert len(watcher.poll(now_s=2e9 + 1, final=False)) == 40
    watcher.poll(now_s=2e9 + 3, final=False)  # listed once more, _RACY_S after the folders were seen

    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(watcher_module.os, "scandir", counting_scandir)
    assert watcher.poll(now_s=2e9 + 4, final=False) == []
    assert listed == [] and watcher.tracked == {}
    _write_movie(tmp_path / "sq2" / "new.mrc")  # an old mtime: settles at once
    assert watcher.poll(now_s=2e9 + 5, final=False) == []
    assert [f.rel_path for f in watcher.poll(now_s=2e9 + 6, final=False)] == ["sq2/new.mrc"]
    assert set(listed) == {"sq2"}


def test_an_incremental_scan_finds_new_folders_removed_files_and_rewrites(tmp_path):
    _write_movie(tmp_path / "a.mrc")
    (tmp_path / "b.mrc").write_bytes(b"broken")
    os.utime(tmp_path / "b.mrc", (1_000_000_000, 1_000_000_000))
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=0, events=False, full_rescan_s=1e9)
    watcher.poll(now_s=2e9, final=True)
    assert {f.rel_path: f.reason is None for f in watcher.poll(now_s=2e9, final=True)} == {"a.mrc": True, "b.mrc": False}

    (tmp_path / "later" / "deep").mkdir(parents=True)  # a new folder, with a movie two levels down
    _write_movie(tmp_path / "later" / "deep" / "c.mrc")
    (tmp_path / "a.mrc").unlink()
    with open(tmp_path / "b.mrc", "r+b") as fh:  # the broken one rewritten in place (same inode)
        fh.truncate(0)
        fh.write(_movie_bytes(tmp_path))
    os.utime(tmp_path / "b.mrc", (1_000_000_200, 1_000_000_200))
    watcher.poll(now_s=2e9 + 10, final=True)
    found = {f.rel_path: f.reason for f in watcher.poll(now_s=2e9 + 10, final=True)}
    assert found == {"later/deep/c.mrc": None, "b.mrc": None}
    assert "a.mrc" not in watcher.known

    _write_movie(tmp_path / "a.mrc")  # back again: a new movie
    watcher.poll(now_s=2e9 + 20, final=True)
    assert [f.rel_path for f in watcher.poll(now_s=2e9 + 20, final=True)] == ["a.mrc"]


def test_a_movie_rewritten_in_place_is_found_by_the_next_full_scan(tmp_path):
    _write_movie(tmp_path / "a.mrc")
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=0, events=False, full_rescan_s=300)
    watcher.poll(now_s=2e9, final=True)
    assert len(watcher.poll(now_s=2e9, final=True)) == 1
    data = _movie_bytes(tmp_path, n=5)
    with open(tmp_path / "a.mrc", "r+b") as fh:  # no rename: the folder does not change
        fh.write(data)
    os.utime(tmp_path / "a.mrc", (1_000_000_300, 1_000_000_300))
    os.utime(tmp_path, (1_000_000_000, 1_000_000_000))
    assert watcher.poll(now_s=2e9 + 10, final=True) == []
    watcher.poll(now_s=2e9 + 300, final=True)
    assert [f.rel_path for f in watcher.poll(now_s=2e9 + 301, final=True)] == ["a.mrc"]


def test_events_report_movies_arriving_in_new_folders(tmp_path):
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=0, events=True)
    try:
        assert watcher.mode == "events"
        assert watcher.poll(now_s=2e9, final=True) == []
        (tmp_path / "sq1" / "Data").mkdir(parents=True)
        _write_movie(tmp_path / "sq1" / "Data" / "m.mrc")
        _write_movie(tmp_path / "top.mrc")
        found = set(_found_within(watcher, now_s=2e9))
        found |= set(_found_within(watcher, now_s=2e9, timeout_s=2.0))
        assert found == {"sq1/Data/m.mrc", "top.mrc"}
        assert watcher.tracked == {}
    finally:
        watcher.close()


def _movie_bytes(tmp_path, n=3):
    _write_movie(tmp_path / ".bytes.mrc", n=n)
    data = (tmp_path / ".bytes.mrc").read_bytes()
    (tmp_path / ".bytes.mrc").unlink()
    return data


@pytest.mark.parametrize("events", [False, True], ids=["scan", "events"])
def test_a_movie_that_grew_before_it_was_reported_is_not_reported_again_by_a_full_scan(tmp_path, events):
    data = _movie_bytes(tmp_path)
    watcher = new_watcher(tmp_path, settle_s=0, incomplete_timeout_s=60, events=events, full_rescan_s=100)
    try:
        watcher.poll(now_s=2e9, final=False)
        with open(tmp_path / "g.mrc", "wb") as fh:  # written in two goes, seen half way
            fh.write(data[:100])
            fh.flush()
            watcher.poll(now_s=2e9, final=False)
            fh.write(data[100:])
        os.utime(tmp_path / "g.mrc", (1_000_000_000, 1_000_000_000))
        assert _found_within(watcher, now_s=2e9 + 1) == ["g.mrc"]
        watcher.poll(now_s=2e9 + 200, final=False)  # a full scan
        assert watcher.poll(now_s=2e9 + 201, final=False) == [] and watcher.tracked == {}
    finally:
        watcher.close()
