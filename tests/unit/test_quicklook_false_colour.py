"""False-colour quicklooks of multi-band tiles (processing/quicklook.py) and the stretch they
take from the full-resolution statistics (processing/stats.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from lunarchive.processing.quicklook import quicklook_png
from lunarchive.processing.stats import band_statistics

# Band order as Kaguya MI has it: not sorted by wavelength (1001 nm before 1000 nm).
WAVELENGTHS = [1001.0, 414.0, 1548.0, 1000.0, 749.0]


def bands(values: np.ndarray) -> xr.DataArray:
    data = xr.DataArray(
        values.astype(np.float32),
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, values.shape[0] + 1)},
    )
    return data.assign_coords(wavelength=("band", WAVELENGTHS[: values.shape[0]]))


def rgba(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGBA"
    return np.asarray(image)


def test_red_green_blue_are_the_longest_middle_and_shortest_wavelengths() -> None:
    ramp = np.linspace(0.0, 1.0, 40)
    values = np.zeros((5, 40, 40))
    values[2] = ramp[None, :]  # 1548 nm: rises eastwards → red
    values[3] = ramp[:, None]  # 1000 nm: the middle of the sorted five → green, rises south
    values[1] = ramp[::-1][None, :]  # 414 nm: falls eastwards → blue
    values[0] = 0.5  # 1001 nm: next to the middle in wavelength, fourth in band order
    values[4] = 0.5
    image = rgba(quicklook_png(bands(values)))
    red, green, blue = (image[..., i].astype(int) for i in range(3))
    assert (np.diff(red, axis=1) >= 0).all() and red[:, -1].min() == 255 and red[:, 0].max() == 0
    assert (np.diff(blue, axis=1) <= 0).all() and blue[:, 0].min() == 255
    assert (np.diff(green, axis=0) >= 0).all() and (np.diff(green, axis=1) == 0).all()
    assert green[-1].min() == 255 and green[0].max() == 0
    assert (image[..., 3] == 255).all()


def test_empty_pixels_are_transparent() -> None:
    values = np.full((3, 8, 8), 0.2)
    values[1, 2, 3] = np.nan  # one band empty there: the pixel has no colour
    image = rgba(quicklook_png(bands(values)))
    assert image[2, 3, 3] == 0 and (image[..., 3] == 255).sum() == 63


def test_a_few_pixels_are_stretched_by_the_full_resolution_statistics() -> None:
    full = np.random.default_rng(5).uniform(0.05, 0.09, size=(3, 16, 16))
    thumbnail = full[:, :2, :1]  # what a decimated overview leaves of a small crop: 2 pixels
    stats = band_statistics(bands(full))
    limits = [(s.percentile(2.0), s.percentile(98.0)) for s in stats]
    for (low, high), band in zip(limits, full, strict=True):
        assert low == pytest.approx(np.percentile(band, 2.0), abs=(band.max() - band.min()) / 128)
        assert high == pytest.approx(np.percentile(band, 98.0), abs=(band.max() - band.min()) / 128)
    image = rgba(quicklook_png(bands(thumbnail), limits=limits))  # type: ignore[arg-type]
    order = np.argsort(WAVELENGTHS[:3])
    for channel, band in zip(range(3), (order[2], order[1], order[0]), strict=True):
        low, high = limits[band]  # type: ignore[misc]
        expected = np.clip((thumbnail[band] - low) / (high - low), 0, 1) * 255.0 + 0.5
        np.testing.assert_array_equal(
            image[..., channel], expected.astype(np.float32).astype(np.uint8)
        )
    # stretched by the two pixels alone, every channel saturates: 0 or 255
    alone = rgba(quicklook_png(bands(thumbnail)))
    assert set(np.unique(alone[..., :3]).tolist()) <= {0, 255}


def test_percentile_of_a_constant_or_empty_band() -> None:
    [constant] = band_statistics(xr.DataArray(np.full((4, 4), 3.0), dims=("y", "x")))
    assert constant.percentile(2.0) == constant.percentile(98.0) == 3.0
    [empty] = band_statistics(xr.DataArray(np.full((4, 4), np.nan), dims=("y", "x")))
    assert empty.percentile(50.0) is None
