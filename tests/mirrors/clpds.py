"""A loopback mirror of China's lunar data release system (CLPDS), **synthetic only**.

No licensed CLPDS file may be committed (SOURCES.md §7.5), so every file here is generated:
the CE2TMap2015 DOM triple of §9.6 — a tiny GeoTIFF on the Moon's CRS (IAU_2015:30100),
its ``.tfw`` world file and a ``.lbl`` — under ``/PUBDATA/CE2TMap2015/DOM_50m/`` (the real
directory naming is unverified). The tree is protected: without the session header the
portal answers 302 to ``/login``, as CLPDS does for ordered or protected paths.
"""

from __future__ import annotations

import numpy as np
import pyproj
import rasterio  # type: ignore[import-untyped]
from rasterio.io import MemoryFile  # type: ignore[import-untyped]
from rasterio.transform import from_origin  # type: ignore[import-untyped]

__all__ = ["COOKIE", "ROOT", "TILE", "build_clpds"]

ROOT = "/PUBDATA/"
DOM = "CE2TMap2015/DOM_50m/"
TILE = "CE2_GRAS_DOM_50m_A001_87N000W_A"
COOKIE = ("Cookie", "SESSION=lunarchive-test")


def _geotiff() -> bytes:
    crs = rasterio.crs.CRS.from_wkt(pyproj.CRS("IAU_2015:30100").to_wkt())
    pixels = (np.arange(64, dtype=np.uint8) * 3).reshape(1, 8, 8)
    with MemoryFile() as memory:
        with memory.open(
            driver="GTiff",
            width=8,
            height=8,
            count=1,
            dtype="uint8",
            crs=crs,
            transform=from_origin(-0.5, 90.0, 0.125, 0.125),
        ) as dataset:
            dataset.write(pixels)
        data: bytes = memory.read()
    return data


def build_clpds() -> dict[str, bytes]:
    label = (
        "/* SYNTHETIC: lunarchive's test mirror, not a CLPDS product */\r\n"
        "PDS_VERSION_ID = PDS3\r\n"
        f'PRODUCT_ID = "{TILE}"\r\n'
        'DATA_SET_ID = "CE2-TMAP-2015"\r\n'
        "END\r\n"
    ).encode()
    world = b"0.125\r\n0.0\r\n0.0\r\n-0.125\r\n-0.4375\r\n89.9375\r\n"
    files = {
        DOM + TILE + ".tif": _geotiff(),
        DOM + TILE + ".tfw": world,
        DOM + TILE + ".lbl": label,
    }
    return {ROOT + name: data for name, data in files.items()}
