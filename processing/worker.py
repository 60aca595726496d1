"""What a process that builds tiles does once, before its first tile (a Dask preload).

The process flow's ``LocalCluster`` starts each worker with it; the workers of a cluster of
one's own get it with ``dask worker --preload lunarchive.processing.worker``.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["PRELOAD", "SPAWN_ENV", "dask_setup", "spawn_environ", "spawning_workers", "warm"]

PRELOAD: Final = __name__
"""This module's name, as Dask's ``preload`` option takes it."""
SPAWN_ENV: Final = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
"""What a worker process must start with, beside Dask's own ``pre-spawn-environ`` (glibc reads
it at the process's first allocation, so setting it later does nothing).

Dask sets ``MALLOC_TRIM_THRESHOLD_`` for its workers, which also stops glibc raising its mmap
threshold as it would by default: every buffer of 128 KiB or more is then a fresh ``mmap``,
page-faulted in as it is first written and unmapped when freed. A warp task's buffers are 4-9
MiB (a 1024² float32 block, its source windows), and unmapping them in one thread interrupts
the other threads of the process (TLB shootdowns). With the threshold at 32 MiB (glibc's own
ceiling for it) they are reused from the heap: the cube benchmark ran 8-12 % faster on two
threads and one, and scaled better, for 25 MiB more peak (measured). Dask's trim threshold
still returns freed memory at the top of the heap."""
_BUILD_MODULES: Final = (
    "lunarchive.processing.pyramid",
    "lunarchive.processing.quicklook",
    "lunarchive.processing.readers",
    "lunarchive.processing.stats",
    "lunarchive.processing.tiles",
    "lunarchive.processing.warp",
)


def warm() -> None:
    """Import what a tile build uses, then freeze what the imports made (``gc.freeze``).

    Those objects (~150 000) live as long as the process, yet every full collection of the
    garbage collector would scan them all again: 0.08 s each time, holding the GIL, in the
    cube benchmark's process (measured), where one such pause fell in a tile's serial
    set-up. Frozen, a full collection scans only what the builds themselves make.
    """
    for name in _BUILD_MODULES:
        importlib.import_module(name)
    _rehearse()
    gc.collect()  # the rehearsal's garbage, not to be frozen with the rest
    gc.freeze()


def _rehearse() -> None:
    """Build a tiny cube in memory, write it and read it back, on the synchronous scheduler.

    A process's first write and read import what they need, look xarray's and zarr's
    plug-ins up (chunk managers, backends, codecs) and start zarr's event-loop thread: 0.23 s
    the first time, 0.05 s after (measured), which would otherwise fall in the serial set-up
    of the process's first tile. It adds ~20 MiB to the worker, which that tile would add.
    """
    import dask
    import dask.array
    import numpy as np
    import xarray as xr
    import zarr.storage
    from affine import Affine

    from lunarchive.processing.cube import build_cube
    from lunarchive.processing.pyramid import write_tile
    from lunarchive.processing.rasters import write_crs

    values = dask.array.zeros((2, 2), dtype=np.float32, chunks=1)  # type: ignore[no-untyped-call]
    mosaic = xr.DataArray(values, dims=("y", "x"), coords={"y": [0.5, -0.5], "x": [-0.5, 0.5]})
    mosaic = write_crs(mosaic, "IAU_2015:30110").rio.write_transform(Affine(1, 0, -1, 0, -1, 1))
    store = zarr.storage.MemoryStore()
    with dask.config.set(scheduler="sync"):
        write_tile(build_cube(mosaic, name="rehearsal"), store)
    xr.open_zarr(store, consolidated=False).load()


def spawn_environ() -> dict[str, str]:
    """Dask's pre-spawn environment for worker processes, with :data:`SPAWN_ENV` added.

    An operator's own choice wins: a variable of :data:`SPAWN_ENV` already in this process's
    environment keeps its value, and one set in Dask's ``pre-spawn-environ`` keeps that.
    """
    import dask
    import distributed  # noqa: F401  (registers the distributed.* config defaults)

    ours = {key: os.environ.get(key, value) for key, value in SPAWN_ENV.items()}
    dask_own = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {**ours, **{key: str(value) for key, value in dask_own.items()}}


@contextmanager
def spawning_workers() -> Iterator[None]:
    """While inside, the worker processes Dask's nannies start get :func:`spawn_environ` (a
    nanny reads it when it is made, and starts its worker, and any restart, with it)."""
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environ()}):
        yield


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process before it takes a task."""
    warm()
