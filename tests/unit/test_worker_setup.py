"""The process flow's Dask workers start warm: the build's modules imported and frozen for
the garbage collector (lunarchive.processing.worker, a Dask preload)."""

from __future__ import annotations

import gc
import sys

from distributed import Client, LocalCluster

from lunarchive.flows._runtime import dask_task_runner
from lunarchive.flows.settings import Settings


def _state() -> tuple[int, bool, int]:
    from xarray.namedarray.parallelcompat import list_chunkmanagers

    # The rehearsal wrote a cube: xarray's chunk managers are already looked up.
    rehearsed = list_chunkmanagers.cache_info().currsize
    return gc.get_freeze_count(), "lunarchive.processing.warp" in sys.modules, rehearsed


def test_the_flow_s_workers_import_rehearse_and_freeze_the_build_before_their_first_task() -> None:
    runner = dask_task_runner(Settings(dask_workers=1))
    with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        ((frozen, imported, rehearsed),) = client.run(_state).values()
    assert imported
    assert rehearsed == 1
    assert frozen > 50_000  # the imports' objects: out of every full collection's scan
