"""Where the work runs: a Dask client on a local cluster (Slurm and friends come later)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from distributed import Client, LocalCluster

from distributed.diagnostics.plugin import WorkerPlugin

from emlive.config import ClusterSettings
from emlive.tools import ToolsSettings, configure_tools


def worker_count(settings: ClusterSettings) -> int:
    return settings.n_workers or len(settings.gpu_ids) or os.cpu_count() or 1


@contextlib.contextmanager
def local_client(settings: ClusterSettings) -> Iterator[Client]:
    """A client on a LocalCluster of worker processes, closed on exit."""
    cluster = LocalCluster(
        n_workers=worker_count(settings),
        threads_per_worker=settings.threads_per_worker,
        processes=True,
        resources={"GPU": 1} if settings.gpu_ids else None,
        memory_limit=settings.memory_limit,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


class ToolsPlugin(WorkerPlugin):
    """Gives every worker process the ``[tools]`` settings and, on a local GPU worker, its GPU.

    Local workers are numbered 0…n-1; worker ``i`` uses ``gpu_ids[i % len(gpu_ids)]``, which
    reaches the tools as ``CUDA_VISIBLE_DEVICES`` (:func:`emlive.tools.run_tool`). Batch-system
    workers get their GPUs from the batch system, which sets that variable itself.
    """

    name = "emlive-tools"

    def __init__(self, tools: ToolsSettings, gpu_ids: list[int]) -> None:
        self.tools = tools
        self.gpu_ids = list(gpu_ids)

    def setup(self, worker: Any) -> None:
        index = worker.name
        gpu_id = self.gpu_ids[index % len(self.gpu_ids)] if self.gpu_ids and isinstance(index, int) else None
        configure_tools(self.tools, gpu_id=gpu_id)
