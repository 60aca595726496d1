"""What a process that builds tiles does once, before its first tile (a Dask preload).

The process flow's ``LocalCluster`` starts each worker with it; the workers of a cluster of
one's own get it with ``dask worker --preload lunarchive.processing.worker``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from lunarchive.processing.pyramid import WRITE_PIPELINE_ENV

__all__ = ["PRELOAD", "SPAWN_ENV", "dask_setup", "spawn_environ", "spawning_workers", "warm"]

PRELOAD: Final = __name__
"""This module's name, as Dask's ``preload`` option takes it."""
_HEAP_MIB: Final = 32  # glibc's own ceiling for its dynamic mmap threshold (64-bit)
_MALLOC_ENV: Final = {
    "MALLOC_MMAP_THRESHOLD_": str(_HEAP_MIB * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(_HEAP_MIB * 2**20),
}
"""glibc's thresholds for a worker (it reads them at the process's first allocation); they
replace Dask's default trim threshold.

By default glibc serves a large buffer with ``mmap`` and, once one is freed, raises its mmap
threshold (up to 32 MiB) and its trim threshold (to twice that) so that buffers of that size
are then reused from the heap. Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_`` at
64 KiB, which stops that: every buffer of 128 KiB or more is then a fresh ``mmap``,
page-faulted in as it is first written and unmapped when freed, and what is freed at the top
of the heap is handed back at once, to be faulted in again by the next task. A warp task's
buffers are 4-9 MiB (a 1024² float32 block, its source windows); unmapping them in one
thread interrupts the process's other threads (TLB shootdowns). Both thresholds at 32 MiB
keep such buffers in the heap, as glibc's own adjustment would: on the cube benchmark the
mmap threshold alone made the build 8-12 % faster on two threads and one, and the trim
threshold another 7 %, for 10-25 MiB more peak (measured). Memory freed beyond 32 MiB at
the top of the heap is still returned."""
SPAWN_ENV: Final = {**_MALLOC_ENV, **WRITE_PIPELINE_ENV}
"""What a worker process must start with, because it is read before Dask could set it:
glibc's thresholds (:data:`_MALLOC_ENV`) and zarr's write pipeline
(:data:`~lunarchive.processing.pyramid.WRITE_PIPELINE_ENV`). zarr reads its configuration
from the environment once, when it is imported, and a worker process started by ``spawn``
imports its parent's main module before a nanny applies its ``env``: started from a script
that imports the flows (and so zarr), workers never saw a pipeline given there, and wrote
with zarr's default pipeline and a thread pool per CPU behind each task."""
_spawning: Final = threading.Lock()  # spawning_workers: one thread inside at a time
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
    try:
        _rehearse()
    except Exception as exc:  # noqa: BLE001 - only a warm-up: tiles build without it
        logging.getLogger(__name__).warning(
            "the worker's rehearsal build failed (%s: %s); its first tiles pay for the "
            "first lookups instead",
            type(exc).__name__,
            exc,
        )
    gc.collect()  # the rehearsal's garbage, not to be frozen with the rest
    gc.freeze()


def _rehearse() -> None:
    """Build tiny cubes as a tile is built, on the synchronous scheduler: open a GeoTIFF on
    the Moon's geographic CRS (most global products' CRS), warp it onto each kind of named
    grid, write each cube to memory; read one back.

    A process's first build imports what it needs, looks xarray's and zarr's plug-ins up
    (chunk managers, backends, codecs), starts zarr's event-loop thread, and has GDAL and
    PROJ find each grid's CRS, its warp operation from the Moon's lon/lat and its poles in
    their databases: 0.23 s (measured), which would otherwise fall in the serial set-up of
    the process's first tiles (in the cube benchmark, 45 of the 130 ms of its two mosaics'
    set-up, measured). It adds ~28 MiB to the worker, most of which those tiles would add.
    GDAL and PROJ keep part of this per thread: a worker's task thread that is not this one
    still redoes that part on its first tile.
    """
    import tempfile
    from pathlib import Path

    import dask
    import numpy as np
    import rasterio  # type: ignore[import-untyped]
    import xarray as xr
    import zarr.storage
    from affine import Affine

    from lunarchive.processing.crs import moon_geographic
    from lunarchive.processing.cube import build_cube
    from lunarchive.processing.grids import GRID_NAMES, named_grid
    from lunarchive.processing.pyramid import write_tile
    from lunarchive.processing.readers import open_map
    from lunarchive.processing.tiles import Layer, mosaic_onto

    grids = {grid.crs_code: grid for grid in map(named_grid, GRID_NAMES)}.values()
    with tempfile.TemporaryDirectory(prefix="lunarchive-rehearsal-") as folder:
        path = Path(folder) / "moon.tif"
        profile = {"driver": "GTiff", "width": 8, "height": 4, "count": 1, "dtype": "float32"}
        transform = Affine(45.0, 0.0, -180.0, 0.0, -45.0, 90.0)  # the whole Moon
        with rasterio.open(
            path, "w", **profile, crs=moon_geographic().to_wkt(), transform=transform
        ) as product:
            product.write(np.zeros((1, 4, 8), np.float32))
        layers = [Layer(open_map(path), "rehearsal")]
        stores = []
        with dask.config.set(scheduler="sync"):
            for grid in grids:
                mosaic = mosaic_onto(layers, grid.geobox[:2, :2], resampling="bilinear")
                stores.append(zarr.storage.MemoryStore())
                write_tile(build_cube(mosaic, name="rehearsal"), stores[-1], overviews=False)
            xr.open_zarr(stores[0], consolidated=False).load()


def spawn_environ() -> dict[str, str | None]:
    """Dask's pre-spawn environment for worker processes, with :data:`SPAWN_ENV` added.

    Ours replace Dask's defaults, but an operator's own choice wins, in Dask's order: a
    variable already in this process's environment, then one set in Dask's
    ``pre-spawn-environ`` (``None`` there unsets it: it stays ``None`` here) -- unless the
    value is Dask's default. A Dask nanny copies its pre-spawn environment into the
    environment of the process that made it and leaves it there: an earlier cluster's
    defaults are not an operator's choice.
    """
    import dask
    import distributed  # noqa: F401  (registers the distributed.* config defaults)

    key_path = "distributed.nanny.pre-spawn-environ"
    dask_own = _as_strings(dask.config.get(key_path, default={}))
    defaults = _as_strings(dask.config.get(key_path, {}, dask.config.merge(*dask.config.defaults)))
    chosen = {key: value for key, value in dask_own.items() if value != defaults.get(key)}
    in_environ = {
        key: os.environ[key]
        for key in SPAWN_ENV.keys() | dask_own.keys()
        if os.environ.get(key, defaults.get(key)) != defaults.get(key)
    }
    return {**dask_own, **SPAWN_ENV, **chosen, **in_environ}


def _as_strings(environ: dict[str, Any] | None) -> dict[str, str | None]:
    return {key: None if value is None else str(value) for key, value in (environ or {}).items()}


@contextmanager
def spawning_workers() -> Iterator[None]:
    """While inside, the worker processes Dask's nannies start get :func:`spawn_environ` (a
    nanny reads it when it is made, and starts its worker, and any restart, with it).

    A nanny takes a variable from this process's environment over its configuration, so
    :data:`SPAWN_ENV`'s are set there too while inside (or removed, where unset), and put
    back as they were after; a nanny that restarts its worker later sets them again, to the
    same values. One thread at a time is inside (the environment and Dask's configuration
    are the process's: two threads starting clusters at once would each put back what the
    other set)."""
    import dask

    with _spawning:
        environ = spawn_environ()
        before = {key: os.environ.get(key) for key in SPAWN_ENV}
        try:
            _set_environ({key: environ[key] for key in SPAWN_ENV})
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                yield
        finally:
            _set_environ(before)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process before it takes a task."""
    warm()
