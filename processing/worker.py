"""What a process that builds tiles does once, before its first tile (a Dask preload).

The process flow's ``LocalCluster`` starts each worker with it; the workers of a cluster of
one's own get it with ``dask worker --preload lunarchive.processing.worker``.
"""

from __future__ import annotations

import gc
import importlib
from typing import Any, Final

__all__ = ["PRELOAD", "dask_setup", "warm"]

PRELOAD: Final = __name__
"""This module's name, as Dask's ``preload`` option takes it."""
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


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process before it takes a task."""
    warm()
