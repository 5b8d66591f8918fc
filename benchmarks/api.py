"""Status latency of the REST API under 50 concurrent clients, on a session of 20,000 exposures.

    .venv/bin/python benchmarks/api.py [--exposures 20000] [--clients 50] [--seconds 25]
                                      [--database-url postgresql://…] [--workers 1]

A session ``p1/ann/grid1`` of the facility layout is recorded with ``--exposures`` exposures
(bulk-created: 90 % processed with motion and CTF rows, 2.5 % failed, the rest found or in
flight, as in a live session). uvicorn serves the whole Django application (middleware, auth,
both APIs) from a subprocess; each client is a keep-alive HTTP/1.1 connection that asks for a
status, waits for the answer and asks again, with no pause, for ``--seconds`` after a warm-up.
Half the clients poll the compatible status (``GET /p1/ann/session/grid1``), half the typed one
(``GET /api/v1/sessions/ID/status``), each with a Bearer token. Printed: requests per second and
latency percentiles (client side, from writing the request to reading the whole answer), per
route and together, and the target (p99 < 100 ms).

``--interval S`` makes each client poll every S seconds (clients spread over the interval), as
facility scripts do, instead of back to back. ``--interface wsgi`` serves Django's WSGI
handler from uvicorn's thread pool instead of its ASGI handler, for comparison.

SQLite by default (a file in a temporary folder); ``--database-url`` for PostgreSQL (the
database must exist and be empty of emlive data: the run creates its own tables there and
does not delete them). With PostgreSQL the run also prints how many connections the server
still holds at the end (each request's connection is closed when it ends under ASGI).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

TOKEN_ENV = "EMLIVE_BENCH_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def populate(url: str, root: Path, n_exposures: int) -> tuple[int, str]:
    """Record the session and its exposures; returns (session id, a member's token)."""
    from emlive.db.setup import setup_database

    setup_database(url)
    from django.db import transaction

    from emlive.acquisition import Acquisition
    from emlive.db import models
    from emlive.db.models import CtfEstimate, Exposure, MotionCorrection

    StepResult = getattr(models, "StepResult", None)  # None in emlive before the step table (to compare)
    from emlive.web import control
    from emlive.web.access import add_user, create_token

    raw = root / "p1" / "sessions" / "ann" / "grid1" / "raw"
    raw.mkdir(parents=True)
    acquisition = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
    session = control.start_processing(root, "p1", "ann", "grid1", acquisition)
    rng = np.random.default_rng(0)
    start = datetime.now(UTC) - timedelta(hours=10)
    n_processed, n_failed = int(0.9 * n_exposures), int(0.025 * n_exposures)
    states = (
        [Exposure.State.PROCESSED] * n_processed
        + [Exposure.State.FAILED] * n_failed
        + [Exposure.State.SUBMITTED, Exposure.State.FOUND] * n_exposures
    )[:n_exposures]
    batch = 2000
    out = root / "p1" / "sessions" / "ann" / "grid1" / "processed"
    for first in range(0, n_exposures, batch):
        with transaction.atomic():
            rows = []
            for i in range(first, min(first + batch, n_exposures)):
                found = start + timedelta(seconds=1.8 * i)
                state = states[i]
                rows.append(
                    Exposure(
                        session=session, path=f"FoilHole_{i:06d}_fractions.tiff", size_bytes=400_000_000,
                        mtime_ns=int(found.timestamp() * 1e9), state=state, found_at=found,
                        submitted_at=found if state != Exposure.State.FOUND else None,
                        processed_at=found + timedelta(seconds=20) if state == Exposure.State.PROCESSED else None,
                        failed_at=found + timedelta(seconds=20) if state == Exposure.State.FAILED else None,
                        fail_count=int(state == Exposure.State.FAILED),
                    )
                )  # fmt: skip
            created = Exposure.objects.bulk_create(rows)
            processed = [e for e in created if e.state == Exposure.State.PROCESSED]
            MotionCorrection.objects.bulk_create(
                MotionCorrection(
                    exposure=e, engine="native", engine_version="bench", n_frames=40, pixel_size_a=0.83,
                    shifts_px=np.cumsum(rng.normal(0, 0.5, (40, 2)), axis=0).round(3).tolist(),
                    total_drift_a=float(rng.uniform(2, 30)), early_drift_a=1.0, late_drift_a=1.0,
                    micrograph_path=f"{out}/{e.path}.mrc", dose_weighted_path=f"{out}/{e.path}_DW.mrc",
                    star_path=f"{out}/{e.path}.star",
                )
                for e in processed
            )  # fmt: skip
            CtfEstimate.objects.bulk_create(
                CtfEstimate(
                    exposure=e, engine="native", engine_version="bench",
                    defocus_u_a=float(rng.uniform(8000, 25000)), defocus_v_a=float(rng.uniform(8000, 25000)),
                    azimuth_deg=45.0, cross_correlation=0.2, fit_resolution_a=float(rng.uniform(2.8, 8)),
                    ice_ring_ratio=1.0, output_txt_path="x", avrot_path="x", diagnostic_png_path="x",
                )
                for e in processed
            )  # fmt: skip
            if StepResult is not None:  # every step's result in the generic table, as the pipeline stores them
                StepResult.objects.bulk_create(
                    StepResult(
                        exposure=e, step=step, engine="native", engine_version="bench", finished_at=e.processed_at,
                        result={"n_particles": n} if step == "pick" else {}, metrics=metrics,
                    )
                    for e in processed
                    for n in [int(rng.integers(0, 400))]
                    for step, metrics in (
                        ("motion", {"total_drift_a": 5.0, "early_drift_a": 1.0, "late_drift_a": 1.0}),
                        ("ctf", {"defocus_u_a": 15000.0, "fit_resolution_a": 3.5, "cross_correlation": 0.2}),
                        ("thumbnail", {}),
                        ("pick", {"n_particles": n, "masked_fraction": 0.1}),
                    )
                )  # fmt: skip
    token = create_token(add_user("ann", projects=("p1",)))
    return int(session.pk), token


def serve(url: str, root: str, port: int, interface: str) -> None:
    """The server subprocess: Django on ``url`` serving ``root`` under uvicorn, one process.

    ``asgi``: Django's ASGI handler, as ``emlive serve`` runs it. ``wsgi``: Django's WSGI
    handler in uvicorn's thread pool (uvicorn's own WSGI adapter, deprecated there in favour of
    a2wsgi; for comparison only).
    """
    import uvicorn

    from emlive.db.setup import setup_database

    setup_database(url)
    from emlive.web.api import set_data_root

    set_data_root(root)
    options = {"host": "127.0.0.1", "port": port, "log_level": "warning", "access_log": False}
    if interface == "wsgi":
        from django.core.wsgi import get_wsgi_application

        uvicorn.run(get_wsgi_application(), interface="wsgi", **options)
    else:
        from django.core.asgi import get_asgi_application

        uvicorn.run(get_asgi_application(), **options)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    else:  # chunked
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    return status


async def _client(
    port: int,
    path: str,
    token: str,
    start_s: float,
    end_s: float,
    interval_s: float,
    phase: float,
    out: list[float],
    bad: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    next_s = time.perf_counter() + interval_s * phase  # clients spread over the interval
    try:
        while (t0 := time.perf_counter()) < end_s:
            if interval_s:  # poll on a fixed schedule, like a script's sleep loop
                await asyncio.sleep(max(0.0, next_s - t0))
                t0 = time.perf_counter()
                next_s += interval_s
            writer.write(request)
            status = await _read_response(reader)
            if t0 >= start_s:
                out.append(time.perf_counter() - t0)
                if status != 200:
                    bad.append(status)
    finally:
        writer.close()


async def load(port: int, paths: list[str], token: str, n_clients: int, warmup_s: float, seconds: float, interval_s: float):
    now = time.perf_counter()
    start_s, end_s = now + warmup_s, now + warmup_s + seconds
    latencies: dict[str, list[float]] = {path: [] for path in paths}
    bad: list[int] = []
    await asyncio.gather(
        *(
            _client(
                port, paths[i % len(paths)], token, start_s, end_s, interval_s, i / n_clients,
                latencies[paths[i % len(paths)]], bad,
            )  # fmt: skip
            for i in range(n_clients)
        )
    )
    return latencies, bad


def wait_until_up(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_connections(url: str) -> int | None:
    """Connections the server holds to PostgreSQL (None for SQLite)."""
    if not url.startswith("postgres"):
        return None
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exposures", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--interval", type=float, default=0.0,
        help="each client polls every this many seconds (default 0: asks again as soon as answered)",
    )  # fmt: skip
    parser.add_argument(
        "--interface", choices=("asgi", "wsgi"), default="asgi",
        help="asgi: as emlive serve runs Django (default); wsgi: Django's WSGI handler in uvicorn's thread pool",
    )  # fmt: skip
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument(
        "--target", choices=("status", "exposures"), default="status",
        help="status: the two status routes (default); exposures: pages of the exposures list (first and deep, "
        "curation applied, with every step's metrics)",
    )  # fmt: skip
    parser.add_argument("--serve", nargs=4, metavar=("URL", "ROOT", "PORT", "INTERFACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]), args.serve[3])
        return

    from emlive.db.setup import sqlite_url

    with tempfile.TemporaryDirectory(prefix="emlive-api-bench-") as tmp:
        root = Path(tmp) / "facility"
        url = args.database_url or sqlite_url(Path(tmp) / "emlive.sqlite3")
        t0 = time.perf_counter()
        session_id, token = populate(url, root, args.exposures)
        print(f"recorded {args.exposures} exposures in {time.perf_counter() - t0:.1f} s")
        from django.db import connections

        connections.close_all()
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", url, str(root), str(port), args.interface], env=os.environ | {"EMLIVE_CONFIG": ""}
        )
        try:
            wait_until_up(port, proc)
            paths = {
                "status": ["/p1/ann/session/grid1", f"/api/v1/sessions/{session_id}/status"],
                "exposures": [
                    f"/api/v1/sessions/{session_id}/exposures?limit=100",
                    f"/api/v1/sessions/{session_id}/exposures?limit=100&offset=9000&curation=accepted",
                ],
            }[args.target]
            cpu_before = cpu_seconds(proc.pid)
            latencies, bad = asyncio.run(
                load(port, paths, token, args.clients, args.warmup, args.seconds, args.interval)
            )
            server_cpu_s = cpu_seconds(proc.pid) - cpu_before
            held = open_connections(url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(args, url, latencies, bad, held, server_cpu_s)


def _row(name: str, values: list[float], seconds: float) -> str:
    ms = np.asarray(values) * 1e3
    p50, p95, p99, top = np.percentile(ms, [50, 95, 99, 100]) if len(ms) else (float("nan"),) * 4
    return f"| {name} | {len(ms)} | {len(ms) / seconds:.0f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {top:.1f} |"


def report(
    args: argparse.Namespace,
    url: str,
    latencies: dict[str, list[float]],
    bad: list[int],
    held: int | None,
    server_cpu_s: float,
) -> None:
    load1, load5, _ = os.getloadavg()
    every = [v for values in latencies.values() for v in values]
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load1:.2f} / {load5:.2f}), Python {platform.python_version()}"
    )
    pacing = f"each polling every {args.interval:g} s" if args.interval else "back to back"
    print(
        f"database: {url.split('://', 1)[0]}; {args.exposures} exposures; {args.clients} clients {pacing} "
        f"for {args.seconds:.0f} s; Django {args.interface.upper()} under uvicorn\n"
    )
    print("| route | requests | per second | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, values in latencies.items():
        print(_row(f"`GET {path}`", values, args.seconds))
    print(_row("both", every, args.seconds))
    p99 = float(np.percentile(np.asarray(every) * 1e3, 99)) if every else float("nan")
    n = len(every)
    print(f"\nnon-200 answers: {len(bad)}" + (f" ({sorted(set(bad))})" if bad else ""))
    print(
        f"server CPU: {server_cpu_s:.1f} s over the run including warm-up "
        f"({1e3 * server_cpu_s / max(n, 1):.2f} ms per measured request; "
        f"{server_cpu_s / (args.seconds + args.warmup):.0%} of one CPU)"
    )
    if held is not None:
        print(f"server connections to PostgreSQL after the run: {held}")
    print(f"p99 {p99:.1f} ms: target < 100 ms {'met' if p99 < 100 else 'MISSED'}")


if __name__ == "__main__":
    main()
