"""Coverage pictures: tile states from lon/lat boxes, and the colours drawn at known tiles."""

from __future__ import annotations

import io

import numpy as np
import pyproj
import pytest
from PIL import Image

from lunarchive.processing.coverage import (
    COLOURS,
    GLOBAL_PX_PER_DEG,
    LEGEND_PX,
    POLAR_PX,
    draw_coverage,
    tile_states,
)
from lunarchive.processing.grids import named_grid

GLOBAL = named_grid("moon-eqc-128")  # 15° tiles: 12 rows × 24 columns
NORTH = named_grid("moon-np-237")
SOUTH = named_grid("moon-sp-237")


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def global_pixel(lon: float, lat: float) -> tuple[int, int]:
    """Row and column of a lon/lat on the global map (2 px per degree from 180°W, 90°N)."""
    return int((90 - lat) * GLOBAL_PX_PER_DEG), int((lon + 180) * GLOBAL_PX_PER_DEG)


def polar_pixel(code: str, lon: float, lat: float) -> tuple[int, int]:
    grid = named_grid(code)
    to_map = pyproj.Transformer.from_crs("IAU_2015:30100", grid.crs, always_xy=True)
    x, y = to_map.transform(lon, lat)
    x_min, y_max = grid.origin
    scale = POLAR_PX / (grid.shape[1] * grid.resolution)
    return int((y_max - y) * scale), int((x - x_min) * scale)


def test_states_take_the_most_urgent_box_of_each_tile() -> None:
    states = tile_states(
        GLOBAL,
        exists=[(-52.5, 42.5, -51.5, 43.5), (106.0, -10.0, 110.0, -5.0)],
        changed=[(-52.5, 42.5, -51.5, 43.5)],
        failed=[(106.0, -10.0, 110.0, -5.0), (5.0, 5.0, 6.0, 6.0)],
    )
    # 15° tiles from 180°W / 90°N: -52° is column 8, 43°N row 3; 105°E column 19, -7° row 6
    assert states["r003c008"] == "changed"
    assert states["r006c019"] == "failed"
    assert states["r005c012"] == "failed"  # failed with nothing published there
    assert sum(state != "absent" for state in states.values()) == 3
    assert len(states) == 12 * 24


def test_a_box_across_the_antimeridian_lights_both_edges() -> None:
    states = tile_states(GLOBAL, exists=[(175.0, 0.5, -175.0, 1.0)])
    assert {t for t, s in states.items() if s != "absent"} == {"r005c000", "r005c023"}


def test_global_picture_has_each_state_colour_at_its_tile() -> None:
    states = tile_states(
        GLOBAL,
        exists=[(-52.5, 42.5, -51.5, 43.5), (106.0, -10.0, 110.0, -5.0)],
        changed=[(-52.5, 42.5, -51.5, 43.5)],
        failed=[(5.0, 5.0, 6.0, 6.0)],
    )
    states["r000c000"] = "exists"
    pixels = decode(draw_coverage(GLOBAL, states, title="demo-dem"))
    assert pixels.shape == (180 * GLOBAL_PX_PER_DEG + LEGEND_PX, 360 * GLOBAL_PX_PER_DEG, 3)
    assert tuple(pixels[global_pixel(-52, 43)]) == COLOURS["changed"]
    assert tuple(pixels[global_pixel(108, -7)]) == COLOURS["exists"]
    assert tuple(pixels[global_pixel(7, 7)]) == COLOURS["failed"]
    assert tuple(pixels[global_pixel(-172, 82)]) == COLOURS["exists"]  # tile r000c000
    assert tuple(pixels[global_pixel(-97, -62)]) == COLOURS["absent"]


@pytest.mark.parametrize(("grid", "code", "lat"), [(NORTH, "moon-np-237", 86.0),
                                                   (SOUTH, "moon-sp-237", -86.0)])  # fmt: skip
def test_polar_cap_picture_lights_the_tiles_around_the_pole(
    grid: object, code: str, lat: float
) -> None:
    cap = (-180.0, 85.0, 180.0, 90.0) if lat > 0 else (-180.0, -90.0, 180.0, -85.0)
    states = tile_states(named_grid(code), exists=[cap], changed=[(10.0, 70.0, 20.0, 75.0)])
    assert states["r002c002"] == "exists"  # the pole is at the centre of the middle tile
    pixels = decode(draw_coverage(named_grid(code), states))
    assert pixels.shape == (POLAR_PX + LEGEND_PX, POLAR_PX, 3)
    assert tuple(pixels[polar_pixel(code, 45.0, lat)]) == COLOURS["exists"]
    far = polar_pixel(code, -135.0, 62.0 if lat > 0 else -62.0)
    assert tuple(pixels[far]) == COLOURS["absent"]
    if lat > 0:  # the changed box is in the north: absent from the south cap
        assert tuple(pixels[polar_pixel(code, 15.0, 72.5)]) == COLOURS["changed"]
    else:
        assert "changed" not in states.values()


def test_a_picture_of_nothing_is_all_absent() -> None:
    pixels = decode(draw_coverage(GLOBAL, tile_states(GLOBAL)))
    colours = {tuple(c) for c in pixels[: 180 * GLOBAL_PX_PER_DEG].reshape(-1, 3)}
    assert COLOURS["absent"] in colours
    assert not colours & {COLOURS["exists"], COLOURS["changed"], COLOURS["failed"]}
