"""Readers: lunar raster products to lazy xarray.

Every rejection is a :class:`ProductRejected` whose message names the file (or source), the
field and the rule broken, so that the flow can quarantine the input and go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyproj
import rasterio  # type: ignore[import-untyped]
import rioxarray
import xarray as xr
from rasterio.windows import Window  # type: ignore[import-untyped]

from lunarchive.processing.crs import MOON_RADIUS_M, assert_lunar
from lunarchive.processing.tiles import open_bands
from lunarchive.schemas.errors import ProductRejected

__all__ = [
    "GDAL_CACHE_MIB",
    "MULTIBAND_VARIABLE",
    "READ_CHUNK",
    "band_count",
    "open_dem",
    "open_map",
]

MULTIBAND_VARIABLE = "reflectance"
# Lazy reads in chunks of about this size, aligned on the file's blocks (dask's default, 128
# MiB, makes a whole input tile one chunk: its decoded copies then sit in memory at once).
READ_CHUNK = "8MiB"
# GDAL's block cache for the processes that build tiles: Dask holds the decoded chunks and
# reads each input chunk once, so GDAL's default (5 % of the machine's memory, which Dask
# can neither see nor spill) would only hold copies. Set as GDAL_CACHEMAX in the workers.
GDAL_CACHE_MIB = 64
"""The variable name of multi-band maps (Kaguya MI and M3 map products store reflectance)."""


@dataclass(frozen=True)
class _RasterFacts:
    crs: pyproj.CRS
    scale: float
    offset: float
    nodata: float | None


def open_dem(path: Path) -> xr.DataArray:
    """Open one DEM product lazily as height above the Moon's reference sphere (m, float32).

    ``path`` is what GDAL opens: the PDS4 ``.xml`` or PDS3 ``.lbl`` label of a detached
    product, an ISIS cube, a GeoTIFF. Nodata becomes NaN; dims are ``(y, x)``; the product's
    CRS is kept. Products that store *radius* (a PDS ``OFFSET`` equal to the 1 737 400 m
    reference radius, as LOLA's: LUNAR-DATA.md §2.3 pitfall 5) are turned into height, and
    the ``comment`` attribute says so.
    """
    if not path.is_file():
        raise FileNotFoundError(path)
    facts = _inspect(path)
    with dask.config.set({"array.chunk-size": READ_CHUNK}):
        raw = rioxarray.open_rasterio(path, chunks=True, mask_and_scale=False)
    assert isinstance(raw, xr.DataArray)  # one band, checked by _inspect
    raw = raw.squeeze("band", drop=True)
    values = raw.astype(np.float32)
    if facts.nodata is not None:
        values = values.where(raw != facts.nodata)
    radius_offset = math.isclose(facts.offset, MOON_RADIUS_M)
    # Adding the offset minus the radius, never the radius itself, keeps float32 exact.
    offset = facts.offset - MOON_RADIUS_M if radius_offset else facts.offset
    height = values * np.float32(facts.scale) + np.float32(offset)
    result: xr.DataArray = height.rename("height").rio.write_crs(facts.crs)
    result.attrs = _height_attrs(facts, radius_offset=radius_offset)
    result.encoding["source"] = str(path)
    return result


def band_count(path: Path) -> int:
    """How many bands GDAL sees in ``path`` (opened through its label)."""
    try:
        with rasterio.open(path) as src:
            return int(src.count)
    except rasterio.errors.RasterioIOError as exc:
        raise ProductRejected(
            f"{path.name}: GDAL cannot open it ({exc}) (rule: a product is a GDAL-readable "
            "raster, opened through its label when the data is detached)"
        ) from None


def open_map(path: Path) -> xr.DataArray:
    """Open a map product lazily: one band as :func:`open_dem` (height, ``(y, x)``), several
    as :func:`~lunarchive.processing.tiles.open_bands` (``(band, y, x)`` with wavelengths).

    A multi-band product is checked like a DEM before any lazy read (a lunar CRS, every line
    its label declares) and is taken as reflectance, dimensionless (``units`` ``"1"``).
    """
    if band_count(path) == 1:
        return open_dem(path)
    with rasterio.open(path) as src:
        assert_lunar(src.crs, where=path.name)
        _check_complete(src, path)
    bands = open_bands(path)
    bands.attrs = {
        "units": "1",
        "long_name": "reflectance (DN x scale + offset, per band)",
    }
    return bands


def _inspect(path: Path) -> _RasterFacts:
    """Open ``path`` with GDAL and check what must hold before any lazy read."""
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise ProductRejected(f"{path.name}: {src.count} bands (rule: a DEM has one band)")
            crs = assert_lunar(src.crs, where=path.name)
            _check_complete(src, path)
            return _RasterFacts(crs, src.scales[0], src.offsets[0], src.nodata)
    except rasterio.errors.RasterioIOError as exc:
        raise ProductRejected(
            f"{path.name}: GDAL cannot open it ({exc}) (rule: a product is a GDAL-readable "
            "raster, opened through its label when the data is detached)"
        ) from None


def _check_complete(src: Any, path: Path) -> None:
    """Refuse a data file shorter than its label declares.

    GDAL opens such a product and fails only when the missing lines are read, deep in a
    lazy computation; reading the last line now moves the failure here.
    """
    try:
        src.read(1, window=Window(0, src.height - 1, src.width, 1))
    except rasterio.errors.RasterioIOError:
        raise ProductRejected(
            f"{path.name}: the last line of the {src.height} × {src.width} image cannot be read "
            "(rule: the data file holds every line its label declares)"
        ) from None


def _height_attrs(facts: _RasterFacts, *, radius_offset: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "units": "m",
        "long_name": f"height above the {MOON_RADIUS_M:.0f} m lunar reference sphere",
        "reference_radius_m": MOON_RADIUS_M,
    }
    if radius_offset:
        attrs["source_value_offset_m"] = facts.offset
        attrs["comment"] = (
            "the product stores radius (DN x scale + offset); "
            "its offset equals the reference radius and was removed to give height"
        )
    return attrs
