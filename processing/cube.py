"""Analysis-ready cubes on lunar grids: one variable, its CRS written the ways readers look.

A cube is an xarray Dataset with one 2-D variable on ``(y, x)`` and its CRS twice over:

* as a CF grid mapping, the ``spatial_ref`` coordinate with ``crs_wkt`` as rioxarray writes it,
  which xarray (``decode_coords="all"``), rioxarray and GDAL's Zarr driver read back;
* in the group attributes, as STAC's projection extension and the ssys extension name them
  (``proj:code``, ``proj:wkt2``, ``proj:projjson``, ``ssys:targets``), so that a reader that
  drops coordinates still knows the body and the grid (LUNAR-DATA.md §2.3 pitfall 8).
"""

from __future__ import annotations

import re
from typing import Final

import pyproj
import xarray as xr

from lunarchive.processing.crs import (
    MOON_RADIUS_M,
    assert_lunar,
    iau_code,
)
from lunarchive.processing.rasters import write_crs

__all__ = ["build_cube", "prepare_for_zarr"]

_VARIABLE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_RESERVED_NAMES: Final = {"x", "y", "spatial_ref"}
# Attributes that describe an encoding, not the values: never copied onto a cube variable.
_ENCODING_ATTRS: Final = {"_FillValue", "missing_value", "scale_factor", "add_offset", "nodata"}
_ENCODING_ATTRS_CF: Final = {"grid_mapping", "coordinates"}


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
    dataset = write_crs(dataset, crs).rio.write_transform(mosaic.rio.transform())
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


def _canonical_crs(crs: pyproj.CRS) -> tuple[str | None, pyproj.CRS]:
    """The IAU_2015 code the CRS has (if any), and the CRS to publish: the code's own
    definition when there is one, so that WKT2 and PROJJSON carry its identifier."""
    code = iau_code(crs)
    return code, (pyproj.CRS.from_user_input(code) if code else crs)
