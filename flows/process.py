"""The ``process`` flow: harvested DEM tiles → one Zarr v3 cube.

Runs on prefect-dask's DaskTaskRunner: each task lands on a Dask worker and the array work
inside it runs on the same cluster (``get_dask_client``). A cube's key comes from a hash of
its inputs, so unchanged inputs find the finished cube and write nothing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_dask.utils import get_dask_client

from lunarchive.catalog.layout import content_version, cube_inventory_key, cube_key
from lunarchive.catalog.publish import inventory
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.flows._runtime import load_settings, settle, store_for
from lunarchive.flows.settings import Settings
from lunarchive.processing.cube import build_cube, cube_summary, write_cube
from lunarchive.processing.labels import label_time_range
from lunarchive.processing.mosaic import mosaic
from lunarchive.processing.readers import open_dem
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.release import ManifestEntry

__all__ = ["process"]

CUBE_RECIPE = "dem-mosaic-v1"


def _materialize(store: Store, keys: list[str], folder: Path) -> dict[str, Path]:
    """Local copies of one product's files, side by side (a PDS4 label names its data file)."""
    return {key: store.download(key, folder / Path(key).name) for key in keys}


@task(cache_policy=NO_CACHE)
def build_dem_cube(
    settings: Settings, collection: str, tile: str, products: list[dict[str, Any]]
) -> dict[str, Any]:
    """Mosaic DEM products onto one lunar grid and write the cube, unless it exists."""
    store = store_for(settings)
    inputs = [(key, store.sha256(key)) for p in products for key in p["keys"]]
    version = content_version(CUBE_RECIPE, inputs)
    marker = cube_inventory_key(collection, tile, version)
    if store.exists(marker):
        return dict(json.loads(store.read(marker)))
    key = cube_key(collection, tile, version)
    for stale in store.list(key + "/"):  # a crashed earlier attempt, never referenced
        store.delete(stale.key)
    with tempfile.TemporaryDirectory(prefix="lunarchive-cube-") as tmp:
        labels = [
            _label_of(_materialize(store, p["keys"], Path(tmp) / p["product_id"])) for p in products
        ]
        times = [t for label in labels for t in label_time_range(label) if t is not None]
        if not times:
            raise ProductRejected(
                f"{', '.join(p['product_id'] for p in products)}: no Time_Coordinates in any "
                "label (rule: a cube item needs the observation time range)"
            )
        with get_dask_client():
            cube = build_cube(mosaic([open_dem(label) for label in labels]), name="height")
            write_cube(cube, store.zarr_store(key))
            summary = cube_summary(cube)
    record = {
        "collection": collection,
        "tile": tile,
        "version": version,
        "key": key,
        "summary": asdict(summary),
        "start": min(times).isoformat(),
        "end": max(times).isoformat(),
        "inputs": [k for k, _ in sorted(inputs) if k.endswith(".xml")],
        "raw": [e.model_dump() for p in products for e in _raw_entries(store, p["keys"])],
        "objects": [e.model_dump() for e in inventory(store, key + "/")],
    }
    data = json_bytes(record)
    store.create(marker, data)
    return dict(json.loads(data))  # the same key order as a rerun reads back from the marker


def _raw_entries(store: Store, keys: list[str]) -> list[ManifestEntry]:
    """Key, size and sha256 of one product's raw files (they share one folder)."""
    folder = keys[0].rsplit("/", 1)[0] + "/"
    return [entry for entry in inventory(store, folder) if entry.key in keys]


def _label_of(files: dict[str, Path]) -> Path:
    labels = [path for path in files.values() if path.suffix.lower() == ".xml"]
    if len(labels) != 1:
        raise ProductRejected(f"{sorted(files)}: a DEM product needs exactly one PDS4 label")
    return labels[0]


def _kind(product: dict[str, Any]) -> str | None:
    suffixes = {Path(key).suffix.lower() for key in product["keys"]}
    if ".xml" in suffixes and ".img" in suffixes:
        return "dem"
    return None


@flow(name="process")
def process(
    products: list[dict[str, Any]], collection: str, store_url: str | None = None
) -> dict[str, Any]:
    """Build the DEM cube of the harvested products (sample data arrives as partner drops
    in ``inbox/``, see :mod:`lunarchive.flows.samples`)."""
    settings = load_settings(store_url=store_url)
    dems = [p for p in products if _kind(p) == "dem"]
    others = [p["product_id"] for p in products if _kind(p) is None]
    cube = build_dem_cube.submit(settings, f"{collection}-dem", "mosaic", dems) if dems else None
    cubes = (
        [
            settle(
                settings,
                cube,
                source=collection,
                product_id=f"{collection}-dem-mosaic",
                files=[k for p in dems for k in p["keys"]],
            )
        ]
        if cube
        else []
    )
    result = {
        "cubes": [c for c in cubes if c is not None],
        "unrecognised": others,
    }
    get_run_logger().info(
        "process: %d cube(s), %d product(s) of no known kind",
        len(result["cubes"]), len(others),
    )  # fmt: skip
    return result
