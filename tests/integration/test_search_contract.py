"""One contract, two engines: the same lunar queries give the same item ids from the embedded
search (DuckDB over the release's stac-geoparquet) and from the STAC API (pgstac behind
lunarchive's rewriting layer), by POST and by GET.

The items are a small, realistic lunar set: equatorial footprints, one split at +-180 into a
MultiPolygon, a footprint just west of the seam, north and south polar caps (polygons to the
pole, LUNAR-DATA.md 4.2), and returned samples as points with mission and mass.

Each module gets its own database, created on the server of LUNARCHIVE_DATABASE_URL (the
other module loads and replaces releases, which must not disturb this one), dropped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pystac
import pytest
import stac_geoparquet.arrow
import uvicorn
from fastapi import FastAPI

from lunarchive.catalog.api import create_app
from lunarchive.catalog.pgstac import install_schema, load_release
from lunarchive.catalog.search import (
    SearchQuery,
    next_token,
    search,
    search_items,
    search_page,
)
from lunarchive.schemas.errors import InvalidFilter

pytestmark = pytest.mark.integration

HOW_TO_RUN = (
    "run the suite through `make test`, or `python infra/services.py run --state DIR -- "
    "pytest ...`, which starts PostgreSQL with PostGIS and sets LUNARCHIVE_DATABASE_URL"
)


# --- shared helpers (test_stac_api.py imports them) -------------------------------------------


def server_url() -> str:
    url = os.environ.get("LUNARCHIVE_DATABASE_URL")
    if not url:
        pytest.fail(f"LUNARCHIVE_DATABASE_URL is not set: {HOW_TO_RUN}", pytrace=False)
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, uniquely named database with PostGIS and pgstac; dropped afterwards."""
    url = server_url()
    name = f"lunarchive_t_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    database_url = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        install_schema(database_url)
        yield database_url
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """The app under uvicorn on a loopback port, and an HTTP client for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the STAC API did not start on loopback", pytrace=False)
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def collection(collection_id: str, title: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/ssys/v1.1.1/schema.json"],
        "id": collection_id,
        "title": title,
        "description": f"{title} (test)",
        "license": "CC0-1.0",
        "ssys:targets": ["Moon"],
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["1969-07-20T00:00:00Z", None]]},
        },
        "links": [],
    }


def _box(west: float, south: float, east: float, north: float) -> list[list[list[float]]]:
    return [[[west, south], [east, south], [east, north], [west, north], [west, south]]]


def item(
    item_id: str,
    collection_id: str,
    geometry: dict[str, Any],
    bbox: list[float],
    properties: dict[str, Any],
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/ssys/v1.1.1/schema.json"],
        "id": item_id,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {"ssys:targets": ["Moon"], **properties},
        "assets": {
            "data": {"href": f"https://example.org/moon/{item_id}.tif", "roles": ["data"]},
        },
        "links": [],
    }


def orbital(
    item_id: str, geometry: dict[str, Any], bbox: list[float], **properties: Any
) -> dict[str, Any]:
    return item(item_id, "orbital", geometry, bbox, {"instrument": "camera", **properties})


def polygon(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": _box(west, south, east, north)}


def lunar_release() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The contract's collections and items."""
    cap_times = {
        "datetime": None,
        "start_datetime": "2009-07-13T17:33:17Z",
        "end_datetime": "2016-11-29T05:48:19Z",
    }
    items = [
        orbital(
            "eq-mare",
            polygon(10, -5, 20, 5),
            [10, -5, 20, 5],
            datetime="2010-01-01T00:00:00Z",
            mission="lro",
            gsd=0.5,
        ),
        orbital(
            "eq-highland",
            polygon(-60, 10, -50, 20),
            [-60, 10, -50, 20],
            datetime="2012-06-01T00:00:00Z",
            mission="kaguya",
            gsd=10.0,
        ),
        orbital(
            "seam-split",
            {
                "type": "MultiPolygon",
                "coordinates": [_box(175, -10, 180, 0), _box(-180, -10, -172, 0)],
            },
            [175, -10, -172, 0],
            datetime="2011-03-01T00:00:00Z",
            mission="lro",
            gsd=2.0,
        ),
        orbital(
            "west-of-seam",
            polygon(-178, 20, -176, 25),
            [-178, 20, -176, 25],
            datetime="2013-02-01T00:00:00Z",
            mission="change2",
            gsd=7.0,
        ),
        orbital(
            "far-east",
            polygon(150, 0, 160, 10),
            [150, 0, 160, 10],
            datetime="2014-05-05T00:00:00Z",
            mission="change2",
            gsd=7.0,
        ),
        orbital(
            "north-cap",
            polygon(-180, 80, 180, 90),
            [-180, 80, 180, 90],
            mission="lro",
            gsd=100.0,
            **cap_times,
        ),
        orbital(
            "south-cap",
            polygon(-180, -90, 180, -48.437),
            [-180, -90, 180, -48.437],
            mission="lro",
            gsd=7580.84,
            **cap_times,
        ),
    ]
    samples = [
        ("s-apollo11-10084", 23.47, 0.67, "1969-07-21T17:54:00Z", "apollo11", 50.5),
        ("s-luna16-1635", 56.36, -0.51, "1970-09-21T07:36:00Z", "luna16", 101.0),
        ("s-change5-cm", -51.92, 43.06, "2020-12-03T14:10:00Z", "change5", 1731.0),
        ("s-change6-far", -153.99, -41.64, "2024-06-03T23:38:00Z", "change6", 1935.3),
    ]
    items += [
        item(
            sample_id,
            "samples",
            {"type": "Point", "coordinates": [lon, lat]},
            [lon, lat, lon, lat],
            {"datetime": when, "mission": mission, "mass_g": mass},
        )
        for sample_id, lon, lat, when, mission, mass in samples
    ]
    collections = [collection("orbital", "Orbital products"), collection("samples", "Samples")]
    return collections, items


# --- the contract --------------------------------------------------------------------------------

ALL_SAMPLES = {"s-apollo11-10084", "s-luna16-1635", "s-change5-cm", "s-change6-far"}
CAPS = {"north-cap", "south-cap"}

# (name, query, expected ids); a list means that order, under (collection, id) sorting.
CASES: list[tuple[str, SearchQuery, set[str] | list[str]]] = [
    ("bbox-equatorial", SearchQuery(bbox=(5, -10, 25, 10)), {"eq-mare", "s-apollo11-10084"}),
    ("bbox-seam-crossing", SearchQuery(bbox=(170, -20, -170, 5)), {"seam-split"}),
    ("bbox-seam-west-side-only", SearchQuery(bbox=(179, 15, -175, 30)), {"west-of-seam"}),
    (
        "bbox-seam-wide",
        SearchQuery(bbox=(140, -50, -150, 30)),
        {"seam-split", "west-of-seam", "far-east", "s-change6-far", "south-cap"},
    ),
    ("bbox-0-360-west-of-seam", SearchQuery(bbox=(182, 19, 186, 26)), {"west-of-seam"}),
    ("bbox-0-360-across-180", SearchQuery(bbox=(170, -20, 190, 5)), {"seam-split"}),
    ("bbox-0-360-across-0", SearchQuery(bbox=(350, -6, 25, 6)), {"eq-mare", "s-apollo11-10084"}),
    (
        "bbox-3d-footprint",
        SearchQuery(bbox=(5, -10, -1000, 25, 10, 1000)),
        {"eq-mare", "s-apollo11-10084"},
    ),  # type: ignore[arg-type]
    ("bbox-3d-seam", SearchQuery(bbox=(170, -20, 0, -170, 5, 10)), {"seam-split"}),  # type: ignore[arg-type]
    ("polar-north-bbox", SearchQuery(bbox=(10, 85, 20, 89)), {"north-cap"}),
    ("polar-south-band", SearchQuery(bbox=(-180, -90, 180, -80)), {"south-cap"}),
    (
        "polar-south-pole-point",
        SearchQuery(filter="S_INTERSECTS(geometry, POINT(0 -90))"),
        {"south-cap"},
    ),
    ("polar-north-pole-across-seam", SearchQuery(bbox=(179, 89, -179, 90)), {"north-cap"}),
    (
        "datetime-range",
        SearchQuery(datetime="2011-01-01T00:00:00Z/2012-12-31T00:00:00Z"),
        {"seam-split", "eq-highland"} | CAPS,
    ),
    (
        "datetime-open-start",
        SearchQuery(datetime="../1980-01-01T00:00:00Z"),
        {"s-apollo11-10084", "s-luna16-1635"},
    ),
    (
        "datetime-open-end",
        SearchQuery(datetime="2020-01-01T00:00:00Z/.."),
        {"s-change5-cm", "s-change6-far"},
    ),
    ("datetime-instant", SearchQuery(datetime="2020-12-03T14:10:00Z"), {"s-change5-cm"}),
    ("datetime-inside-cap-range", SearchQuery(datetime="2015-01-01T00:00:00Z"), CAPS),
    (
        "cql2-text-equals",
        SearchQuery(filter="mission = 'lro'"),
        {"eq-mare", "seam-split"} | CAPS,
    ),
    ("cql2-text-number", SearchQuery(filter="mass_g > 1000"), {"s-change5-cm", "s-change6-far"}),
    (
        "cql2-text-like",
        SearchQuery(filter="mission LIKE 'change%'"),
        {"west-of-seam", "far-east", "s-change5-cm", "s-change6-far"},
    ),
    (
        "cql2-text-in",
        SearchQuery(filter="mission IN ('luna16', 'apollo11')"),
        {"s-luna16-1635", "s-apollo11-10084"},
    ),
    (
        "cql2-text-between",
        SearchQuery(filter="mass_g BETWEEN 50 AND 200"),
        {"s-apollo11-10084", "s-luna16-1635"},
    ),
    (
        "cql2-json-between-pair",  # the draft form [value, [low, high]], still sent by clients
        SearchQuery(filter={"op": "between", "args": [{"property": "mass_g"}, [50, 200]]}),
        {"s-apollo11-10084", "s-luna16-1635"},
    ),
    (
        "cql2-text-seam-bbox-literal",
        SearchQuery(filter="S_INTERSECTS(geometry, BBOX(170, -20, -170, 5))"),
        {"seam-split"},
    ),
    (
        "cql2-text-0-360-polygon",
        SearchQuery(
            filter="S_INTERSECTS(geometry, POLYGON((178 -20, 185 -20, 185 5, 178 5, 178 -20)))"
        ),
        {"seam-split"},
    ),
    (
        "cql2-text-time",
        SearchQuery(filter="datetime >= TIMESTAMP('2020-01-01T00:00:00Z')"),
        {"s-change5-cm", "s-change6-far"},
    ),
    (
        "cql2-json-and",
        SearchQuery(
            filter={
                "op": "and",
                "args": [
                    {"op": "=", "args": [{"property": "mission"}, "apollo11"]},
                    {"op": "<", "args": [{"property": "mass_g"}, 100]},
                ],
            }
        ),
        {"s-apollo11-10084"},
    ),
    (
        "cql2-json-or-not",
        SearchQuery(
            filter={
                "op": "or",
                "args": [
                    {"op": "=", "args": [{"property": "id"}, "far-east"]},
                    {"op": "not", "args": [{"op": "<", "args": [{"property": "gsd"}, 1000]}]},
                ],
            },
            collections=("orbital",),
        ),
        {"far-east", "south-cap"},
    ),
    (
        "cql2-json-seam-intersects",
        SearchQuery(
            filter={
                "op": "s_intersects",
                "args": [
                    {"property": "geometry"},
                    {"type": "Polygon", "coordinates": _box(176, -5, 180, -1)},
                ],
            },
            filter_lang="cql2-json",
        ),
        {"seam-split"},
    ),
    ("collections-samples", SearchQuery(collections=("samples",)), ALL_SAMPLES),
    (
        "collections-and-bbox",
        SearchQuery(
            collections=("orbital",), bbox=(-180, -90, 180, 90), datetime="2013-01-01T00:00:00Z/.."
        ),
        {"west-of-seam", "far-east"} | CAPS,
    ),
    ("collections-unknown", SearchQuery(collections=("nope",)), set()),
    (
        "limit-first-two",
        SearchQuery(collections=("samples",), limit=2, sortby="collection,id"),
        ["s-apollo11-10084", "s-change5-cm"],
    ),
    (
        "limit-with-filter",
        SearchQuery(filter="mission = 'lro'", limit=3, sortby="collection,id"),
        ["eq-mare", "north-cap", "seam-split"],
    ),
    (
        "ids",
        SearchQuery(ids=("far-east", "s-luna16-1635", "absent"), sortby="id"),
        ["far-east", "s-luna16-1635"],
    ),
    (
        "ids-and-bbox",
        SearchQuery(ids=("far-east", "eq-mare"), bbox=(5, -10, 25, 10)),
        {"eq-mare"},
    ),
    (
        "intersects-seam-multipolygon",
        SearchQuery(
            intersects={
                "type": "MultiPolygon",
                "coordinates": [_box(178, -5, 180, -1), _box(-180, 20, -177, 22)],
            }
        ),
        {"seam-split", "west-of-seam"},
    ),
    (
        "intersects-0-360-polygon",
        SearchQuery(intersects=polygon(205, -42, 207, -41)),
        {"s-change6-far"},
    ),
]

# Refused by both engines, with the same message (a 400 from the API).
ERRORS: list[tuple[str, SearchQuery, str]] = [
    ("unknown-property", SearchQuery(filter="colour = 'grey'"), "unknown property 'colour'"),
    ("kind-mismatch", SearchQuery(filter="mass_g = 'heavy'"), "cannot compare property 'mass_g'"),
    ("bad-text", SearchQuery(filter="mission = "), "invalid CQL2 text"),
    ("bad-operator", SearchQuery(filter={"op": "frobnicate", "args": [1]}), "CQL2"),
    ("sql-literal", SearchQuery(filter="mission = 1; DROP TABLE items"), "invalid CQL2 text"),
    ("bbox-three-numbers", SearchQuery(bbox=(1, 2, 3)), "bbox needs 4 numbers"),  # type: ignore[arg-type]
    ("bbox-longitude-400", SearchQuery(bbox=(400, 0, 410, 1)), "outside -180..180 and 0..360"),
    ("bbox-latitude", SearchQuery(bbox=(0, -95, 10, 0)), "latitude -95 is outside -90..90"),
    ("datetime-garbage", SearchQuery(datetime="yesterday"), "is not an RFC 3339 date-time"),
    (
        "datetime-backwards",
        SearchQuery(datetime="2021-01-01T00:00:00Z/2020-01-01T00:00:00Z"),
        "ends before it starts",
    ),
]


def _embedded(parquet: Path, query: SearchQuery) -> list[str]:
    return [feature["id"] for feature in search_items(parquet, query)]


def _sortby_list(text: str) -> list[dict[str, str]]:
    """'-a,b' as the POST form."""
    return [
        {"field": part.lstrip("+-"), "direction": "desc" if part.startswith("-") else "asc"}
        for part in text.split(",")
    ]


def _post_body(query: SearchQuery) -> dict[str, Any]:
    body: dict[str, Any] = {"limit": query.limit if query.limit is not None else 100}
    if isinstance(query.sortby, str):
        body["sortby"] = _sortby_list(query.sortby)
    elif query.sortby is not None:
        body["sortby"] = list(query.sortby)
    if query.ids:
        body["ids"] = list(query.ids)
    if query.intersects is not None:
        body["intersects"] = dict(query.intersects)
    if query.fields is not None:
        body["fields"] = query.fields
    if query.bbox is not None:
        body["bbox"] = list(query.bbox)
    if query.datetime is not None:
        body["datetime"] = query.datetime
    if query.collections:
        body["collections"] = list(query.collections)
    if query.filter is not None:
        body["filter"] = query.filter
        body["filter-lang"] = query.filter_lang or (
            "cql2-text" if isinstance(query.filter, str) else "cql2-json"
        )
    return body


def _get_params(query: SearchQuery) -> dict[str, str]:
    body = _post_body(query)
    params = {"limit": str(body["limit"])}
    if "sortby" in body:
        params["sortby"] = ",".join(
            ("-" if key["direction"] == "desc" else "+") + key["field"] for key in body["sortby"]
        )
    if "ids" in body:
        params["ids"] = ",".join(body["ids"])
    if "intersects" in body:
        params["intersects"] = json.dumps(body["intersects"])
    if isinstance(query.fields, str):
        params["fields"] = query.fields
    if "bbox" in body:
        params["bbox"] = ",".join(str(value) for value in body["bbox"])
    if "datetime" in body:
        params["datetime"] = body["datetime"]
    if "collections" in body:
        params["collections"] = ",".join(body["collections"])
    if "filter" in body:
        text = body["filter"]
        params["filter"] = text if isinstance(text, str) else json.dumps(text)
        params["filter-lang"] = body["filter-lang"]
    return params


def _api(client: httpx.Client, method: str, query: SearchQuery) -> httpx.Response:
    if method == "post":
        return client.post("/search", json=_post_body(query))
    return client.get("/search", params=_get_params(query))


@pytest.fixture(scope="module")
def release(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """The contract release as stac-geoparquet (embedded) and loaded into pgstac (API)."""
    collections, items = lunar_release()
    parquet = tmp_path_factory.mktemp("contract") / "items.parquet"
    stac_geoparquet.arrow.to_parquet(
        stac_geoparquet.arrow.parse_stac_items_to_arrow(items), parquet
    )
    return parquet, collections, items


@pytest.fixture(scope="module")
def api_client(release: Any) -> Iterator[httpx.Client]:
    _, collections, items = release
    with fresh_database() as database_url:
        load_release(database_url, "20260101T000000Z-contract", collections, items)
        with serve(create_app(database_url)) as client:
            yield client


@pytest.mark.parametrize(("name", "query", "expected"), CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("engine", ["embedded", "api-post", "api-get"])
def test_same_items_from_both_engines(
    engine: str,
    name: str,
    query: SearchQuery,
    expected: set[str] | list[str],
    release: Any,
    api_client: httpx.Client,
) -> None:
    if engine == "embedded":
        found = _embedded(release[0], query)
    else:
        response = _api(api_client, engine.removeprefix("api-"), query)
        assert response.status_code == 200, response.text
        found = [feature["id"] for feature in response.json()["features"]]
    if isinstance(expected, list):
        assert found == expected
    else:
        assert sorted(found) == sorted(expected)


@pytest.mark.parametrize(("name", "query", "message"), ERRORS, ids=[case[0] for case in ERRORS])
@pytest.mark.parametrize("engine", ["embedded", "api-post", "api-get"])
def test_same_refusals_from_both_engines(
    engine: str, name: str, query: SearchQuery, message: str, release: Any, api_client: httpx.Client
) -> None:
    if engine == "embedded":
        with pytest.raises(InvalidFilter, match=r".+") as caught:
            _embedded(release[0], query)
        text = str(caught.value)
    else:
        response = _api(api_client, engine.removeprefix("api-"), query)
        assert response.status_code == 400, response.text
        text = response.json()["description"]
    assert message in text
    assert "\n" not in text
    assert "SELECT" not in text


# --- sortby, fields and paging: same order, same fields, same pages ------------------------------

ORBITAL = ["eq-highland", "eq-mare", "far-east", "north-cap", "seam-split", "south-cap"]
ORBITAL += ["west-of-seam"]

# (name, query, expected ids in order). Caps are dated by start_datetime (2009-07-13), which
# is what "datetime" sorts them by; samples have no gsd (null: last ascending, first descending).
SORTED: list[tuple[str, SearchQuery, list[str]]] = [
    (
        "default-datetime-desc",
        SearchQuery(collections=("orbital",)),
        ["far-east", "west-of-seam", "eq-highland", "seam-split", "eq-mare"]
        + ["south-cap", "north-cap"],
    ),
    (
        "datetime-asc",
        SearchQuery(collections=("orbital",), sortby="properties.datetime"),
        ["north-cap", "south-cap", "eq-mare", "seam-split", "eq-highland"]
        + ["west-of-seam", "far-east"],
    ),
    (
        "end-datetime-desc-then-id",
        SearchQuery(collections=("orbital",), sortby="-end_datetime,id"),
        ["north-cap", "south-cap", "far-east", "west-of-seam", "eq-highland"]
        + ["seam-split", "eq-mare"],
    ),
    (
        "number-asc-nulls-last",
        SearchQuery(sortby="gsd,id", limit=9),
        ["eq-mare", "seam-split", "far-east", "west-of-seam", "eq-highland", "north-cap"]
        + ["south-cap", "s-apollo11-10084", "s-change5-cm"],
    ),
    (
        "number-desc-nulls-first",
        SearchQuery(sortby="-gsd", limit=6),
        ["s-luna16-1635", "s-change6-far", "s-change5-cm", "s-apollo11-10084", "south-cap"]
        + ["north-cap"],
    ),
    (
        "text-then-number",
        SearchQuery(collections=("samples",), sortby="mission,-mass_g"),
        ["s-apollo11-10084", "s-change5-cm", "s-change6-far", "s-luna16-1635"],
    ),
    (
        "collection-desc-id-desc",
        SearchQuery(sortby="-collection,-id", limit=5),
        ["s-luna16-1635", "s-change6-far", "s-change5-cm", "s-apollo11-10084", "west-of-seam"],
    ),
    (
        "id-desc-with-filter",
        SearchQuery(filter="mission = 'lro'", sortby="-id"),
        ["south-cap", "seam-split", "north-cap", "eq-mare"],
    ),
    (
        "post-form-sortby",
        SearchQuery(
            collections=("samples",),
            sortby=[{"field": "mass_g", "direction": "desc"}],
        ),
        ["s-change6-far", "s-change5-cm", "s-luna16-1635", "s-apollo11-10084"],
    ),
]


def _api_ids(client: httpx.Client, method: str, query: SearchQuery) -> list[str]:
    response = _api(client, method, query)
    assert response.status_code == 200, response.text
    return [feature["id"] for feature in response.json()["features"]]


@pytest.mark.parametrize(("name", "query", "expected"), SORTED, ids=[case[0] for case in SORTED])
def test_same_order_from_both_engines(
    name: str, query: SearchQuery, expected: list[str], release: Any, api_client: httpx.Client
) -> None:
    assert _embedded(release[0], query) == expected
    assert _api_ids(api_client, "post", query) == expected
    assert _api_ids(api_client, "get", query) == expected


def _shape(feature: dict[str, Any]) -> set[str]:
    """The field paths of a feature: top level, properties and assets (links' content differs:
    the API makes its own self/parent/root links)."""
    paths = set(feature)
    for part in ("properties", "assets"):
        if isinstance(feature.get(part), dict):
            paths |= {f"{part}.{key}" for key in feature[part]}
    return paths


FIELDS: list[tuple[str, str | dict[str, Any], set[str]]] = [
    (
        "include-one-property",
        {"include": ["properties.mission"]},
        {"type", "id", "collection", "links", "properties", "properties.mission"},
    ),
    (
        "include-and-exclude-parent",
        {"include": ["properties.mass_g"], "exclude": ["properties"]},
        {"type", "id", "collection", "links", "properties", "properties.mass_g"},
    ),
    (
        "exclude-only",
        {"exclude": ["assets", "geometry", "properties.mission"]},
        {
            "type",
            "stac_version",
            "stac_extensions",
            "id",
            "collection",
            "bbox",
            "links",
            "properties",
            "properties.datetime",
            "properties.mass_g",
            "properties.ssys:targets",
        },
    ),
    (
        "empty-is-default",
        {},
        {
            "type",
            "stac_version",
            "id",
            "collection",
            "geometry",
            "bbox",
            "links",
            "assets",
            "assets.data",
            "properties",
            "properties.datetime",
        },
    ),
    (
        "null-include-default-minus",
        {"include": None, "exclude": ["geometry", "links"]},
        {
            "type",
            "stac_version",
            "id",
            "collection",
            "bbox",
            "assets",
            "assets.data",
            "properties",
            "properties.datetime",
        },
    ),
    (
        "same-path-both-ways",
        {"include": ["geometry"], "exclude": ["geometry"]},
        {"type", "id", "collection", "links", "geometry"},
    ),
    (
        "get-form",
        "id,+properties.mass_g,-links",
        {"type", "id", "collection", "properties", "properties.mass_g"},
    ),
]


# GET has no spelling of a null include (the default set minus some fields): POST covers it.
FIELDS_RUNS = [
    pytest.param(engine, *case, id=f"{engine}-{case[0]}")
    for case in FIELDS
    for engine in ("embedded", "api-post", "api-get")
    if engine != "api-get" or case[0] != "null-include-default-minus"
]


@pytest.mark.parametrize(("engine", "name", "fields", "shape"), FIELDS_RUNS)
def test_same_fields_from_both_engines(
    engine: str,
    name: str,
    fields: str | dict[str, Any],
    shape: set[str],
    release: Any,
    api_client: httpx.Client,
) -> None:
    if engine == "api-get" and not isinstance(fields, str):
        fields = _fields_get(fields)
    query = SearchQuery(collections=("samples",), sortby="id", fields=fields)
    if engine == "embedded":
        features = search_items(release[0], query)
    else:
        response = _api(api_client, engine.removeprefix("api-"), query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/geo+json")
        features = response.json()["features"]
    assert [feature["id"] for feature in features] == sorted(ALL_SAMPLES)
    assert [_shape(feature) for feature in features] == [shape] * len(ALL_SAMPLES)


def _fields_get(fields: dict[str, Any]) -> str:
    """The POST form as GET text; the empty include of the default set is ''."""
    include = [f"+{path}" for path in fields.get("include") or []]
    return ",".join(include + [f"-{path}" for path in fields.get("exclude") or []])


def test_range_dated_items_keep_a_null_datetime_in_both_engines(
    release: Any, api_client: httpx.Client
) -> None:
    query = SearchQuery(ids=("north-cap",), fields={"include": ["properties.start_datetime"]})
    embedded = search_items(release[0], SearchQuery(ids=("north-cap",)))
    response = _api(api_client, "post", SearchQuery(ids=("north-cap",)))
    assert response.status_code == 200, response.text
    for feature in (embedded[0], response.json()["features"][0]):
        assert feature["properties"]["datetime"] is None
        assert feature["properties"]["start_datetime"].startswith("2009-07-13T17:33:17")
    partial = search_items(release[0], query)[0]
    assert list(partial["properties"]) == ["start_datetime"]


def _embedded_pages(parquet: Path, query: SearchQuery) -> list[list[str]]:
    pages = []
    token = None
    while True:
        page = search_page(parquet, replace(query, token=token))
        pages.append([feature["id"] for feature in page.features])
        if page.next is None:
            return pages
        token = page.next


def _api_pages(client: httpx.Client, method: str, query: SearchQuery) -> list[list[str]]:
    response = _api(client, method, query)
    pages = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([feature["id"] for feature in body["features"]])
        following = [link for link in body["links"] if link["rel"] == "next"]
        if not following:
            return pages
        link = following[0]
        if link.get("method") == "POST":
            response = client.post(link["href"], json=link["body"])
        else:
            response = client.get(link["href"])
        assert len(pages) < 20, "paging does not end"


@pytest.mark.parametrize("sortby", [None, "-gsd,id", "mission,-mass_g", "-end_datetime"])
def test_paging_gives_the_same_full_sequence_from_both_engines(
    sortby: str | None, release: Any, api_client: httpx.Client
) -> None:
    whole = _embedded(release[0], SearchQuery(sortby=sortby))
    assert sorted(whole) == sorted(item["id"] for item in release[2])
    query = SearchQuery(sortby=sortby, limit=3)
    embedded = _embedded_pages(release[0], query)
    assert [len(page) for page in embedded] == [3, 3, 3, 2]
    assert list(chain.from_iterable(embedded)) == whole
    for method in ("post", "get"):
        assert list(chain.from_iterable(_api_pages(api_client, method, query))) == whole


def test_pystac_item_collection_pages(release: Any) -> None:
    first = search(release[0], SearchQuery(collections=("samples",), sortby="id", limit=3))
    assert isinstance(first, pystac.ItemCollection)
    assert [item.id for item in first] == sorted(ALL_SAMPLES)[:3]
    token = next_token(first)
    assert token is not None
    query = SearchQuery(collections=("samples",), sortby="id", limit=3, token=token)
    rest = search(release[0], query)
    assert [item.id for item in rest] == sorted(ALL_SAMPLES)[3:]
    assert next_token(rest) is None
    assert rest.items[0].properties["mission"] == "luna16"


# Refused by both engines with the same line (a 400 from the API, by POST and by GET).
HOSTILE: list[tuple[str, SearchQuery, str]] = [
    ("sort-unknown", SearchQuery(sortby="colour"), "cannot sort by unknown property 'colour'"),
    ("sort-list-property", SearchQuery(sortby="ssys:targets"), "cannot sort by 'ssys:targets'"),
    ("sort-direction", SearchQuery(sortby=[{"field": "id", "direction": "up"}]), "direction"),
    ("sort-empty-field", SearchQuery(sortby="id,,gsd"), "sortby has an empty field"),
    ("fields-not-paths", SearchQuery(fields={"include": ["a..b"]}), "is not a dotted name"),
    ("fields-not-list", SearchQuery(fields={"include": "id"}), "fields.include must be a list"),
    ("fields-unknown-key", SearchQuery(fields={"only": ["id"]}), "fields has unknown key 'only'"),
]


# A malformed sortby object or fields object has no GET spelling: POST covers those.
HOSTILE_RUNS = [
    pytest.param(engine, *case, id=f"{engine}-{case[0]}")
    for case in HOSTILE
    for engine in ("embedded", "api-post", "api-get")
    if engine != "api-get" or isinstance(case[1].sortby, str)
]


@pytest.mark.parametrize(("engine", "name", "query", "message"), HOSTILE_RUNS)
def test_same_refusals_of_sortby_and_fields(
    engine: str, name: str, query: SearchQuery, message: str, release: Any, api_client: httpx.Client
) -> None:
    test_same_refusals_from_both_engines(engine, name, query, message, release, api_client)


@pytest.mark.parametrize(
    "token", ["", "zz", "3.0000000000000000", "-1.abcdefabcdefabcd", "next:zz:zz", "9" * 40]
)
def test_bad_tokens_are_refused_by_both_engines(
    token: str, release: Any, api_client: httpx.Client
) -> None:
    with pytest.raises(InvalidFilter, match=r"^paging token .* (is not one|belongs)"):
        search_items(release[0], SearchQuery(limit=2, token=token))
    response = api_client.get("/search", params={"limit": "2", "token": token or "next:"})
    assert response.status_code == 400, response.text
    assert "paging token" in response.json()["description"]
