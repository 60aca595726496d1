"""Unit tests of lunarchive.processing.rasters: one open per product, physical values per chunk.

Offline: the products are small GeoTIFFs written here in IAU_2015:30100.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import dask
import dask.utils
import numpy as np
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
import xarray as xr
from rasterio.transform import from_origin  # type: ignore[import-untyped]

from lunarchive.processing import rasters
from lunarchive.processing._tiff import first_image
from lunarchive.processing.gdal import Dataset
from lunarchive.processing.rasters import (
    READ_CHUNK,
    STRIP_READ_CHUNK,
    lazy_values,
    open_raster,
    to_dataarray,
)
from lunarchive.processing.readers import open_dem, open_map
from lunarchive.schemas.errors import ProductRejected

NODATA = -32768
SCALES = (0.5, 2.0, 0.25)
OFFSETS = (10.0, -3.0, 0.0)


def geokeys(path: Path) -> bytes | None:
    """The GeoTIFF keys of ``path``'s first image; None when it is not a TIFF."""
    found = first_image(path)
    return None if found is None else found.geokeys


def data_end(path: Path) -> int | None:
    """Where the blocks of ``path``'s first image end; None when it is not a TIFF."""
    found = first_image(path)
    return None if found is None else found.data_end


def _write(path: Path, dn: np.ndarray, *, block: int = 256, **extra: object) -> None:
    bands, height, width = dn.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": str(dn.dtype),
        "crs": "IAU_2015:30100",
        "transform": from_origin(10.0, 5.0, 0.01, 0.01),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn)
        dst.scales = SCALES[:bands]
        dst.offsets = OFFSETS[:bands]


def _dn(bands: int, height: int = 600, width: int = 700) -> np.ndarray:
    rng = np.random.default_rng(7)
    dn = rng.integers(-2000, 2000, size=(bands, height, width), dtype=np.int16)
    dn[:, 5:9, 11:20] = NODATA
    return dn


def test_values_are_dn_times_scale_plus_offset_with_nan_for_nodata(tmp_path: Path) -> None:
    dn = _dn(3)
    _write(tmp_path / "map.tif", dn)
    bands = open_map(tmp_path / "map.tif")
    got = bands.compute(scheduler="threads").values
    assert got.dtype == np.float32 and got.shape == dn.shape
    for i in range(3):
        expected = dn[i].astype(np.float32) * np.float32(SCALES[i]) + np.float32(OFFSETS[i])
        expected[dn[i] == NODATA] = np.nan
        np.testing.assert_array_equal(got[i], expected)
    assert bands.chunks is not None and bands.chunks[0] == (3,)  # a spectrum in one chunk


def test_dem_keeps_the_crs_and_the_pixel_centres(tmp_path: Path) -> None:
    dn = _dn(1)
    _write(tmp_path / "dem.tif", dn)
    dem = open_dem(tmp_path / "dem.tif")
    assert dem.dims == ("y", "x") and dem.name == "height"
    assert pyproj.CRS(dem.rio.crs.to_wkt()).equals(open_raster(tmp_path / "dem.tif").crs)
    assert tuple(dem.rio.transform())[:6] == (0.01, 0.0, 10.0, 0.0, -0.01, 5.0)
    np.testing.assert_allclose(dem.x.values[:2], [10.005, 10.015])
    np.testing.assert_allclose(dem.y.values[:2], [4.995, 4.985])
    assert dem.rio.transform() == dem.rio.transform(recalc=True)
    assert float(dem[0, 0]) == dn[0, 0, 0] * 0.5 + 10.0


def test_chunks_follow_the_file_blocks_within_the_read_budget(tmp_path: Path) -> None:
    dn = _dn(1, height=3000, width=3000)
    _write(tmp_path / "dem.tif", dn, block=512)
    dem = open_dem(tmp_path / "dem.tif")
    assert dem.chunks is not None
    rows, cols = dem.chunks
    assert sum(rows) == 3000 and sum(cols) == 3000
    assert all(size % 512 == 0 for size in rows[:-1] + cols[:-1])  # whole blocks per chunk
    assert max(rows) * max(cols) * 4 <= dask.utils.parse_bytes(READ_CHUNK)


def test_a_read_elsewhere_pickles_and_reopens_the_same_file(tmp_path: Path) -> None:
    dn = _dn(1)
    _write(tmp_path / "dem.tif", dn)
    raster = open_raster(tmp_path / "dem.tif")
    values = lazy_values(raster)
    rasters._pool.clear()  # as in a worker process: no handle opened yet
    copy = pickle.loads(pickle.dumps(values))
    expected = dn[0].astype(np.float32) * np.float32(0.5) + np.float32(10.0)
    expected[dn[0] == NODATA] = np.nan
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(copy.compute(), expected)


def test_a_file_changed_after_it_was_opened_is_refused_not_read(tmp_path: Path) -> None:
    path = tmp_path / "dem.tif"
    _write(path, _dn(1))
    dem = open_dem(path)
    replacement = tmp_path / "new.tif"
    _write(replacement, _dn(1) + 1)
    os.replace(replacement, path)
    rasters._pool.clear()  # as in a worker process, which opens the path anew
    with pytest.raises(ProductRejected, match=r"dem\.tif: the file changed after it was opened"):
        dem.compute(scheduler="synchronous")


def test_a_band_interleaved_file_short_of_its_last_band_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bsq.tif"
    # Band-sequential strips: band 1 whole, then band 2, the file's last bytes (no metadata
    # set after the data, which would move the TIFF directory after it).
    profile = {"width": 70, "height": 64, "count": 2, "dtype": "int16", "blockysize": 8}
    with rasterio.open(
        path, "w", driver="GTiff", crs="IAU_2015:30100", transform=from_origin(10, 5, 0.01, 0.01),
        tiled=False, interleave="band", **profile,
    ) as dst:  # fmt: skip
        dst.write(_dn(2, 64, 70))
    with rasterio.open(path) as src:
        last_strip = int(src.get_tag_item("BLOCK_OFFSET_0_7", "TIFF", bidx=2))
        band2_end = last_strip + int(src.get_tag_item("BLOCK_SIZE_0_7", "TIFF", bidx=2))
        band1_end = int(src.get_tag_item("BLOCK_OFFSET_0_7", "TIFF", bidx=1)) + int(
            src.get_tag_item("BLOCK_SIZE_0_7", "TIFF", bidx=1)
        )
    assert band1_end <= last_strip < band2_end == path.stat().st_size
    path.write_bytes(path.read_bytes()[: last_strip + 100])  # band 2's last strip cut short
    with rasterio.open(path) as src:
        assert src.read(1).shape == (64, 70)  # band 1 still reads whole
    with pytest.raises(
        ProductRejected, match=rf"bsq\.tif: its 64 × 70 image's blocks run to byte {band2_end}"
    ) as refused:
        open_map(path)
    assert refused.match(rf"past the file's {last_strip + 100} bytes \(rule: the data file")


def test_a_sparse_geotiff_missing_its_last_blocks_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "sparse.tif"
    dn = np.full((1, 600, 700), NODATA, dtype=np.int16)
    dn[0, :100, :100] = 7  # only the first block holds data: the others are not stored
    _write(path, dn, sparse_ok=True)
    with rasterio.open(path) as src:
        assert src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1) is None  # not stored
    heights = open_map(path).values
    assert np.isnan(heights[100:, :]).all() and np.isnan(heights[:, 100:]).all()
    assert (heights[:100, :100] == 7 * SCALES[0] + OFFSETS[0]).all()


def test_a_rotated_grid_is_refused_naming_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "rotated.tif"
    rotated = rasterio.Affine(0.01, 0.001, 10.0, 0.0, -0.01, 5.0)
    _write(path, _dn(1), transform=rotated)
    with pytest.raises(ProductRejected, match=r"rotated\.tif: .*rotated.*north-up"):
        open_dem(path)


def test_to_dataarray_writes_the_grid_mapping_as_rioxarray_does(tmp_path: Path) -> None:
    _write(tmp_path / "dem.tif", _dn(1))
    raster = open_raster(tmp_path / "dem.tif")
    ours = to_dataarray(lazy_values(raster), raster)
    theirs = ours.copy().rio.write_crs(raster.crs).rio.write_transform(raster.transform)
    assert ours.encoding["grid_mapping"] == "spatial_ref"
    assert ours.coords["spatial_ref"].attrs == theirs.coords["spatial_ref"].attrs


def test_a_file_stored_in_whole_rows_is_read_in_bands_of_rows(tmp_path: Path) -> None:
    dn = _dn(1, height=3000, width=3000)
    _write(tmp_path / "strips.tif", dn, tiled=False, blockysize=1)
    assert open_raster(tmp_path / "strips.tif").block == (1, 3000)
    dem = open_dem(tmp_path / "strips.tif")
    assert dem.chunks is not None
    rows, cols = dem.chunks
    assert cols == (3000,)  # whole rows: each line read once
    strip_budget = dask.utils.parse_bytes(STRIP_READ_CHUNK)
    assert dask.utils.parse_bytes(READ_CHUNK) < max(rows) * 3000 * 4 <= strip_budget


def test_handles_on_deleted_files_are_closed_at_the_next_open(tmp_path: Path) -> None:
    staged, other = tmp_path / "staged.tif", tmp_path / "other.tif"
    _write(staged, _dn(1))
    _write(other, _dn(1))
    open_dem(staged).compute(scheduler="synchronous")
    assert any(path == str(staged) for path, _ in rasters._pool)  # kept for later reads
    staged.unlink()  # the staging folder of a built tile goes
    open_dem(other).compute(scheduler="synchronous")
    assert not any(path == str(staged) for path, _ in rasters._pool)
    assert any(path == str(other) for path, _ in rasters._pool)


def test_a_complex_valued_product_is_refused_naming_its_type(tmp_path: Path) -> None:
    path = tmp_path / "sar.tif"
    values = (_dn(1) + 1j * _dn(1)).astype(np.complex64)
    _write(path, values)
    with pytest.raises(ProductRejected, match=r"sar\.tif: band 1 stores complex64 .*real"):
        open_map(path)


def _gdal_crs(path: Path) -> str:
    dataset = Dataset(str(path))
    try:
        return dataset.crs_wkt()
    finally:
        dataset.close()


def test_tiles_with_the_same_geotiff_keys_get_gdal_s_crs_built_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rasters, "_crs_by_keys", {})
    built: list[str] = []
    crs_wkt = Dataset.crs_wkt

    def counted(self: Dataset) -> str:
        built.append(self.path)
        return crs_wkt(self)

    monkeypatch.setattr(Dataset, "crs_wkt", counted)
    paths = [tmp_path / f"{name}.tif" for name in ("a", "b", "c", "eqc")]
    for path in paths[:3]:
        _write(path, _dn(1))
    _write(paths[3], _dn(1), crs="IAU_2015:30110", transform=from_origin(1e4, 5e3, 100, 100))
    rasters_ = [open_raster(path) for path in paths]
    assert built == [str(paths[0]), str(paths[3])]  # one build per distinct CRS
    monkeypatch.setattr(Dataset, "crs_wkt", crs_wkt)
    for path, raster in zip(paths, rasters_, strict=True):
        assert raster.crs_wkt == _gdal_crs(path)  # what GDAL gives for that file
    assert rasters_[3].crs.is_projected and not rasters_[0].crs.is_projected


def test_a_geotiff_whose_aux_xml_gives_another_crs_gets_that_crs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rasters, "_crs_by_keys", {})
    first, second = tmp_path / "first.tif", tmp_path / "second.tif"
    _write(first, _dn(1))
    _write(second, _dn(1))  # the same GeoTIFF keys as first …
    projected = pyproj.CRS("IAU_2015:30110").to_wkt().replace("&", "&amp;").replace("<", "&lt;")
    aux = second.with_name(second.name + ".aux.xml")  # … but GDAL reads this CRS first
    aux.write_text(f"<PAMDataset><SRS>{projected}</SRS></PAMDataset>", encoding="utf-8")
    assert not open_raster(first).crs.is_projected
    raster = open_raster(second)
    assert raster.crs.is_projected and raster.crs_wkt == _gdal_crs(second)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_geotiff_keys_are_read_from_classic_and_big_tiffs_and_nothing_else(
    tmp_path: Path,
) -> None:
    classic, big, other = tmp_path / "c.tif", tmp_path / "b.tif", tmp_path / "o.tif"
    _write(classic, _dn(1))
    _write(big, _dn(1), BIGTIFF="YES")
    _write(other, _dn(1), crs="IAU_2015:30110", transform=from_origin(1e4, 5e3, 100, 100))
    keys = geokeys(classic)
    assert keys is not None and keys == geokeys(big)  # the same keys, whatever the layout
    assert geokeys(other) not in (None, keys)
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8"
    ) as dst:  # no georeferencing: no GeoTIFF keys
        dst.write(np.zeros((1, 8, 8), np.uint8))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(classic.read_bytes()[:12])
    label = tmp_path / "label.lbl"
    label.write_text("PDS_VERSION_ID = PDS3\nEND\n", encoding="ascii")
    assert [geokeys(p) for p in (plain, truncated, label, tmp_path / "missing.tif")] == [None] * 4


def _gdal_blocks_end(path: Path) -> int:
    """The end of the last block of every band, as GDAL's TIFF metadata gives them."""
    ends = [0]
    with rasterio.open(path) as src:
        for band in src.indexes:
            (rows, cols) = src.block_shapes[band - 1]
            for y in range(-(-src.height // rows)):
                for x in range(-(-src.width // cols)):
                    offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                    size = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                    if offset is not None:
                        ends.append(int(offset) + int(size))
    return max(ends)


def test_where_a_tiff_s_blocks_end_is_read_from_its_tiles_or_strips(tmp_path: Path) -> None:
    tiled, big, strips = tmp_path / "t.tif", tmp_path / "b.tif", tmp_path / "s.tif"
    motorola = tmp_path / "m.tif"
    _write(tiled, _dn(2), compress="deflate")
    _write(big, _dn(1), BIGTIFF="YES")
    _write(strips, _dn(3), tiled=False, blockysize=16, interleave="band")
    _write(motorola, _dn(1), ENDIANNESS="BIG", BIGTIFF="YES")
    for path in (tiled, big, strips, motorola):
        assert data_end(path) == _gdal_blocks_end(path) > 0
    assert motorola.read_bytes()[:2] == b"MM"
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(tiled.read_bytes()[:12])
    label = tmp_path / "label.lbl"
    label.write_text("PDS_VERSION_ID = PDS3\nEND\n", encoding="ascii")
    assert [data_end(p) for p in (truncated, label, tmp_path / "missing.tif")] == [None] * 3
    # A directory entry claiming more values than any file holds (2**61 tile offsets).
    hostile = tmp_path / "hostile.tif"
    entry = struct.pack("<HHQQ", 324, 16, 2**61, 16)
    hostile.write_bytes(struct.pack("<2sHHHQ", b"II", 43, 8, 0, 16) + struct.pack("<Q", 1) + entry)
    assert data_end(hostile) is None and geokeys(hostile) is None


@pytest.mark.parametrize("kind", ["DataArray", "Dataset"])
def test_write_crs_writes_what_rioxarray_writes_building_the_cf_attributes_once(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A polar CRS of each case's own (a latitude of true scale no other test uses), so that
    # its CF description is not yet built in this process.
    true_scale = -71.25 if kind == "DataArray" else -72.5
    wkt = pyproj.CRS.from_proj4(
        f"+proj=stere +lat_0=-90 +lat_ts={true_scale} +lon_0=0 +R=1737400 +units=m +type=crs"
    ).to_wkt()
    built = []
    to_cf = pyproj.CRS.to_cf
    monkeypatch.setattr(
        pyproj.CRS, "to_cf", lambda self, **kw: built.append(1) or to_cf(self, **kw)
    )
    values = xr.DataArray(
        np.zeros((2, 3), np.float32),
        dims=("y", "x"),
        coords={"y": [1.5, 0.5], "x": [0.5, 1.5, 2.5]},
    ).rio.write_transform(from_origin(0, 2, 1, 1))
    obj = values.to_dataset(name="height") if kind == "Dataset" else values
    mine = [rasters.write_crs(obj, wkt) for _ in range(3)]
    assert len(built) == 1
    monkeypatch.setattr(pyproj.CRS, "to_cf", to_cf)
    theirs = obj.rio.write_crs(wkt)
    for written in mine:
        assert written.identical(theirs)
        assert list(written["spatial_ref"].attrs) == list(theirs["spatial_ref"].attrs)
        assert written["spatial_ref"].attrs["grid_mapping_name"] == "polar_stereographic"
        encodings = [written.encoding] + [
            v.encoding for v in getattr(written, "data_vars", {}).values()
        ]
        assert all(e == {"grid_mapping": "spatial_ref"} for e in encodings)
        assert encodings == [theirs.encoding] + [
            v.encoding for v in getattr(theirs, "data_vars", {}).values()
        ]
    assert "spatial_ref" not in obj.coords or "crs_wkt" not in obj["spatial_ref"].attrs
