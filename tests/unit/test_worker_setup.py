"""The process flow's Dask workers start warm (the build's modules imported, rehearsed and
frozen for the garbage collector: lunarchive.processing.worker, a Dask preload) and with the
build's start environment (SPAWN_ENV)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client

from lunarchive.flows._runtime import dask_task_runner
from lunarchive.flows.settings import Settings
from lunarchive.processing import worker
from lunarchive.processing.grids import GRID_NAMES, named_grid
from lunarchive.processing.worker import SPAWN_ENV, spawn_environ, spawning_workers


def _state() -> tuple[int, bool, tuple[int, int], dict[str, str]]:
    from xarray.namedarray.parallelcompat import list_chunkmanagers

    from lunarchive.processing.crs import _pole_points_of_wkt

    # The rehearsal wrote cubes: xarray's chunk managers are already looked up, and a warp
    # was planned onto each grid CRS (where its poles are: found once per CRS).
    rehearsed = list_chunkmanagers.cache_info().currsize, _pole_points_of_wkt.cache_info().currsize
    # The environment the process was started with (os.environ may have changed since; what
    # glibc read at the first allocation is this).
    with open("/proc/self/environ", "rb") as started:
        pairs = [item.split(b"=", 1) for item in started.read().split(b"\0") if b"=" in item]
    environ = {key.decode(): value.decode() for key, value in pairs}
    return gc.get_freeze_count(), "lunarchive.processing.warp" in sys.modules, rehearsed, environ


def test_the_flow_s_workers_import_rehearse_and_freeze_the_build_before_their_first_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an earlier cluster's nanny leaves in this process's environment: Dask's defaults.
    trim = "MALLOC_TRIM_THRESHOLD_"
    left = str(dask.config.get(f"distributed.nanny.pre-spawn-environ.{trim}"))
    monkeypatch.setenv(trim, left)
    runner = dask_task_runner(Settings(dask_workers=1))
    cluster_class: Any = runner.cluster_class
    with cluster_class(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        ((frozen, imported, rehearsed, started_with),) = client.run(_state).values()
        assert os.environ[trim] == left  # put back once the workers started
    assert SPAWN_ENV.items() <= started_with.items()
    assert started_with["OMP_NUM_THREADS"] == "1"  # the rest of Dask's pre-spawn environment
    assert imported
    assert rehearsed == (1, len({named_grid(name).crs_code for name in GRID_NAMES}))
    assert frozen > 50_000  # the imports' objects: out of every full collection's scan


_A_USER_S_SCRIPT = """
import json
import sys

from lunarchive.flows.process import process  # noqa: F401  (a script that runs the flow)

IMPORTED_ZARR = "zarr" in sys.modules  # here, at the top: what a worker imports again


def pipeline():
    import zarr
    import zarr.storage

    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(1,), dtype="float32")
    return type(array._async_array.codec_pipeline).__name__, zarr.config.get("codec_pipeline")


if __name__ == "__main__":
    from distributed import Client

    from lunarchive.flows._runtime import dask_task_runner, local_cluster
    from lunarchive.flows.settings import Settings

    runner = dask_task_runner(Settings(dask_workers=1, dask_address=None))
    with local_cluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        print(json.dumps([IMPORTED_ZARR, *client.run(pipeline).values()]))
"""


def test_the_flow_s_workers_write_with_zarr_s_synchronous_pipeline_whatever_their_parent_imported(
    tmp_path: Path,
) -> None:
    # A worker process imports its parent's main module before its nanny applies its env,
    # and zarr reads its configuration from the environment when it is imported: started
    # from a script that imports the flows (and so zarr), a pipeline given as the nanny's
    # env was never seen.
    script = tmp_path / "run_the_flow.py"
    script.write_text(_A_USER_S_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported_zarr, (pipeline, config) = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported_zarr  # the case that went wrong
    assert pipeline == "FusedCodecPipeline"
    assert config["max_workers"] == 1


def test_ours_replace_dask_s_defaults_and_an_operator_s_own_start_environment_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trim, mmap = "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"
    dask_default = dask.config.get(f"distributed.nanny.pre-spawn-environ.{trim}")
    assert str(dask_default) != SPAWN_ENV[trim]
    for key in (trim, mmap):
        monkeypatch.delenv(key, raising=False)
    assert spawn_environ()[trim] == SPAWN_ENV[trim]  # over Dask's default
    monkeypatch.setenv(trim, str(dask_default))  # as an earlier cluster's nanny leaves it
    assert spawn_environ()[trim] == SPAWN_ENV[trim]
    assert spawn_environ()[mmap] == SPAWN_ENV[mmap]
    assert spawn_environ()["OMP_NUM_THREADS"] == "1"  # Dask's others kept
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{mmap}": 2097152}):
        assert spawn_environ()[mmap] == "2097152"
        monkeypatch.setenv(mmap, "1048576")  # the environment over the config, as in Dask
        assert spawn_environ()[mmap] == "1048576"
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{trim}": 131072}):
        assert spawn_environ()[trim] == "131072"
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{trim}": None}):
        assert spawn_environ()[trim] is None  # unset by the operator: stays unset
        with spawning_workers():
            assert trim not in os.environ and os.environ[mmap] == "1048576"
    assert os.environ[trim] == str(dask_default)  # put back as it was


def test_two_threads_starting_clusters_at_once_leave_the_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mmap = "MALLOC_MMAP_THRESHOLD_"
    monkeypatch.delenv(mmap, raising=False)  # ours is set only while inside
    first_inside, second_tried, first_left = (threading.Event() for _ in range(3))
    inside, most_inside, lock = [0], [0], threading.Lock()

    def start(first: bool) -> None:
        if not first:
            first_inside.wait(10)
            second_tried.set()
        with spawning_workers():
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
            if first:
                first_inside.set()
                second_tried.wait(10)  # the second thread is now at the door
                time.sleep(0.2)  # and would be inside by now, were the door open
            else:
                first_left.wait(10)  # leaves after the first, as a slower start would
            with lock:
                inside[0] -= 1
        if first:
            first_left.set()

    threads = [threading.Thread(target=start, args=(first,)) for first in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most_inside[0] == 1  # one at a time
    assert mmap not in os.environ  # each put back what it found, in turn


def test_a_worker_whose_rehearsal_fails_still_starts_frozen(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails() -> None:
        raise OSError("no temporary folder")

    monkeypatch.setattr(worker, "_rehearse", fails)
    frozen = gc.get_freeze_count()
    try:
        with caplog.at_level("WARNING", logger=worker.__name__):
            worker.warm()
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
    assert "rehearsal build failed (OSError: no temporary folder)" in caplog.text
