"""Tile cubes on storage: sharded Zarr v3 with overview levels, and refusing hostile stores.

Layout of one tile store (one per tile per collection version)::

    zarr.json            group: proj:code, proj:wkt2, proj:projjson, ssys:targets, provenance,
                         and ``multiscales`` (zarr-conventions multiscales v0.1, GeoZarr's)
    <variable>/          full resolution, ``(y, x)`` or ``(band, y, x)``, float32, NaN empty
    x/ y/ spatial_ref/   coordinates; spatial_ref is the CF grid mapping (``crs_wkt``)
    1/ 2/ …              overview groups: the same variable and coordinates at 1/2, 1/4, …

The full resolution sits in the root group so that xarray (``decode_coords="all"``) and GDAL
open the store itself as the map; overviews are child groups, each a complete georeferenced
dataset, listed by the root's ``multiscales`` attribute (array paths, as the convention's
"nested array layout" names them).

Chunks are 512 × 512 (all bands in one chunk, up to a byte budget, so that a pixel's spectrum
is one read); a shard holds up to 64 MiB of chunks, so that a 2048-pixel single-band tile is one
object per array rather than sixteen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

import dask.array
import numpy as np
import xarray as xr
import zarr
from dask.delayed import delayed as dask_delayed
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec

from lunarchive.processing.cube import prepare_for_zarr
from lunarchive.processing.rasters import write_crs
from lunarchive.processing.tiles import CHUNK_PX, DEFAULT_LIMITS, Limits
from lunarchive.schemas.errors import ProductRejected

__all__ = [
    "MULTISCALES_CONVENTION",
    "WRITE_PIPELINE",
    "WRITE_PIPELINE_ENV",
    "ZSTD_LEVEL",
    "StorageLayout",
    "check_stored_chunks",
    "multiscales",
    "open_tile",
    "overview",
    "storage_layout",
    "write_tile",
]

# dask's functions carry no annotations, which mypy --strict refuses to call: typed as Any.
da: Any = dask.array
_delayed: Any = dask_delayed

ZSTD_LEVEL: Final = 3
CHUNK_BUDGET_BYTES: Final = 16 * 1024**2  # one chunk, all bands: a pixel's spectrum in one read
SHARD_BUDGET_BYTES: Final = 64 * 1024**2  # one shard: one object, and one dask write task
OVERVIEW_MIN_PX: Final = 256  # no overview level smaller than this on its longer side
WRITE_PIPELINE: Final = {
    "codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline",
    "codec_pipeline.max_workers": 1,
}
"""zarr's opt-in synchronous codec pipeline for tile writes: a task encodes and stores its
chunks in one call instead of one coroutine per chunk on zarr's event loop thread, which two
Dask threads and the loop contend for (the benchmark's build: 4.7 -> 4.1 s on two threads,
measured). One encoding thread per write (``max_workers``): Dask's threads are the
parallelism, and zarr's default, a pool of as many threads as CPUs behind each Dask thread,
would put CPUs × threads on the CPUs (no faster on the benchmark's two threads, measured).
The zarr config is per process: Dask worker processes get it as the environment variables
:data:`WRITE_PIPELINE_ENV`."""
WRITE_PIPELINE_ENV: Final = {
    "ZARR_CODEC_PIPELINE__PATH": str(WRITE_PIPELINE["codec_pipeline.path"]),
    "ZARR_CODEC_PIPELINE__MAX_WORKERS": str(WRITE_PIPELINE["codec_pipeline.max_workers"]),
}
MULTISCALES_CONVENTION: Final = {
    "name": "multiscales",
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1/README.md",
}


@dataclass(frozen=True)
class StorageLayout:
    """Chunk and shard shape of a tile array (band axis first when there is one)."""

    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None  # None: the array is small enough for plain chunks


def storage_layout(
    shape: tuple[int, ...], itemsize: int = 4, *, shard: bool = True
) -> StorageLayout:
    """Chunks of at most 512 × 512 (smaller when many bands share a chunk), shards that hold as
    many chunks as the shard budget allows (powers of two per side, at most the array)."""
    bands = shape[0] if len(shape) == 3 else 1
    edge = CHUNK_PX
    while edge > 64 and bands * edge * edge * itemsize > CHUNK_BUDGET_BYTES:
        edge //= 2
    ny, nx = shape[-2:]
    chunk_yx = (min(edge, ny), min(edge, nx))
    lead = (bands,) if len(shape) == 3 else ()
    chunks = (*lead, *chunk_yx)
    per_side = 1
    while bands * (
        edge * per_side * 2
    ) ** 2 * itemsize <= SHARD_BUDGET_BYTES and edge * per_side < max(ny, nx):
        per_side *= 2
    if not shard or per_side == 1:
        return StorageLayout(chunks, None)
    shard_yx = tuple(
        c * min(per_side, math.ceil(n / c)) for c, n in zip(chunk_yx, (ny, nx), strict=True)
    )
    return StorageLayout(chunks, (*lead, *shard_yx))


def write_tile(
    ds: xr.Dataset, store: Store, *, shard: bool = False, overviews: bool = True
) -> None:
    """Write a tile cube (from :func:`~lunarchive.processing.tiles.build_tile`) to an empty
    ``store``: full resolution at the root, overviews in child groups, ``multiscales`` attrs.

    Each overview is computed from the level above it as stored (a 2 × 2 NaN-aware mean), so
    the warp runs once. The store must be empty (the flow writes under a new version and
    publishes by the pointer flip, R7): an existing tile raises :class:`FileExistsError`.
    ``shard`` groups chunks into shards (fewer objects; GDAL 3.12 cannot read them, so off by
    default); ``overviews=False`` writes the full resolution only. The dask graph runs on the
    current scheduler.
    """
    variable = _only_variable(ds)
    _write_level(ds, store, group=None, shard=shard)
    layout: list[dict[str, Any]] = [_layout_entry(ds, variable, level=0)]
    level, current = 0, _reopen(store, group=None) if overviews else ds
    while overviews and max(current[variable].shape[-2:]) > OVERVIEW_MIN_PX:
        level += 1
        smaller = overview(current)
        _write_level(smaller, store, group=str(level), shard=shard)
        layout.append(_layout_entry(smaller, variable, level=level))
        current = _reopen(store, group=str(level))
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    root.attrs.update(
        {
            "zarr_conventions": [MULTISCALES_CONVENTION],
            "multiscales": {"layout": layout, "resampling_method": "average"},
        }
    )


def _only_variable(ds: xr.Dataset) -> str:
    if len(ds.data_vars) != 1:
        raise ValueError(f"a tile cube has one variable, this one has {list(ds.data_vars)}")
    return str(next(iter(ds.data_vars)))


def _write_level(ds: xr.Dataset, store: Store, *, group: str | None, shard: bool) -> None:
    variable = _only_variable(ds)
    array = ds[variable]
    layout = storage_layout(array.shape, array.dtype.itemsize, shard=shard)
    write_chunks = _write_chunks(array.chunks, layout.shards or layout.chunks)
    prepared = prepare_for_zarr(ds).chunk(dict(zip(array.dims, write_chunks, strict=True)))
    encoding: dict[str, Any] = {
        "chunks": layout.chunks,
        "compressors": (ZstdCodec(level=ZSTD_LEVEL),),
    }
    if layout.shards:
        encoding["shards"] = layout.shards
    values = prepared[variable].data
    # xarray writes the level's metadata and coordinates, but from a task of the graph that
    # computes the chunks: the chunks' writes wait for it, their warps do not, so on more
    # than one thread the level's serial set-up runs beside the first warps. The task gets
    # the level with a placeholder for the variable, and every other array (coordinates:
    # small) in memory, so that xarray writes them all there and defers only the placeholder.
    template = prepared.copy()
    template[variable] = template[variable].copy(data=da.empty_like(values))
    for name, other in template.variables.items():
        if name != variable:
            other.load()
    path = variable if group is None else f"{group}/{variable}"

    def create() -> zarr.Array[Any]:
        template.to_zarr(
            store,
            group=group,
            mode="w-",
            zarr_format=3,
            consolidated=False,
            encoding={variable: encoding},
            compute=False,  # the placeholder's chunks: not written
        )
        return zarr.open_array(store, path=path, mode="r+", zarr_format=3)

    with zarr.config.set(WRITE_PIPELINE):
        da.store(values, _delayed(create, pure=False)(), lock=False)


def _write_chunks(
    chunks: tuple[tuple[int, ...], ...] | None, unit: tuple[int, ...]
) -> tuple[int | tuple[int, ...], ...]:
    """Dask chunks for writing: the array's own when each holds whole storage units (chunks,
    or shards when sharded) but for the last along an axis, so that the tasks that made the
    values write them (no rechunk: no second copy held while it waits); else one unit each.
    Either way no two tasks write one object."""
    if chunks is not None and all(
        all(size % step == 0 for size in sizes[:-1])
        for sizes, step in zip(chunks, unit, strict=True)
    ):
        return chunks
    return unit


def _reopen(store: Store, *, group: str | None) -> xr.Dataset:
    opened: xr.Dataset = xr.open_zarr(store, group=group, decode_coords="all", consolidated=False)
    return opened


def _layout_entry(ds: xr.Dataset, variable: str, *, level: int) -> dict[str, Any]:
    a, b, c, d, e, f = (float(v) for v in tuple(ds.rio.transform())[:6])
    asset = variable if level == 0 else f"{level}/{variable}"
    entry: dict[str, Any] = {
        "asset": asset,
        "transform": {"scale": [1.0, 1.0], "translation": [0.0, 0.0]},
        "proj:transform": [a, b, c, d, e, f],
        "proj:shape": list(ds[variable].shape[-2:]),
    }
    if level:
        previous = variable if level == 1 else f"{level - 1}/{variable}"
        entry.update(
            {
                "derived_from": previous,
                "transform": {"scale": [2.0, 2.0], "translation": [0.0, 0.0]},
                "resampling_method": "average",
            }
        )
    return entry


def overview(ds: xr.Dataset) -> xr.Dataset:
    """The next overview level of a tile cube: half the pixels per side (the last row and
    column padded), each the mean of the valid pixels under it (NaN when none)."""
    variable = _only_variable(ds)
    array = ds[variable]
    halved = _halve(array.data)
    transform = ds.rio.transform()
    ny, nx = halved.shape[-2:]
    x = transform.c + transform.a * 2 * (np.arange(nx) + 0.5)
    y = transform.f + transform.e * 2 * (np.arange(ny) + 0.5)
    coords: dict[str, Any] = {"y": y, "x": x}
    coords.update({str(k): v for k, v in array.coords.items() if v.dims == ("band",)})
    smaller = xr.DataArray(halved, dims=array.dims, coords=coords, attrs=array.attrs)
    result = smaller.to_dataset(name=variable)
    result = write_crs(result, ds.rio.crs).rio.write_transform(
        transform @ transform.scale(2.0, 2.0)
    )
    result = result.rio.write_coordinate_system()
    result.attrs = {k: v for k, v in ds.attrs.items() if k.startswith(("proj:", "ssys:"))}
    out: xr.Dataset = result
    return out


def _halve(values: Any) -> Any:
    ny, nx = values.shape[-2:]
    pad = [(0, 0)] * (values.ndim - 2) + [(0, ny % 2), (0, nx % 2)]
    padded = (
        da.pad(values, pad, mode="constant", constant_values=np.nan) if ny % 2 or nx % 2 else values
    )
    even = padded.rechunk(padded.chunks[:-2] + tuple(_even_chunks(c) for c in padded.chunks[-2:]))
    chunks = even.chunks[:-2] + tuple(tuple(c // 2 for c in axis) for axis in even.chunks[-2:])
    return even.map_blocks(_halve_block, chunks=chunks, dtype=np.float32)


def _even_chunks(sizes: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    carry = 0
    for size in sizes:
        size += carry
        carry = size % 2
        if size - carry:
            out.append(size - carry)
    if carry:
        out[-1] += carry
    return tuple(out)


def _halve_block(block: np.ndarray) -> np.ndarray:
    ny, nx = block.shape[-2:]
    grouped = block.reshape(*block.shape[:-2], ny // 2, 2, nx // 2, 2)
    valid = np.isfinite(grouped)
    total = np.where(valid, grouped, 0.0).sum(axis=(-3, -1), dtype=np.float64)
    count = valid.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return np.where(count > 0, mean, np.nan).astype(np.float32)


def check_stored_chunks(
    store: Store, limits: Limits = DEFAULT_LIMITS, *, where: str = "cube"
) -> None:
    """Refuse a Zarr store any of whose arrays declares a chunk (or shard) that would decode
    past ``limits.max_chunk_bytes`` (R12). Only metadata is read."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    for path, array in root.members(max_depth=None):
        if not isinstance(array, zarr.Array):
            continue
        for shape in (array.chunks, array.shards):
            if shape is None:
                continue
            nbytes = math.prod(shape) * array.dtype.itemsize
            if nbytes > limits.max_chunk_bytes:
                raise ProductRejected(
                    f"{where}, array {path!r}: a chunk of {list(shape)} {array.dtype} decodes to "
                    f"{nbytes} bytes, over the {limits.max_chunk_bytes}-byte limit "
                    "(rule: chunks are bounded, R12)"
                )


def open_tile(
    store: Store, *, level: int = 0, limits: Limits = DEFAULT_LIMITS, where: str = "cube"
) -> xr.Dataset:
    """Open a tile cube (``level`` 0 is full resolution) lazily, after checking its chunks."""
    check_stored_chunks(store, limits, where=where)
    return _reopen(store, group=str(level) if level else None)


def multiscales(store: Store) -> dict[str, Any]:
    """The ``multiscales`` attribute of a tile store."""
    attrs = zarr.open_group(store, mode="r", zarr_format=3).attrs.asdict()
    value: dict[str, Any] = json.loads(json.dumps(attrs["multiscales"]))
    return value
