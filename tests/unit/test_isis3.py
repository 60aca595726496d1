"""Unit tests of lunarchive.processing.isis3 on the real ISIS3 cubes, and broken copies.

Expected values come from the cube labels (quoted beside each assertion) and from GDAL's
ISIS3 driver, never from the reader's own output.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
import rasterio  # type: ignore[import-untyped]
import rasterio.errors  # type: ignore[import-untyped]

from lunarchive.processing.isis3 import read_isis3
from lunarchive.schemas.errors import ProductRejected

MOON_R = 1_737_400.0
LDEM = "ldem_4_reduced.cub"
GLD100 = "WAC_GLD100_V1.0_GLOBAL_with_LOLA_30M_POLE.16bit.reduced.cub"
NAC = "M143947267L.cal.echo.crop.cub"


@pytest.fixture(scope="module")
def isis3(shared: Path) -> Path:
    return shared / "fixtures" / "real" / "isis3"


def test_ldem_4_reduced(isis3: Path) -> None:
    cube = isis3 / LDEM
    record = read_isis3(cube)
    assert (record.format, record.product_id) == ("ISIS3", "ldem_4_reduced")
    # Archive group: InstrumentId LOLA, InstrumentHostName "LUNAR RECONNAISSANCE ORBITER".
    assert (record.mission, record.instrument) == ("LUNAR RECONNAISSANCE ORBITER", "LOLA")
    (array,) = record.arrays
    # Core: StartByte 65537, Samples 480, Lines 240, Bands 1, SignedWord Lsb.
    assert (array.file, array.offset_bytes) == (LDEM, 65536)
    assert (array.shape, array.axes) == ((240, 480), ("line", "sample"))
    assert (array.dtype, array.byte_order) == ("int16", "little")
    # Base 1737400.0, Multiplier 0.5: the radius is set apart, heights stay heights.
    assert (array.scale, array.offset, array.radius_offset_m) == (0.5, 0.0, MOON_R)
    assert array.nodata == -32768.0  # ISIS Null of SignedWord
    assert record.crs is not None and record.transform is not None
    # Mapping: SimpleCylindrical, CenterLongitude 180, EquatorialRadius 1737400 m.
    assert record.crs.code == "IAU_2015:30115"
    assert (record.crs.radius_m, record.crs.projection) == (MOON_R, "Equirectangular")
    # UpperLeftCornerX/Y -5458204.8 / 2729102.4 m, PixelResolution 22742.52 m.
    assert record.transform == (22742.52, 0.0, -5458204.8, 0.0, -22742.52, 2729102.4)
    assert record.resolution_m == 22742.52
    assert record.footprint is not None
    assert record.footprint.bbox == (-180.0, -90.0, 180.0, 90.0)
    with rasterio.open(cube) as src:
        assert record.transform == pytest.approx(tuple(src.transform)[:6])
        assert (src.nodata, src.scales[0], src.offsets[0]) == (-32768.0, 0.5, MOON_R)


def test_gld100_zero_to_360_grid(isis3: Path) -> None:
    """x from −100 m to 10 918 300 m on lon_0 = 0: longitudes 0–360, normalised on read."""
    record = read_isis3(isis3 / GLD100)
    assert record.mission is None and record.instrument is None  # no Instrument group
    (array,) = record.arrays
    assert (array.shape, array.dtype, array.scale, array.radius_offset_m) == (
        (426, 853),
        "int16",
        0.5,
        MOON_R,
    )
    assert record.crs is not None and record.crs.code == "IAU_2015:30110"  # lon_0 = 0
    assert record.transform == (12800.0, 0.0, -100.0, 0.0, -12800.0, 2729200.0)
    assert record.footprint is not None
    # The grid's bottom edge: 2729200 − 426 × 12800 m; its top is a hair past the pole.
    south = math.degrees((2729200.0 - 426 * 12800.0) / MOON_R)
    assert record.footprint.bbox == pytest.approx((-180.0, south, 180.0, 90.0))
    assert record.footprint.geometry["type"] == "Polygon"


def test_unprojected_level_1_cube_gets_no_geotransform(isis3: Path) -> None:
    cube = isis3 / NAC
    record = read_isis3(cube)
    assert record.crs is None and record.transform is None and record.footprint is None
    assert record.resolution_m is None
    # Instrument group: SpacecraftName, InstrumentId NACL, StartTime / StopTime.
    assert (record.mission, record.instrument) == ("LUNAR RECONNAISSANCE ORBITER", "NACL")
    assert record.start == datetime(2010, 11, 9, 13, 6, 40, 356000, tzinfo=UTC)
    assert record.stop == datetime(2010, 11, 9, 13, 6, 59, 409000, tzinfo=UTC)
    (array,) = record.arrays
    # Core: Tile 400 × 400, Real Lsb, Base 0 Multiplier 1.
    assert (array.shape, array.dtype, array.byte_order) == ((400, 400), "float32", "little")
    assert (array.scale, array.offset, array.radius_offset_m) == (1.0, 0.0, None)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):  # GDAL: no geotransform
        src = rasterio.open(cube)
    with src:
        assert array.nodata == src.nodata  # ISIS Null for Real: 0xFF7FFFFB
        assert (src.height, src.width) == array.shape


# --- refusals: edited copies, the same length as the original so bytes stay in place ----


def edited_copy(
    source: Path, tmp_path: Path, old: bytes, new: bytes, *, size: int | None = None
) -> Path:
    assert len(old) == len(new)
    data = source.read_bytes()
    assert old in data
    copy = tmp_path / source.name
    copy.write_bytes(data.replace(old, new)[:size])
    return copy


def test_truncated_cube_is_refused(isis3: Path, tmp_path: Path) -> None:
    cube = edited_copy(isis3 / LDEM, tmp_path, b"", b"", size=200_000)
    with pytest.raises(ProductRejected, match=r"ldem_4_reduced\.cub, Core \(tiles\): array ends"):
        read_isis3(cube)


def test_huge_dimensions_are_refused(isis3: Path, tmp_path: Path) -> None:
    cube = edited_copy(isis3 / LDEM, tmp_path, b"Lines   = 240", b"Lines   = 999")
    with pytest.raises(ProductRejected, match=r"must lie inside its file"):
        read_isis3(cube)


def test_other_target_is_refused(isis3: Path, tmp_path: Path) -> None:
    cube = edited_copy(
        isis3 / GLD100, tmp_path, b"TargetName           = Moon", b"TargetName           = Mars"
    )
    with pytest.raises(ProductRejected, match=r"TargetName: \['MARS'\].*the Moon"):
        read_isis3(cube)


def test_non_lunar_radius_is_refused(isis3: Path, tmp_path: Path) -> None:
    old = b"EquatorialRadius   = 1737400.0"
    cube = edited_copy(isis3 / LDEM, tmp_path, old, old.replace(b"1737400.0", b"3396190.0"))
    with pytest.raises(ProductRejected, match=r"Mapping: .*3396190.0 m"):
        read_isis3(cube)


def test_not_a_cube_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.cub"
    path.write_bytes(b"Object = Something\nEnd_Object\nEnd\n")
    with pytest.raises(ProductRejected, match=r"x\.cub: no IsisCube/Core object"):
        read_isis3(path)
