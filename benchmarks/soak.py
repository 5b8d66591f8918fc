"""Soak with faults: a live session through ``emlive serve`` while a fault injector breaks things.

A simulated microscope writes ``--movies`` small MRC movies (256x256x8 by default) into a
session's ``raw/``, one at a time, atomically, at ``--rate`` movies per second. ``emlive serve``
(API + controller, a local cluster of ``--workers`` workers) processes them into ``processed/``
and a PostgreSQL database of its own (created on the server of ``EMLIVE_TEST_POSTGRES_URL`` and
dropped at the end). Meanwhile ``--faults`` faults strike at random moments drawn from
``--seed`` (printed, so a run can be repeated):

- ``service``: SIGKILL of the service's process group (controller, API and its local workers),
  then a restart, as a supervisor (systemd ``Restart=always``) would do; two thirds of the faults;
- ``worker``: SIGKILL of one local Dask worker process;
- ``postgres``: ``pg_ctlcluster VERSION NAME restart`` of the database server;
- ``disk-full``: ``processed/`` is a small tmpfs; a ballast file fills it, then is deleted;
- ``read-only``: ``processed/`` is remounted read-only for a while (root ignores permissions,
  so chmod would not make writes fail), then read-write again;
- ``slurm`` (``--slurm``, with a one-node Slurm up: ``scripts/start-slurm.sh``): the service's
  workers are Slurm jobs and one is cancelled (``scancel``); without it, reported as not
  exercised.

``disk-full`` and ``read-only`` need root (mounts); without it they are reported as not
exercised. At the end (every movie done, or ``--bound-s`` after the last fault) it counts:

- lost: a movie with no result and no failure;
- duplicated: two rows for one exposure or step, or a step's checkpoint (sidecar) written again
  after it existed (a result computed twice);
- stuck: not finished within ``--bound-s`` after the faults stopped and the last movie arrived;
- recovery time after each fault: from its end (service restarted, disk freed …) until the next
  exposure is stored;
- extra work: exposures processed again, as a share of the movies: those in flight when the
  service was killed (redone from their last step checkpoint), plus any step computed again
  after its checkpoint existed (counted in thirds of an exposure). A task Dask reruns after a
  worker kill is not seen;
- files left half-written: temporaries in ``processed/``, MRC files whose header and size
  disagree, sidecars that do not parse.

The last line reads ``lost 0, duplicated 0, stuck 0, faults 30, movies 2000, recovery p50 X s
max Y s, extra work Z %``.

    sudo .venv/bin/python benchmarks/soak.py --movies 2000 --faults 30 --seed 1
    .venv/bin/python benchmarks/soak.py --movies 200 --faults 8 --rate 4   # the CI test's size
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT, USER, SESSION = "soak", "soak", "s1"
STEPS = ("motion", "ctf", "thumbnail")
FAULT_HOLD_S = 6.0  # how long a full or read-only output folder lasts


@dataclass
class Fault:
    kind: str
    at_s: float  # seconds after the first movie, when it strikes
    started_s: float = 0.0  # wall clock (time.time)
    ended_s: float = 0.0
    note: str = ""
    recovery_s: float | None = None


@dataclass
class Soak:
    args: argparse.Namespace
    root: Path
    raw: Path
    processed: Path
    database_url: str
    env: dict[str, str]
    port: int
    pg_cluster: tuple[str, str] | None
    mounted: bool
    log_path: Path
    service: subprocess.Popen | None = None
    restarts: int = 0
    crashes: int = 0  # the service died without being killed
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: str = ""

    # --- the service -------------------------------------------------------------------------

    def start_service(self) -> None:
        log = open(self.log_path, "ab")
        self.service = subprocess.Popen(
            [sys.executable, "-m", "emlive", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
        )
        log.close()

    def kill_service(self) -> None:
        assert self.service is not None
        try:
            os.killpg(self.service.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.service.wait()
        _wait_group_gone(self.service.pid)

    def stop_service(self) -> None:
        if self.service is None or self.service.poll() is not None:
            return
        os.killpg(self.service.pid, signal.SIGTERM)
        try:
            self.service.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.service.pid, signal.SIGKILL)
            self.service.wait()
        _wait_group_gone(self.service.pid)

    def supervise(self) -> None:
        """Restart the service if it died without being killed (and count it)."""
        with self.lock:
            if self.service is not None and self.service.poll() is not None:
                self.crashes += 1
                print(f"  the service exited by itself (code {self.service.returncode}); restarting it", flush=True)
                _wait_group_gone(self.service.pid)
                self.start_service()

    def api(self, path: str, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.loads(response.read())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def worker_pids(self) -> list[int]:
        assert self.service is not None
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.service.pid)], capture_output=True, text=True)
        return [int(line.split(None, 1)[0]) for line in out.stdout.splitlines()
                if "spawn_main" in line and "resource_tracker" not in line]

    # --- faults ------------------------------------------------------------------------------

    def strike(self, fault: Fault) -> None:
        fault.started_s = time.time()
        match fault.kind:
            case "service":
                with self.lock:
                    self.kill_service()
                    self.restarts += 1
                    self.start_service()
            case "worker":
                deadline = time.monotonic() + 60  # (the service may be starting after a kill)
                while not (pids := self.worker_pids()) and time.monotonic() < deadline:
                    time.sleep(0.5)
                if pids:
                    pid = random.Random(fault.at_s).choice(pids)
                    os.kill(pid, signal.SIGKILL)
                    fault.note = f"pid {pid}"
                else:
                    fault.note = "no worker came up in 60 s"
            case "postgres":
                assert self.pg_cluster is not None
                subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *self.pg_cluster, "restart"], check=True, capture_output=True)
            case "disk-full":
                ballast = self.processed / "ballast.bin"
                size = _fill(ballast)
                fault.note = f"{size / 1e6:.0f} MB ballast; a write {_write_fails(self.processed)}"
                time.sleep(FAULT_HOLD_S)
                ballast.unlink()
            case "read-only":
                subprocess.run(["mount", "-o", "remount,ro", str(self.processed)], check=True)
                fault.note = f"a write {_write_fails(self.processed)}"
                time.sleep(FAULT_HOLD_S)
                subprocess.run(["mount", "-o", "remount,rw", str(self.processed)], check=True)
            case "slurm":
                jobs = subprocess.run(["squeue", "-h", "-o", "%i %Z", "-t", "RUNNING"], capture_output=True, text=True)
                ids = [job for job, folder in (line.split(None, 1) for line in jobs.stdout.splitlines())
                       if Path(folder) == self.root]  # this service's (it runs in the soak's folder), no one else's
                if ids:
                    job = random.Random(fault.at_s).choice(ids)
                    subprocess.run(["scancel", job], check=True)
                    fault.note = f"job {job}"
                else:
                    fault.note = "no worker job running"
        fault.ended_s = time.time()


def _fill(ballast: Path) -> int:
    """Fill the file system of ``ballast`` to the last byte with it (others write meanwhile, so
    what is free moves: allocate most of it, then write until the file system says it is full).
    Returns the ballast's bytes."""
    with open(ballast, "wb", buffering=0) as fh:
        free = os.statvfs(ballast.parent)
        size = free.f_bavail * free.f_frsize
        while size > 1 << 20:
            try:
                os.posix_fallocate(fh.fileno(), 0, size)
                break
            except OSError:
                size = size * 9 // 10
        fh.seek(0, os.SEEK_END)
        chunk = bytes(1 << 16)
        try:
            while True:
                fh.write(chunk)
        except OSError:  # full: what was wanted
            pass
        return fh.tell()


def _write_fails(folder: Path) -> str:
    """What writing 1 MB into ``folder`` does now (the proof that a disk fault bites)."""
    probe = folder / "soak-probe.bin"
    try:
        probe.write_bytes(bytes(1 << 20))
    except OSError as err:
        return f"fails: {os.strerror(err.errno) if err.errno else err}"
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:  # read-only: it was not created either
            pass
    return "succeeds (the fault did not bite)"


def _wait_group_gone(pgid: int, timeout_s: float = 30.0) -> None:
    """Wait until no process of the group is left (its workers exit after the kill)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def plan_faults(rng: random.Random, n_faults: int, *, span_s: float, kinds: list[str]) -> list[Fault]:
    """``n_faults`` faults at random moments in ``span_s`` (at least 4 s apart): two thirds
    service kills, the rest cycling through the other ``kinds``."""
    others = [k for k in ("worker", "slurm", "postgres", "disk-full", "read-only", "worker", "slurm") if k in kinds]
    n_other = min(max(min(n_faults - 1, len(set(others))), n_faults // 3), n_faults) if others else 0
    chosen = ["service"] * (n_faults - n_other) + [others[i % len(others)] for i in range(n_other)]
    rng.shuffle(chosen)
    gap_s = min(4.0, span_s / max(n_faults, 1) / 2)
    times = sorted(rng.uniform(0.05 * span_s, 0.95 * span_s) for _ in chosen)
    for i in range(1, len(times)):
        times[i] = max(times[i], times[i - 1] + gap_s + (FAULT_HOLD_S if chosen[i - 1] in ("disk-full", "read-only") else 0))
    return [Fault(kind, at_s) for kind, at_s in zip(chosen, times, strict=True)]


# --- setup -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _pg_cluster(url: str) -> tuple[str, str] | None:
    """(version, name) of the local PostgreSQL cluster serving ``url``'s port, from pg_lsclusters."""
    if shutil.which("pg_lsclusters") is None:
        return None
    port = str(urlsplit(url).port or 5432)
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == port:
            return parts[0], parts[1]
    return None


def _psql(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as con:
        cur = con.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _query(url: str, sql: str, params: tuple = (), timeout_s: float = 60.0) -> list[tuple]:
    """A query that waits out a database restart."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _psql(url, sql, params)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _templates(root: Path, args: argparse.Namespace) -> list[bytes]:
    from emlive.synth.session import write_session

    write_session(root / "templates", n_movies=8, shape=(args.size, args.size), n_frames=args.frames, formats=("mrc",),
                  seed=args.seed, pixel_size_a=1.0, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
    return [p.read_bytes() for p in sorted((root / "templates" / "raw").glob("*.mrc"))]


def _microscope(raw: Path, templates: list[bytes], n_movies: int, rate: float, t0: float, done: threading.Event) -> None:
    from emlive.io.atomic import atomic_write_bytes

    for i in range(n_movies):
        if (wait_s := t0 + i / rate - time.time()) > 0:
            time.sleep(wait_s)
        atomic_write_bytes(raw / f"movie_{i:05d}.mrc", templates[i % len(templates)])
    done.set()


class Checkpoints:
    """Every version of every step sidecar seen in ``processed/`` (inode and mtime): a sidecar
    seen again with another is a checkpoint written again."""

    def __init__(self, processed: Path) -> None:
        self.processed = processed
        self.versions: dict[str, set[tuple[int, int]]] = {}

    def scan(self) -> None:
        for step in STEPS:
            try:
                entries = list(os.scandir(self.processed / step))
            except OSError:
                continue
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    self.versions.setdefault(f"{step}/{entry.name}", set()).add((st.st_ino, st.st_mtime_ns))

    @property
    def rewritten(self) -> int:
        return sum(len(v) - 1 for v in self.versions.values())


def _left_half_written(processed: Path) -> list[str]:
    import mrcfile

    from emlive.io.atomic import is_temporary_name

    bad: list[str] = []
    for path in processed.rglob("*"):
        if is_temporary_name(path):
            bad.append(f"{path} (temporary)")
        elif path.suffix == ".mrc":
            try:
                with mrcfile.open(path, permissive=False) as mrc:  # header and size agree
                    assert mrc.data is not None
            except Exception as err:  # any unreadable MRC is half-written
                bad.append(f"{path} ({err})")
        elif path.suffix == ".json" and path.parent.name in STEPS:
            try:
                json.loads(path.read_text())
            except Exception as err:
                bad.append(f"{path} ({err})")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, default=2000)
    parser.add_argument("--faults", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument("--rate", type=float, default=2.0, help="movies per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="movie width and height, px")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--bound-s", type=float, default=300.0, help="finish within this after the faults stop")
    parser.add_argument("--slurm", action="store_true", help="workers as Slurm jobs; cancel one as a fault")
    parser.add_argument("--postgres-url", default=os.environ.get("EMLIVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--keep", action="store_true", help="keep the folders and database")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    args.seed = seed
    rng = random.Random(seed)

    root = Path(tempfile.mkdtemp(prefix=f"emlive-soak-{seed}-"))
    session_dir = root / "data" / PROJECT / "sessions" / USER / SESSION
    raw, processed = session_dir / "raw", session_dir / "processed"
    raw.mkdir(parents=True)
    processed.mkdir()
    is_root = os.geteuid() == 0
    mounted = False
    if is_root:
        size_mb = max(256, args.movies * args.size * args.size * 12 // 1_000_000 + 128)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(processed)], check=True)
        mounted = True
    database = f"emlive_soak_{seed}_{os.getpid()}"
    admin_url = args.postgres_url
    _psql(admin_url, f'CREATE DATABASE "{database}"')
    database_url = _with_database(admin_url, database)
    pg_cluster = _pg_cluster(admin_url) if is_root or os.environ.get("USER") == "postgres" else None

    kinds = ["service", "worker"]
    not_exercised = []
    for kind, available, why in (
        ("postgres", pg_cluster is not None, "no local PostgreSQL cluster to restart (pg_ctlcluster, as root)"),
        ("disk-full", mounted, "needs root (a tmpfs for the output folder)"),
        ("read-only", mounted, "needs root (a read-only remount)"),
        ("slurm", args.slurm and shutil.which("scancel") is not None, "no --slurm (scripts/start-slurm.sh, then --slurm)"),
    ):
        (kinds.append(kind) if available else not_exercised.append(f"{kind}: {why}"))
    if args.slurm:
        kinds.remove("worker")  # the workers are Slurm jobs
    env = os.environ | {
        "EMLIVE_CONFIG": "",
        "EMLIVE_DATA_ROOT": str(root / "data"),
        "EMLIVE_DATABASE_URL": database_url,
        "EMLIVE_WATCH__SETTLE_S": "1",
        "EMLIVE_WATCH__POLL_INTERVAL_S": "1",
        "EMLIVE_SCHEDULER__RETRY_BACKOFF_S": "2",
        "EMLIVE_SCHEDULER__MAX_ATTEMPTS": "5",
        "EMLIVE_CLUSTER__N_WORKERS": str(args.workers),
        "EMLIVE_CLUSTER__THREADS_PER_WORKER": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if args.slurm:
        env |= {"EMLIVE_CLUSTER__KIND": "slurm", "EMLIVE_CLUSTER__MEMORY": "2GB", "EMLIVE_CLUSTER__MIN_WORKERS": str(args.workers)}
    soak = Soak(args, root, raw, processed, database_url, env, _free_port(), pg_cluster, mounted, root / "service.log")
    print(f"soak: seed {seed}, {args.movies} movies of {args.size}x{args.size}x{args.frames} at {args.rate}/s, "
          f"{args.faults} faults, {args.workers} workers; folders {root}; database {database}", flush=True)
    span_s = args.movies / args.rate
    faults = plan_faults(rng, args.faults, span_s=span_s, kinds=kinds)
    templates = _templates(root, args)
    checkpoints = Checkpoints(processed)
    code = 1
    try:
        cli = [sys.executable, "-m", "emlive"]
        subprocess.run([*cli, "user", "add", USER, "--staff"], env=env, check=True, capture_output=True)
        created = subprocess.run([*cli, "token", "create", USER], env=env, check=True, capture_output=True, text=True)
        soak.token = created.stdout.strip().splitlines()[-1].strip()
        soak.start_service()
        soak.api(f"/{PROJECT}/{USER}/session/{SESSION}/start-processing?apix=1.0&fmdose=1.0&kev=300", timeout_s=120)
        arrived = threading.Event()
        t0 = time.time() + 2.0
        threading.Thread(target=_microscope, args=(raw, templates, args.movies, args.rate, t0, arrived), daemon=True).start()
        for fault in faults:
            while time.time() < t0 + fault.at_s:
                soak.supervise()
                checkpoints.scan()
                time.sleep(min(1.0, max(0.0, t0 + fault.at_s - time.time())))
            soak.strike(fault)
            print(f"  {fault.started_s - t0:7.1f} s  {fault.kind:9s} {fault.note}", flush=True)
        arrived.wait()
        calm_s = time.time()
        print(f"faults over; last movie written {calm_s - t0:.0f} s after the first; waiting for the rest", flush=True)
        done = 0
        while time.time() - calm_s < args.bound_s:
            soak.supervise()
            checkpoints.scan()
            (done,) = _query(database_url, "SELECT count(*) FROM emlive_exposure WHERE state IN ('processed', 'failed')")[0]
            if done >= args.movies:
                break
            time.sleep(1.0)
        stuck = args.movies - done
        finished_s = time.time() - calm_s
        checkpoints.scan()
        soak.stop_service()
        code = report(soak, faults, checkpoints, t0=t0, stuck=stuck, finished_s=finished_s, not_exercised=not_exercised)
    finally:
        with soak.lock:
            soak.stop_service()
        if mounted and not args.keep:
            subprocess.run(["umount", "-l", str(processed)], check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            try:
                _query(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', timeout_s=30)
            except Exception as err:
                print(f"could not drop the database {database}: {err}", file=sys.stderr)
    return code


def report(
    soak: Soak, faults: list[Fault], checkpoints: Checkpoints, *, t0: float, stuck: int, finished_s: float,
    not_exercised: list[str],
) -> int:
    url, n_movies = soak.database_url, soak.args.movies
    states = dict(_query(url, "SELECT path, state FROM emlive_exposure"))
    movies = sorted(p.name for p in soak.raw.glob("*.mrc"))
    lost = [m for m in movies if states.get(m) not in ("processed", "failed")]
    failed = _query(url, "SELECT path, fail_reason FROM emlive_exposure WHERE state = 'failed'")
    rows_twice = sum(n - 1 for (n,) in _query(url, """
        SELECT count(*) FROM emlive_exposure GROUP BY session_id, path HAVING count(*) > 1
        UNION ALL SELECT count(*) FROM emlive_motioncorrection GROUP BY exposure_id HAVING count(*) > 1
        UNION ALL SELECT count(*) FROM emlive_ctfestimate GROUP BY exposure_id HAVING count(*) > 1
        UNION ALL SELECT count(*) FROM emlive_stepresult GROUP BY exposure_id, step HAVING count(*) > 1"""))
    duplicated = rows_twice + checkpoints.rewritten
    stored = sorted(t.timestamp() for (t,) in _query(url, "SELECT processed_at FROM emlive_exposure WHERE processed_at IS NOT NULL"))
    for fault in faults:
        later = [t for t in stored if t > fault.ended_s]
        fault.recovery_s = later[0] - fault.ended_s if later else None
    recoveries = [f.recovery_s for f in faults if f.recovery_s is not None]
    final_sidecars = len(checkpoints.versions)
    log = soak.log_path.read_text(errors="replace")
    redone = sum(int(m) for m in re.findall(r"(\d+) exposures left in flight by an earlier", log))
    extra = 100.0 * (redone + checkpoints.rewritten / len(STEPS)) / n_movies
    half_written = _left_half_written(soak.processed)
    print(f"\n{'at s':>7}  {'fault':9s} {'recovery s':>10}  note")
    for fault in faults:
        rec = "—" if fault.recovery_s is None else f"{fault.recovery_s:.1f}"
        print(f"{fault.started_s - t0:7.1f}  {fault.kind:9s} {rec:>10}  {fault.note}")
    kinds = sorted({f.kind for f in faults})
    print("\nfaults by kind: " + ", ".join(f"{k} {sum(f.kind == k for f in faults)}" for k in kinds))
    for line in not_exercised:
        print(f"not exercised: {line}")
    print(f"exposures in flight at a service kill, redone from their last checkpoint: {redone}")
    print(f"service restarts {soak.restarts} (killed), {soak.crashes} exits by itself; "
          f"finished {finished_s:.0f} s after the faults stopped")
    print(f"processed {sum(s == 'processed' for s in states.values())}, failed {len(failed)}; "
          f"rows twice {rows_twice}, checkpoints written again {checkpoints.rewritten} of {final_sidecars}")
    for path, reason in failed[:10]:
        print(f"  failed {path}: {reason[:200]}")
    for movie in lost[:10]:
        print(f"  lost {movie} (state {states.get(movie, 'not recorded')})")
    for item in half_written[:10]:
        print(f"  half-written: {item}")
    print(f"half-written files left: {len(half_written)}; seed {soak.args.seed}")
    p50 = statistics.median(recoveries) if recoveries else float("nan")
    worst = max(recoveries) if recoveries else float("nan")
    print(f"lost {len(lost)}, duplicated {duplicated}, stuck {stuck}, faults {len(faults)}, movies {n_movies}, "
          f"recovery p50 {p50:.1f} s max {worst:.1f} s, extra work {extra:.1f} %", flush=True)
    return 0 if not lost and not duplicated and not stuck and not half_written and len(movies) == n_movies else 1


if __name__ == "__main__":
    sys.exit(main())
