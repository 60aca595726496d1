"""The ``process`` flow: harvested DEM products → one Zarr v3 store per tile of a lunar grid.

Runs on prefect-dask's DaskTaskRunner: each task lands on a Dask worker and the array work
inside it runs on the same cluster (``get_dask_client``).

1. **describe** each product: its CRS, bounds, resolution, observation time and file
   checksums. Kept in ``state/process/<source>/<product>.json`` and reused while the
   product's files (key, size, tag in the listing) are unchanged: raw files are never re-read
   or re-hashed to find that nothing changed. A product none of whose files GDAL opens as a
   map is *unrecognised*; one that fails to open is quarantined.
2. **plan**: the collection's grid (given, or the named grid nearest the inputs'
   resolution) and, for every tile an input touches, the tile's identity — the fingerprint
   of its grid, tile, variable, resampling, overlap rule and inputs in precedence order
   (:func:`~lunarchive.processing.tiles.tile_identity`), computed without reading any data.
   The tile's version is that fingerprint, so its key is
   ``cubes/<collection>/<tile>/<version>.zarr``.
3. **build** only the tiles whose ``<version>.inventory.json`` is missing: warp and mosaic
   the inputs (:func:`~lunarchive.processing.tiles.build_tile`), write the tile store with
   its overviews, the statistics per band, the quicklook PNG, and last the inventory, whose
   presence means "complete". An update that touches one tile rebuilds that tile only; the
   others keep their keys, byte for byte (R9).

Readers never see a half-written tile (R7): a tile is reached only through a release, and
``publish`` lists a tile only once its inventory exists; a build killed midway leaves
objects under a key no release names, which the next attempt deletes and writes again.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pyproj
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_dask.utils import get_dask_client

from lunarchive.catalog.layout import (
    content_version,
    cube_inventory_key,
    cube_key,
    cube_quicklook_key,
    process_facts_key,
)
from lunarchive.catalog.publish import inventory
from lunarchive.catalog.store import ObjectInfo, Store, json_bytes
from lunarchive.flows._runtime import load_settings, retry_transient, settle, store_for
from lunarchive.flows.settings import Settings
from lunarchive.processing.crs import MOON_RADIUS_M, lunar_footprint
from lunarchive.processing.grids import (
    EQC_LADDER_PPD,
    POLAR_LADDER_M,
    Tile,
    named_grid,
    tiles_touching,
)
from lunarchive.processing.products import read_product
from lunarchive.processing.pyramid import multiscales, open_tile, write_tile
from lunarchive.processing.quicklook import QUICKLOOK_MAX_PX, quicklook_png
from lunarchive.processing.readers import open_dem
from lunarchive.processing.stats import band_statistics
from lunarchive.processing.tiles import Layer, OverlapRule, build_tile, tile_identity
from lunarchive.schemas.errors import LunarchiveError, ProductRejected

__all__ = ["InputFacts", "TileJob", "default_grid", "label_key", "process"]

VARIABLE: Final = "height"
UNITS: Final = "m"
CHECKSUM_RECIPE: Final = "product-files-v1"
# What GDAL opens of a product, in the order tried: PDS4 label, PDS3 label, ISIS3 cube, GeoTIFF.
_OPENED_SUFFIXES: Final = (".xml", ".lbl", ".cub", ".tif", ".tiff")
_DEGREE_M: Final = math.pi * MOON_RADIUS_M / 180.0
_POLAR_CRS_LATITUDE: Final = 89.0  # a stereographic CRS whose origin is beyond this is polar


@dataclass(frozen=True)
class InputFacts:
    """What the flow knows of one product without reading its data again."""

    source: str
    product_id: str
    label: str  # the key GDAL opens
    files: tuple[tuple[str, int, str, str], ...]  # key, size, listing tag, sha256
    crs_wkt: str
    bounds: tuple[float, float, float, float]
    resolution_m: float
    start: datetime | None
    end: datetime | None
    checksum: str  # of the product's files, for the tile fingerprint

    @property
    def acquired(self) -> datetime | None:
        return self.end or self.start

    def unchanged(self, listed: Mapping[str, ObjectInfo]) -> bool:
        """Whether the listing shows the very files these facts were taken from."""
        now = {(k, listed[k].size, listed[k].tag) for k in listed}
        return now == {(k, size, tag) for k, size, tag, _ in self.files}

    def to_json(self) -> bytes:
        return json_bytes(asdict(self) | {"start": _iso(self.start), "end": _iso(self.end)})

    @classmethod
    def from_json(cls, data: bytes) -> InputFacts:
        raw = json.loads(data)
        return cls(
            **raw
            | {
                "files": tuple(tuple(f) for f in raw["files"]),
                "bounds": tuple(raw["bounds"]),
                "start": _time(raw["start"]),
                "end": _time(raw["end"]),
            }
        )


@dataclass(frozen=True)
class TileJob:
    """One tile to build: where it goes and its inputs in precedence order."""

    collection: str
    grid: str
    tile: str
    version: str
    fingerprint: str
    resampling: str
    rule: OverlapRule
    inputs: tuple[InputFacts, ...]
    priority: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return cube_key(self.collection, self.tile, self.version)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def label_key(keys: Sequence[str]) -> str | None:
    """The key of a product that GDAL opens as a map (see ``_OPENED_SUFFIXES``), or None."""
    by_suffix = {Path(key).suffix.lower(): key for key in sorted(keys)}
    if ".xml" in by_suffix and len(keys) < 2:
        return None  # a PDS4 label without its data file
    return next((by_suffix[s] for s in _OPENED_SUFFIXES if s in by_suffix), None)


def _listing(store: Store, keys: Sequence[str]) -> dict[str, ObjectInfo]:
    folders = sorted({key.rsplit("/", 1)[0] + "/" for key in keys})
    wanted = set(keys)
    return {info.key: info for f in folders for info in store.list(f) if info.key in wanted}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _materialise(store: Store, keys: Sequence[str], folder: Path) -> dict[str, Path]:
    """Local copies of one product's files, side by side (a label names its data file)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {key: store.download(key, folder / Path(key).name) for key in keys}


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient)
def describe_product(settings: Settings, product: dict[str, Any], source: str) -> InputFacts:
    """The facts of one product: from ``state/process/`` when its files are unchanged, else
    from the files themselves (downloaded, hashed and opened once)."""
    store = store_for(settings)
    source = str(product.get("source") or source)
    keys = sorted(product["keys"])
    listed = _listing(store, keys)
    missing = sorted(set(keys) - set(listed))
    if missing:
        raise ProductRejected(f"{product['product_id']}: {missing[0]} is not in the store")
    facts_key = process_facts_key(source, product["product_id"])
    if store.exists(facts_key):
        cached = InputFacts.from_json(store.read(facts_key))
        if cached.unchanged(listed):
            return cached
    label = label_key(keys)
    if label is None:
        raise ProductRejected(f"{product['product_id']}: no file GDAL opens as a map")
    known: dict[str, str] = dict(product.get("sha256") or {})
    with tempfile.TemporaryDirectory(prefix="lunarchive-describe-") as tmp:
        local = _materialise(store, keys, Path(tmp))
        sums = {key: known.get(key) or _sha256_file(path) for key, path in local.items()}
        data = open_dem(local[label])
        layer = Layer(data, product["product_id"])
        start, end = _times(local[label])
        facts = InputFacts(
            source=source,
            product_id=product["product_id"],
            label=label,
            files=tuple((k, listed[k].size, listed[k].tag, sums[k]) for k in keys),
            crs_wkt=pyproj.CRS.from_user_input(data.rio.crs).to_wkt(),
            bounds=tuple(float(v) for v in data.rio.bounds()),  # type: ignore[arg-type]
            resolution_m=layer.resolution_m,
            start=start,
            end=end,
            checksum=content_version(CHECKSUM_RECIPE, [(k, sums[k]) for k in keys]),
        )
    store.write(facts_key, facts.to_json())
    return facts


def _times(label: Path) -> tuple[datetime | None, datetime | None]:
    """The product's observation window, when its label gives one."""
    try:
        record = read_product(label)
    except LunarchiveError:
        return None, None
    return record.start, record.stop


def default_grid(facts: Sequence[InputFacts]) -> str:
    """The named grid a collection gets when it declares none: the polar or equirectangular
    grid most inputs suit, at the ladder rung nearest their resolution."""
    votes = Counter(_grid_for(f) for f in facts)
    return min(votes, key=lambda name: (-votes[name], name))


def _grid_for(facts: InputFacts) -> str:
    crs = pyproj.CRS.from_wkt(facts.crs_wkt)
    operation = crs.coordinate_operation if crs.is_projected else None
    origin = (
        next((float(p.value) for p in operation.params if p.code == "8801"), 0.0)
        if operation is not None and "Stereographic" in operation.method_name
        else 0.0
    )
    if abs(origin) >= _POLAR_CRS_LATITUDE:
        metres = min(POLAR_LADDER_M, key=lambda m: abs(math.log(m / facts.resolution_m)))
        return f"moon-{'np' if origin > 0 else 'sp'}-{metres}"
    ppd = min(EQC_LADDER_PPD, key=lambda p: abs(math.log(_DEGREE_M / p / facts.resolution_m)))
    return f"moon-eqc-{ppd}"


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient)
def build_tile_cube(settings: Settings, job: TileJob) -> dict[str, Any]:
    """Build one tile store, its statistics and quicklook, then its inventory (last)."""
    store = store_for(settings)
    marker = cube_inventory_key(job.collection, job.tile, job.version)
    if store.exists(marker):
        return _finished(store, marker)
    for stale in store.list(job.key + "/"):  # a crashed earlier attempt, never referenced
        store.delete(stale.key)
    times = [t for f in job.inputs for t in (f.start, f.end) if t is not None]
    if not times:
        raise ProductRejected(
            f"tile {job.tile}: no observation time in any of its inputs "
            f"({', '.join(f.product_id for f in job.inputs)}; rule: a cube item needs one)"
        )
    tile = named_grid(job.grid).tile(job.tile)
    zarr_store = store.zarr_store(job.key)
    with tempfile.TemporaryDirectory(prefix="lunarchive-tile-") as tmp:
        layers = []
        for f in job.inputs:
            local = _materialise(store, [k for k, *_ in f.files], Path(tmp) / f.product_id)
            layers.append(Layer(open_dem(local[f.label]), f.product_id, f.acquired, f.checksum))
        with get_dask_client():
            cube = build_tile(
                layers,
                tile,
                variable=VARIABLE,
                resampling=job.resampling,
                rule=job.rule,
                priority=job.priority,
            )
            if cube.attrs["lunarchive:fingerprint"] != job.fingerprint:
                raise RuntimeError(f"tile {job.tile}: planned and built fingerprints differ")
            write_tile(cube, zarr_store)
            stored = open_tile(zarr_store)
            statistics = band_statistics(stored[VARIABLE])
            png = quicklook_png(open_tile(zarr_store, level=_quicklook_level(zarr_store))[VARIABLE])
    png_key = cube_quicklook_key(job.collection, job.tile, job.version)
    store.write(png_key, png)
    quicklook = {"key": png_key, "size": len(png), "sha256": hashlib.sha256(png).hexdigest()}
    record = _record(job, tile, stored, statistics, times) | {
        "quicklook": quicklook,
        "raw": [
            {"key": k, "size": size, "sha256": sha}
            for f in job.inputs
            for k, size, _, sha in f.files
        ],
        "objects": [e.model_dump() for e in inventory(store, job.key + "/")] + [quicklook],
    }
    data = json_bytes(record)
    store.create(marker, data)
    return _with_inventory(json.loads(data), marker, data)


def _quicklook_level(zarr_store: Any) -> int:
    """The coarsest overview still at least as detailed as the thumbnail."""
    layout = multiscales(zarr_store)["layout"]
    fine_enough = [i for i, e in enumerate(layout) if max(e["proj:shape"]) >= QUICKLOOK_MAX_PX]
    return max(fine_enough, default=0)


def _record(
    job: TileJob, tile: Tile, stored: Any, statistics: list[Any], times: list[datetime]
) -> dict[str, Any]:
    variable = stored[VARIABLE]
    crs = pyproj.CRS.from_user_input(stored.attrs["proj:wkt2"])
    left, bottom, right, top = tile.geobox.boundingbox
    bbox, geometry = lunar_footprint(crs, (left, bottom, right, top))
    a, b, c, d, e, f = (float(v) for v in tuple(tile.geobox.affine)[:6])
    projjson = json.loads(stored.attrs["proj:projjson"])
    system = stored.attrs["proj:code"] or projjson
    dimensions: dict[str, Any] = {
        "x": {"type": "spatial", "axis": "x", "extent": [left, right], "step": a,
              "reference_system": system},
        "y": {"type": "spatial", "axis": "y", "extent": [bottom, top], "step": e,
              "reference_system": system},
    }  # fmt: skip
    if "band" in variable.dims:
        dimensions["band"] = {"type": "bands", "values": variable["band"].values.tolist()}
    bands = []
    for s in statistics:
        name = VARIABLE if len(statistics) == 1 else f"{VARIABLE}_{s.band}"
        bands.append({"name": name} | s.as_raster_band())
    inputs = stored.attrs["lunarchive:inputs"]
    return {
        "collection": job.collection,
        "grid": job.grid,
        "tile": job.tile,
        "version": job.version,
        "fingerprint": job.fingerprint,
        "key": job.key,
        "variable": VARIABLE,
        "units": variable.attrs.get("units", UNITS),
        "dtype": str(variable.dtype),
        "proj": {
            "code": stored.attrs["proj:code"],
            "wkt2": stored.attrs["proj:wkt2"],
            "projjson": projjson,
            "shape": list(variable.shape[-2:]),
            "transform": [a, b, c, d, e, f],
        },
        "bbox": list(bbox),
        "geometry": geometry,
        "dimensions": dimensions,
        "bands": bands,
        "resampling": job.resampling,
        "overlap_rule": job.rule,
        "inputs": inputs if isinstance(inputs, list) else json.loads(inputs),
        "labels": [f.label for f in job.inputs],
        "start": min(times).isoformat(),
        "end": max(times).isoformat(),
    }


def _finished(store: Store, marker: str) -> dict[str, Any]:
    data = store.read(marker)
    return _with_inventory(json.loads(data), marker, data)


def _with_inventory(record: dict[str, Any], marker: str, data: bytes) -> dict[str, Any]:
    """The tile's record as ``publish`` needs it: its inventory named among its objects."""
    entry = {"key": marker, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return record | {"inventory": entry, "objects": [*record["objects"], entry]}


def plan_tiles(
    facts: Sequence[InputFacts],
    collection: str,
    *,
    grid: str,
    resampling: str,
    rule: OverlapRule,
    priority: Sequence[str] = (),
) -> list[TileJob]:
    """Every tile the inputs touch, with its identity (no data is read)."""
    chosen = named_grid(grid)
    touched: dict[str, list[InputFacts]] = {}
    for f in facts:
        for tile in tiles_touching(chosen, f.crs_wkt, f.bounds):
            touched.setdefault(tile.id, []).append(f)
    jobs = []
    for tile_id, inputs in sorted(touched.items()):
        ordered, fingerprint = tile_identity(
            inputs,
            chosen.tile(tile_id),
            variable=VARIABLE,
            resampling=resampling,
            rule=rule,
            priority=priority,
        )
        jobs.append(
            TileJob(
                collection=collection,
                grid=grid,
                tile=tile_id,
                version=fingerprint[:16],
                fingerprint=fingerprint,
                resampling=resampling,
                rule=rule,
                inputs=tuple(ordered),
                priority=tuple(priority),
            )
        )
    return jobs


@flow(name="process")
def process(
    products: list[dict[str, Any]],
    collection: str,
    store_url: str | None = None,
    grid: str | None = None,
    resampling: str = "bilinear",
    rule: OverlapRule = "newest",
) -> dict[str, Any]:
    """Build the DEM tiles of the harvested products in collection ``<collection>-dem``.

    Returns ``{"cubes": [tile record, ...], "unrecognised": [product id, ...], "grid": ...,
    "built": [tile id, ...], "kept": [tile id, ...]}``; each tile record has the tile store's
    ``key`` and everything ``publish`` needs (sample data arrives as partner drops in
    ``inbox/``, see :mod:`lunarchive.flows.samples`).
    """
    settings = load_settings(store_url=store_url)
    store = store_for(settings)
    maps = [p for p in products if label_key(p["keys"])]
    others = [p["product_id"] for p in products if not label_key(p["keys"])]
    described = {p["product_id"]: describe_product.submit(settings, p, collection) for p in maps}
    facts = [
        settle(settings, future, source=collection, product_id=pid, files=p["keys"])
        for p, (pid, future) in zip(maps, described.items(), strict=True)
    ]
    known = [f for f in facts if f is not None]
    chosen = grid or (default_grid(known) if known else None)
    cube_collection = f"{collection}-dem"
    jobs = (
        plan_tiles(known, cube_collection, grid=chosen, resampling=resampling, rule=rule)
        if chosen
        else []
    )
    cubes: list[dict[str, Any]] = []
    kept, futures = [], {}
    for job in jobs:
        marker = cube_inventory_key(job.collection, job.tile, job.version)
        if store.exists(marker):
            cubes.append(_finished(store, marker))
            kept.append(job.tile)
        else:
            futures[job.tile] = (job, build_tile_cube.submit(settings, job))
    for tile_id, (job, future) in futures.items():
        built = settle(
            settings,
            future,
            source=collection,
            product_id=f"{cube_collection}-{tile_id}",
            files=[k for f in job.inputs for k, *_ in f.files],
        )
        if built is not None:
            cubes.append(built)
    cubes.sort(key=lambda c: str(c["tile"]))
    result = {
        "cubes": cubes,
        "unrecognised": others,
        "grid": chosen,
        "built": sorted(futures),
        "kept": kept,
    }
    get_run_logger().info(
        "process: %d tile(s) on %s (%d built, %d unchanged), %d product(s) of no known kind",
        len(cubes), chosen, len(futures), len(kept), len(others),
    )  # fmt: skip
    return result
