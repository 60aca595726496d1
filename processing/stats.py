"""Per-band statistics of a tile cube, in the shape STAC's raster extension wants them.

Two passes over the stored values (decoding only, never the warp again): min, max, count and
sum first; then the histogram over [min, max] and the squared deviations from the mean, so
the standard deviation does not lose precision on heights of thousands of metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import dask
import dask.array
import numpy as np
import xarray as xr

__all__ = ["HISTOGRAM_BUCKETS", "BandStatistics", "band_statistics"]

HISTOGRAM_BUCKETS: Final = 256

# dask's functions carry no annotations, which mypy --strict refuses to call: typed as Any.
da: Any = dask.array
_compute: Any = getattr(dask, "compute")  # noqa: B009


@dataclass(frozen=True)
class BandStatistics:
    """One band's statistics; the value fields are None when the band has no valid pixel."""

    band: int  # 1-based, as STAC and GDAL count bands
    wavelength_nm: float | None
    minimum: float | None
    maximum: float | None
    mean: float | None
    stddev: float | None
    valid_count: int
    pixel_count: int
    histogram: tuple[int, ...]  # HISTOGRAM_BUCKETS counts over [minimum, maximum]

    @property
    def valid_percent(self) -> float:
        return 100.0 * self.valid_count / self.pixel_count if self.pixel_count else 0.0

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100) read off the histogram, linear within a bucket."""
        if not self.valid_count or self.minimum is None or self.maximum is None:
            return None
        if not self.histogram or self.maximum == self.minimum:
            return self.minimum
        width = (self.maximum - self.minimum) / len(self.histogram)
        target = q / 100.0 * self.valid_count
        seen = 0
        for i, count in enumerate(self.histogram):
            if count and seen + count >= target:
                return self.minimum + (i + (target - seen) / count) * width
            seen += count
        return self.maximum

    def as_raster_band(self) -> dict[str, Any]:
        """``statistics`` and ``histogram`` of a STAC raster extension band object."""
        statistics: dict[str, Any] = {"valid_percent": self.valid_percent}
        if self.valid_count:
            statistics |= {
                "minimum": self.minimum,
                "maximum": self.maximum,
                "mean": self.mean,
                "stddev": self.stddev,
            }
        band: dict[str, Any] = {"statistics": statistics}
        if self.valid_count:
            band["histogram"] = {
                "count": len(self.histogram),
                "min": self.minimum,
                "max": self.maximum,
                "buckets": list(self.histogram),
            }
        return band


def band_statistics(variable: xr.DataArray) -> list[BandStatistics]:
    """Statistics of each band of ``variable`` (``(y, x)`` or ``(band, y, x)``, NaN empty)."""
    bands = variable if "band" in variable.dims else variable.expand_dims(band=[1])
    values = da.asarray(bands.data).astype(np.float64)
    valid = da.isfinite(values)
    axes = (1, 2)
    low, high, count, total = _compute(
        da.where(valid, values, np.inf).min(axis=axes),
        da.where(valid, values, -np.inf).max(axis=axes),
        valid.sum(axis=axes),
        da.where(valid, values, 0.0).sum(axis=axes),
    )
    wavelengths = bands["wavelength"].values if "wavelength" in bands.coords else None
    result = []
    for i in range(bands.sizes["band"]):
        result.append(
            _one_band(
                values[i],
                valid[i],
                low=float(low[i]),
                high=float(high[i]),
                count=int(count[i]),
                total=float(total[i]),
                band=i + 1,
                wavelength=float(wavelengths[i]) if wavelengths is not None else None,
            )
        )
    return result


def _one_band(
    values: Any,
    valid: Any,
    *,
    low: float,
    high: float,
    count: int,
    total: float,
    band: int,
    wavelength: float | None,
) -> BandStatistics:
    pixels = int(math.prod(values.shape))
    if count == 0:
        return BandStatistics(band, wavelength, None, None, None, None, 0, pixels, ())
    mean = total / count
    filled = da.where(valid, values, low)
    upper = high if high > low else low + 1.0
    hist, _ = da.histogram(
        filled, bins=HISTOGRAM_BUCKETS, range=(low, upper), weights=valid.astype(np.int64)
    )
    squares = da.where(valid, (values - mean) ** 2, 0.0).sum()
    counts, sum_squares = _compute(hist, squares)
    return BandStatistics(
        band=band,
        wavelength_nm=wavelength,
        minimum=low,
        maximum=high,
        mean=mean,
        stddev=math.sqrt(float(sum_squares) / count),
        valid_count=count,
        pixel_count=pixels,
        histogram=tuple(int(c) for c in counts),
    )
