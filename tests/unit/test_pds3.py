"""Unit tests of lunarchive.processing.pds3 on the real PDS3 fixtures, and hostile labels.

Expected values come from the labels themselves (quoted beside each assertion) and from
GDAL's PDS driver, never from the reader's own output.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
import rasterio  # type: ignore[import-untyped]
import rasterio.errors  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lunarchive.processing.pds3 import read_pds3
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ProductRecord

MOON_R = 1_737_400.0


@pytest.fixture(scope="module")
def pds3(shared: Path) -> Path:
    return shared / "fixtures" / "real" / "pds3"


def gdal_transform(path: Path) -> tuple[float, ...]:
    with rasterio.open(path) as src:
        return tuple(src.transform)[:6]


def test_ldem_4_detached_label(pds3: Path) -> None:
    label = pds3 / "lro_lola_ldem_4" / "LDEM_4.LBL"
    record = read_pds3(label)
    assert record.format == "PDS3"
    assert (record.product_id, record.version) == ("LDEM_4", "V3.0")
    assert record.instrument == "LOLA"
    assert record.mission == "LUNAR RECONNAISSANCE ORBITER"  # INSTRUMENT_HOST_NAME
    assert record.processing_level == "Derived"  # LRO-L-LOLA-4-GDR-V1.0: CODMAC 4
    assert record.start == datetime(2009, 7, 13, 17, 33, 17, tzinfo=UTC)
    assert record.stop == datetime(2016, 11, 29, 5, 48, 19, tzinfo=UTC)
    (array,) = record.arrays
    assert (array.file, array.offset_bytes) == ("LDEM_4.IMG", 0)
    assert (array.shape, array.axes) == ((720, 1440), ("line", "sample"))
    assert (array.dtype, array.byte_order) == ("int16", "little")  # LSB_INTEGER, 16 bits
    # SCALING_FACTOR 0.5 and OFFSET 1737400.: heights stay heights, the radius is set apart.
    assert (array.scale, array.offset, array.radius_offset_m) == (0.5, 0.0, MOON_R)
    assert (array.unit, array.nodata, array.name) == ("METER", None, "HEIGHT")
    assert [(f.name, f.role) for f in record.files] == [
        ("LDEM_4.LBL", "label"),
        ("LDEM_4.IMG", "data"),
    ]
    assert record.label_file == "LDEM_4.LBL"
    assert "LINE_PROJECTION_OFFSET" in record.label_text


def test_ldem_4_map_projection(pds3: Path) -> None:
    label = pds3 / "lro_lola_ldem_4" / "LDEM_4.LBL"
    record = read_pds3(label)
    assert record.crs is not None and record.transform is not None
    # SIMPLE CYLINDRICAL, CENTER_LONGITUDE 180, A_AXIS_RADIUS 1737.4 km: IAU_2015:30115.
    assert record.crs.code == "IAU_2015:30115"
    assert record.crs.radius_m == MOON_R
    assert record.crs.projection == "Equirectangular"
    assert "1737400" in record.crs.wkt2
    # MAP_SCALE 7580.84 m/pix, SAMPLE/LINE_PROJECTION_OFFSET 719.5 / 359.5 pixels.
    scale = 7580.84
    assert record.transform == pytest.approx(
        (scale, 0.0, -(719.5 + 0.5) * scale, 0.0, -scale, (359.5 + 0.5) * scale)
    )
    assert record.transform == pytest.approx(gdal_transform(label))
    assert record.resolution_m == scale
    # WESTERNMOST 0, EASTERNMOST 360, latitudes ±90: the whole Moon, in −180..180.
    assert record.footprint is not None
    assert record.footprint.bbox == (-180.0, -90.0, 180.0, 90.0)


def test_ldem_4_jp2_label_is_refused_for_its_ambiguous_projection(pds3: Path) -> None:
    """The JP2 label's ^IMAGE names LDEM_4.IMG (lon_0 = 180 by its own label) while its map
    projection says CENTER_LONGITUDE 0: reading it would shift the Moon by 180°."""
    label = pds3 / "lro_lola_ldem_4" / "LDEM_4_JP2.LBL"
    with pytest.raises(ProductRejected) as caught:
        read_pds3(label)
    message = str(caught.value)
    assert message.startswith("LDEM_4_JP2.LBL, COMPRESSED_FILE: ")
    assert "LDEM_4.JP2" in message
    assert "LDEM_4.IMG" in message
    assert "rule: read a product through its own label" in message


def test_kaguya_tc_unprojected_with_corner_footprint(pds3: Path) -> None:
    label = pds3 / "kaguya_tc_cropped" / "TC1S2B0_01_00811N526E0443_mini.lbl"
    record = read_pds3(label)
    assert (record.product_id, record.version) == ("TC1S2B0_01_00811N526E0443", "01")
    assert (record.mission, record.instrument) == ("SELENE", "TC1")
    assert record.start == datetime(2007, 12, 15, 0, 0, 10, 157100, tzinfo=UTC)
    assert record.stop == datetime(2007, 12, 15, 0, 0, 40, 414600, tzinfo=UTC)
    (array,) = record.arrays
    # ^IMAGE = (..._mini.img, 1 <BYTES>): byte 1 is offset 0.
    assert (array.file, array.offset_bytes) == ("TC1S2B0_01_00811N526E0443_mini.img", 0)
    assert (array.shape, array.dtype, array.byte_order) == ((3, 1744), "int16", "big")
    assert (array.scale, array.offset, array.unit) == (0.013, 0.0, "W/m**2/micron/sr")
    assert record.crs is None and record.transform is None
    assert record.footprint is not None
    # UPPER_LEFT/UPPER_RIGHT/LOWER_LEFT/LOWER_RIGHT_LATITUDE/LONGITUDE of the label.
    assert record.footprint.bbox == (43.797102, 51.857042, 44.907878, 53.380049)
    ring = record.footprint.geometry["coordinates"][0]
    assert [43.80093, 51.860902] in ring and [44.907878, 53.375972] in ring


def test_kaguya_mi_map_nine_bands(pds3: Path) -> None:
    label = pds3 / "kaguya_mi_map_cropped" / "MI_MAP_03_N51E124N50E125SC_cropped.lbl"
    record = read_pds3(label)
    assert (record.product_id, record.version, record.instrument) == (
        "MI_MAP_03_N51E124N50E125SC",
        "03",
        "MI",
    )
    assert record.start is None and record.stop is None  # START_TIME = UNK
    (array,) = record.arrays
    assert (array.shape, array.axes) == ((9, 5, 5), ("band", "line", "sample"))
    assert (array.dtype, array.byte_order, array.scale) == ("int16", "big", 2e-05)
    assert record.crs is not None and record.crs.code == "IAU_2015:30110"
    scale = 14.806323445  # MAP_SCALE 0.014806323445 <km/pixel>
    assert record.transform == pytest.approx(
        (scale, 0.0, (253952.0 - 0.5) * scale, 0.0, -scale, (104448.0 + 0.5) * scale)
    )
    assert record.transform == pytest.approx(gdal_transform(label))
    assert record.footprint is not None
    west, south, east, north = record.footprint.bbox
    # The crop is the 5 × 5 pixels at the north-west corner: 124° E, 51° N (2048 pixels/°).
    assert west == pytest.approx(124.0, abs=1 / 2048)
    assert north == pytest.approx(51.0, abs=1 / 2048)
    assert east - west == pytest.approx(5 / 2048)
    assert north - south == pytest.approx(5 / 2048)


@pytest.mark.parametrize(
    ("folder", "name", "product_id", "version", "offset", "shape", "start"),
    [
        (
            "lroc_nac_edr_cropped",
            "nacl.img",
            "M114145549LE",
            "v1.2",
            3637,  # ^IMAGE = 3638 <BYTES>
            (10, 5064),
            datetime(2009, 11, 29, 14, 51, 21, 968000, tzinfo=UTC),
        ),
        (
            "lroc_wac_edr_cropped",
            "wac0000a1c4_cropped.img",
            "M107638937CE",
            "v0.5",
            8624,  # ^IMAGE = 8625 <BYTES>
            (100, 704),
            datetime(2009, 9, 15, 7, 27, 49, 230000, tzinfo=UTC),
        ),
    ],
)
def test_lroc_edr_attached_label(
    pds3: Path,
    folder: str,
    name: str,
    product_id: str,
    version: str,
    offset: int,
    shape: tuple[int, int],
    start: datetime,
) -> None:
    """USGS cropped the images and set LINES to match: the IMAGE fits and is read."""
    path = pds3 / folder / name
    record = read_pds3(path)
    assert (record.product_id, record.version, record.product_type) == (product_id, version, "EDR")
    assert (record.mission, record.instrument) == ("LUNAR RECONNAISSANCE ORBITER", "LROC")
    assert record.processing_level == "Raw"  # LRO-L-LROC-2-EDR-V1.0
    assert record.start == start
    (array,) = record.arrays
    assert (array.file, array.offset_bytes, array.shape) == (name, offset, shape)
    # SAMPLE_BITS 8, LSB_INTEGER: raw counts, unsigned bytes (as GDAL reads them).
    assert (array.dtype, array.unit) == ("uint8", "RAW_INSTRUMENT_COUNT")
    assert offset + math.prod(shape) <= path.stat().st_size
    assert record.crs is None and record.transform is None and record.footprint is None
    assert [(f.name, f.role) for f in record.files] == [(name, "data")]
    assert record.label_file == name
    assert record.label_text.rstrip().endswith("END")
    # GDAL agrees: the same size and type, and no georeferencing at all.
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(path) as src:
        assert (src.height, src.width, src.dtypes[0]) == (*shape, "uint8")


# --- refusals --------------------------------------------------------------------------


def copy_ldem(pds3: Path, tmp_path: Path, *, image_bytes: int | None = None) -> Path:
    source = pds3 / "lro_lola_ldem_4"
    shutil.copy(source / "LDEM_4.LBL", tmp_path)
    data = (source / "LDEM_4.IMG").read_bytes()
    (tmp_path / "LDEM_4.IMG").write_bytes(data if image_bytes is None else data[:image_bytes])
    return tmp_path / "LDEM_4.LBL"


def edit_label(label: Path, old: str, new: str) -> Path:
    text = label.read_text(encoding="latin-1")
    assert old in text
    label.write_text(text.replace(old, new), encoding="latin-1")
    return label


def test_truncated_image_file_is_refused(pds3: Path, tmp_path: Path) -> None:
    label = copy_ldem(pds3, tmp_path, image_bytes=2_073_600 - 2880)  # one line short
    with pytest.raises(ProductRejected, match=r"LDEM_4\.LBL, IMAGE: array ends at byte 2073600"):
        read_pds3(label)


def test_cropped_attached_file_is_refused(pds3: Path, tmp_path: Path) -> None:
    cropped = tmp_path / "nacl.img"
    cropped.write_bytes((pds3 / "lroc_nac_edr_cropped" / "nacl.img").read_bytes()[:20_000])
    with pytest.raises(ProductRejected, match=r"nacl\.img, IMAGE: .*must lie inside its file"):
        read_pds3(cropped)


def test_wrong_target_is_refused(pds3: Path, tmp_path: Path) -> None:
    label = edit_label(
        copy_ldem(pds3, tmp_path), "TARGET_NAME               = MOON", "TARGET_NAME = MARS"
    )
    with pytest.raises(ProductRejected, match=r"LDEM_4\.LBL, TARGET_NAME: 'MARS'.*the Moon"):
        read_pds3(label)


def test_non_lunar_radius_is_refused(pds3: Path, tmp_path: Path) -> None:
    label = edit_label(
        copy_ldem(pds3, tmp_path),
        "A_AXIS_RADIUS                = 1737.4",
        "A_AXIS_RADIUS = 3396.19",
    )
    with pytest.raises(ProductRejected, match=r"IMAGE_MAP_PROJECTION: .*3396190.0 m"):
        read_pds3(label)


@pytest.mark.parametrize("name", ["../LDEM_4.IMG", "/etc/passwd", "sub/LDEM_4.IMG", "..\\x.img"])
def test_pointer_out_of_the_folder_is_refused(pds3: Path, tmp_path: Path, name: str) -> None:
    label = edit_label(
        copy_ldem(pds3, tmp_path), '^IMAGE                    = "LDEM_4.IMG"', f'^IMAGE = "{name}"'
    )
    with pytest.raises(ProductRejected, match=r"\^IMAGE: .* is not a bare file name"):
        read_pds3(label)


def test_missing_data_file_is_refused(pds3: Path, tmp_path: Path) -> None:
    label = copy_ldem(pds3, tmp_path)
    (tmp_path / "LDEM_4.IMG").unlink()
    with pytest.raises(ProductRejected, match=r"'LDEM_4\.IMG' is not beside the label"):
        read_pds3(label)


def test_data_file_found_whatever_its_case(pds3: Path, tmp_path: Path) -> None:
    label = copy_ldem(pds3, tmp_path)
    (tmp_path / "LDEM_4.IMG").rename(tmp_path / "ldem_4.img")
    assert read_pds3(label).arrays[0].file == "ldem_4.img"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"PDS_VERSION_ID = PDS3\nTARGET_NAME = MOON\n" + b"X" * 100, "no END statement"),
        (b"PDS_VERSION_ID = PDS3\nA = (1, 2\nEND\n", "does not parse"),
        (b"PDS_VERSION_ID = PDS3\nTARGET_NAME = MOON\nEND\n", "no IMAGE object"),
    ],
)
def test_broken_labels_are_refused(tmp_path: Path, text: bytes, match: str) -> None:
    label = tmp_path / "broken.lbl"
    label.write_bytes(text)
    with pytest.raises(ProductRejected, match=match):
        read_pds3(label)


def test_end_followed_by_padding_and_data_on_the_same_line(tmp_path: Path) -> None:
    label = hostile_label(2, 3, 1, 513, "MSB_INTEGER", 16).replace(b"END\n", b"END ")
    path = tmp_path / "padded.img"
    path.write_bytes(label + b"\xff" * 12)
    (array,) = read_pds3(path).arrays
    assert (array.offset_bytes, array.shape, array.byte_order) == (512, (2, 3), "big")


# --- hostile IMAGE objects (R13) -----------------------------------------------------------

RECORD = 512
SAMPLE_TYPES = ["MSB_INTEGER", "LSB_UNSIGNED_INTEGER", "PC_REAL", "IEEE_REAL", "VAX_REAL", "X"]


def hostile_label(
    lines: int, samples: int, bands: int, pointer: int, sample: str, bits: int
) -> bytes:
    text = (
        "PDS_VERSION_ID = PDS3\nRECORD_TYPE = FIXED_LENGTH\n"
        f"RECORD_BYTES = {RECORD}\nLABEL_RECORDS = 1\n^IMAGE = {pointer} <BYTES>\n"
        "TARGET_NAME = MOON\nPRODUCT_ID = HOSTILE\nOBJECT = IMAGE\n"
        f"  LINES = {lines}\n  LINE_SAMPLES = {samples}\n  BANDS = {bands}\n"
        f"  SAMPLE_TYPE = {sample}\n  SAMPLE_BITS = {bits}\nEND_OBJECT = IMAGE\nEND\n"
    ).encode()
    return text.ljust(RECORD, b" ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.one_of(st.integers(-3, 64), st.integers(2**31, 2**63)),
    samples=st.one_of(st.integers(-3, 64), st.integers(2**31, 2**63)),
    bands=st.integers(-1, 4),
    pointer=st.one_of(st.integers(-2, 2 * RECORD), st.integers(2**40, 2**62)),
    sample=st.sampled_from(SAMPLE_TYPES),
    bits=st.sampled_from([8, 12, 16, 32, 64]),
    data_bytes=st.integers(0, 4096),
)
def test_hostile_image_objects_are_refused_before_allocation(
    lines: int, samples: int, bands: int, pointer: int, sample: str, bits: int, data_bytes: int
) -> None:
    """Whatever the IMAGE object declares: a record that fits its file, or ProductRejected.

    Nothing is allocated on the label's word: the reader's peak memory stays small even
    when it declares exabytes.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hostile.img"
        path.write_bytes(
            hostile_label(lines, samples, bands, pointer, sample, bits) + bytes(data_bytes)
        )
        tracemalloc.start()
        try:
            outcome: ProductRecord | ProductRejected = read_pds3(path)
        except ProductRejected as exc:
            outcome = exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 8 * 1024**2
        if isinstance(outcome, ProductRejected):
            assert str(outcome).startswith("hostile.img")
            return
        (array,) = outcome.arrays
        itemsize = 1 if bits == 8 else bits // 8
        end = array.offset_bytes + math.prod(array.shape) * itemsize
        assert min(lines, samples, bands) >= 1 and pointer >= 1
        assert end <= path.stat().st_size
