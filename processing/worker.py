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
    gc.freeze()


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process before it takes a task."""
    warm()
