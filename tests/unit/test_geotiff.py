"""Unit tests of lunarchive.processing.geotiff on the real lunar GeoTIFFs, and bad files.

Expected values come from the fixtures README (how the derived file was made) and from the
CRS parameters GDAL reports, never from the reader's own output.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
from rasterio.transform import from_origin  # type: ignore[import-untyped]

from lunarchive.processing.geotiff import read_geotiff
from lunarchive.schemas.errors import ProductRejected

MOON_R = 1_737_400.0
SPOLE = "ldem_4_spole_iau30135.tif"
LAMBERT = "Lunar_LRO_LOLA_Shade_MAP2_90.0N20.0_LAMB.tif"


@pytest.fixture(scope="module")
def real(shared: Path) -> Path:
    return shared / "fixtures" / "real"


def test_south_polar_dem_is_identified_by_definition(real: Path) -> None:
    """GDAL reads it back as variant B with NORTH/NORTH axes and no code; it is 30135."""
    path = real / "derived" / SPOLE
    with rasterio.open(path) as src:
        assert src.crs.to_authority() is None  # the pitfall: no code as read
    record = read_geotiff(path)
    assert (record.format, record.product_id) == ("GeoTIFF", "ldem_4_spole_iau30135")
    assert record.crs is not None and record.crs.code == "IAU_2015:30135"
    assert (record.crs.radius_m, record.crs.projection) == (MOON_R, "Polar Stereographic")
    assert "South Polar" in record.crs.wkt2  # the WKT2 is the file's, not the code's
    # README: 246 × 246 int16 at 7580.84 m, origin (−932443.32, +932443.32), scale 0.5,
    # offset 0, unit meter, nodata −32768.
    (array,) = record.arrays
    assert (array.shape, array.dtype, array.byte_order) == ((246, 246), "int16", "little")
    assert (array.scale, array.offset, array.nodata, array.unit) == (0.5, 0.0, -32768.0, "meter")
    assert array.radius_offset_m is None
    assert record.transform == pytest.approx((7580.84, 0.0, -932443.32, 0.0, -7580.84, 932443.32))
    assert record.resolution_m == pytest.approx(7580.84)
    # The grid is the square round the pole whose half-width is the stereographic radius of
    # −60°; its corners lie further out: latitude −(90° − 2·atan(√2·w / 2R)).
    assert record.footprint is not None
    corner = -(90.0 - 2.0 * math.degrees(math.atan(math.sqrt(2.0) * 932443.32 / (2.0 * MOON_R))))
    assert record.footprint.bbox == pytest.approx((-180.0, -90.0, 180.0, corner))
    assert round(corner, 2) == -48.44  # README: bbox −90..−48.44
    assert record.files[0].name == SPOLE and record.label_file == SPOLE
    assert "LRO LOLA LDEM_4" in record.label_text  # the SOURCE tag


def test_lambert_shade_map_has_no_code(real: Path) -> None:
    path = real / "geotiff" / LAMBERT
    record = read_geotiff(path)
    assert record.crs is not None
    assert record.crs.code is None
    assert (record.crs.radius_m, record.crs.projection) == (MOON_R, "Lambert Conformal Conic")
    lcc = pyproj.CRS.from_wkt(record.crs.wkt2)
    params = {p.name: p.value for p in lcc.coordinate_operation.params}  # type: ignore[union-attr]
    # README: lat_0 = 90, lon_0 = 20, lat_1 = 73, lat_2 = 42 on the Moon sphere.
    assert params["Latitude of false origin"] == 90.0
    assert params["Longitude of false origin"] == 20.0
    assert params["Latitude of 1st standard parallel"] == 73.0
    assert params["Latitude of 2nd standard parallel"] == 42.0
    (array,) = record.arrays
    assert (array.shape, array.dtype, array.nodata) == ((275, 239), "uint8", 0.0)
    assert record.transform == (3870.0, 0.0, -464400.0, 0.0, -3870.0, -506970.0)
    # Every corner of the grid lies in the bbox, which is north of the equator.
    assert record.footprint is not None
    west, south, east, north = record.footprint.bbox
    to_lonlat = pyproj.Transformer.from_crs(lcc, "IAU_2015:30100", always_xy=True)
    for x in (-464400.0, 460530.0):
        for y in (-1571220.0, -506970.0):
            lon, lat = to_lonlat.transform(x, y)
            assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
    assert 0.0 < south < north < 90.0


def write_tif(path: Path, crs: str, *, compress: str | None = None) -> Path:
    data = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "int16",
        "crs": crs,
        "transform": from_origin(0.0, 64.0 * 1000, 1000.0, 1000.0),
    }
    if compress:
        profile.update(compress=compress, tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def test_earth_crs_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "earth.tif", "EPSG:32633")
    with pytest.raises(ProductRejected, match=r"earth\.tif: CRS .* 6378137.0 m"):
        read_geotiff(path)


def test_lunar_equirectangular_written_here_reads_back(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "moon.tif", "IAU_2015:30110")
    record = read_geotiff(path)
    assert record.crs is not None and record.crs.code == "IAU_2015:30110"
    assert record.arrays[0].shape == (64, 64)
    assert record.transform == (1000.0, 0.0, 0.0, 0.0, -1000.0, 64000.0)


def test_truncated_compressed_file_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "moon.tif", "IAU_2015:30110", compress="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ProductRejected, match=r"moon\.tif: the last row of the 64 × 64 image cannot be read"
    ):
        read_geotiff(path)


def test_truncated_uncompressed_file_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "moon.tif", "IAU_2015:30110")
    data = path.read_bytes()
    path.write_bytes(data[: 64 * 64])  # half the pixels' bytes
    with pytest.raises(ProductRejected, match=r"moon\.tif, bands: .*must lie inside its file"):
        read_geotiff(path)


def test_not_a_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "label.tif"
    path.write_text("PDS_VERSION_ID = PDS3\nEND\n")
    with pytest.raises(ProductRejected, match=r"label\.tif: no TIFF byte-order mark"):
        read_geotiff(path)
