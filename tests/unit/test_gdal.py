"""GDAL through its C API (``processing.gdal``): the warper gives rasterio's ``reproject``
values, and reads give rasterio's ``read`` values."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio  # type: ignore[import-untyped]
from affine import Affine
from rasterio.enums import Resampling  # type: ignore[import-untyped]
from rasterio.transform import from_origin  # type: ignore[import-untyped]
from rasterio.warp import reproject  # type: ignore[import-untyped]
from rasterio.windows import Window  # type: ignore[import-untyped]

from lunarchive.processing.gdal import Dataset, GdalError, warp_into

LONGLAT = "+proj=longlat +R=1737400 +no_defs"
SOUTH_POLAR = "+proj=stere +lat_0=-90 +lon_0=0 +k=1 +x_0=0 +y_0=0 +R=1737400 +units=m +no_defs"
# A cap of the south pole, 0..40° E, 1 km pixels, with a hole of no data.
SOURCE_TRANSFORM = Affine(0.01, 0.0, 0.0, 0.0, -0.01, -80.0)
TARGET_TRANSFORM = Affine(100.0, 0.0, 20_000.0, 0.0, -100.0, 90_000.0)


def _source(bands: int) -> np.ndarray:
    rows, cols = np.mgrid[0:1000, 0:4000].astype(np.float32)
    values = np.stack([rows * 0.5 + cols * 0.1 + 7 * b for b in range(bands)])
    values[:, 500:510, 100:200] = np.nan
    return np.ascontiguousarray(values, dtype=np.float32)


def _by_rasterio(source: np.ndarray, method: str, nodata: float | None) -> np.ndarray:
    out = np.full((source.shape[0], 256, 256), np.nan, dtype=np.float32)
    reproject(
        source,
        out,
        src_transform=SOURCE_TRANSFORM,
        src_crs=LONGLAT,
        src_nodata=nodata,
        dst_transform=TARGET_TRANSFORM,
        dst_crs=SOUTH_POLAR,
        dst_nodata=None,
        resampling=Resampling[method],
        num_threads=1,
        init_dest_nodata=False,
        XSCALE=0.8,
        YSCALE=0.8,
    )
    return out


def _by_c_api(source: np.ndarray, method: str, nodata: float | None) -> np.ndarray:
    out = np.full((source.shape[0], 256, 256), np.nan, dtype=np.float32)
    warp_into(
        source,
        SOURCE_TRANSFORM,
        LONGLAT,
        out,
        TARGET_TRANSFORM,
        SOUTH_POLAR,
        resampling="near" if method == "nearest" else method,
        src_nodata=nodata,
        warp_options={"XSCALE": "0.8", "YSCALE": "0.8", "NUM_THREADS": "1"},
        warp_memory_mb=1024,
    )
    return out


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic", "average"])
@pytest.mark.parametrize("bands", [1, 3])
def test_a_polar_warp_equals_rasterio_reproject(method: str, bands: int) -> None:
    source = _source(bands)
    expected = _by_rasterio(source, method, np.nan)
    got = _by_c_api(source, method, np.nan)
    assert np.isfinite(got).sum() > 0.5 * got.size  # the target lies on the source
    np.testing.assert_array_equal(got, expected)


def test_without_nodata_the_fast_path_gives_the_same_values() -> None:
    source = np.nan_to_num(_source(1), nan=1.0)
    np.testing.assert_array_equal(
        _by_c_api(source, "bilinear", None), _by_rasterio(source, "bilinear", None)
    )


def test_warps_on_threads_at_once_give_each_its_own_result() -> None:
    sources = [_source(1) + 100 * i for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        results[i] = _by_c_api(sources[i], "bilinear", np.nan)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], _by_rasterio(sources[i], "bilinear", np.nan))


def _bilinear(source: np.ndarray, source_crs: str, out: np.ndarray) -> None:
    warp_into(
        source,
        SOURCE_TRANSFORM,
        source_crs,
        out,
        TARGET_TRANSFORM,
        SOUTH_POLAR,
        resampling="bilinear",
        src_nodata=None,
        warp_options={},
        warp_memory_mb=64,
    )


def test_a_crs_gdal_cannot_read_fails_with_gdals_message() -> None:
    out = np.full((1, 8, 8), np.nan, dtype=np.float32)
    with pytest.raises(
        GdalError,
        match=r"GDALWarpAppOptionsNew failed \(warp from .not-a-crs. to .*\): Invalid SRS",
    ):
        _bilinear(_source(1), "not-a-crs", out)
    assert np.isnan(out).all()  # nothing written


def test_an_array_gdal_cannot_view_is_refused() -> None:
    out = np.full((1, 8, 8), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="float32 C-contiguous"):
        _bilinear(_source(1)[:, :, ::2], LONGLAT, out)


def test_a_window_read_gives_rasterios_values_in_the_stored_type_or_converted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.tif"
    dn = np.random.default_rng(3).integers(-3000, 3000, size=(2, 90, 110), dtype=np.int16)
    profile = {"width": 110, "height": 90, "count": 2, "dtype": "int16", "tiled": True}
    with rasterio.open(
        path, "w", driver="GTiff", crs="IAU_2015:30100", transform=from_origin(10, 5, 0.01, 0.01),
        blockxsize=32, blockysize=32, **profile,
    ) as dst:  # fmt: skip
        dst.write(dn)
    with rasterio.open(path) as src:
        expected = src.read([2, 1], window=Window(7, 5, 60, 40))
    dataset = Dataset(str(path))
    try:
        stored = np.empty((2, 40, 60), dtype=np.int16)
        dataset.read_into(stored, [2, 1], 5, 7)
        converted = np.empty((2, 40, 60), dtype=np.float32)
        dataset.read_into(converted, [2, 1], 5, 7)
        with pytest.raises(GdalError, match=r"two\.tif"):  # past the edge
            dataset.read_into(np.empty((1, 40, 60), dtype=np.int16), [1], 80, 7)
    finally:
        dataset.close()
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_array_equal(converted, expected.astype(np.float32))


def test_a_file_gdal_cannot_open_is_named() -> None:
    with pytest.raises(GdalError, match=r"GDALOpenEx failed \(/nowhere/missing\.tif\)"):
        Dataset("/nowhere/missing.tif")
