"""Rendering a release fast changes nothing it renders: the geoparquet is stac-geoparquet's
own conversion of the items, the pystac items are left as they were, and the cycle collector
is back in the state it was in."""

from __future__ import annotations

import copy
import gc
import io
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
import pystac
import stac_geoparquet.arrow

from lunarchive.catalog.publish import draft_release, paused_gc
from lunarchive.catalog.stac import create_catalog

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}


def catalog_with_projected_items() -> pystac.Catalog:
    """Items carrying the geometries stac-geoparquet rewrites: the item's, a
    ``proj:geometry`` in its properties and one in an asset."""
    catalog = create_catalog("test", "render test")
    collection = pystac.Collection(
        "c",
        "c",
        pystac.Extent(pystac.SpatialExtent([[0, 0, 1, 1]]), pystac.TemporalExtent([[None, None]])),
    )
    catalog.add_child(collection)
    for index in range(3):
        item = pystac.Item(
            f"i{index}", copy.deepcopy(SQUARE), [0, 0, 1, 1], datetime(2020, 1, 1, tzinfo=UTC),
            {"proj:geometry": copy.deepcopy(SQUARE), "gsd": index + 0.5},
        )  # fmt: skip
        item.add_asset(
            "data",
            pystac.Asset(
                "../../../../raw/x.IMG", roles=["data"],
                extra_fields={"proj:geometry": copy.deepcopy(SQUARE)},
            ),
        )  # fmt: skip
        collection.add_item(item)
    return catalog


def test_geoparquet_is_stac_geoparquets_conversion_and_items_are_untouched() -> None:
    catalog = catalog_with_projected_items()
    before = [item.to_dict(transform_hrefs=False) for item in catalog.get_items(recursive=True)]
    before = copy.deepcopy(before)
    draft = draft_release(catalog, [])
    after = [item.to_dict(transform_hrefs=False) for item in catalog.get_items(recursive=True)]
    assert after == before  # no geometry of ours was turned into WKB in place
    table = pq.read_table(io.BytesIO(draft.files["items.parquet"]))
    rows = list(stac_geoparquet.arrow.stac_table_to_items(table))
    assert [row["id"] for row in rows] == ["i0", "i1", "i2"]
    for row in rows:
        assert row["geometry"] == SQUARE
        assert _as_lists(row["properties"]["proj:geometry"]) == SQUARE
        assert _as_lists(row["assets"]["data"]["proj:geometry"]) == SQUARE
        assert row["assets"]["data"]["href"] == "../../raw/x.IMG"  # from the release root


def _as_lists(geometry: dict[str, Any]) -> dict[str, Any]:
    """GeoJSON read back (tuples, floats) in the form it was written (lists, ints)."""
    return {
        "type": geometry["type"],
        "coordinates": [[[int(x), int(y)] for x, y in ring] for ring in geometry["coordinates"]],
    }


def test_paused_gc_restores_the_collector_state() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        draft_release(catalog_with_projected_items(), [])
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()
    draft_release(catalog_with_projected_items(), [])
    assert gc.isenabled()
