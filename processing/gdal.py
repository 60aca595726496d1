"""GDAL's C API through ctypes: the warper, and files opened, inspected and read, each call
without the GIL.

rasterio's ``reproject`` runs GDAL's resampling without the GIL, but builds its in-memory
datasets, CRSs, transformer and warper holding it: 2 ms a call on an affine warp, 8 to 15 ms
on a polar one (PROJ builds the pipeline), measured. With many warps a second Dask thread
then waits on the first. Here the same libgdal (the one in rasterio's wheel, already loaded)
is called with ctypes, which releases the GIL for each foreign call: the in-memory datasets
are views of the caller's numpy arrays (no copy), and the warp is ``GDALWarp``, gdalwarp's
own library entry point, with gdalwarp's options. :class:`Dataset` opens a file the same way
(without building its CRS until asked) and reads windows into the caller's arrays.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import itertools
import os
import threading
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import rasterio  # type: ignore[import-untyped]  # its wheel's libgdal is the one called
from affine import Affine

__all__ = ["DATA_TYPES", "Dataset", "GdalError", "libgdal", "warp_into"]

_GDT_FLOAT32: Final = 6
DATA_TYPES: Final[dict[np.dtype[Any], int]] = {
    np.dtype(np.uint8): 1,
    np.dtype(np.uint16): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.uint32): 4,
    np.dtype(np.int32): 5,
    np.dtype(np.float32): 6,
    np.dtype(np.float64): 7,
    np.dtype(np.uint64): 12,
    np.dtype(np.int64): 13,
    np.dtype(np.int8): 14,
}
"""GDAL's data type code of each numpy type a read can fill."""
_OTHER_TYPES: Final = {10: "complex64", 11: "complex128", 15: "float16"}
"""GDAL types numpy has names for but a read does not fill (by code)."""
_OF_RASTER_VERBOSE_ERROR: Final = 0x02 | 0x40  # GDAL_OF_RASTER | GDAL_OF_VERBOSE_ERROR
_GF_READ: Final = 0
_register_lock = threading.Lock()


class GdalError(RuntimeError):
    """A GDAL call failed; the message is GDAL's."""


@functools.cache
def libgdal() -> Any:
    """rasterio's libgdal (ctypes.CDLL loads the same library, already in the process)."""
    folder = os.path.dirname(rasterio.__file__) + ".libs"
    found = sorted(glob.glob(os.path.join(folder, "libgdal-*.so*")))
    if not found:  # a rasterio built against a system GDAL: the one it loaded
        importlib.import_module("rasterio._base")
        found = [_loaded_gdal()]
    lib = ctypes.CDLL(found[0])
    pointer, text, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    int_out = ctypes.POINTER(ctypes.c_int)
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "GDALAllRegister": (None, []),
        "GDALGetDriverByName": (pointer, [text]),
        "GDALCreate": (pointer, [pointer, text, integer, integer, integer, integer, pointer]),
        "GDALAddBand": (integer, [pointer, integer, pointer]),
        "GDALSetGeoTransform": (integer, [pointer, ctypes.POINTER(ctypes.c_double)]),
        "GDALClose": (integer, [pointer]),
        "GDALWarpAppOptionsNew": (pointer, [pointer, pointer]),
        "GDALWarpAppOptionsFree": (None, [pointer]),
        "GDALWarp": (pointer, [text, pointer, integer, pointer, pointer, pointer]),
        "GDALOpenEx": (pointer, [text, ctypes.c_uint, pointer, pointer, pointer]),
        # dataset, GF_Read, x, y, width, height, buffer, buffer width and height, buffer
        # type, band count, band numbers, pixel, line and band spacing
        "GDALDatasetRasterIO": (
            integer,
            [pointer, *[integer] * 5, pointer, *[integer] * 4, pointer, *[integer] * 3],
        ),
        "GDALGetRasterXSize": (integer, [pointer]),
        "GDALGetRasterYSize": (integer, [pointer]),
        "GDALGetRasterCount": (integer, [pointer]),
        "GDALGetRasterBand": (pointer, [pointer, integer]),
        "GDALGetRasterDataType": (integer, [pointer]),
        "GDALGetDataTypeName": (text, [integer]),
        "GDALGetBlockSize": (None, [pointer, int_out, int_out]),
        "GDALGetGeoTransform": (integer, [pointer, ctypes.POINTER(ctypes.c_double)]),
        "GDALGetProjectionRef": (text, [pointer]),
        "GDALGetRasterScale": (ctypes.c_double, [pointer, int_out]),
        "GDALGetRasterOffset": (ctypes.c_double, [pointer, int_out]),
        "GDALGetRasterNoDataValue": (ctypes.c_double, [pointer, int_out]),
        "GDALGetMetadata": (ctypes.POINTER(ctypes.c_char_p), [pointer, text]),
        "GDALGetDatasetDriver": (pointer, [pointer]),
        "GDALGetDriverShortName": (text, [pointer]),
        "CPLErrorReset": (None, []),
        "CPLGetLastErrorMsg": (text, []),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    with _register_lock:
        lib.GDALAllRegister()
    return lib


def _loaded_gdal() -> str:
    """The path of the libgdal mapped into this process."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libgdal"):
                return path
    raise GdalError("no libgdal is loaded in this process")


def _strings(values: Sequence[str]) -> Any:
    """A NULL-terminated ``char **``, as GDAL's string lists are."""
    return (ctypes.c_char_p * (len(values) + 1))(*(v.encode() for v in values), None)


class _Dataset:
    """A GDAL in-memory dataset over a (band, y, x) float32 C-contiguous array's buffer."""

    def __init__(self, values: np.ndarray, transform: Affine) -> None:
        if values.dtype != np.float32 or values.ndim != 3 or not values.flags.c_contiguous:
            raise ValueError("a (band, y, x) float32 C-contiguous array is needed")
        lib = libgdal()
        bands, rows, cols = values.shape
        self._values = values  # the buffer lives as long as the dataset
        self.handle = lib.GDALCreate(
            lib.GDALGetDriverByName(b"MEM"), b"", cols, rows, 0, _GDT_FLOAT32, None
        )
        if not self.handle:
            raise GdalError(_last_error("GDALCreate"))
        try:
            band_bytes = rows * cols * 4
            for band in range(bands):
                address = values.ctypes.data + band * band_bytes
                options = _strings(
                    [f"DATAPOINTER={address}", "PIXELOFFSET=4", f"LINEOFFSET={cols * 4}"]
                )
                if lib.GDALAddBand(self.handle, _GDT_FLOAT32, options) != 0:
                    raise GdalError(_last_error("GDALAddBand"))
            geotransform = (ctypes.c_double * 6)(*transform.to_gdal())
            if lib.GDALSetGeoTransform(self.handle, geotransform) != 0:
                raise GdalError(_last_error("GDALSetGeoTransform"))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.handle:
            libgdal().GDALClose(self.handle)
            self.handle = None


def _last_error(call: str, about: str = "") -> str:
    message = libgdal().CPLGetLastErrorMsg()
    text = message.decode(errors="replace") if message else "no message"
    return f"{call} failed{about}: {text}"


def warp_into(
    source: np.ndarray,
    src_transform: Affine,
    src_crs: str,
    destination: np.ndarray,
    dst_transform: Affine,
    dst_crs: str,
    *,
    resampling: str,
    src_nodata: float | None,
    warp_options: dict[str, str],
    warp_memory_mb: int,
) -> None:
    """Warp ``source`` into ``destination`` (both (band, y, x) float32, C-contiguous) as
    gdalwarp onto an existing file would: pixels no source reaches keep their values. The
    CRSs are any text GDAL takes (WKT, PROJ string); ``warp_options`` are gdalwarp's ``-wo``."""
    lib = libgdal()
    about = f" (warp from {src_crs!r} to {dst_crs!r})"
    args = ["-q", "-s_srs", src_crs, "-t_srs", dst_crs, "-r", resampling]
    args += ["-wm", str(warp_memory_mb)]
    if src_nodata is not None:
        args += ["-srcnodata", repr(float(src_nodata))]
    for key, value in warp_options.items():
        args += ["-wo", f"{key}={value}"]
    src = _Dataset(source, src_transform)
    try:
        dst = _Dataset(destination, dst_transform)
        try:
            lib.CPLErrorReset()
            options = lib.GDALWarpAppOptionsNew(_strings(args), None)
            if not options:
                raise GdalError(_last_error("GDALWarpAppOptionsNew", about))
            try:
                sources = (ctypes.c_void_p * 1)(src.handle)
                usage_error = ctypes.c_int(0)
                done = lib.GDALWarp(
                    None, dst.handle, 1, sources, options, ctypes.byref(usage_error)
                )
                if not done:
                    raise GdalError(_last_error("GDALWarp", about))
            finally:
                lib.GDALWarpAppOptionsFree(options)
        finally:
            dst.close()
    finally:
        src.close()


class Dataset:
    """A file opened read-only by GDAL, for reads of windows without the GIL. Opening does
    not build the file's CRS (GDAL builds it when asked): 0.04 ms against rasterio's 5 ms for
    a lunar GeoTIFF, whose CRS GDAL looks up in PROJ's database holding the GIL (measured).
    For one thread at a time: a GDAL dataset is not safe for concurrent use."""

    def __init__(self, path: str) -> None:
        lib = libgdal()
        lib.CPLErrorReset()
        self.path = path
        self.handle = lib.GDALOpenEx(os.fsencode(path), _OF_RASTER_VERBOSE_ERROR, None, None, None)
        if not self.handle:
            raise GdalError(_last_error("GDALOpenEx", f" ({path})"))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, rows, columns)."""
        lib = libgdal()
        h = self.handle
        return lib.GDALGetRasterCount(h), lib.GDALGetRasterYSize(h), lib.GDALGetRasterXSize(h)

    def dtype(self, band: int) -> str:
        """The band's type: numpy's name (``int16``, ``float16``, ``complex64`` …), else
        GDAL's (``CInt16`` has none)."""
        code = libgdal().GDALGetRasterDataType(self._band(band))
        known = {value: dtype.name for dtype, value in DATA_TYPES.items()} | _OTHER_TYPES
        return known.get(code) or str(libgdal().GDALGetDataTypeName(code).decode())

    def block(self, band: int) -> tuple[int, int]:
        """The band's block shape (rows, columns)."""
        cols, rows = ctypes.c_int(0), ctypes.c_int(0)
        libgdal().GDALGetBlockSize(self._band(band), ctypes.byref(cols), ctypes.byref(rows))
        return rows.value, cols.value

    def geotransform(self) -> tuple[float, ...] | None:
        """GDAL's six-number geotransform, or None when the file has none."""
        values = (ctypes.c_double * 6)()
        return tuple(values) if libgdal().GDALGetGeoTransform(self.handle, values) == 0 else None

    def crs_wkt(self) -> str:
        """The CRS as GDAL reads it (WKT), empty when there is none. GDAL builds it on this
        call, from PROJ's database for a lunar GeoTIFF (5 ms; the GIL is free meanwhile)."""
        wkt = libgdal().GDALGetProjectionRef(self.handle)
        return wkt.decode() if wkt else ""

    def driver(self) -> str:
        """The short name of the driver that opened the file (``GTiff``, ``PDS4`` …)."""
        lib = libgdal()
        return str(lib.GDALGetDriverShortName(lib.GDALGetDatasetDriver(self.handle)).decode())

    def scale_offset_nodata(self, band: int) -> tuple[float, float, float | None]:
        """The band's scale (1 when unset), offset (0 when unset) and nodata (or None)."""
        lib, handle = libgdal(), self._band(band)
        found = ctypes.c_int(0)
        scale = lib.GDALGetRasterScale(handle, ctypes.byref(found))
        offset = lib.GDALGetRasterOffset(handle, ctypes.byref(found))
        nodata = lib.GDALGetRasterNoDataValue(handle, ctypes.byref(found))
        return float(scale), float(offset), float(nodata) if found.value else None

    def tags(self, band: int | None = None) -> dict[str, str]:
        """The default metadata domain of the dataset, or of a band."""
        items = libgdal().GDALGetMetadata(self._band(band) if band else self.handle, None)
        tags: dict[str, str] = {}
        for i in itertools.count():
            if not items or items[i] is None:
                break
            key, _, value = items[i].decode(errors="replace").partition("=")
            tags[key] = value
        return tags

    def _band(self, band: int) -> Any:
        handle = libgdal().GDALGetRasterBand(self.handle, band)
        if not handle:
            raise GdalError(_last_error("GDALGetRasterBand", f" ({self.path}, band {band})"))
        return handle

    def read_into(self, out: np.ndarray, bands: Sequence[int], row: int, col: int) -> None:
        """Bands ``bands`` (1-based) of the window whose first pixel is (``row``, ``col``)
        and whose size is ``out``'s ((band, y, x), C-contiguous), into ``out``, converted to
        its type as GDAL converts."""
        count, rows, cols = out.shape
        if count != len(bands) or not out.flags.c_contiguous or out.dtype not in DATA_TYPES:
            raise ValueError("a C-contiguous (band, y, x) array of a GDAL data type is needed")
        lib = libgdal()
        item = out.dtype.itemsize
        lib.CPLErrorReset()
        failed = lib.GDALDatasetRasterIO(
            self.handle, _GF_READ, col, row, cols, rows, out.ctypes.data, cols, rows,
            DATA_TYPES[out.dtype], count, (ctypes.c_int * count)(*bands),
            item, item * cols, item * cols * rows,
        )  # fmt: skip
        if failed:
            raise GdalError(_last_error("GDALDatasetRasterIO", f" ({self.path})"))

    def close(self) -> None:
        if self.handle:
            libgdal().GDALClose(self.handle)
            self.handle = None
