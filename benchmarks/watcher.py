"""Watcher benchmark: what watching a large raw/ folder costs, per mode.

A folder of --movies tiny movies (valid 2-frame MRC files, a few hundred bytes each, spread
over --folders folders), all already reported; then the watcher is polled every --poll-s for
--seconds while a separate process drops --arrivals new movies into it (written under a
temporary name and renamed, as transfer programs do). Measured: this process's CPU time
(``time.process_time``: every thread, watchdog's included; the writer's is not counted) per
wall-clock second of the measured stretch, i.e. the share of one CPU the watcher takes; and
the one-time cost of the first scan that finds every movie.

Modes: ``events`` (inotify through watchdog), ``scan`` (the incremental scan used where inotify
cannot see other machines' writes), ``full`` (the watcher before: every file's stat each poll).

    .venv/bin/python benchmarks/watcher.py [--movies 20000] [--seconds 60] [--poll-s 1] [--arrivals 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emlive.io.errors import MovieFormatError
from emlive.io.movie import check_movie_complete
from emlive.io.mrc import write_mrc_atomic
from emlive.runtime.watcher import Found, new_watcher, scan_movies, settle

OLD_S = 1_000_000_000  # mtime of the movies already there: they settle at once

WRITER = """
import os, sys, time
raw, data, n, every_s, first_s = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
time.sleep(first_s)
for i in range(n):
    tmp = os.path.join(raw, f".new_{i:03d}.tmp-{os.getpid()}@bench-0.mrc")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, os.path.join(raw, f"new_{i:03d}.mrc"))
    time.sleep(every_s)
"""


def _tiny_movie(folder: Path) -> bytes:
    path = folder / ".template.mrc"
    write_mrc_atomic(path, np.ones((2, 8, 8), np.int8), pixel_size_a=1.0)
    data = path.read_bytes()
    path.unlink()
    return data


def make_folder(raw: Path, n_movies: int, n_folders: int, data: bytes) -> None:
    folders = [raw] if n_folders == 1 else [raw / f"GridSquare_{i:04d}" / "Data" for i in range(n_folders)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_movies):
        path = folders[i % len(folders)] / f"movie_{i:06d}.mrc"
        with open(path, "wb") as fh:
            fh.write(data)
        os.utime(path, (OLD_S, OLD_S))


@dataclass
class FullScanWatcher:
    """The watcher before this benchmark's change: a stat of every file under raw/ each poll."""

    raw_dir: Path
    settle_s: float
    tracked: dict

    def poll(self, *, now_s: float, final: bool) -> list[Found]:
        self.tracked, settled = settle(self.tracked, scan_movies(self.raw_dir), now_s=now_s, settle_s=self.settle_s)
        found = []
        for rel_path in settled:
            item = self.tracked[rel_path]
            try:
                check_movie_complete(self.raw_dir / rel_path)
            except MovieFormatError:
                continue
            self.tracked[rel_path] = type(item)(item.stat, item.settled_since_s, True)
            found.append(Found(rel_path, item.stat))
        return found

    def close(self) -> None:
        pass

    mode = "full"


def run_mode(mode: str, raw: Path, data: bytes, args: argparse.Namespace) -> dict[str, float]:
    settle_s = 1.0
    if mode == "full":
        watcher = FullScanWatcher(raw, settle_s, {})
    else:
        watcher = new_watcher(raw, settle_s=settle_s, incomplete_timeout_s=60, events=mode == "events")
        assert watcher.mode == mode, f"asked for {mode}, got {watcher.mode}"
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        reported = 0
        while reported < args.movies:  # the first scans: every movie found and reported
            reported += len(watcher.poll(now_s=time.time(), final=False))
        startup_cpu_s, startup_wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        for _ in range(3):  # the folders' "just listed" window (incremental scan) passes
            watcher.poll(now_s=time.time(), final=False)
            time.sleep(args.poll_s)

        template = raw.parent / f"template-{mode}.bin"
        template.write_bytes(data)
        every_s = args.seconds / (args.arrivals + 1)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(raw), str(template), str(args.arrivals),
                                   str(every_s), str(every_s / 2)])
        found: set[str] = set()
        poll_cpu_ms: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        next_s = wall0
        while time.perf_counter() - wall0 < args.seconds:
            before = time.process_time()
            found |= {f.rel_path for f in watcher.poll(now_s=time.time(), final=False)}
            poll_cpu_ms.append(1e3 * (time.process_time() - before))
            next_s += args.poll_s
            time.sleep(max(0.0, next_s - time.perf_counter()))
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        writer.wait()
        deadline = time.perf_counter() + 10  # the last arrival settles
        while len(found) < args.arrivals and time.perf_counter() < deadline:
            found |= {f.rel_path for f in watcher.poll(now_s=time.time(), final=False)}
            time.sleep(args.poll_s)
    finally:
        watcher.close()
    for i in range(args.arrivals):
        (raw / f"new_{i:03d}.mrc").unlink(missing_ok=True)
    return {
        "startup_cpu_s": startup_cpu_s, "startup_wall_s": startup_wall_s, "cpu_share": cpu_s / wall_s,
        "polls": len(poll_cpu_ms), "median_poll_ms": statistics.median(poll_cpu_ms),
        "max_poll_ms": max(poll_cpu_ms), "found": len(found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=1, help="spread over this many GridSquare_*/Data folders")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--arrivals", type=int, default=6)
    parser.add_argument("--modes", default="events,scan,full")
    parser.add_argument("--root", type=Path, default=None, help="where to make the folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="emlive-watcher-", dir=args.root) as tmp:
        raw = Path(tmp) / "raw"
        data = _tiny_movie(Path(tmp))
        started = time.perf_counter()
        make_folder(raw, args.movies, args.folders, data)
        print(f"{args.movies} movies in {args.folders} folder(s) made in {time.perf_counter() - started:.1f} s; "
              f"polled every {args.poll_s} s for {args.seconds} s with {args.arrivals} arrivals; "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| mode | first scan CPU s | watcher CPU share | median poll CPU ms | max poll CPU ms | arrivals found |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode in args.modes.split(","):
            r = run_mode(mode, raw, data, args)
            print(f"| {mode} | {r['startup_cpu_s']:.2f} | {100 * r['cpu_share']:.2f} % | {r['median_poll_ms']:.2f} "
                  f"| {r['max_poll_ms']:.1f} | {r['found']}/{args.arrivals} |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
