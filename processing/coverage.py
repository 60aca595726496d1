"""Coverage pictures: which tiles of a lunar grid a collection covers, drawn as PNGs.

An operator sees a hole in coverage faster than a row in a table. Each picture is one named
grid (:mod:`lunarchive.processing.grids`): the equirectangular grid on a global map, the
polar stereographic grids on the two caps. A tile is *absent*, *exists* (a published item
covers it), *changed* (built anew by this run) or *failed* (its build failed); the states are
decided from lon/lat bounding boxes, so one mosaic cube and per-tile cubes draw alike.

Pure functions (numpy + Pillow): no store, no flow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lunarchive.processing.crs import MOON_RADIUS_M, BBox, moon_geographic
from lunarchive.processing.grids import Grid, Tile, tiles_touching

__all__ = [
    "COLOURS",
    "GLOBAL_PX_PER_DEG",
    "LEGEND_PX",
    "POLAR_PX",
    "TileState",
    "draw_coverage",
    "picture_size",
    "tile_pixel_box",
    "tile_states",
]

TileState = Literal["absent", "exists", "changed", "failed"]

COLOURS: Final[dict[TileState, tuple[int, int, int]]] = {
    "absent": (36, 36, 44),
    "exists": (46, 139, 87),
    "changed": (255, 176, 0),
    "failed": (214, 39, 40),
}
"""Fill colour of a tile in each state (RGB)."""
BORDER: Final = (96, 96, 112)
GRATICULE: Final = (150, 150, 170)
BACKGROUND: Final = (250, 250, 250)
GLOBAL_PX_PER_DEG: Final = 2
"""Pixels per degree of the global map (720 × 360 pixels of map)."""
POLAR_PX: Final = 480
"""Edge of a polar cap picture, in pixels (the whole grid's square)."""
LEGEND_PX: Final = 22
"""Height of the legend strip below each map."""

_DEGREE_M: Final = math.pi * MOON_RADIUS_M / 180.0
_RANK: Final[dict[TileState, int]] = {"absent": 0, "exists": 1, "changed": 2, "failed": 3}


def tile_states(
    grid: Grid,
    *,
    exists: Iterable[BBox] = (),
    changed: Iterable[BBox] = (),
    failed: Iterable[BBox] = (),
) -> dict[str, TileState]:
    """The state of every tile of ``grid``, from lon/lat boxes (lunar degrees, -180..180).

    A tile takes the most urgent state of the boxes that overlap it: failed, then changed,
    then exists. A box whose west is east of its east crosses ±180° and is split there.
    """
    states: dict[str, TileState] = {tile.id: "absent" for tile in grid.tiles()}
    geographic = moon_geographic()
    for state, boxes in (("exists", exists), ("changed", changed), ("failed", failed)):
        for box in boxes:
            for part in _split_at_seam(box):
                for tile in tiles_touching(grid, geographic, part):
                    if _RANK[state] > _RANK[states[tile.id]]:  # type: ignore[index]
                        states[tile.id] = state  # type: ignore[assignment]
    return states


def _split_at_seam(box: BBox) -> list[BBox]:
    west, south, east, north = box
    if west <= east:
        return [box]
    return [(west, south, 180.0, north), (-180.0, south, east, north)]


def _is_polar(grid: Grid) -> bool:
    return grid.crs_code.endswith(("30130", "30135"))


def picture_size(grid: Grid) -> tuple[int, int]:
    """Width and height of the map part of a picture of ``grid`` (the legend comes below)."""
    if _is_polar(grid):
        return POLAR_PX, POLAR_PX
    return 360 * GLOBAL_PX_PER_DEG, 180 * GLOBAL_PX_PER_DEG


def tile_pixel_box(grid: Grid, tile: Tile) -> tuple[int, int, int, int]:
    """The pixels a tile fills in the picture of its grid: (x0, y0, x1, y1), x1/y1 excluded.

    Global map: x is longitude from -180° (from 0° E for a grid centred on 180°), y latitude
    from +90°; polar cap: the grid's own square, north up as the CRS has it.
    """
    left, bottom, right, top = tile.geobox.boundingbox
    width, _ = picture_size(grid)
    if _is_polar(grid):
        x_min, y_max = grid.origin
        span = grid.shape[1] * grid.resolution
        scale = width / span
        return (
            round((left - x_min) * scale),
            round((y_max - top) * scale),
            round((right - x_min) * scale),
            round((y_max - bottom) * scale),
        )
    k = GLOBAL_PX_PER_DEG
    return (
        round((left / _DEGREE_M + 180.0) * k),
        round((90.0 - top / _DEGREE_M) * k),
        round((right / _DEGREE_M + 180.0) * k),
        round((90.0 - bottom / _DEGREE_M) * k),
    )


def draw_coverage(grid: Grid, states: Mapping[str, TileState], *, title: str = "") -> bytes:
    """A PNG of ``grid``'s tiles in the colours of their states, a legend strip below."""
    width, height = picture_size(grid)
    pixels = np.empty((height + LEGEND_PX, width, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    pixels[:height] = COLOURS["absent"]
    for tile in grid.tiles():
        x0, y0, x1, y1 = tile_pixel_box(grid, tile)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        pixels[y0:y1, x0:x1] = COLOURS[states.get(tile.id, "absent")]
        pixels[y0:y1, x0] = BORDER  # the left and top edges: every tile boundary drawn once
        pixels[y0, x0:x1] = BORDER
    if _is_polar(grid):
        _draw_cap_edge(pixels[:height], grid)
    else:
        _draw_graticule(pixels[:height])
    image = Image.fromarray(pixels, mode="RGB")
    _draw_legend(ImageDraw.Draw(image), height, title)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _draw_cap_edge(pixels: np.ndarray, grid: Grid) -> None:
    """A thin circle at the latitude where the grid's edges reach (±60°): the cap proper."""
    size = pixels.shape[0]
    reach = 2.0 * MOON_RADIUS_M * math.tan(math.radians(15.0))  # colatitude 30° → 60° lat
    radius_px = reach / (grid.shape[1] * grid.resolution) * size
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx + 0.5 - size / 2, yy + 0.5 - size / 2)
    pixels[np.abs(distance - radius_px) < 0.7] = BORDER


def _draw_graticule(pixels: np.ndarray) -> None:
    """Every 30° of longitude and latitude, over absent tiles only (never hiding a state)."""
    k = GLOBAL_PX_PER_DEG
    lines = np.zeros(pixels.shape[:2], dtype=bool)
    lines[:, [min(d * k, pixels.shape[1] - 1) for d in range(30, 360, 30)]] = True
    lines[[min(d * k, pixels.shape[0] - 1) for d in range(30, 180, 30)], :] = True
    background = np.all(pixels == COLOURS["absent"], axis=-1) | np.all(pixels == BORDER, axis=-1)
    pixels[lines & background] = GRATICULE


def _draw_legend(draw: ImageDraw.ImageDraw, top: int, title: str) -> None:
    font = ImageFont.load_default()
    x = 4
    if title:
        draw.text((x, top + 5), title, fill=(0, 0, 0), font=font)
        x += int(draw.textlength(title, font=font)) + 12
    for state, colour in COLOURS.items():
        draw.rectangle((x, top + 5, x + 11, top + 16), fill=colour, outline=BORDER)
        draw.text((x + 15, top + 5), state, fill=(0, 0, 0), font=font)
        x += 15 + int(draw.textlength(state, font=font)) + 12
