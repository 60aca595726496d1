"""A quicklook PNG per tile: hillshade for elevation, false colour for multi-band, at most
512 pixels on its longer side, no legend; empty pixels are transparent.

Made from the coarsest overview that is still at least as detailed as the thumbnail (so the
full-resolution data is never read for it), encoded by Pillow without any metadata that
changes between runs (the same tile gives the same bytes, R9). Colours are stretched between
the 2nd and 98th percentiles of each band: those of the full-resolution statistics when given
(``limits``), so that a tile with few valid pixels (a small crop decimated to a handful) is not
stretched across those few alone, which saturates every channel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
import xarray as xr
from PIL import Image

__all__ = ["QUICKLOOK_MAX_PX", "Style", "quicklook_png"]

QUICKLOOK_MAX_PX: Final = 512
Style = Literal["hillshade", "false_colour", "grey"]
_SUN_AZIMUTH_DEG: Final = 315.0
_SUN_ALTITUDE_DEG: Final = 45.0
_STRETCH_PERCENT: Final = (2.0, 98.0)
# Lunar slopes seen at kilometre pixels are gentle: exaggerate relief by the pixel size over
# this length (clamped to 1..10) so that craters show in a thumbnail.
_RELIEF_LENGTH_M: Final = 1000.0


Limits = Sequence[tuple[float, float] | None]


def quicklook_png(
    variable: xr.DataArray, *, style: Style | None = None, limits: Limits | None = None
) -> bytes:
    """PNG bytes of ``variable`` (``(y, x)`` or ``(band, y, x)``, NaN empty, georeferenced).

    ``style`` defaults to false colour for several bands, hillshade for a band in metres
    (elevation), grey otherwise. A variable larger than 512 px is decimated (pass an overview
    level to keep this cheap). ``limits`` gives each band's (low, high) stretch (band order;
    None: from the pixels shown).
    """
    chosen = style or _default_style(variable)
    step = max(1, math.ceil(max(variable.shape[-2:]) / QUICKLOOK_MAX_PX))
    small = variable.isel(y=slice(None, None, step), x=slice(None, None, step))
    values = np.asarray(small.values, dtype=np.float64)
    if chosen == "hillshade":
        x_res, y_res = (abs(v) * step for v in variable.rio.resolution())
        rgba = _grey_rgba(_hillshade(_first_band(values), x_res, y_res), _first_band(values))
    elif chosen == "false_colour":
        rgba = _false_colour(values, _wavelength_order(small), limits)
    else:
        band = _first_band(values)
        rgba = _grey_rgba(_stretch(band, limits[0] if limits else None), band)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _default_style(variable: xr.DataArray) -> Style:
    if "band" in variable.dims and variable.sizes["band"] >= 3:
        return "false_colour"
    return "hillshade" if variable.attrs.get("units") == "m" else "grey"


def _first_band(values: np.ndarray) -> np.ndarray:
    return values[0] if values.ndim == 3 else values


def _hillshade(height: np.ndarray, x_res: float, y_res: float) -> np.ndarray:
    """Lambertian shading, 0..1, sun from the north-west at 45° (the cartographic default)."""
    valid = np.isfinite(height)
    filled = np.where(valid, height, height[valid].mean() if valid.any() else 0.0)
    exaggeration = min(10.0, max(1.0, max(x_res, y_res) / _RELIEF_LENGTH_M))
    dz_dy, dz_dx = np.gradient(filled * exaggeration, y_res, x_res)
    slope = np.arctan(np.hypot(dz_dx, dz_dy))
    aspect = np.arctan2(-dz_dx, dz_dy)
    azimuth, altitude = np.radians(_SUN_AZIMUTH_DEG), np.radians(_SUN_ALTITUDE_DEG)
    shade = np.sin(altitude) * np.cos(slope) + np.cos(altitude) * np.sin(slope) * np.cos(
        azimuth - np.pi / 2 - aspect
    )
    result: np.ndarray = np.clip(shade, 0.0, 1.0)
    return result


def _stretch(band: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    valid = band[np.isfinite(band)]
    if valid.size == 0:
        return np.zeros_like(band)
    low, high = limits if limits is not None else np.percentile(valid, _STRETCH_PERCENT)
    span = high - low if high > low else 1.0
    result: np.ndarray = np.clip((np.nan_to_num(band, nan=low) - low) / span, 0.0, 1.0)
    return result


def _grey_rgba(level: np.ndarray, mask_from: np.ndarray) -> np.ndarray:
    grey = (level * 255.0 + 0.5).astype(np.uint8)
    alpha = np.where(np.isfinite(mask_from), 255, 0).astype(np.uint8)
    return np.dstack([grey, grey, grey, alpha])


def _wavelength_order(variable: xr.DataArray) -> np.ndarray:
    if "wavelength" in variable.coords:
        return np.argsort(variable["wavelength"].values, kind="stable")
    return np.arange(variable.sizes["band"])


def _false_colour(values: np.ndarray, order: np.ndarray, limits: Limits | None) -> np.ndarray:
    """Red, green, blue from the longest, middle and shortest wavelength bands."""
    count = len(order)
    picks = (order[count - 1], order[count // 2], order[0])
    channels = [
        (_stretch(values[i], limits[i] if limits else None) * 255.0 + 0.5).astype(np.uint8)
        for i in picks
    ]
    alpha = np.where(np.isfinite(values).all(axis=0), 255, 0).astype(np.uint8)
    return np.dstack([*channels, alpha])
