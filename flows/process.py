"""The ``process`` flow: harvested map products → one Zarr v3 store per tile of a lunar grid.

DEMs (one band, height) and multi-band maps (Kaguya MI's 9 bands: a ``band`` dimension with
``wavelength``) make separate collections, so inputs of different bands never share a tile;
polar products get a polar grid of their own (:func:`collections_of`).

Runs on prefect-dask's DaskTaskRunner: each task lands on a Dask worker and the array work
inside it runs on the same cluster (``get_dask_client``).

1. **describe** each product: its CRS, bounds, resolution, observation time and file
   checksums. Kept in ``state/process/<source>/<product>.json`` and reused while the
   product's files (key, size, tag in the listing) are unchanged: raw files are never re-read
   or re-hashed to find that nothing changed. A product none of whose files GDAL opens as a
   map is *unrecognised*; one that fails to open is quarantined.
2. **plan**: the collection's grid (given, or the named grid nearest the inputs'
   resolution, finer than the ladder for inputs finer than its finest rung) and, for
   every tile an input touches, the tile's identity — the fingerprint
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
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyproj
import rasterio  # type: ignore[import-untyped]
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
from lunarchive.processing.readers import MULTIBAND_VARIABLE, open_map
from lunarchive.processing.stats import band_statistics
from lunarchive.processing.tiles import Layer, OverlapRule, build_tile, tile_identity
from lunarchive.schemas.errors import LunarchiveError, ProductRejected

__all__ = ["InputFacts", "TileJob", "collections_of", "default_grid", "label_key", "process"]

VARIABLE: Final = "height"
UNITS: Final = "m"
CHECKSUM_RECIPE: Final = "product-files-v1"
# What GDAL opens of a product, in the order tried: PDS4 label, PDS3 label, ISIS3 cube, GeoTIFF.
_OPENED_SUFFIXES: Final = (".xml", ".lbl", ".cub", ".tif", ".tiff")
_DEGREE_M: Final = math.pi * MOON_RADIUS_M / 180.0
_POLAR_CRS_LATITUDE: Final = 89.0  # a stereographic CRS whose origin is beyond this is polar
_TUPLES: Final = ("wavelengths", "band_names", "bandwidths")
# Inputs finer than the ladder's finest rung get a grid at their own resolution, found by
# halving that rung's pixel (a 15 m Kaguya MI map on 59 m pixels would lose 15 of 16 pixels).
_FINER_PPD: Final = tuple(EQC_LADDER_PPD[-1] * 2**k for k in range(1, 8))
_POLAR_FINER_M: Final = tuple(round(_DEGREE_M / ppd, 1) for ppd in _FINER_PPD)
_NM: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*<\s*nm\s*>", re.IGNORECASE)


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
    bands: int = 1  # several: a multi-band map (its own collection, never mixed with DEMs)
    wavelengths: tuple[float, ...] = ()  # band centres (nm), when the label gives them
    band_names: tuple[str, ...] = ()  # e.g. Kaguya MI's filter names
    bandwidths: tuple[float, ...] = ()  # full width at half maximum (nm)
    created: datetime | None = None  # the label's product creation time
    fetched: datetime | None = None  # when the harvest verified the product's files

    @property
    def kind(self) -> tuple[int, tuple[float, ...]]:
        """What inputs of one tile must share: band count and wavelengths."""
        return (self.bands, self.wavelengths if self.bands > 1 else ())

    @property
    def acquired(self) -> datetime | None:
        return self.end or self.start

    def unchanged(self, listed: Mapping[str, ObjectInfo]) -> bool:
        """Whether the listing shows the very files these facts were taken from."""
        now = {(k, listed[k].size, listed[k].tag) for k in listed}
        return now == {(k, size, tag) for k, size, tag, _ in self.files}

    def to_json(self) -> bytes:
        times = {k: _iso(getattr(self, k)) for k in ("start", "end", "created", "fetched")}
        return json_bytes(asdict(self) | times)

    @classmethod
    def from_json(cls, data: bytes) -> InputFacts:
        raw = json.loads(data)
        return cls(
            **raw
            | {
                "files": tuple(tuple(f) for f in raw["files"]),
                "bounds": tuple(raw["bounds"]),
                **{k: tuple(raw.get(k, ())) for k in _TUPLES},
                **{k: _time(raw.get(k)) for k in ("start", "end", "created", "fetched")},
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
    variable: str = VARIABLE

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
        data = open_map(local[label])
        layer = Layer(data, product["product_id"])
        start, end = _times(local[label])
        bands = _band_facts(local[label], data)
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
            **bands,
            fetched=_harvest_time(product),
        )
    store.write(facts_key, facts.to_json())
    return facts


def _harvest_time(product: Mapping[str, Any]) -> datetime | None:
    """When the harvest engine verified the product's files (``harvested``, ISO 8601), if
    the product says (:func:`~lunarchive.flows.cli_process.raw_products` does)."""
    value = product.get("harvested")
    return _time(value) if isinstance(value, str) else None


def _band_facts(label: Path, data: Any) -> dict[str, Any]:
    """Band count, wavelengths, filter names and widths, and the creation time, as GDAL
    reports them from the label (PDS3 ``CENTER_FILTER_WAVELENGTH``, ``FILTER_NAME``,
    ``BANDWIDTH``, ``PRODUCT_CREATION_TIME``)."""
    with rasterio.open(label) as src:
        tags = src.tags()
    count = int(data.sizes.get("band", 1))
    wavelengths = (
        tuple(float(v) for v in data["wavelength"].values) if "wavelength" in data.coords else ()
    )
    names = tuple(v.strip() for v in tags.get("FILTER_NAME", "").strip("()").split(",") if v)
    widths = tuple(float(v) for v in _NM.findall(tags.get("BANDWIDTH", "")))
    return {
        "bands": count,
        "wavelengths": wavelengths if count > 1 else (),
        "band_names": names if count > 1 and len(names) == count else (),
        "bandwidths": widths if count > 1 and len(widths) == count else (),
        "created": _creation_time(tags.get("PRODUCT_CREATION_TIME")),
    }


def _creation_time(text: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip()) if text else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


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
    origin = _stereographic_pole(pyproj.CRS.from_wkt(facts.crs_wkt))
    if abs(origin) >= _POLAR_CRS_LATITUDE:
        rungs: tuple[float, ...] = POLAR_LADDER_M
        if facts.resolution_m < POLAR_LADDER_M[-1] / math.sqrt(2.0):
            rungs += _POLAR_FINER_M
        metres = min(rungs, key=lambda m: abs(math.log(m / facts.resolution_m)))
        return f"moon-{'np' if origin > 0 else 'sp'}-{metres:g}"
    finest = _DEGREE_M / EQC_LADDER_PPD[-1]
    ladder = EQC_LADDER_PPD + (_FINER_PPD if facts.resolution_m < finest / math.sqrt(2.0) else ())
    ppd = min(ladder, key=lambda p: abs(math.log(_DEGREE_M / p / facts.resolution_m)))
    return f"moon-eqc-{ppd}"


def _stereographic_pole(crs: pyproj.CRS) -> float:
    """±90 for a polar stereographic CRS (the pole it is centred on), the latitude of origin
    of another stereographic CRS, 0 otherwise.

    Variant A names its pole as the latitude of natural origin (EPSG parameter 8801);
    variants B and C only by the sign of their standard parallel (8832): that is what a
    GeoTIFF of IAU_2015:30135 reads back as (LUNAR-DATA.md §2.3 pitfall 4).
    """
    operation = crs.coordinate_operation if crs.is_projected else None
    if operation is None or "Stereographic" not in operation.method_name:
        return 0.0
    params = {p.code: float(p.value) for p in operation.params}
    if "Polar Stereographic" in operation.method_name and "8832" in params:
        return math.copysign(90.0, params["8832"])
    return params.get("8801", 0.0)


def _family(grid: str) -> str:
    """``eqc``, ``np`` or ``sp``: which part of the Moon a named grid maps."""
    kind = grid.split("-")[1]
    return "eqc" if kind.startswith("eqc") else kind


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient)
def build_tile_cube(settings: Settings, job: TileJob) -> dict[str, Any]:
    """Build one tile store, its statistics and quicklook, then its inventory (last).

    A tile on which no input left a valid pixel (a sliver a product only grazes) keeps no
    store: its inventory says ``empty``, so that a rerun neither builds nor publishes it.
    """
    store = store_for(settings)
    marker = cube_inventory_key(job.collection, job.tile, job.version)
    if store.exists(marker):
        return _finished(store, marker)
    for stale in store.list(job.key + "/"):  # a crashed earlier attempt, never referenced
        store.delete(stale.key)
    times, time_basis = _tile_times(job)
    tile = named_grid(job.grid).tile(job.tile)
    zarr_store = store.zarr_store(job.key)
    with tempfile.TemporaryDirectory(prefix="lunarchive-tile-") as tmp:
        layers = []
        for f in job.inputs:
            local = _materialise(store, [k for k, *_ in f.files], Path(tmp) / f.product_id)
            layers.append(Layer(open_map(local[f.label]), f.product_id, f.acquired, f.checksum))
        with get_dask_client():
            cube = build_tile(
                layers,
                tile,
                variable=job.variable,
                resampling=job.resampling,
                rule=job.rule,
                priority=job.priority,
            )
            if cube.attrs["lunarchive:fingerprint"] != job.fingerprint:
                raise RuntimeError(f"tile {job.tile}: planned and built fingerprints differ")
            write_tile(cube, zarr_store)
            stored = open_tile(zarr_store)
            statistics = band_statistics(stored[job.variable])
            if not any(s.valid_count for s in statistics):
                for written in store.list(job.key + "/"):
                    store.delete(written.key)
                data = json_bytes(_empty_record(job))
                store.create(marker, data)
                return _with_inventory(json.loads(data), marker, data)
            level = open_tile(zarr_store, level=_quicklook_level(zarr_store))
            png = quicklook_png(level[job.variable], limits=_stretch_limits(statistics))
    png_key = cube_quicklook_key(job.collection, job.tile, job.version)
    store.write(png_key, png)
    quicklook = {"key": png_key, "size": len(png), "sha256": hashlib.sha256(png).hexdigest()}
    record = _record(job, tile, stored, statistics, times) | {
        "time_basis": time_basis,
        "quicklook": quicklook | {"style": _quicklook_style(stored[job.variable])},
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


def _tile_times(job: TileJob) -> tuple[list[datetime], str]:
    """The tile's time span and what it is: the inputs' observation times; failing those,
    their labels' creation times; failing those, when the harvest verified their files."""
    for basis, fields in (
        ("observation", ("start", "end")),
        ("product creation", ("created",)),
        ("harvest", ("fetched",)),
    ):
        times = [t for f in job.inputs for name in fields if (t := getattr(f, name))]
        if times:
            return times, basis
    raise ProductRejected(
        f"tile {job.tile}: no time in any of its inputs "
        f"({', '.join(f.product_id for f in job.inputs)}; rule: a cube item needs one: an "
        "observation time, a product creation time or the harvest's)"
    )


def _tile_fields(job: TileJob) -> dict[str, Any]:
    """What names a tile in its record: collection, grid, tile, version, fingerprint, key."""
    return {
        "collection": job.collection,
        "grid": job.grid,
        "tile": job.tile,
        "version": job.version,
        "fingerprint": job.fingerprint,
        "key": job.key,
    }


def _empty_record(job: TileJob) -> dict[str, Any]:
    return _tile_fields(job) | {
        "empty": True,
        "labels": [f.label for f in job.inputs],
        "objects": [],
    }


def _stretch_limits(statistics: list[Any]) -> list[tuple[float, float] | None]:
    """Each band's 2nd and 98th percentile at full resolution: the quicklook's stretch."""
    limits: list[tuple[float, float] | None] = []
    for s in statistics:
        low, high = s.percentile(2.0), s.percentile(98.0)
        limits.append((low, high) if low is not None and high is not None else None)
    return limits


def _quicklook_style(variable: Any) -> str:
    if "band" in variable.dims and variable.sizes["band"] >= 3:
        return "false colour"
    return "hillshade" if variable.attrs.get("units") == "m" else "grey"


def _quicklook_level(zarr_store: Any) -> int:
    """The coarsest overview still at least as detailed as the thumbnail."""
    layout = multiscales(zarr_store)["layout"]
    fine_enough = [i for i, e in enumerate(layout) if max(e["proj:shape"]) >= QUICKLOOK_MAX_PX]
    return max(fine_enough, default=0)


def _record(
    job: TileJob, tile: Tile, stored: Any, statistics: list[Any], times: list[datetime]
) -> dict[str, Any]:
    variable = stored[job.variable]
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
    inputs = stored.attrs["lunarchive:inputs"]
    first = job.inputs[0]
    return _tile_fields(job) | {
        "variable": job.variable,
        "units": variable.attrs.get("units", UNITS),
        "dtype": str(variable.dtype),
        "title": _title(job, variable),
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
        "bands": _bands(job.variable, statistics, first),
        "resampling": job.resampling,
        "overlap_rule": job.rule,
        "inputs": inputs if isinstance(inputs, list) else json.loads(inputs),
        "labels": [f.label for f in job.inputs],
        "start": min(times).isoformat(),
        "end": max(times).isoformat(),
    }


def _title(job: TileJob, variable: Any) -> str:
    if "band" in variable.dims:
        what = f"{variable.sizes['band']}-band reflectance"
    else:
        what = "Heights above the lunar reference sphere"
    return f"{what}, tile {job.tile} of {job.grid}"


def _bands(variable: str, statistics: list[Any], facts: InputFacts) -> list[dict[str, Any]]:
    """One STAC band object per band: raster statistics and histogram, and for a spectral
    band the ``eo:`` fields (centre wavelength and width in micrometres, as eo v1.1 wants)."""
    bands = []
    for s in statistics:
        i = s.band - 1
        name = variable if len(statistics) == 1 else f"{variable}_{s.band}"
        band: dict[str, Any] = {"name": facts.band_names[i] if facts.band_names else name}
        if s.wavelength_nm is not None:
            band["eo:center_wavelength"] = round(s.wavelength_nm / 1000.0, 6)
        if facts.bandwidths:
            band["eo:full_width_half_max"] = round(facts.bandwidths[i] / 1000.0, 6)
        bands.append(band | s.as_raster_band())
    return bands


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
    variable: str = VARIABLE,
) -> list[TileJob]:
    """Every tile the inputs touch, with its identity (no data is read)."""
    if len({f.kind for f in facts}) > 1:
        raise ValueError(f"{collection}: inputs of different bands cannot share a tile")
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
            variable=variable,
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
                variable=variable,
            )
        )
    return jobs


def collections_of(
    facts: Sequence[InputFacts], source: str, grid: str | None = None
) -> dict[str, tuple[str, str, list[InputFacts]]]:
    """The cube collections the inputs make: ``{collection: (grid, variable, inputs)}``.

    Inputs share a collection (and so may share a tile) only when they have the same bands:
    DEMs make ``<source>-dem``, multi-band maps ``<source>-<n>band`` (one per band count and
    wavelengths). Without a declared ``grid``, polar products go to a polar grid of their own
    (``-sp`` / ``-np`` collections) and each collection gets the grid its inputs suit best.
    """
    kinds: dict[tuple[int, tuple[float, ...]], list[InputFacts]] = {}
    for f in facts:
        kinds.setdefault(f.kind, []).append(f)
    names: dict[str, tuple[str, str, list[InputFacts]]] = {}
    for (bands, wavelengths), members in sorted(kinds.items()):
        base = f"{source}-dem" if bands == 1 else f"{source}-{bands}band"
        if bands > 1 and sum(1 for b, _ in kinds if b == bands) > 1:
            base += "-" + hashlib.sha256(json.dumps(wavelengths).encode()).hexdigest()[:6]
        variable = VARIABLE if bands == 1 else MULTIBAND_VARIABLE
        by_family: dict[str, list[InputFacts]] = {}
        for f in members:
            by_family.setdefault(_family(grid or _grid_for(f)), []).append(f)
        for family, group in sorted(by_family.items()):
            chosen = grid or default_grid(group)
            name = base if family == "eqc" else f"{base}-{family}"
            names[name] = (chosen, variable, group)
    return names


@flow(name="process")
def process(
    products: list[dict[str, Any]],
    collection: str,
    store_url: str | None = None,
    grid: str | None = None,
    resampling: str = "bilinear",
    rule: OverlapRule = "newest",
) -> dict[str, Any]:
    """Build the tiles of the harvested products: DEMs in collection ``<collection>-dem``,
    multi-band maps in ``<collection>-<n>band`` (see :func:`collections_of`).

    Returns ``{"cubes": [tile record, ...], "unrecognised": [product id, ...], "grid": ...,
    "built": [tile id, ...], "kept": [tile id, ...], "collections": {collection: {grid,
    variable, tiles, built, kept}}, "empty": [...], "failed": [...]}``; each tile record has
    the tile store's ``key`` and everything ``publish`` needs. ``grid`` is the one grid of
    every collection, or None when they differ; ``failed`` names the tiles whose build was
    quarantined (collection, tile, bbox); ``empty`` the tiles no input left a valid pixel on
    (never published).
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
    planned = collections_of(known, collection, grid)
    jobs = [
        job
        for name, (chosen, variable, group) in planned.items()
        for job in plan_tiles(
            group, name, grid=chosen, resampling=resampling, rule=rule, variable=variable
        )
    ]
    records: list[dict[str, Any]] = []
    kept, futures = [], {}
    for job in jobs:
        marker = cube_inventory_key(job.collection, job.tile, job.version)
        if store.exists(marker):
            records.append(_finished(store, marker))
            kept.append(job)
        else:
            futures[(job.collection, job.tile)] = (job, build_tile_cube.submit(settings, job))
    failed = []
    for (name, tile_id), (job, future) in futures.items():
        built = settle(
            settings,
            future,
            source=collection,
            product_id=f"{name}-{tile_id}",
            files=[k for f in job.inputs for k, *_ in f.files],
        )
        if built is not None:
            records.append(built)
        else:
            failed.append(_failed(job))
    empty = sorted((r["collection"], r["tile"]) for r in records if r.get("empty"))
    cubes = sorted(
        (r for r in records if not r.get("empty")), key=lambda c: (c["collection"], c["tile"])
    )
    grids = {name: chosen for name, (chosen, _, _) in planned.items()}
    done = {(job.collection, job.tile) for job in kept}
    result: dict[str, Any] = {
        "cubes": cubes,
        "unrecognised": others,
        "grid": next(iter(set(grids.values()))) if len(set(grids.values())) == 1 else None,
        "collections": {
            name: {
                "grid": chosen,
                "variable": variable,
                "tiles": sorted(c["tile"] for c in cubes if c["collection"] == name),
                "built": sorted(t for n, t in futures if n == name and (n, t) not in empty),
                "kept": sorted(t for n, t in done if n == name and (n, t) not in empty),
            }
            for name, (chosen, variable, _) in planned.items()
        },
        "built": sorted(t for (n, t) in futures if (n, t) not in empty),
        "kept": sorted(job.tile for job in kept if (job.collection, job.tile) not in empty),
        "empty": [{"collection": n, "tile": t} for n, t in empty],
        "failed": failed,
    }
    get_run_logger().info(
        "process: %d tile(s) in %s (%d built, %d unchanged, %d empty), %d product(s) of no "
        "known kind",
        len(cubes), ", ".join(f"{n} on {g}" for n, g in grids.items()) or "no collection",
        len(result["built"]), len(result["kept"]), len(empty), len(others),
    )  # fmt: skip
    return result


def _failed(job: TileJob) -> dict[str, Any]:
    left, bottom, right, top = named_grid(job.grid).tile(job.tile).geobox.boundingbox
    bbox, _ = lunar_footprint(named_grid(job.grid).crs_code, (left, bottom, right, top))
    return {"collection": job.collection, "tile": job.tile, "bbox": list(bbox)}
