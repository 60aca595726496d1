"""The embedded search engine: CQL2 (text and JSON), bbox, intersects, datetime, collections,
ids, sortby, fields, limit and paging over a small lunar stac-geoparquet file, the R17
refusals (RELIABILITY.md), and ``lunarchive search`` over a published release.

Every test asserts the exact ids returned, or the exact error, never just "no exception".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cql2
import pyarrow.parquet as pq
import pystac
import pytest
import shapely
import shapely.geometry
from stac_geoparquet.arrow import parse_stac_items_to_arrow, stac_table_to_items, to_parquet
from typer.testing import CliRunner

from lunarchive.catalog import _cql2sql
from lunarchive.catalog._search_params import apply_fields
from lunarchive.catalog.publish import ReleaseDraft, publish_release
from lunarchive.catalog.search import SearchQuery, next_token, search, search_items, search_page
from lunarchive.catalog.store import open_store
from lunarchive.flows.cli import app as cli_app
from lunarchive.schemas.errors import InvalidFilter

SSYS = "https://stac-extensions.github.io/ssys/v1.1.1/schema.json"

A11, A12, A15, A17 = "a11-10084", "a12-12002", "a15-15415", "a17-70017"
LUNA16, CE5_A, CE5_B = "luna16-1635", "ce5-c0400", "ce5-c0401"
EQUATOR, SEAM, SPOLE = "cube-equator", "cube-seam", "cube-spole"
SAMPLES = frozenset({A11, A12, A15, A17, LUNA16, CE5_A, CE5_B})
CUBES = frozenset({EQUATOR, SEAM, SPOLE})
ALL = SAMPLES | CUBES
# (collection, id) order, which search_items promises.
ORDERED = [A11, A12, A15, A17, EQUATOR, SEAM, SPOLE, CE5_A, CE5_B, LUNA16]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


SampleRow = tuple[str, str, float, float, str, str, str, float, str]


def _sample(row: SampleRow) -> pystac.Item:
    """A returned specimen: a Point where it was collected, a single datetime."""
    item_id, collection, lon, lat, when, mission, sample_id, mass, material = row
    properties = {
        "ssys:targets": ["Moon"],
        "ssys:target_class": "sample",
        "mission": mission,
        "sample_id": sample_id,
        "mass_g": mass,
        "material": material,
    }
    return pystac.Item(
        item_id,
        {"type": "Point", "coordinates": [lon, lat]},
        [lon, lat, lon, lat],
        _when(when),
        properties,
        stac_extensions=[SSYS],
        collection=collection,
    )


def _cube(
    item_id: str, geometry: dict[str, Any], bbox: list[float], span: tuple[str, str], gsd: float
) -> pystac.Item:
    """A LOLA cube: a footprint, a start/end range and ``datetime: null``."""
    properties = {
        "ssys:targets": ["Moon"],
        "ssys:target_class": "satellite",
        "platform": "lro",
        "instruments": ["lola"],
        "gsd": gsd,
    }
    return pystac.Item(
        item_id,
        geometry,
        bbox,
        None,
        properties,
        start_datetime=_when(span[0]),
        end_datetime=_when(span[1]),
        stac_extensions=[SSYS],
        collection="lola-cubes",
    )


def _polygon(*ring: tuple[float, float]) -> list[list[list[float]]]:
    return [[list(point) for point in ring]]


APOLLO, RETURNED = "apollo-samples", "returned-samples"
# id, collection, lon, lat, datetime (UTC), mission, sample_id, mass_g, material
SAMPLE_ROWS: list[SampleRow] = [
    (A11, APOLLO, 23.47, 0.67, "1969-07-21T03:00", "apollo11", "10084", 12.5, "soil"),
    (A12, APOLLO, -23.42, -3.01, "1969-11-20T00:00", "apollo12", "12002", 1529.0, "basalt"),
    (A15, APOLLO, 3.63, 26.13, "1971-08-01T00:00", "apollo15", "15415", 269.4, "anorthosite"),
    (A17, APOLLO, 30.77, 20.19, "1972-12-12T00:00", "apollo17", "70017", 2957.0, "basalt"),
    (LUNA16, RETURNED, 56.3, -0.68, "1970-09-21T00:00", "luna16", "1635", 101.0, "regolith"),
    (CE5_A, RETURNED, -51.92, 43.06, "2020-12-17T00:00", "change5", "CE5_C0400", 35.2, "basalt"),
    (CE5_B, RETURNED, -51.92, 43.06, "2020-12-17T00:00", "change5", "CE5XC0401", 0.5, "regolith"),
]


def lunar_items() -> list[pystac.Item]:
    """Seven specimens (Points) and three LOLA cubes (an equatorial tile, one split at 180, and
    the south-polar cap)."""
    samples = [_sample(row) for row in SAMPLE_ROWS]
    return samples + [
        _cube(
            EQUATOR,
            {
                "type": "Polygon",
                "coordinates": _polygon((0, -10), (40, -10), (40, 10), (0, 10), (0, -10)),
            },
            [0.0, -10.0, 40.0, 10.0],
            ("2009-07-13T17:33:17", "2016-11-29T05:48:19"),
            118.45,
        ),
        _cube(  # crosses 180: split at the seam (LUNAR-DATA.md 4.2), bbox west > east as in STAC
            SEAM,
            {
                "type": "MultiPolygon",
                "coordinates": [
                    _polygon((170, -20), (180, -20), (180, 20), (170, 20), (170, -20)),
                    _polygon((-180, -20), (-170, -20), (-170, 20), (-180, 20), (-180, -20)),
                ],
            },
            [170.0, -20.0, -170.0, 20.0],
            ("2010-01-01T00:00:00", "2010-12-31T23:59:59"),
            59.2,
        ),
        _cube(  # the south-polar cap as a polygon to the pole
            SPOLE,
            {
                "type": "Polygon",
                "coordinates": _polygon(
                    (-180, -80), (180, -80), (180, -90), (-180, -90), (-180, -80)
                ),
            },
            [-180.0, -90.0, 180.0, -80.0],
            ("2012-01-01T00:00:00", "2014-12-31T23:59:59"),
            7580.84,
        ),
    ]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The items written exactly as a release writes them."""
    path = tmp_path_factory.mktemp("release") / "items.parquet"
    to_parquet(parse_stac_items_to_arrow(lunar_items()), path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ids(path: Path, **query: Any) -> set[str]:
    return {item["id"] for item in search_items(path, SearchQuery(**query))}


def ordered_ids(path: Path, **query: Any) -> list[str]:
    """Ids in (collection, id) order, unless the query sorts otherwise."""
    query.setdefault("sortby", "collection,id")
    return [item["id"] for item in search_items(path, SearchQuery(**query))]


# --- what comes back ---------------------------------------------------------------------


def test_no_constraint_returns_every_item_in_collection_id_order(release: Path) -> None:
    assert ordered_ids(release) == ORDERED


def test_default_order_is_datetime_descending_then_collection_and_id(release: Path) -> None:
    """pgstac's default: datetime (or start_datetime) descending, ties by collection, id."""
    found = [item["id"] for item in search_items(release, SearchQuery())]
    assert sorted(found) == sorted(ORDERED)
    by_id = {item["id"]: item for item in search_items(release, SearchQuery())}
    starts = [
        by_id[i]["properties"].get("datetime") or by_id[i]["properties"]["start_datetime"]
        for i in found
    ]
    assert starts == sorted(starts, reverse=True)


def test_items_come_back_as_stac_geoparquet_restores_them(release: Path) -> None:
    by_id = {item["id"]: item for item in search_items(release, SearchQuery())}
    sample, cube = by_id[A11], by_id[SEAM]
    assert sample["collection"] == "apollo-samples"
    assert sample["geometry"] == {"type": "Point", "coordinates": [23.47, 0.67]}
    assert sample["bbox"] == [23.47, 0.67, 23.47, 0.67]
    assert sample["properties"]["mission"] == "apollo11"
    assert sample["properties"]["mass_g"] == 12.5
    assert sample["properties"]["datetime"].startswith("1969-07-21T03:00:00")
    assert sample["properties"]["ssys:targets"] == ["Moon"]
    assert cube["geometry"]["type"] == "MultiPolygon"
    assert cube["bbox"] == [170.0, -20.0, -170.0, 20.0]
    assert cube["properties"]["datetime"] is None
    assert cube["properties"]["start_datetime"].startswith("2010-01-01T00:00:00")
    assert "mission" not in cube["properties"]  # a column only other items have: left out


# --- CQL2, each operator, text and both JSON forms ------------------------------------------

TEXT_CASES: list[tuple[str, frozenset[str]]] = [
    ("mission = 'apollo11'", frozenset({A11})),
    ("mission <> 'apollo11'", SAMPLES - {A11}),
    ("mass_g < 35.2", frozenset({A11, CE5_B})),
    ("mass_g <= 35.2", frozenset({A11, CE5_A, CE5_B})),
    ("mass_g > 1529", frozenset({A17})),
    ("mass_g >= 1529", frozenset({A12, A17})),
    ("mission = 'apollo11' OR mission = 'luna16'", frozenset({A11, LUNA16})),
    ("material = 'basalt' AND mass_g > 1000", frozenset({A12, A17})),
    ("NOT (mass_g > 100)", frozenset({A11, CE5_A, CE5_B})),
    ("mission IN ('apollo11', 'apollo17', 'artemis3')", frozenset({A11, A17})),
    (
        "mission NOT IN ('apollo11', 'apollo12', 'apollo15', 'apollo17')",
        frozenset({LUNA16, CE5_A, CE5_B}),
    ),
    ("mass_g IN (12.5, 0.5)", frozenset({A11, CE5_B})),
    ("mass_g BETWEEN 100 AND 300", frozenset({A15, LUNA16})),
    ("mass_g NOT BETWEEN 100 AND 300", SAMPLES - {A15, LUNA16}),
    ("material LIKE 'bas%'", frozenset({A12, A17, CE5_A})),
    ("sample_id LIKE 'CE5_C%'", frozenset({CE5_A, CE5_B})),
    ("sample_id LIKE 'CE5\\_%'", frozenset({CE5_A})),  # an escaped underscore is literal
    ("material NOT LIKE '%o%'", frozenset({A12, A17, CE5_A})),
    ("mission IS NULL", CUBES),
    ("mission IS NOT NULL", SAMPLES),
    ("gsd > 100", frozenset({EQUATOR, SPOLE})),
    ("ssys:target_class = 'satellite'", CUBES),
    ("\"ssys:target_class\" = 'sample'", SAMPLES),
    ("\"ssys:targets\" IS NOT NULL AND collection = 'lola-cubes'", CUBES),
    ("id = 'a15-15415'", frozenset({A15})),
    ("12.5 = mass_g", frozenset({A11})),
    ("datetime > TIMESTAMP('1972-01-01T00:00:00Z')", frozenset({A17, CE5_A, CE5_B})),
    ("datetime < DATE('1969-11-20')", frozenset({A11})),
    ("datetime >= DATE('1969-11-20')", SAMPLES - {A11}),
    ("datetime = TIMESTAMP('1969-07-21T05:00:00+02:00')", frozenset({A11})),
    ("datetime IN (TIMESTAMP('1969-07-21T03:00:00Z'))", frozenset({A11})),
    ("start_datetime < TIMESTAMP('2010-06-01T00:00:00Z')", frozenset({EQUATOR, SEAM})),
    (
        "T_INTERSECTS(datetime, INTERVAL('1969-07-01T00:00:00Z', '1969-12-31T23:59:59Z'))",
        frozenset({A11, A12}),
    ),
    (
        "T_INTERSECTS(datetime, INTERVAL('2015-01-01T00:00:00Z', '..'))",
        frozenset({EQUATOR, CE5_A, CE5_B}),
    ),
    ("T_INTERSECTS(datetime, INTERVAL('..', '1970-01-01'))", frozenset({A11, A12})),
    ("T_INTERSECTS(datetime, INTERVAL('..', '..'))", ALL),
    ("T_INTERSECTS(datetime, TIMESTAMP('2010-06-01T00:00:00Z'))", frozenset({EQUATOR, SEAM})),
    ("T_INTERSECTS(datetime, DATE('1969-07-21'))", frozenset({A11})),
    ("T_INTERSECTS(start_datetime, INTERVAL('2011-01-01', '2013-01-01'))", frozenset({SPOLE})),
    ("S_INTERSECTS(geometry, POINT(23.47 0.67))", frozenset({A11, EQUATOR})),
    ("S_INTERSECTS(geometry, BBOX(-60, 40, -50, 45))", frozenset({CE5_A, CE5_B})),
    ("S_INTERSECTS(geometry, BBOX(175, -5, -175, 5))", frozenset({SEAM})),
    ("S_INTERSECTS(geometry, BBOX(160, -5, 169, 5))", frozenset()),
    ("S_INTERSECTS(geometry, POLYGON((0 -89, 10 -89, 10 -85, 0 -85, 0 -89)))", frozenset({SPOLE})),
    ("S_INTERSECTS(geometry, POINT(100 -90))", frozenset({SPOLE})),
    (
        (
            "S_INTERSECTS(geometry, MULTIPOLYGON(((178 0, 180 0, 180 1, 178 1, 178 0)),"
            " ((-180 0, -179 0, -179 1, -180 1, -180 0))))"
        ),
        frozenset({SEAM}),
    ),
    (
        "S_INTERSECTS(geometry, BBOX(0, -15, 60, 30)) AND mass_g > 100",
        frozenset({A15, A17, LUNA16}),
    ),
    (
        (
            "(mission = 'apollo11' OR material = 'regolith')"
            " AND NOT T_INTERSECTS(datetime, INTERVAL('2000-01-01T00:00:00Z', '..'))"
        ),
        frozenset({A11, LUNA16}),
    ),
    ("true", ALL),
    ("false", frozenset()),
]


@pytest.mark.parametrize(
    ("text", "expected"), TEXT_CASES, ids=[case[0][:60] for case in TEXT_CASES]
)
def test_cql2_text(release: Path, text: str, expected: frozenset[str]) -> None:
    assert ids(release, filter=text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), TEXT_CASES, ids=[case[0][:60] for case in TEXT_CASES]
)
def test_cql2_json_of_the_same_filters(release: Path, text: str, expected: frozenset[str]) -> None:
    tree = cql2.parse_text(text).to_json()
    if isinstance(tree, dict):  # ``true`` / ``false`` are CQL2 JSON too, but not dicts
        assert ids(release, filter=tree) == expected
    assert ids(release, filter=json.dumps(tree), filter_lang="cql2-json") == expected


def _prop(name: str) -> dict[str, str]:
    return {"property": name}


JSON_CASES: list[tuple[dict[str, Any], frozenset[str]]] = [
    ({"op": "=", "args": [_prop("mission"), "apollo17"]}, frozenset({A17})),
    ({"op": "=", "args": [_prop("properties.mission"), "apollo17"]}, frozenset({A17})),
    ({"op": "<>", "args": [_prop("material"), "basalt"]}, SAMPLES - {A12, A17, CE5_A}),
    ({"op": "<", "args": [_prop("mass_g"), 35.2]}, frozenset({A11, CE5_B})),
    ({"op": "<=", "args": [_prop("mass_g"), 35.2]}, frozenset({A11, CE5_A, CE5_B})),
    ({"op": ">", "args": [_prop("gsd"), 100]}, frozenset({EQUATOR, SPOLE})),
    ({"op": ">=", "args": [_prop("gsd"), 118.45]}, frozenset({EQUATOR, SPOLE})),
    (
        {"op": "in", "args": [_prop("mission"), ["luna16", "change5"]]},
        frozenset({LUNA16, CE5_A, CE5_B}),
    ),
    ({"op": "in", "args": [_prop("mission"), []]}, frozenset()),
    ({"op": "between", "args": [_prop("mass_g"), 100, 300]}, frozenset({A15, LUNA16})),
    ({"op": "like", "args": [_prop("mission"), "apollo1_"]}, frozenset({A11, A12, A15, A17})),
    ({"op": "isNull", "args": [_prop("gsd")]}, SAMPLES),
    ({"op": "not", "args": [{"op": "isNull", "args": [_prop("gsd")]}]}, CUBES),
    (
        {
            "op": "and",
            "args": [
                {"op": "=", "args": [_prop("material"), "basalt"]},
                {"op": "<", "args": [_prop("mass_g"), 2000]},
            ],
        },
        frozenset({A12, CE5_A}),
    ),
    (
        {
            "op": "or",
            "args": [
                {"op": "=", "args": [_prop("id"), A11]},
                {"op": "=", "args": [_prop("id"), SPOLE]},
            ],
        },
        frozenset({A11, SPOLE}),
    ),
    (
        {"op": "s_intersects", "args": [_prop("geometry"), {"bbox": [175, -5, -175, 5]}]},
        frozenset({SEAM}),
    ),
    (
        {"op": "s_intersects", "args": [{"bbox": [-10, -90, 10, -85]}, _prop("geometry")]},
        frozenset({SPOLE}),
    ),
    (
        {
            "op": "s_intersects",
            "args": [
                _prop("geometry"),
                {
                    "type": "Polygon",
                    "coordinates": _polygon((20, 0), (35, 0), (35, 25), (20, 25), (20, 0)),
                },
            ],
        },
        frozenset({A11, A17, EQUATOR}),
    ),
    (
        {
            "op": "t_intersects",
            "args": [_prop("datetime"), {"interval": ["2015-01-01T00:00:00Z", ".."]}],
        },
        frozenset({EQUATOR, CE5_A, CE5_B}),
    ),
    (
        {"op": "t_intersects", "args": [_prop("datetime"), {"timestamp": "2013-06-01T00:00:00Z"}]},
        frozenset({EQUATOR, SPOLE}),
    ),
    (
        {"op": "t_intersects", "args": [_prop("datetime"), {"date": "2020-12-17"}]},
        frozenset({CE5_A, CE5_B}),
    ),
    ({"op": ">", "args": [_prop("end_datetime"), {"date": "2016-01-01"}]}, frozenset({EQUATOR})),
]


@pytest.mark.parametrize(
    ("tree", "expected"), JSON_CASES, ids=[str(i) for i in range(len(JSON_CASES))]
)
def test_cql2_json(release: Path, tree: dict[str, Any], expected: frozenset[str]) -> None:
    assert ids(release, filter=tree) == expected
    assert ids(release, filter=tree, filter_lang="cql2-json") == expected


# --- bbox, datetime, collections, limit, and all together -------------------------------------

BBOX_CASES: list[tuple[tuple[float, float, float, float], frozenset[str]]] = [
    ((20, -5, 45, 25), frozenset({A11, A17, EQUATOR})),
    ((23.47, 0.67, 23.47, 0.67), frozenset({A11, EQUATOR})),  # a point-sized box
    ((175, -5, -175, 5), frozenset({SEAM})),  # across the seam: searched as two boxes
    ((-178, 0, -172, 1), frozenset({SEAM})),  # the western half of the split footprint
    ((160, -5, 169, 5), frozenset()),  # near the seam item's bbox (west > east) but outside
    ((-60, -30, 60, 30), frozenset({A11, A12, A15, A17, LUNA16, EQUATOR})),
    ((-10, -90, 10, -85), frozenset({SPOLE})),
    ((90, -90, 100, -89.5), frozenset({SPOLE})),  # at the pole, far from the cap's corners
    ((170, -90, -170, -85), frozenset({SPOLE})),  # across the seam and at the pole
    ((0, -79, 1, -70), frozenset()),
    ((-180, -90, 180, 90), ALL),
]


@pytest.mark.parametrize(
    ("bbox", "expected"), BBOX_CASES, ids=[str(case[0]) for case in BBOX_CASES]
)
def test_bbox(
    release: Path, bbox: tuple[float, float, float, float], expected: frozenset[str]
) -> None:
    assert ids(release, bbox=bbox) == expected


DATETIME_CASES: list[tuple[str, frozenset[str]]] = [
    ("1969-07-21T03:00:00Z", frozenset({A11})),
    ("1969-07-01T00:00:00Z/1969-12-31T23:59:59Z", frozenset({A11, A12})),
    ("2010-06-01T00:00:00Z", frozenset({EQUATOR, SEAM})),  # inside two cubes' ranges
    ("2015-01-01T00:00:00Z/..", frozenset({EQUATOR, CE5_A, CE5_B})),
    ("2015-01-01T00:00:00Z/", frozenset({EQUATOR, CE5_A, CE5_B})),
    ("../1970-01-01T00:00:00Z", frozenset({A11, A12})),
    ("/1970-01-01T00:00:00Z", frozenset({A11, A12})),
    ("2013-06-01T00:00:00+02:00/2013-06-02T00:00:00+02:00", frozenset({EQUATOR, SPOLE})),
    ("2010-12-31T23:59:59.5Z/2011-06-01T00:00:00Z", frozenset({EQUATOR})),
    ("1990-01-01T00:00:00Z/2000-01-01T00:00:00Z", frozenset()),
]


@pytest.mark.parametrize(
    ("when", "expected"), DATETIME_CASES, ids=[case[0] for case in DATETIME_CASES]
)
def test_datetime(release: Path, when: str, expected: frozenset[str]) -> None:
    assert ids(release, datetime=when) == expected


@pytest.mark.parametrize(
    ("collections", "expected"),
    [
        (("lola-cubes",), CUBES),
        (("apollo-samples", "returned-samples"), SAMPLES),
        (("no-such-collection",), frozenset()),
        ((), ALL),
    ],
)
def test_collections(release: Path, collections: tuple[str, ...], expected: frozenset[str]) -> None:
    assert ids(release, collections=collections) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"limit": 2}, [A11, A12]),
        ({"limit": 0}, []),
        ({"limit": 100}, ORDERED),
        ({"collections": ("lola-cubes",), "limit": 2}, [EQUATOR, SEAM]),
        ({"filter": "mass_g > 100", "limit": 3}, [A12, A15, A17]),
    ],
)
def test_limit_keeps_collection_id_order(
    release: Path, query: dict[str, Any], expected: list[str]
) -> None:
    assert ordered_ids(release, **query) == expected


def test_everything_together(release: Path) -> None:
    found = ordered_ids(
        release,
        bbox=(-180, -90, 180, 90),
        datetime="1969-01-01T00:00:00Z/1972-12-31T23:59:59Z",
        collections=("apollo-samples", "returned-samples"),
        filter={"op": ">", "args": [_prop("mass_g"), 100]},
        limit=2,
    )
    assert found == [A12, A15]
    assert ids(
        release, bbox=(0, -15, 60, 30), datetime="1970-01-01T00:00:00Z/..", filter="mass_g > 100"
    ) == {A15, A17, LUNA16}


# --- refusals: one clear line each -------------------------------------------------------------

ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    ({"filter": "mission = 'a"}, r"invalid CQL2 text at line 1, column 11"),
    ({"filter": "mission ==== 1"}, r"invalid CQL2 text at line 1, column 10 near '=== 1'"),
    ({"filter": '{"op": "="', "filter_lang": "cql2-json"}, r"invalid CQL2 JSON: .* line 1"),
    ({"filter": {"foo": 1}}, r"invalid CQL2 JSON: not a CQL2 expression"),
    (
        {"filter": {"op": "and", "args": [{"op": "isNull", "args": [_prop("mission")]}]}},
        r"CQL2 filter is not valid",
    ),
    (
        {"filter": "colour = 'grey'"},
        r"unknown property 'colour'; searchable properties: .*mass_g, material, mission",
    ),
    (
        {"filter": {"op": "=", "args": [_prop('mission" OR 1=1 --'), "x"]}},
        r"unknown property 'mission\" OR 1=1 --'",
    ),
    ({"filter": {"op": "isNull", "args": [_prop("bbox")]}}, r"unknown property 'bbox'"),
    ({"filter": "S_WITHIN(geometry, POINT(1 2))"}, r"unsupported CQL2 operator 's_within'"),
    ({"filter": "CASEI(mission) = 'apollo11'"}, r"unsupported CQL2 operator 'casei'"),
    ({"filter": "mass_g + 1 > 2"}, r"unsupported CQL2 operator '\+'"),
    (
        {"filter": "T_BEFORE(datetime, TIMESTAMP('2020-01-01T00:00:00Z'))"},
        r"unsupported CQL2 operator 't_before'",
    ),
    ({"filter": {"op": "frobnicate", "args": [1]}}, r"unsupported CQL2 operator 'frobnicate'"),
    (
        {"filter": "mass_g = 'heavy'"},
        r"cannot compare property 'mass_g' \(numbers\) with the string 'heavy'",
    ),
    ({"filter": "mission IN ('apollo11', 12)"}, r"IN list values must all be of one kind"),
    (
        {"filter": {"op": ">", "args": [_prop("datetime"), "2020-01-01"]}},
        r"write times as TIMESTAMP\('...'\)",
    ),
    (
        {"filter": "\"ssys:targets\" = 'Moon'"},
        r"property 'ssys:targets' \(lists or records\) cannot be compared",
    ),
    ({"filter": "mission = NULL"}, r"use IS NULL"),
    (
        {"filter": "S_INTERSECTS(geometry, POINT(400 0))"},
        r"geometry literal longitude 400 is outside -180..180 and 0..360",
    ),
    (
        {"filter": "S_INTERSECTS(geometry, BBOX(0, 10, 5, 0))"},
        r"BBOX has miny 10 greater than maxy 0",
    ),
    (
        {"filter": "S_INTERSECTS(mission, POINT(0 0))"},
        r"property 'mission' holds strings, not a geometry",
    ),
    (
        {"filter": "T_INTERSECTS(mass_g, DATE('2020-01-01'))"},
        r"property 'mass_g' holds numbers, not times",
    ),
    (
        {"filter": "T_INTERSECTS(datetime, INTERVAL('2020-01-01', '2019-01-01'))"},
        r"time interval ends before it starts",
    ),
    (
        {"filter": {"op": "=", "args": [_prop("datetime"), {"timestamp": "2020-13-01T00:00:00Z"}]}},
        r"TIMESTAMP '2020-13-01T00:00:00Z' is not a valid date-time",
    ),
    (
        {"filter": {"op": "=", "args": [_prop("datetime"), {"timestamp": "garbage"}]}},
        r"TIMESTAMP 'garbage' is not an RFC 3339 date-time",
    ),
    ({"filter": {"op": "like", "args": [_prop("mass_g"), "1%"]}}, r"LIKE needs a string property"),
    (
        {"filter": {"op": "=", "args": [_prop("mission")]}},
        r"CQL2 operator '=' takes 2 arguments, got 1",
    ),
    (
        {"filter": {"op": "="}, "filter_lang": "cql2-text"},
        r"filter_lang 'cql2-text' needs the filter as a string",
    ),
    ({"filter": "mission = 'x'", "filter_lang": "sql"}, r"unknown filter_lang 'sql'"),
    ({"filter": 42}, r"filter must be cql2-text \(a string\) or cql2-json, got int"),
    ({"bbox": (1, 2, 3)}, r"bbox needs 4 numbers \[minx, miny, maxx, maxy\], got '\[1, 2, 3\]'"),
    ({"bbox": (0, -95, 10, 0)}, r"bbox latitude -95 is outside -90..90"),
    ({"bbox": (0, 10, 10, 0)}, r"bbox has miny 10 greater than maxy 0"),
    ({"bbox": (400, 0, 410, 10)}, r"bbox longitude 400 is outside -180..180 and 0..360"),
    ({"bbox": (0, float("nan"), 1, 1)}, r"bbox holds something that is not a finite number"),
    ({"bbox": ("0", 0, 1, 1)}, r"bbox holds something that is not a finite number"),
    ({"datetime": "yesterday"}, r"datetime 'yesterday' is not an RFC 3339 date-time"),
    ({"datetime": "2020-01-01T00:00:00"}, r"datetime '2020-01-01T00:00:00' is not an RFC 3339"),
    (
        {"datetime": "2020-02-30T00:00:00Z"},
        r"datetime '2020-02-30T00:00:00Z' is not a valid date-time",
    ),
    ({"datetime": "../.."}, r"datetime interval '../..' needs at least one bound"),
    (
        {"datetime": "2021-01-01T00:00:00Z/2020-01-01T00:00:00Z"},
        r"time interval ends before it starts",
    ),
    ({"datetime": "a/b/c"}, r"neither an instant nor one 'start/end' interval"),
    ({"limit": -1}, r"limit must be a whole number of items, 0 or more, got '-1'"),
    ({"collections": "lola-cubes"}, r"collections must be a list of collection ids"),
    ({"collections": None}, r"collections must be a list of collection ids"),
]


@pytest.mark.parametrize(
    ("query", "message"), ERROR_CASES, ids=[str(i) for i in range(len(ERROR_CASES))]
)
def test_bad_queries_raise_one_clear_line(
    release: Path, query: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidFilter) as caught:
        search_items(release, SearchQuery(**query))
    text = str(caught.value)
    assert re.search(message, text), text
    assert "\n" not in text
    assert not re.search(r"\b(SELECT|read_parquet|Traceback)\b", text)
    assert isinstance(caught.value, ValueError)


def test_a_sql_looking_literal_is_just_a_string(release: Path) -> None:
    before = _sha256(release)
    evil = "'; DROP TABLE items; --"
    assert ids(release, filter="mission = '''; DROP TABLE items; --'") == set()
    assert ids(release, filter={"op": "=", "args": [_prop("mission"), evil]}) == set()
    assert ids(release, filter={"op": "in", "args": [_prop("mission"), [evil, "apollo11"]]}) == {
        A11
    }
    assert ids(release, filter={"op": "like", "args": [_prop("mission"), evil + "%"]}) == set()
    assert ids(release, collections=(evil,)) == set()
    assert _sha256(release) == before
    assert ordered_ids(release) == ORDERED


def test_ten_thousand_in_values_work(release: Path) -> None:
    names = [f"mission-{n}" for n in range(9_999)] + ["apollo15"]
    text = "mission IN (" + ", ".join(f"'{name}'" for name in names) + ")"
    assert ids(release, filter=text) == {A15}
    masses = [float(n) + 0.25 for n in range(9_999)] + [0.5]
    assert ids(release, filter={"op": "in", "args": [_prop("mass_g"), masses]}) == {CE5_B}


def test_too_many_values_are_refused_before_parsing(release: Path) -> None:
    values = list(range(_cql2sql.MAX_FILTER_VALUES + 1))
    with pytest.raises(InvalidFilter, match=r"filter has more than 100000 values"):
        search_items(release, SearchQuery(filter={"op": "in", "args": [_prop("mass_g"), values]}))


@pytest.mark.parametrize(
    "deep",
    [
        "(" * 5_000 + "mission = 'a'" + ")" * 5_000,  # would overflow cql2's parser stack
        "NOT " * 10_000 + "mission = 'a'",
        "mass_g = " + "- " * 10_000 + "1",
        "NOT " * (_cql2sql.MAX_FILTER_DEPTH + 2) + "mission = 'a'",  # parses, but too deep
    ],
    ids=["parens", "nots", "minus", "just-over-limit"],
)
def test_deep_text_nesting_is_refused_not_crashed(release: Path, deep: str) -> None:
    with pytest.raises(InvalidFilter, match=r"filter nests too deeply"):
        search_items(release, SearchQuery(filter=deep))


def test_deep_json_nesting_is_refused(release: Path) -> None:
    tree: dict[str, Any] = {"op": "=", "args": [_prop("mission"), "a"]}
    for _ in range(5_000):
        tree = {"op": "not", "args": [tree]}
    with pytest.raises(InvalidFilter, match=r"filter nests too deeply"):
        search_items(release, SearchQuery(filter=tree))
    text = '{"op": "not", "args": [' * 5_000 + "true" + "]}" * 5_000
    with pytest.raises(InvalidFilter, match=r"filter nests too deeply"):
        search_items(release, SearchQuery(filter=text, filter_lang="cql2-json"))


def test_concurrent_spatial_searches_agree(release: Path) -> None:
    def one(_: int) -> set[str]:
        return ids(
            release,
            bbox=(170, -90, -170, 20),
            filter="S_INTERSECTS(geometry, BBOX(-180, -90, 180, 0))",
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [{SEAM, SPOLE}] * 16


def test_a_property_null_in_every_item_is_still_searchable(tmp_path: Path) -> None:
    """stac-geoparquet stores it as a column of Arrow type null; DuckDB reads it as "NULL"."""
    items = lunar_items()
    for item in items:
        item.properties["notes"] = None
    path = tmp_path / "nulls.parquet"
    to_parquet(parse_stac_items_to_arrow(items), path)
    assert ids(path, filter="notes IS NULL") == ALL
    assert ids(path, filter="notes = 'x' OR notes > 3 OR notes IN ('a')") == set()
    assert ids(path, filter="T_INTERSECTS(notes, DATE('2020-01-01'))") == set()


def test_a_file_replaced_at_the_same_path_is_searched_afresh(tmp_path: Path) -> None:
    """Searches keep a file open between calls; a new file under the old name is read anew."""
    path = tmp_path / "items.parquet"
    to_parquet(parse_stac_items_to_arrow(lunar_items()), path)
    assert ids(path) == ALL
    kept = [item for item in lunar_items() if item.id in CUBES]
    to_parquet(parse_stac_items_to_arrow(kept), path)
    assert ids(path) == CUBES
    assert ids(path, bbox=(170, -90, -170, 20)) == {SEAM, SPOLE}


def _odd_shapes() -> list[pystac.Item]:
    """Geometries whose GeoJSON is easy to get subtly wrong, each with a proj:geometry."""
    shapes: list[dict[str, Any]] = [
        {"type": "Point", "coordinates": [10.5, -3.25, 1737.4]},
        {"type": "LineString", "coordinates": [[0.1, 0.30000000000000004], [1e-20, 89.999999]]},
        {
            "type": "Polygon",
            "coordinates": [
                [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [0.0, 0.0]],
                [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 1.0]],
            ],
        },
        {
            "type": "MultiPolygon",
            "coordinates": [
                _polygon((175.0, -5.0), (180.0, -5.0), (180.0, 5.0), (175.0, -5.0)),
                _polygon((-180.0, -5.0), (-175.0, -5.0), (-180.0, 5.0), (-180.0, -5.0)),
            ],
        },
        {"type": "MultiPoint", "coordinates": [[1.0, 2.0], [3.0, 4.0]]},
    ]
    items = []
    for index, geometry in enumerate(shapes):
        points = shapely.get_coordinates(shapely.geometry.shape(geometry))
        bbox = [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()]
        item = pystac.Item(
            f"shape-{index}",
            geometry,
            bbox,
            _when(f"2020-01-0{index + 1}T00:00"),
            {"proj:geometry": shapes[(index + 2) % len(shapes)], "note": None},
            collection="shapes",
        )
        items.append(item)
    return items


@pytest.mark.parametrize("make", [lunar_items, _odd_shapes], ids=["lunar", "odd-shapes"])
def test_items_are_exactly_what_stac_geoparquet_gives(
    tmp_path: Path, make: Callable[[], list[pystac.Item]]
) -> None:
    """The search turns rows into items itself (faster); the dicts must be stac-geoparquet's,
    keys in the same order, then with the API's null rule."""
    path = tmp_path / "items.parquet"
    to_parquet(parse_stac_items_to_arrow(make()), path)
    expected = sorted(
        (apply_fields(item, None) for item in stac_table_to_items(pq.read_table(path))),
        key=lambda item: (item["collection"], item["id"]),
    )
    found = search_items(path, SearchQuery(sortby="collection,id"))
    assert json.dumps(found) == json.dumps(expected)
    assert len(found) == len(make())


def test_missing_file_is_not_a_filter_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no stac-geoparquet file"):
        search_items(tmp_path / "absent.parquet", SearchQuery())


@pytest.fixture(autouse=True)
def _no_stray_files(release: Path) -> Iterator[None]:
    """Searching never writes next to the release file."""
    before = sorted(release.parent.iterdir())
    yield
    assert sorted(release.parent.iterdir()) == before


# --- ids, intersects, sortby, fields, paging ----------------------------------------------------


def test_ids_and_intersects(release: Path) -> None:
    assert ordered_ids(release, ids=(A17, SEAM, "absent")) == [A17, SEAM]
    ring = [[178, -1], [182, -1], [182, 1], [178, 1], [178, -1]]  # 182 is -178: across 180
    seam = {"type": "Polygon", "coordinates": [ring]}
    assert ids(release, intersects=seam) == {SEAM}
    with pytest.raises(InvalidFilter, match=r"^give bbox or intersects, not both$"):
        search_items(release, SearchQuery(bbox=(0, 0, 1, 1), intersects=seam))
    with pytest.raises(InvalidFilter, match=r"^intersects must be a GeoJSON geometry, not a"):
        search_items(release, SearchQuery(intersects={"type": "Feature"}))


def _by_mass(descending: bool) -> list[str]:
    """The reference order: mass, nulls last ascending / first descending, then (collection,
    id) in the same direction, as PostgreSQL orders pgstac's rows."""
    items = [item.to_dict() for item in lunar_items()]
    rows = [(i["properties"].get("mass_g"), i["collection"], i["id"]) for i in items]
    known = sorted((r for r in rows if r[0] is not None), reverse=descending)
    unknown = sorted((r for r in rows if r[0] is None), reverse=descending)
    ordered = unknown + known if descending else known + unknown
    return [row[2] for row in ordered]


@pytest.mark.parametrize(
    ("sortby", "expected"),
    [
        ("-collection,-id", ORDERED[::-1]),
        ([{"field": "properties.mass_g", "direction": "asc"}], _by_mass(False)),
        ("-mass_g", _by_mass(True)),
    ],
)
def test_sortby(release: Path, sortby: Any, expected: list[str]) -> None:
    assert ordered_ids(release, sortby=sortby) == expected


def test_paging_walks_the_whole_order_once(release: Path) -> None:
    seen: list[str] = []
    token = None
    for _ in range(10):
        query = SearchQuery(sortby="collection,id", limit=3, token=token)
        page = search_page(release, query)
        seen += [item["id"] for item in page.features]
        token = page.next
        if token is None:
            break
    assert seen == ORDERED
    with pytest.raises(InvalidFilter, match=r"^paging token '.*' belongs to another search"):
        search_page(release, SearchQuery(sortby="-id", limit=3, token=f"3.{'0' * 16}"))


def test_fields_and_item_collection(release: Path) -> None:
    query = SearchQuery(ids=(A11,), fields={"include": ["properties.mass_g"]})
    (item,) = search_items(release, query)
    assert set(item) == {"type", "id", "collection", "links", "properties"}
    assert item["properties"] == {"mass_g": 12.5}
    found = search(release, SearchQuery(collections=("lola-cubes",), sortby="id", limit=2))
    assert [i.id for i in found] == [EQUATOR, SEAM]
    assert next_token(found) is not None
    with pytest.raises(InvalidFilter, match=r"^these fields leave items pystac cannot read"):
        search(release, query)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"sortby": "nosuch"}, r"^cannot sort by unknown property 'nosuch'; sortable: "),
        ({"sortby": 5}, r"^sortby must be text or a list, got '5'$"),
        ({"fields": ["id"]}, r"^fields must be an object with include / exclude lists"),
        ({"fields": {"include": [""]}}, r"^fields path '' is not a dotted name"),
        ({"token": "garbage"}, r"^paging token 'garbage' is not one this search gave out$"),
        ({"ids": "a"}, r"^ids must be a list of item ids, got 'a'$"),
    ],
)
def test_hostile_sortby_fields_token(release: Path, query: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        search_items(release, SearchQuery(**query))


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def published(release: Path, tmp_path: Path) -> str:
    """A folder store whose current release holds the test items."""
    store = open_store(str(tmp_path / "store"))
    draft = ReleaseDraft(files={"items.parquet": release.read_bytes()}, shared=[])
    assert publish_release(store, draft).published
    return str(tmp_path / "store")


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["search", *args])


def test_cli_prints_every_page_up_to_max_items(published: str) -> None:
    def run(*args: str) -> dict[str, Any]:
        result = _cli("--store", published, "--json", "--sortby", "collection,id", *args)
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    every = run("--limit", "3")
    assert [f["id"] for f in every["features"]] == ORDERED
    assert "next" not in every
    first = run("--limit", "2", "--max-items", "5")
    assert [f["id"] for f in first["features"]] == ORDERED[:5]
    rest = run("--limit", "2", "--token", first["next"])
    assert [f["id"] for f in rest["features"]] == ORDERED[5:]
    few = run("--ids", f"{A17},{SEAM}", "--fields", "id,-links")
    assert [sorted(f) for f in few["features"]] == [["collection", "id", "type"]] * 2


def test_cli_refuses_a_bad_sortby_in_one_line(published: str) -> None:
    result = _cli("--store", published, "--sortby", "-nosuch")
    assert result.exit_code == 2
    assert "cannot sort by unknown property 'nosuch'" in result.output
    assert "Traceback" not in result.output
