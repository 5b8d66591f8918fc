"""Where the work runs: a Dask client on a local cluster (Slurm and friends come later)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from emlive.config import ClusterSettings


def worker_count(settings: ClusterSettings) -> int:
    return settings.n_workers or os.cpu_count() or 1


@contextlib.contextmanager
def local_client(settings: ClusterSettings) -> Iterator[Client]:
    """A client on a LocalCluster of worker processes, closed on exit."""
    cluster = LocalCluster(
        n_workers=worker_count(settings),
        threads_per_worker=settings.threads_per_worker,
        processes=True,
        memory_limit=settings.memory_limit,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()
