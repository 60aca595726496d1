"""Lazy reads of GDAL rasters as physical values: one open per file, one task per chunk.

A product is opened once through GDAL's C API (``processing.gdal``): its georeferencing,
scale, offset and nodata are read and checked there (a lunar CRS, every line its label
declares). Its values become a dask array whose every chunk is one task that reads its
window and turns it into float32 physical values in place (nodata to NaN, times scale, plus
offset): no extra layer of tasks, and no extra copy of a chunk, per arithmetic step. A warp
reads the windows it needs through the same reader (:func:`file_reader`), without chunk
tasks.

Reads go through the same API on handles pooled per process: a read takes an idle handle on
its file or opens one, and gives it back. Such an open does not build the file's CRS (0.04
ms; rasterio's open builds it, 5 ms for a lunar GeoTIFF, holding the GIL), and the read runs
without the GIL. A file that changed since it was inspected (another inode, size or
modification time) is refused, never read as if it were the same product; idle handles on
files deleted or replaced since (a staging folder removed) are closed before the next open.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dask.array
import dask.base
import numpy as np
import pyproj
import pyproj.exceptions
import rioxarray  # also registers the .rio accessor
import xarray as xr
from affine import Affine

from lunarchive.processing._tiff import FirstImage, first_image
from lunarchive.processing.crs import assert_lunar, crs_of_wkt
from lunarchive.processing.gdal import DATA_TYPES, Dataset, GdalError
from lunarchive.schemas.errors import ProductRejected

__all__ = [
    "READ_CHUNK",
    "STRIP_READ_CHUNK",
    "Raster",
    "file_reader",
    "lazy_values",
    "open_raster",
    "to_dataarray",
    "write_crs",
]

# dask's functions carry no annotations, which mypy --strict refuses to call: typed as Any.
da: Any = dask.array
_tokenize: Any = dask.base.tokenize
_rio_options: Any = rioxarray.set_options
_rio_options_lock = threading.Lock()

READ_CHUNK: Final = "2MiB"
"""Lazy reads in chunks of about this size (all bands of a window in one), aligned on the
file's blocks. A warp task takes the chunks its windows touch, or cuts of them: smaller
chunks mean less of a chunk read ahead of the tasks that need it (the benchmark's peak: 455
MiB at 8 MiB, 395 at 2 MiB, at the same speed, measured); dask's default, 128 MiB, would make
a whole input tile one chunk."""
STRIP_READ_CHUNK: Final = "8MiB"
"""The same for a file stored in whole rows (PDS and ISIS products, line-interleaved): a chunk
is then a band of whole rows, which a smaller budget would make only a few rows tall on a
global map (a warp window then touches hundreds of chunks)."""
_REAL_TYPES: Final = frozenset(dtype.name for dtype in DATA_TYPES) | {"float16"}
"""Stored types a product may have (float16 is read as float32)."""
_POOL_FILES: Final = 64  # files whose idle handles a process keeps (least recently used go)


@dataclass(frozen=True)
class Raster:
    """What one open of a product tells: enough to read it lazily and to georeference it."""

    path: str
    stamp: tuple[int, int, int]  # inode, size, modification time (ns): the file read is this one
    height: int
    width: int
    count: int
    dtype: str
    block: tuple[int, int]  # band 1's block shape (rows, columns)
    transform: Affine
    crs: pyproj.CRS
    crs_wkt: str  # as GDAL gives it
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    nodata: float | None
    tags: dict[str, str]
    band_tags: tuple[dict[str, str], ...]


def open_raster(path: Path) -> Raster:
    """Open ``path`` (what GDAL opens: a label, a cube, a GeoTIFF) once and check it: a lunar
    CRS, a north-up grid, every line present. Raises :class:`ProductRejected` naming the file
    and the rule. The handle is kept for the reads."""
    stamp = _stamp(path)
    _sweep()
    try:
        dataset = Dataset(str(path))
    except GdalError as exc:
        raise ProductRejected(
            f"{path.name}: GDAL cannot open it ({exc}) (rule: a product is a GDAL-readable "
            "raster, opened through its label when the data is detached)"
        ) from None
    try:
        raster = _inspect(dataset, path, stamp)
    except BaseException:
        dataset.close()
        raise
    _give_back((str(path), stamp), dataset)
    return raster


def _inspect(dataset: Dataset, path: Path, stamp: tuple[int, int, int]) -> Raster:
    tiff = first_image(path) if dataset.driver() == "GTiff" else None
    crs_wkt = _crs_wkt(dataset, path, tiff) or None
    try:
        parsed: pyproj.CRS | str | None = crs_of_wkt(crs_wkt) if crs_wkt else None
    except pyproj.exceptions.CRSError:
        parsed = crs_wkt  # assert_lunar names what is wrong with it
    crs = assert_lunar(parsed, where=path.name)
    geotransform = dataset.geotransform()
    transform = Affine.from_gdal(*(geotransform or (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)))
    if transform.b or transform.d:
        raise ProductRejected(
            f"{path.name}: geotransform {tuple(transform)[:6]} is rotated "
            "(rule: a product's grid is north-up)"
        )
    count, height, width = dataset.shape
    dtype = dataset.dtype(1)
    if dtype not in _REAL_TYPES:
        raise ProductRejected(
            f"{path.name}: band 1 stores {dtype} values (rule: a product's values are real "
            "numbers: integers or floating point)"
        )
    _check_complete(dataset, path, stamp[1], tiff)
    bands = [dataset.scale_offset_nodata(band) for band in range(1, count + 1)]
    return Raster(
        path=str(path),
        stamp=stamp,
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        block=dataset.block(1),
        transform=transform,
        crs=crs,
        crs_wkt=crs_wkt or "",
        scales=tuple(scale for scale, _, _ in bands),
        offsets=tuple(offset for _, offset, _ in bands),
        nodata=bands[0][2],
        tags=dataset.tags(),
        band_tags=tuple(dataset.tags(band) for band in range(1, count + 1)),
    )


def lazy_values(raster: Raster, *, bands: Sequence[int] | None = None) -> Any:
    """The physical values of ``raster`` as a lazy float32 dask array: ``(y, x)`` for band 1
    when ``bands`` is None, else ``(band, y, x)`` for those bands (1-based), all of them in
    each chunk. Nodata is NaN; each band's scale and offset are applied."""
    indexes = None if bands is None else tuple(bands)
    shape: tuple[int, ...] = (raster.height, raster.width)
    previous: tuple[int, ...] = raster.block
    if indexes is not None:
        shape, previous = (len(indexes), *shape), (len(indexes), *previous)
    strips = raster.block[1] >= raster.width  # line-interleaved (PDS, ISIS): whole rows
    chunks = da.core.normalize_chunks(
        ("auto",) * len(shape) if indexes is None else (-1, "auto", "auto"),
        shape,
        limit=STRIP_READ_CHUNK if strips else READ_CHUNK,
        dtype=np.float32,
        previous_chunks=previous,
    )
    reader = _Reader(raster, indexes)
    name = "read-" + _tokenize(
        raster.path,
        raster.stamp,
        indexes,
        chunks,
        raster.scales,
        raster.offsets,
        raster.nodata,
        _Reader.VERSION,
    )
    meta = np.empty((0,) * len(shape), dtype=np.float32)
    _readers[name] = reader
    return da.from_array(
        reader,
        chunks=chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        meta=meta,
        inline_array=True,
    )


def file_reader(values: Any) -> _Reader | None:
    """The reader behind ``values`` when they are exactly what :func:`lazy_values` made
    (a dask array no operation has changed since; any operation renames it): a warp can
    then read each window it needs straight from the file, as one read, instead of taking
    the chunks that hold it."""
    return _readers.get(str(getattr(values, "name", "")))


def to_dataarray(values: Any, raster: Raster, *, name: str | None = None) -> xr.DataArray:
    """``values`` (``(y, x)`` or ``(band, y, x)``, on ``raster``'s grid) as a DataArray with
    pixel-centre ``x``/``y`` coordinates and the CRS and transform as rioxarray writes them
    (a ``spatial_ref`` grid mapping with ``crs_wkt`` and ``GeoTransform``)."""
    t = raster.transform
    coords: dict[str, Any] = {
        "y": t.f + t.e * (np.arange(raster.height) + 0.5),
        "x": t.c + t.a * (np.arange(raster.width) + 0.5),
    }
    dims: tuple[str, ...] = ("y", "x")
    if values.ndim == 3:
        dims = ("band", *dims)
    attrs = dict(_grid_mapping_attrs(raster.crs.to_wkt()))
    attrs["GeoTransform"] = " ".join(str(item) for item in t.to_gdal())
    coords["spatial_ref"] = xr.Variable((), 0, attrs=attrs)
    data = xr.DataArray(values, dims=dims, coords=coords, name=name)
    data.encoding["grid_mapping"] = "spatial_ref"
    return data


def write_crs[T: (xr.DataArray, xr.Dataset)](obj: T, crs: Any) -> T:
    """``obj.rio.write_crs(crs)``: the same grid mapping, attributes and encoding, with the
    CRS's CF description (pyproj's ``to_cf``, 5-10 ms a call, GIL held) made once per CRS."""
    # rioxarray's options are one global dict that set_options saves and restores whole:
    # two threads inside at once could restore each other's setting, hence the lock.
    with _rio_options_lock, _rio_options(export_grid_mapping=False):
        written: T = obj.rio.write_crs(crs)
    mapping = written.coords[written.rio.grid_mapping]
    # rioxarray starts from to_cf's attributes, then sets spatial_ref, crs_wkt (in to_cf's
    # place) and GeoTransform: merged in that order, the attributes keep its order too.
    mapping.attrs = {**_cf_attrs(mapping.attrs["crs_wkt"]), **mapping.attrs}
    return written


@functools.lru_cache(maxsize=64)
def _cf_attrs(wkt: str) -> dict[str, Any]:
    try:
        attrs: dict[str, Any] = pyproj.CRS.from_user_input(wkt).to_cf()
    except KeyError:  # as rioxarray: a CRS with no CF description gets none
        return {}
    return attrs


@dataclass(frozen=True)
class _ReadSpec:
    """What a read needs of a raster, and no more: it travels with every read task (a CRS
    would be parsed again, and a label's tags copied, per task on a cluster)."""

    path: str
    stamp: tuple[int, int, int]
    height: int
    width: int
    dtype: str  # what the file stores (read as float32 when numpy has no GDAL type for it)
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    nodata: float | None


class _Reader:
    """Array-like over one raster for :func:`dask.array.from_array`: indexing it reads the
    window and returns float32 physical values. Pickles as its facts (workers reopen)."""

    VERSION: Final = 1  # in the dask names: bump when what a read returns changes

    def __init__(self, raster: Raster, indexes: tuple[int, ...] | None) -> None:
        self.raster = _ReadSpec(
            raster.path,
            raster.stamp,
            raster.height,
            raster.width,
            raster.dtype,
            raster.scales,
            raster.offsets,
            raster.nodata,
        )
        self.indexes = indexes
        self.ndim = 2 if indexes is None else 3
        plane = (raster.height, raster.width)
        self.shape: tuple[int, ...] = plane if indexes is None else (len(indexes), *plane)
        self.dtype = np.dtype(np.float32)

    def window(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Rows ``rows[0]:rows[1]``, columns ``cols[0]:cols[1]``: ``(y, x)``, or
        ``(band, y, x)`` with every band of the reader."""
        plane = (slice(*rows), slice(*cols))
        return self[plane if self.indexes is None else (slice(None), *plane)]

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        *band_key, rows, cols = key
        r0, r1, _ = rows.indices(self.shape[-2])
        c0, c1, _ = cols.indices(self.shape[-1])
        band_numbers = [1] if self.indexes is None else list(self.indexes[band_key[0]])
        raster = self.raster
        stored = np.dtype(raster.dtype)
        raw = np.empty(
            (len(band_numbers), r1 - r0, c1 - c0),
            dtype=stored if stored in DATA_TYPES else np.float32,
        )
        with _handle(raster) as dataset:
            dataset.read_into(raw, band_numbers, r0, c0)
        if self.indexes is None:
            raw = raw[0]
        values = raw.astype(np.float32, copy=False)
        if raster.nodata is not None and not np.isnan(raster.nodata):
            values[raw == raster.nodata] = np.nan  # raw is values when float32: same test
        scales = np.array([raster.scales[i - 1] for i in band_numbers], dtype=np.float32)
        offsets = np.array([raster.offsets[i - 1] for i in band_numbers], dtype=np.float32)
        if self.indexes is None:
            scales, offsets = scales[0], offsets[0]
        else:
            scales, offsets = scales[:, None, None], offsets[:, None, None]
        if np.any(scales != 1):
            values *= scales
        if np.any(offsets != 0):
            values += offsets
        result: np.ndarray = values
        return result


def _crs_wkt(dataset: Dataset, path: Path, tiff: FirstImage | None) -> str:
    """The file's CRS as GDAL gives it. For a GeoTIFF whose CRS comes from its GeoTIFF keys
    (no ``.aux.xml`` beside it, which GDAL would read first, and GDAL's default sources of
    georeferencing), the CRS GDAL built for an earlier file with the same keys
    (:mod:`lunarchive.processing._tiff`), when there was one: the tiles of a map share one,
    and GDAL would look it up in PROJ's database again for each, one file at a time."""
    keys = None
    if (
        tiff is not None
        and not _GEOREF_SETTINGS & os.environ.keys()
        and not Path(f"{path}.aux.xml").exists()
    ):
        keys = tiff.geokeys
    if keys is None:
        return dataset.crs_wkt()
    with _crs_lock:
        known = _crs_by_keys.get(keys)
    if known is None:
        known = dataset.crs_wkt()
        with _crs_lock:
            if len(_crs_by_keys) >= _CRS_KEPT:
                _crs_by_keys.clear()
            _crs_by_keys[keys] = known
    return known


_crs_by_keys: dict[bytes, str] = {}
_crs_lock = threading.Lock()
_CRS_KEPT: Final = 256  # distinct GeoTIFF keys remembered (then forgotten all at once)
_GEOREF_SETTINGS: Final = frozenset({"GDAL_GEOREF_SOURCES", "GDAL_PAM_PROXY_DIR"})
"""GDAL settings that move where a GeoTIFF's CRS comes from: set, every file is asked."""


def _check_complete(dataset: Dataset, path: Path, size: int, tiff: FirstImage | None) -> None:
    """Refuse a data file shorter than its label declares (``size``: the file's bytes;
    ``tiff``: its first image directory, when GDAL reads it as a GeoTIFF).

    GDAL opens such a product and fails only when the missing lines are read, deep in a
    lazy computation. A GeoTIFF lists where each of its blocks lies: the file must reach the
    end of the last of them, whichever block a short file cut (no pixel read). Any other
    product's last pixel of its last band is read now: that pixel is the image's last bytes
    in every raw layout (band, line or pixel interleaved) and lies in the last block of a
    tiled file (one block read, not a row of them: a row of a tiled file's blocks is most of
    an open's cost).
    """
    count, height, width = dataset.shape
    end = tiff.data_end if tiff is not None else None
    if end is not None:
        if end > size:
            raise ProductRejected(
                f"{path.name}: its {height} × {width} image's blocks run to byte {end}, past "
                f"the file's {size} bytes (rule: the data file holds every line its label "
                "declares)"
            )
        return
    try:
        dataset.read_into(np.empty((1, 1, 1), dtype=np.float64), [count], height - 1, width - 1)
    except GdalError:
        raise ProductRejected(
            f"{path.name}: the last line of band {count} of the {height} × {width} image "
            "cannot be read (rule: the data file holds every line its label declares)"
        ) from None


def _stamp(path: str | Path) -> tuple[int, int, int]:
    """The file's identity and version: inode, size, modification time (one ``stat``: a
    sweep of the handle pool takes one per pooled file, before every open)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(f"not a file: {path}")
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _current(key: _Key) -> bool:
    try:
        return _stamp(key[0]) == key[1]
    except OSError:
        return False


@functools.lru_cache(maxsize=64)
def _grid_mapping_attrs(wkt: str) -> dict[str, Any]:
    """The ``spatial_ref`` attributes rioxarray writes for this CRS (its ``to_cf`` costs
    about 5 ms a call), without the per-raster ``GeoTransform``."""
    template = write_crs(xr.DataArray(np.zeros((1, 1), np.float32), dims=("y", "x")), wkt)
    attrs = dict(template.coords["spatial_ref"].attrs)
    attrs.pop("GeoTransform", None)
    return attrs


_readers: weakref.WeakValueDictionary[str, _Reader] = weakref.WeakValueDictionary()
"""The reader of each array :func:`lazy_values` made, by the array's dask name, while the
array lives (its graph holds the reader)."""


# --- the per-process pool of dataset handles ---------------------------------------------------

_Key = tuple[str, tuple[int, int, int]]
_pool: OrderedDict[_Key, list[Any]] = OrderedDict()
_pool_lock = threading.Lock()
_pool_pid = os.getpid()


@contextlib.contextmanager
def _handle(raster: _ReadSpec) -> Iterator[Any]:
    """An open dataset on ``raster``'s file for this thread alone, returned to the pool after."""
    key = (raster.path, raster.stamp)
    src = _take(key)
    if src is None:
        path = Path(raster.path)
        if _stamp(path) != raster.stamp:
            raise ProductRejected(
                f"{path.name}: the file changed after it was opened (rule: a product is "
                "read as it was checked; rerun to take the new file)"
            )
        _sweep()
        src = Dataset(raster.path)
    try:
        yield src
    except BaseException:
        src.close()
        raise
    _give_back(key, src)


def _take(key: _Key) -> Any | None:
    global _pool_pid
    with _pool_lock:
        if _pool_pid != os.getpid():  # a forked child: its parent's handles are not its own
            _pool.clear()
            _pool_pid = os.getpid()
        idle = _pool.get(key)
        if not idle:
            return None
        _pool.move_to_end(key)
        return idle.pop()


def _sweep() -> None:
    """Close the idle handles on files deleted or replaced since they were opened (a staging
    folder removed once its tile is built): their disk space is freed, not kept by a handle.
    Run before each new open, so that at most the last files a process read stay open."""
    with _pool_lock:
        stale = [key for key in _pool if not _current(key)]
        handles = [handle for key in stale for handle in _pool.pop(key)]
    for handle in handles:
        handle.close()


def _give_back(key: _Key, src: Any) -> None:
    evicted: list[Any] = []
    with _pool_lock:
        _pool.setdefault(key, []).append(src)
        _pool.move_to_end(key)
        while len(_pool) > _POOL_FILES:
            _, handles = _pool.popitem(last=False)
            evicted.extend(handles)
    for handle in evicted:
        handle.close()
