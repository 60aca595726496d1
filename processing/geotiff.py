"""Lunar GeoTIFFs to :class:`ProductRecord`, read with rasterio (GDAL's GTiff driver).

A GeoTIFF's pixels lie in strips or tiles, often compressed: they are not one array in the
file, so the :class:`ArrayLayout` gives ``offset_bytes`` 0 and the pixels are read through
GDAL. What can be checked before reading is checked: the decoded size against the array
limit, and, for uncompressed files, against the file size; then the last row is read, so that
a truncated file is refused here rather than deep in a lazy computation.

The CRS is taken from the file as WKT2 and identified by its *definition*
(:func:`lunarchive.processing.crs.iau_code`): a south-polar IAU_2015:30135 GeoTIFF reads back
as Polar Stereographic variant B with NORTH/NORTH axes (LUNAR-DATA.md §2.3 pitfall 4), yet its
definition is 30135's. A CRS that matches no code (the LOLA Lambert shade map) keeps
``code=None`` and its WKT2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydantic
import pyproj
import rasterio  # type: ignore[import-untyped]
import rasterio.errors  # type: ignore[import-untyped]
from rasterio.windows import Window  # type: ignore[import-untyped]

from lunarchive.processing import _pvl
from lunarchive.processing.arrays import check_array_fits
from lunarchive.processing.crs import assert_lunar
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ArrayLayout, ByteOrder, ProductFile, ProductRecord

__all__ = ["read_geotiff"]

_TIFF_ORDER: Final[dict[bytes, ByteOrder]] = {b"II": "little", b"MM": "big"}


def read_geotiff(path: Path) -> ProductRecord:
    """The record of one GeoTIFF on a lunar CRS.

    Raises :class:`ProductRejected` for a file GDAL cannot open as a GeoTIFF, one without a
    CRS or with a CRS off the Moon sphere, bands that differ in type or scaling, a rotated
    grid, or pixels that cannot be read.
    """
    where = path.name
    byte_order = _byte_order(path)
    try:
        with rasterio.open(path, driver="GTiff") as src:
            crs = assert_lunar(src.crs.to_wkt() if src.crs else None, where=where)
            layout = _layout(src, path, byte_order=byte_order)
            _check_readable(src, where=where)
            facts = _pvl.map_facts(
                crs,
                tuple(src.transform)[:6],
                width=src.width,
                height=src.height,
                where=where,
            )
            tags = src.tags()
    except (rasterio.errors.RasterioError, rasterio.errors.CRSError) as exc:
        raise ProductRejected(
            f"{where}: GDAL cannot read it as a GeoTIFF ({_first_line(exc)}) "
            "(rule: a GeoTIFF product is readable by GDAL's GTiff driver)"
        ) from None
    try:
        return ProductRecord(
            format="GeoTIFF",
            product_id=path.stem,
            footprint=facts.footprint,
            crs=facts.crs,
            transform=facts.transform,
            resolution_m=facts.resolution_m,
            files=(ProductFile(name=path.name, role="data"),),
            arrays=(layout,),
            label_file=path.name,
            label_text=_label_text(tags, crs),
        )
    except pydantic.ValidationError as exc:
        raise ProductRejected(f"{where}: {exc.errors()[0]['msg']}") from None


def _byte_order(path: Path) -> ByteOrder:
    try:
        with path.open("rb") as stream:
            magic = stream.read(2)
    except OSError as exc:
        raise ProductRejected(f"{path.name}: cannot be read ({exc.strerror})") from None
    if magic not in _TIFF_ORDER:
        raise ProductRejected(f"{path.name}: no TIFF byte-order mark (rule: II or MM at byte 0)")
    return _TIFF_ORDER[magic]


def _layout(src: Any, path: Path, *, byte_order: ByteOrder) -> ArrayLayout:
    where = f"{path.name}, bands"
    for name, values in (("dtype", src.dtypes), ("scale", src.scales), ("offset", src.offsets)):
        if len(set(values)) != 1:
            raise ProductRejected(f"{where}: {name}s differ {values} (rule: one array layout)")
    offset, radius_offset = _pvl.split_radius_offset(float(src.offsets[0]))
    shape: tuple[int, ...] = (src.height, src.width)
    axes: tuple[str, ...] = ("line", "sample")
    if src.count > 1:
        shape, axes = (src.count, *shape), ("band", *axes)
    try:
        layout = ArrayLayout(
            name=src.descriptions[0] or None,
            file=path.name,
            offset_bytes=0,
            shape=shape,
            axes=axes,
            dtype=str(np.dtype(src.dtypes[0])),
            byte_order=byte_order,
            scale=float(src.scales[0]),
            offset=offset,
            nodata=src.nodata,
            unit=src.units[0] or None,
            radius_offset_m=radius_offset,
        )
    except pydantic.ValidationError as exc:
        raise ProductRejected(f"{where}: {exc.errors()[0]['msg']}") from None
    nbytes = math.prod(shape) * np.dtype(layout.dtype).itemsize
    file_size = path.stat().st_size
    # Compressed pixels may be far fewer bytes than decoded ones: only the limit applies.
    compressed = src.compression is not None
    check_array_fits(
        layout, file_size=max(file_size, nbytes) if compressed else file_size, where=where
    )
    return layout


def _check_readable(src: Any, *, where: str) -> None:
    """Read the last row, once its size is known to be small: a truncated file fails here."""
    try:
        src.read(window=Window(0, src.height - 1, src.width, 1))
    except rasterio.errors.RasterioIOError:
        raise ProductRejected(
            f"{where}: the last row of the {src.height} × {src.width} image cannot be read "
            "(rule: the file holds every row it declares)"
        ) from None


def _label_text(tags: dict[str, str], crs: pyproj.CRS) -> str:
    """What stands for a label in a GeoTIFF: its GDAL metadata and CRS, as JSON."""
    return json.dumps({"gdal_metadata": tags, "crs_wkt2": crs.to_wkt("WKT2_2019")}, indent=1)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
