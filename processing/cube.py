"""Analysis-ready Zarr v3 cubes on lunar grids: build, write, summarise.

A cube is an xarray Dataset with one 2-D variable on ``(y, x)`` and its CRS twice over:

* as a CF grid mapping, the ``spatial_ref`` coordinate with ``crs_wkt`` as rioxarray writes it,
  which xarray (``decode_coords="all"``), rioxarray and GDAL's Zarr driver read back;
* in the group attributes, as STAC's projection extension and the ssys extension name them
  (``proj:code``, ``proj:wkt2``, ``proj:projjson``, ``ssys:targets``), so that a reader that
  drops coordinates still knows the body and the grid (LUNAR-DATA.md §2.3 pitfall 8).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyproj
import xarray as xr
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec

from lunarchive.processing.crs import (
    MOON_RADIUS_M,
    BBox,
    Geometry,
    assert_lunar,
    iau_code,
    lunar_footprint,
)
from lunarchive.processing.mosaic import CHUNK_PX

__all__ = ["CubeSummary", "build_cube", "cube_summary", "prepare_for_zarr", "write_cube"]

_ZSTD_LEVEL: Final = 3
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_RESERVED_NAMES: Final = {"x", "y", "spatial_ref"}
# Attributes that describe an encoding, not the values: never copied onto a cube variable.
_ENCODING_ATTRS: Final = {"_FillValue", "missing_value", "scale_factor", "add_offset", "nodata"}
_ENCODING_ATTRS_CF: Final = {"grid_mapping", "coordinates"}


@dataclass(frozen=True)
class CubeSummary:
    """What a catalogue item needs to know about a cube (STAC proj/raster fields and stats)."""

    variable: str
    shape: tuple[int, int]
    transform: tuple[float, float, float, float, float, float]  # affine a..f = proj:transform
    proj_code: str | None
    wkt2: str
    projjson: dict[str, Any]
    bbox: BBox  # lunar lon/lat degrees
    geometry: Geometry  # GeoJSON, lunar lon/lat degrees
    height_min_m: float | None  # None when every pixel is nodata
    height_max_m: float | None
    height_mean_m: float | None
    nodata_fraction: float
    chunk_shape: tuple[int, int]
    dtype: str


def build_cube(mosaic: xr.DataArray, *, name: str) -> xr.Dataset:
    """Wrap a lunar ``mosaic`` as a one-variable cube Dataset called ``name`` (lazy).

    ``mosaic`` is 2-D ``(y, x)`` or multi-band ``(band, y, x)``; coordinates along the band
    (such as ``wavelength``) are kept.
    """
    if not _VARIABLE_NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise ValueError(f"cube variable name {name!r} is not a plain identifier")
    if mosaic.dims not in (("y", "x"), ("band", "y", "x")):
        raise ValueError(
            f"cube {name!r}: dims are {mosaic.dims}, expected ('y', 'x') or ('band', 'y', 'x')"
        )
    code, crs = _canonical_crs(assert_lunar(mosaic.rio.crs, where=f"cube {name!r}"))
    attrs = {k: v for k, v in mosaic.attrs.items() if k not in _ENCODING_ATTRS | _ENCODING_ATTRS_CF}
    # Dimension coordinates and coordinates along the band (e.g. wavelength); not spatial_ref.
    coords = {
        key: coord
        for key, coord in mosaic.coords.items()
        if coord.dims and set(coord.dims) <= set(mosaic.dims)
    }
    variable = xr.DataArray(mosaic.data, coords=coords, dims=mosaic.dims, attrs=attrs)
    variable.attrs.setdefault("reference_radius_m", MOON_RADIUS_M)
    dataset = variable.to_dataset(name=name)
    dataset = dataset.rio.write_crs(crs).rio.write_transform(mosaic.rio.transform())
    dataset = dataset.rio.write_coordinate_system()
    dataset.attrs = {
        "proj:code": code,
        "proj:wkt2": crs.to_wkt("WKT2_2019"),
        "proj:projjson": crs.to_json(),
        "ssys:targets": ["Moon"],
        "reference_radius_m": MOON_RADIUS_M,
    }
    result: xr.Dataset = dataset
    return result


def write_cube(ds: xr.Dataset, store: Store, *, overwrite: bool = False) -> None:
    """Write ``ds`` to ``store`` as Zarr v3: zstd, 256 × 256 chunks, no consolidated metadata.

    The dask graph runs on the current scheduler (the flow's client, if any). An existing
    cube is never replaced unless ``overwrite`` is given: writing where one exists raises
    :class:`FileExistsError`.
    """
    prepared = prepare_for_zarr(ds).chunk({"y": CHUNK_PX, "x": CHUNK_PX})
    encoding = {
        name: {"chunks": (CHUNK_PX, CHUNK_PX), "compressors": (ZstdCodec(level=_ZSTD_LEVEL),)}
        for name in prepared.data_vars
    }
    prepared.to_zarr(
        store,
        mode="w" if overwrite else "w-",
        zarr_format=3,
        consolidated=False,
        encoding=encoding,
    )


def prepare_for_zarr(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy whose variables name their grid mapping in attrs, not in encoding.

    ``to_zarr(encoding=...)`` replaces each variable's encoding, and with it the
    ``grid_mapping`` that rioxarray keeps there: GDAL and ``decode_coords="all"`` would then
    lose the CRS. An attribute survives.
    """
    copy = ds.copy()
    for name, variable in copy.data_vars.items():
        mapping = variable.encoding.pop("grid_mapping", None) or variable.attrs.get("grid_mapping")
        if mapping is not None:
            copy[name].attrs["grid_mapping"] = mapping
    return copy


def cube_summary(ds: xr.Dataset) -> CubeSummary:
    """Summarise a one-variable cube (built, or opened with ``decode_coords="all"``).

    Computes the height statistics and the nodata fraction (one pass over the data, on the
    current dask scheduler).
    """
    if len(ds.data_vars) != 1:
        raise ValueError(f"a cube has one variable, this one has {list(ds.data_vars)}")
    name = str(next(iter(ds.data_vars)))
    variable = ds[name]
    code, crs = _canonical_crs(assert_lunar(ds.rio.crs, where=f"cube {name!r}"))
    low, high, mean, valid = _statistics(variable)
    a, b, c, d, e, f = (float(v) for v in tuple(ds.rio.transform())[:6])
    bbox, geometry = lunar_footprint(crs, ds.rio.bounds())
    return CubeSummary(
        variable=name,
        shape=(variable.sizes["y"], variable.sizes["x"]),
        transform=(a, b, c, d, e, f),
        proj_code=code,
        wkt2=crs.to_wkt("WKT2_2019"),
        projjson=json.loads(crs.to_json()),
        bbox=bbox,
        geometry=geometry,
        height_min_m=low,
        height_max_m=high,
        height_mean_m=mean,
        nodata_fraction=1.0 - valid / variable.size if variable.size else 1.0,
        chunk_shape=_chunk_shape(variable),
        dtype=str(variable.dtype),
    )


def _canonical_crs(crs: pyproj.CRS) -> tuple[str | None, pyproj.CRS]:
    """The IAU_2015 code the CRS has (if any), and the CRS to publish: the code's own
    definition when there is one, so that WKT2 and PROJJSON carry its identifier."""
    code = iau_code(crs)
    return code, (pyproj.CRS.from_user_input(code) if code else crs)


def _statistics(variable: xr.DataArray) -> tuple[float | None, float | None, float | None, int]:
    """Min, max, mean of the valid pixels and their count, in one pass.

    NaN is replaced rather than skipped: dask's nan-reductions warn on every all-NaN chunk,
    and a mosaic has many.
    """
    valid = variable.notnull()
    stats = xr.Dataset(
        {
            "low": variable.where(valid, np.inf).min(skipna=False),
            "high": variable.where(valid, -np.inf).max(skipna=False),
            "total": variable.where(valid, 0.0).sum(dtype="float64", skipna=False),
            "valid": valid.sum(),
        }
    ).compute()
    count = int(stats["valid"])
    if count == 0:
        return None, None, None, 0
    return float(stats["low"]), float(stats["high"]), float(stats["total"]) / count, count


def _chunk_shape(variable: xr.DataArray) -> tuple[int, int]:
    if variable.chunks is not None:
        y_chunks, x_chunks = variable.chunks
        return (y_chunks[0], x_chunks[0])
    y, x = variable.encoding.get("chunks", variable.shape)
    return (int(y), int(x))
