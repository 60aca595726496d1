"""read_pds4 on the real PDS4 fixtures and on the demo's GDAL-written tiles.

Every expected value below is copied from the label text (or from fixtures/real/README.md),
never from the reader's own output. CRSs are checked by radius and projection parameters.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyproj
import pytest

from lunarchive.processing.arrays import numpy_dtype
from lunarchive.processing.demo_archive import demo_heights_dn, write_demo_archive
from lunarchive.processing.pds4 import read_pds4
from lunarchive.schemas.product import CrsInfo, ProductRecord

MOON_R = 1_737_400.0


@pytest.fixture(scope="session")
def real(shared: Path) -> Path:
    return shared / "fixtures" / "real"


@pytest.fixture(scope="module")
def demo_dem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_archive(root)
    return root / "dem"


def _params(info: CrsInfo) -> dict[str, float]:
    """Projection parameters of the record's WKT, by EPSG parameter name, in degrees/metres."""
    crs = pyproj.CRS.from_wkt(info.wkt2)
    assert crs.coordinate_operation is not None
    return {p.name: float(p.value) for p in crs.coordinate_operation.params}


def _method(info: CrsInfo) -> str:
    crs = pyproj.CRS.from_wkt(info.wkt2)
    assert crs.coordinate_operation is not None
    return crs.coordinate_operation.method_name


def _sphere(info: CrsInfo) -> tuple[float, float]:
    ellipsoid = pyproj.CRS.from_wkt(info.wkt2).ellipsoid
    assert ellipsoid is not None
    return ellipsoid.semi_major_metre, ellipsoid.semi_minor_metre


def _file(record: ProductRecord, name: str) -> tuple[str, int | None, str | None]:
    (found,) = [f for f in record.files if f.name == name]
    return found.role, found.size, found.md5


# --- derived/ldem_4_pds4 (GDAL-written PDS4 of LOLA LDEM_4) ------------------------------


def test_ldem_4_pds4_identity_and_times(real: Path) -> None:
    record = read_pds4(real / "derived" / "ldem_4_pds4.xml")
    assert record.format == "PDS4"
    assert record.product_id == "URN:LUNARCHIVE:FIXTURES:DERIVED:LDEM_4_PDS4"
    assert record.version == "1.0"
    assert record.lidvid == "URN:LUNARCHIVE:FIXTURES:DERIVED:LDEM_4_PDS4::1.0"
    assert record.mission == "LUNAR RECONNAISSANCE ORBITER"
    assert record.instrument is None  # the only Observing_System_Component is a Spacecraft
    assert record.target == "Moon"
    assert record.product_type == "Product_Observational"
    assert (record.start, record.stop) == (None, None)  # both xsi:nil in the label
    assert record.label_file == "ldem_4_pds4.xml"
    assert record.label_text == (real / "derived" / "ldem_4_pds4.xml").read_text("utf-8")
    assert _file(record, "ldem_4_pds4.xml") == ("label", 7369, None)
    assert _file(record, "ldem_4_pds4.img") == ("data", 2073600, None)


def test_ldem_4_pds4_array(real: Path) -> None:
    (array,) = read_pds4(real / "derived" / "ldem_4_pds4.xml").arrays
    assert array.name == "image"
    assert array.file == "ldem_4_pds4.img"
    assert array.offset_bytes == 0
    assert array.shape == (1, 720, 1440)
    assert array.axes == ("band", "line", "sample")
    assert (array.dtype, array.byte_order) == ("int16", "little")  # SignedLSB2
    assert array.scale == 0.5
    # value_offset 1737400 turns heights into radii: the layout keeps heights.
    assert array.offset == 0.0
    assert array.radius_offset_m == MOON_R
    assert array.nodata == -32768.0
    # Decoded with the layout, the radii span 1 728 521.5 .. 1 747 904 m (LUNAR-DATA.md §2.3).
    dtype = numpy_dtype(array, where="test")
    values = np.fromfile(real / "derived" / "ldem_4_pds4.img", dtype=dtype).reshape(array.shape)
    radii = values[values != array.nodata] * array.scale + array.radius_offset_m
    assert (radii.min(), radii.max()) == (1_728_521.5, 1_747_904.0)


def test_ldem_4_pds4_crs_and_footprint(real: Path) -> None:
    record = read_pds4(real / "derived" / "ldem_4_pds4.xml")
    assert record.crs is not None
    assert record.crs.radius_m == MOON_R
    assert _sphere(record.crs) == (MOON_R, MOON_R)
    assert record.crs.projection == "Equirectangular"
    assert _method(record.crs) == "Equidistant Cylindrical"
    params = _params(record.crs)
    assert params["Longitude of natural origin"] == 180.0
    assert params["Latitude of 1st standard parallel"] == 0.0
    # Equirectangular, clon 180, on the 1737400 m sphere: LUNAR-DATA.md §2.1.
    assert record.crs.code == "IAU_2015:30115"
    assert record.transform == (7580.84, 0.0, -5458204.8, 0.0, -7580.84, 2729102.4)
    assert record.resolution_m == 7580.84
    assert record.footprint is not None
    assert record.footprint.bbox == (-180.0, -90.0, 180.0, 90.0)
    assert record.footprint.geometry["type"] == "Polygon"


# --- pds4/labels_only ---------------------------------------------------------------------


def test_lroc_wac_cdr_label_only(real: Path) -> None:
    record = read_pds4(real / "pds4" / "labels_only" / "M1431146123CC.xml")
    assert record.product_id == "urn:nasa:pds:lro-l-lroc-3-cdr:lrolrc_1054c_data:wac.m1431146123cc"
    assert record.version == "1.0"
    assert record.mission == "LUNAR RECONNAISSANCE ORBITER"
    assert record.instrument == "LUNAR RECONNAISSANCE ORBITER CAMERA"
    assert record.processing_level == "Partially Processed"
    assert record.start == datetime(2023, 2, 16, 0, 20, 56, 17000, tzinfo=UTC)
    assert record.stop == datetime(2023, 2, 16, 0, 26, 20, 205000, tzinfo=UTC)
    # The data file is absent: the file keeps the label's declared size and md5.
    assert not (real / "pds4" / "labels_only" / "M1431146123CC.IMG").exists()
    assert _file(record, "M1431146123CC.IMG") == (
        "data",
        58436928,
        "f1ef2daa67c8167a9995e1bc1e4e56dc",
    )
    (array,) = record.arrays
    assert array.offset_bytes == 10560  # after the 10560-byte PDS3 header
    assert array.shape == (20748, 704)
    assert array.axes == ("line", "sample")
    assert (array.dtype, array.byte_order) == ("float32", "little")  # IEEE754LSBSingle
    assert array.unit == "I/F"
    assert (array.scale, array.offset, array.radius_offset_m) == (1.0, 0.0, None)
    # missing_constant 0xFF7FFFFB is a float32 bit pattern
    assert array.nodata == struct.unpack(">f", bytes.fromhex("FF7FFFFB"))[0]
    # The declared array fills the declared file exactly.
    assert array.offset_bytes + 20748 * 704 * 4 == 58436928
    assert (record.crs, record.transform, record.footprint) == (None, None, None)


def test_shadowcam_polar_browse_label_only(real: Path) -> None:
    record = read_pds4(real / "pds4" / "labels_only" / "M044416018S_map_raw.xml")
    assert record.product_id == (
        "urn:nasa:pds:kplo-shadowcam:browse-calibrated-map:m044416018s_map_raw"
    )
    assert record.version == "2.0"
    assert record.product_type == "Product_Browse"
    assert (record.start, record.stop) == (None, None)
    assert _file(record, "M044416018S_map_raw.tif") == (
        "browse",
        2602,
        "3bb60e693c8651dcf8bbc8defd9fd4b5",
    )
    assert record.arrays == () and record.tables == ()  # an Encoded_Image is not an array
    crs = record.crs
    assert crs is not None
    assert crs.radius_m == MOON_R and _sphere(crs) == (MOON_R, MOON_R)
    assert crs.projection == "Polar Stereographic"
    # lat_0 -87.04 is a latitude of true scale (variant B): not IAU_2015:30135.
    assert _method(crs) == "Polar Stereographic (variant B)"
    params = _params(crs)
    assert params["Latitude of standard parallel"] == pytest.approx(-87.04)
    assert params["Longitude of origin"] == -6.75
    assert crs.code is None
    assert record.transform == (1.910095, 0.0, -25316.39913, 0.0, -1.910095, 158902.713145)
    assert record.resolution_m == 1.910095
    # No grid size without the TIFF: the footprint is the label's Bounding_Coordinates.
    assert record.footprint is not None
    assert record.footprint.bbox == pytest.approx(
        (-91.8554441747607342, -89.1649098069960786, 78.3355188583663704, -84.6938878634492056)
    )


def test_shadowcam_crs_puts_the_corner_on_the_labels_north_bound(real: Path) -> None:
    """The upper-left corner lies on the north bounding latitude: the CRS reading is right."""
    record = read_pds4(real / "pds4" / "labels_only" / "M044416018S_map_raw.xml")
    assert record.crs is not None and record.transform is not None
    to_lonlat = pyproj.Transformer.from_crs(
        pyproj.CRS.from_wkt(record.crs.wkt2), "IAU_2015:30100", always_xy=True
    )
    _, lat = to_lonlat.transform(record.transform[2], record.transform[5])
    assert lat == pytest.approx(-84.6938878634492056, abs=1e-6)


# --- pds4/lro_lend_rdr and pds4/m3_spectral_calibration (tables) -------------------------


def test_lro_lend_binary_table(real: Path) -> None:
    record = read_pds4(real / "pds4" / "lro_lend_rdr" / "lend_rdr_dld_20240615.xml")
    assert record.product_id == "urn:nasa:pds:lro_lend:data_science_derived:lend_rdr_dld_20240615"
    assert record.version == "1.0"
    assert record.mission == "Lunar Reconnaissance Orbiter"
    assert record.instrument == "Lunar Exploration Neutron Detector for LRO"
    assert record.start == datetime(2024, 6, 15, 0, 0, 0, tzinfo=UTC)
    assert record.stop == datetime(2024, 6, 15, 23, 59, 59, tzinfo=UTC)
    assert _file(record, "lend_rdr_dld_20240615.dat") == ("data", 288, None)
    # The supplemental PDS3 label is listed but not shipped: no size is invented.
    assert _file(record, "lend_rdr_dld_20240615.lbl") == ("other", None, None)
    (table,) = record.tables
    assert (table.kind, table.file, table.offset_bytes) == (
        "binary",
        "lend_rdr_dld_20240615.dat",
        0,
    )
    assert (table.records, table.record_bytes) == (1, 239)
    # 25 fields and 2 groups of one field each (16 repetitions): names in record order.
    assert len(table.fields) == 27
    assert table.fields[:5] == (
        "LRO_TIME",
        "UTC",
        "LOCAL_HOUR",
        "LOCAL_MINUTE",
        "LUNARCENTRIC_LATITUDE",
    )
    assert table.fields[-4:] == ("SHEN_BCGD", "SHEN_COUNTS", "SUN_ACTIVITY", "NADIR_POINTING")
    assert record.arrays == () and record.crs is None and record.footprint is None


def test_m3_character_table(real: Path) -> None:
    record = read_pds4(real / "pds4" / "m3_spectral_calibration" / "m3t20070912_rdn_spc.xml")
    assert record.product_id == "urn:nasa:pds:ch1_m3:document:m3t20070912_rdn_spc"
    assert record.version == "1.0"
    assert record.mission == "CHANDRAYAAN-1"
    assert record.instrument == "MOON MINERALOGY MAPPER"
    assert record.processing_level == "Derived"
    assert record.start == record.stop == datetime(2008, 7, 22, 20, 23, 47, tzinfo=UTC)
    assert _file(record, "m3t20070912_rdn_spc.tab") == ("data", 7020, None)
    (table,) = record.tables
    assert (table.kind, table.records, table.record_bytes) == ("character", 260, 27)
    assert table.fields == ("Channel Number", "Wavelength Center", "FWHM")
    assert table.records * table.record_bytes == 7020  # the file holds exactly the table
    assert record.crs is None and record.footprint is None


# --- the demo archive's GDAL-written tiles -------------------------------------------------

_DEMO_RES_M = 2.0 * math.pi * MOON_R / 360.0 / 512


@pytest.mark.parametrize(("row", "col"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_demo_tile(demo_dem: Path, row: int, col: int) -> None:
    record = read_pds4(demo_dem / f"dem_t{row}{col}.xml")
    assert record.product_id == f"urn:nasa:pds:lunarchive_demo:data_dem:dem_t{row}{col}"
    assert record.version == "1.0"
    assert record.mission == "Lunarchive demo"
    assert record.start == datetime(2009, 7, 13, tzinfo=UTC)
    assert record.stop == datetime(2020, 12, 31, 23, 59, 59, tzinfo=UTC)
    (array,) = record.arrays
    assert array.shape == (1, 256, 256)
    assert (array.dtype, array.byte_order) == ("int16", "little")
    assert (array.scale, array.offset, array.nodata) == (0.5, 0.0, -32768.0)
    assert array.radius_offset_m is None
    assert record.crs is not None
    assert record.crs.code == "IAU_2015:30110"
    assert _sphere(record.crs) == (MOON_R, MOON_R)
    assert _params(record.crs)["Longitude of natural origin"] == 0.0
    assert record.resolution_m == pytest.approx(_DEMO_RES_M, rel=1e-12)
    # 512 pixels per degree from 52.5°W, 43.5°N; each tile is half a degree.
    west, north = -52.5 + 0.5 * col, 43.5 - 0.5 * row
    assert record.transform == pytest.approx(
        (_DEMO_RES_M, 0.0, west * 512 * _DEMO_RES_M, 0.0, -_DEMO_RES_M, north * 512 * _DEMO_RES_M)
    )
    assert record.footprint is not None
    assert record.footprint.bbox == pytest.approx((west, north - 0.5, west + 0.5, north), abs=1e-9)
    # The layout decodes the very pixels the demo wrote.
    values = np.fromfile(demo_dem / array.file, dtype=numpy_dtype(array, where="test"))
    expected = demo_heights_dn()[row * 256 : (row + 1) * 256, col * 256 : (col + 1) * 256]
    np.testing.assert_array_equal(values.reshape(array.shape)[0], expected)
