"""The STAC API on a real PostgreSQL with pgstac: conformance, browsing, search, the anchor's
seam and 3-D bbox defects fixed, hostile requests refused with a 400 (RELIABILITY.md R17), and
releases loaded idempotently and atomically (never half-loaded)."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from test_search_contract import (
    collection,
    fresh_database,
    item,
    lunar_release,
    orbital,
    polygon,
    serve,
)

from lunarchive.catalog.api import CONFORMANCE_CLASSES, create_app
from lunarchive.catalog.pgstac import (
    MAX_INDEXED_VALUES,
    indexed_properties,
    install_schema,
    load_release,
    property_kinds,
    release_documents,
    served_release,
)

pytestmark = pytest.mark.integration

_versions = itertools.count(1)


def next_version() -> str:
    """Release versions sort by time, as publish_release makes them."""
    return f"20260102T{next(_versions):06d}Z-test"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[httpx.Client]:
    with serve(create_app(database_url)) as http:
        yield http


@pytest.fixture
def contract(database_url: str) -> str:
    """The contract release, served (loaded under a new version for each test)."""
    collections, items = lunar_release()
    version = next_version()
    assert load_release(database_url, version, collections, items).loaded
    return version


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [feature["id"] for feature in response.json()["features"]]


def snapshot(database_url: str) -> list[tuple[Any, ...]]:
    """Every row pgstac serves from, with its row version (xmin changes on any rewrite)."""
    with psycopg.connect(database_url) as conn:
        items = conn.execute(
            "SELECT 'item', collection, id, content::text, xmin::text FROM pgstac.items"
            " ORDER BY collection, id"
        ).fetchall()
        collections = conn.execute(
            "SELECT 'collection', id, '', content::text, xmin::text FROM pgstac.collections"
            " ORDER BY id"
        ).fetchall()
    return [*collections, *items]


# --- landing, conformance, browsing --------------------------------------------------------


def test_conformance_advertises_exactly_what_is_implemented(
    client: httpx.Client, contract: str
) -> None:
    response = client.get("/conformance")
    assert response.status_code == 200
    assert set(response.json()["conformsTo"]) == set(CONFORMANCE_CLASSES)
    landing = client.get("/").json()
    assert set(landing["conformsTo"]) == set(CONFORMANCE_CLASSES)
    rels = {link["rel"] for link in landing["links"]}
    assert {"self", "conformance", "data", "search"} <= rels


def test_collections_and_items_are_browsable(client: httpx.Client, contract: str) -> None:
    listed = client.get("/collections").json()["collections"]
    assert sorted(c["id"] for c in listed) == ["orbital", "samples"]
    one = client.get("/collections/samples")
    assert one.status_code == 200
    assert one.json()["ssys:targets"] == ["Moon"]
    assert sorted(ids(client.get("/collections/samples/items"))) == sorted(
        ["s-apollo11-10084", "s-change5-cm", "s-change6-far", "s-luna16-1635"]
    )
    feature = client.get("/collections/orbital/items/seam-split").json()
    assert feature["geometry"]["type"] == "MultiPolygon"
    assert feature["properties"]["mission"] == "lro"
    assert client.get("/collections/nope").status_code == 404
    assert client.get("/collections/orbital/items/nope").status_code == 404


def test_transactions_are_disabled(client: httpx.Client, contract: str) -> None:
    new = collection("intruder", "Intruder")
    assert client.post("/collections", json=new).status_code in (404, 405)
    assert client.delete("/collections/orbital").status_code in (404, 405)
    assert client.delete("/collections/orbital/items/seam-split").status_code in (404, 405)
    assert client.get("/collections/orbital").status_code == 200


# --- search --------------------------------------------------------------------------------


def test_search_by_bbox_datetime_and_cql2(client: httpx.Client, contract: str) -> None:
    assert sorted(ids(client.get("/search", params={"bbox": "5,-10,25,10"}))) == [
        "eq-mare",
        "s-apollo11-10084",
    ]
    window = {"datetime": "2020-01-01T00:00:00Z/..", "collections": "samples"}
    assert sorted(ids(client.get("/search", params=window))) == ["s-change5-cm", "s-change6-far"]
    text = {"filter": "mass_g > 1000 AND mission = 'change6'", "filter-lang": "cql2-text"}
    assert ids(client.get("/search", params=text)) == ["s-change6-far"]
    body = {
        "filter-lang": "cql2-json",
        "filter": {"op": "in", "args": [{"property": "mission"}, ["luna16", "apollo11"]]},
    }
    assert sorted(ids(client.post("/search", json=body))) == ["s-apollo11-10084", "s-luna16-1635"]
    items_text = {"filter": "gsd < 1", "filter-lang": "cql2-text"}
    assert ids(client.get("/collections/orbital/items", params=items_text)) == ["eq-mare"]


def test_query_extension(client: httpx.Client, contract: str) -> None:
    body = {"query": {"mass_g": {"gt": 1000}, "mission": {"startsWith": "change"}}}
    assert sorted(ids(client.post("/search", json=body))) == ["s-change5-cm", "s-change6-far"]
    params = {"query": json.dumps({"mission": {"in": ["luna16"]}})}
    assert ids(client.get("/search", params=params)) == ["s-luna16-1635"]
    refused = client.post("/search", json={"query": {"mass_g": {"like": "1%"}}})
    assert refused.status_code == 400
    assert "unknown query operator 'like'" in refused.json()["description"]
    # Numbers and times given as strings (as stac-api-validator and GET users send them).
    as_text = {"query": {"mass_g": {"gte": "101", "lt": "1731"}}, "collections": "samples"}
    assert ids(client.post("/search", json=as_text)) == ["s-luna16-1635"]
    times = {"query": {"datetime": {"gt": "2020-01-01T00:00:00Z"}}, "sortby": [{"field": "id"}]}
    assert ids(client.post("/search", json=times)) == ["s-change5-cm", "s-change6-far"]


def test_sort_fields_limit_and_paging(client: httpx.Client, contract: str) -> None:
    by_mass = {"collections": "samples", "sortby": "-mass_g"}
    assert ids(client.get("/search", params=by_mass)) == [
        "s-change6-far",
        "s-change5-cm",
        "s-luna16-1635",
        "s-apollo11-10084",
    ]
    post = {"collections": ["samples"], "sortby": [{"field": "mass_g", "direction": "asc"}]}
    assert ids(client.post("/search", json=post))[0] == "s-apollo11-10084"

    fields = {"collections": ["samples"], "fields": {"include": ["id", "properties.mission"]}}
    features = client.post("/search", json=fields).json()["features"]
    assert features and all("assets" not in feature for feature in features)
    assert all(set(feature["properties"]) == {"mission"} for feature in features)

    seen: list[str] = []
    url: str | None = "/search?limit=3&sortby=id"
    pages = 0
    while url is not None:
        page = client.get(url)
        assert len(ids(page)) <= 3
        seen += ids(page)
        url = next((link["href"] for link in page.json()["links"] if link["rel"] == "next"), None)
        pages += 1
    assert pages == 4
    assert seen == sorted(i["id"] for i in lunar_release()[1])


@pytest.mark.parametrize(
    "request_kind", ["get-search", "post-search", "get-items"], ids=lambda kind: kind
)
def test_seam_crossing_bbox_returns_both_sides_not_the_band(
    client: httpx.Client, contract: str, request_kind: str
) -> None:
    bbox = [170, -20, -170, 5]  # 20 degrees across +-180, not the 340-degree band
    if request_kind == "get-search":
        found = ids(client.get("/search", params={"bbox": ",".join(map(str, bbox))}))
    elif request_kind == "post-search":
        found = ids(client.post("/search", json={"bbox": bbox}))
    else:
        found = ids(client.get("/collections/orbital/items", params={"bbox": "170,-20,-170,5"}))
    assert found == ["seam-split"]
    # 0..360 reading of the same box
    assert ids(client.post("/search", json={"bbox": [170, -20, 190, 5]})) == ["seam-split"]


@pytest.mark.parametrize(
    "request_kind", ["get-search", "post-search", "get-items"], ids=lambda kind: kind
)
def test_3d_bbox_is_searched_by_its_footprint(
    client: httpx.Client, contract: str, request_kind: str
) -> None:
    box3d = [5, -10, -1000, 25, 10, 1000]
    if request_kind == "get-search":
        found = ids(client.get("/search", params={"bbox": ",".join(map(str, box3d))}))
    elif request_kind == "post-search":
        found = ids(client.post("/search", json={"bbox": box3d}))
    else:
        found = ids(client.get("/collections/orbital/items", params={"bbox": "5,-10,0,25,10,0"}))
    expected = ["eq-mare"] if request_kind == "get-items" else ["eq-mare", "s-apollo11-10084"]
    assert sorted(found) == expected
    seam3d = {"bbox": [170, -20, -5, -170, 5, 5]}
    assert ids(client.post("/search", json=seam3d)) == ["seam-split"]
    assert client.get("/").status_code == 200  # the connection survived


def test_polar_intersects(client: httpx.Client, contract: str) -> None:
    pole = {"intersects": {"type": "Point", "coordinates": [42.0, -90.0]}}
    assert ids(client.post("/search", json=pole)) == ["south-cap"]
    ring = {"type": "Polygon", "coordinates": [[[0, 85], [90, 85], [180, 85], [0, 85]]]}
    assert ids(client.get("/search", params={"intersects": json.dumps(ring)})) == ["north-cap"]


# --- hostile and malformed requests: 400, one line, no SQL, nothing changed ---------------

HOSTILE_GET: list[dict[str, str]] = [
    {"filter": "mission = 'x'; DROP TABLE pgstac.items; --'"},
    {"filter": "mission = ''; DROP TABLE pgstac.items; --'", "filter-lang": "cql2-text"},
    {"filter": '"mission""; DROP TABLE items; --" = 1'},
    {"filter": "mission <=> 'x'"},
    {"filter": "frobnicate(mission)"},
    {"filter": "(" * 300 + "mission = 'x'" + ")" * 300},
    {"filter": "{not json", "filter-lang": "cql2-json"},
    {"filter": "mission = 'x'", "filter-lang": "sql"},
    {"filter": "mass_g = 'heavy'"},
    {"filter": "nosuch = 1"},
    {"filter": "S_INTERSECTS(geometry, POINT(500 0))"},
    {"bbox": "a,b,c,d"},
    {"bbox": "1,2,3"},
    {"bbox": "0,95,10,99"},
    {"bbox": "0,0,1,1", "intersects": '{"type": "Point", "coordinates": [0, 0]}'},
    {"intersects": '{"type": "Feature"}'},
    {"intersects": '{"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}'},
    {"datetime": "yesterday"},
    {"datetime": "2020-02-30T00:00:00Z"},
    {"datetime": "a/b/c"},
    {"limit": "0"},
    {"limit": "ten"},
    {"sortby": "-nosuch"},
    {"sortby": "geometry"},
    {"query": "{not json"},
    {"query": json.dumps({"mass_g": {"gt": "heavy"}})},
    {"token": "next:'; DROP TABLE items; --"},
]


@pytest.mark.parametrize("params", HOSTILE_GET, ids=[str(i) for i in range(len(HOSTILE_GET))])
def test_hostile_get_is_a_clear_400(
    client: httpx.Client, database_url: str, contract: str, params: dict[str, str]
) -> None:
    before = snapshot(database_url)
    response = client.get("/search", params=params)
    assert response.status_code == 400, response.text
    message = response.json()["description"]
    assert message and "\n" not in message and len(message) < 400
    assert "SELECT" not in message.upper() or "DROP" in str(params)
    assert "Traceback" not in message
    assert snapshot(database_url) == before


HOSTILE_POST: list[Any] = [
    {"filter": {"op": "=", "args": [{"property": "mission; DROP TABLE items"}, "x"]}},
    {"filter": {"op": "frobnicate", "args": [1]}},
    {"filter": {"op": "in", "args": [{"property": "mission"}, list(range(100_001))]}},
    {"filter": {"op": "in", "args": [{"property": "mission"}, ["a", 1]]}},
    {"filter": {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [1, 2, 3]}]}},
    {"bbox": [0, 0, 1]},
    {"bbox": [0, 0, 1, "1"]},
    {"bbox": [0, 0, 1, 1], "intersects": {"type": "Point", "coordinates": [0, 0]}},
    {"intersects": {"type": "Point", "coordinates": ["x", 0]}},
    {"collections": {"samples": True}},  # one id as a string is accepted, as clients send it
    {"ids": [1, 2]},
    {"fields": None},
    {"fields": {"include": ["a..b"]}},
    {"sortby": [{"field": "colour"}]},
    {"token": "next:zz:zz"},
    {"limit": -5},
    {"limit": True},
    {"sortby": [{"field": "id", "direction": "sideways"}]},
    {"fields": ["id"]},
    {"datetime": 20200101},
    {"query": {"mass_g": "heavy"}},
    [1, 2, 3],
    "just a string",
]


@pytest.mark.parametrize("body", HOSTILE_POST, ids=[str(i) for i in range(len(HOSTILE_POST))])
def test_hostile_post_is_a_clear_400(
    client: httpx.Client, database_url: str, contract: str, body: Any
) -> None:
    before = snapshot(database_url)
    response = client.post("/search", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["description"]
    assert message and "\n" not in message and len(message) < 400
    assert snapshot(database_url) == before


def test_malformed_bodies_and_nesting(client: httpx.Client, contract: str) -> None:
    headers = {"content-type": "application/json"}
    for raw in [b"{", b"[" * 100_000, b'{"filter": ' + b"[" * 50_000 + b"}"]:
        response = client.post("/search", content=raw, headers=headers)
        assert response.status_code == 400, response.text
    deep: Any = {"op": "=", "args": [{"property": "mission"}, "x"]}
    for _ in range(40):
        deep = {"op": "not", "args": [deep]}
    response = client.post("/search", json={"filter": deep})
    assert response.status_code == 400
    assert "nests too deeply" in response.json()["description"]
    assert client.get("/search", params={"limit": "1"}).status_code == 200


# --- loading releases ------------------------------------------------------------------------


def test_loading_the_same_release_twice_changes_nothing(
    client: httpx.Client, database_url: str
) -> None:
    collections, items = lunar_release()
    version = next_version()
    first = load_release(database_url, version, collections, items)
    assert first.loaded
    before = snapshot(database_url)
    response_before = client.post("/search", json={"limit": 100}).json()["features"]

    again = load_release(database_url, version, collections, items)
    assert (again.loaded, again.served) == (False, version)
    assert snapshot(database_url) == before
    assert client.post("/search", json={"limit": 100}).json()["features"] == response_before

    # the same content under a newer version name: no item row is rewritten either
    renamed = load_release(database_url, next_version(), collections, items)
    assert renamed.loaded
    after = snapshot(database_url)
    assert [row for row in after if row[0] == "item"] == [row for row in before if row[0] == "item"]
    assert install_schema(database_url) == "0.10.0"  # re-running the install changes nothing
    assert snapshot(database_url) == after


def index_state(database_url: str) -> list[tuple[Any, ...]]:
    """The global queryables (row ids) and every index of the item partitions (oids)."""
    with psycopg.connect(database_url) as conn:
        queryables = conn.execute(
            "SELECT 'queryable', id::text, name, coalesce(property_index_type, '')"
            " FROM pgstac.queryables WHERE collection_ids IS NULL ORDER BY id"
        ).fetchall()
        indexes = conn.execute(
            "SELECT 'index', i.indexrelid::oid::text, c.relname, pg_get_indexdef(i.indexrelid)"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_class t ON t.oid = i.indrelid"
            " WHERE t.relname LIKE '\\_items\\_%' ORDER BY 2"
        ).fetchall()
    return [*queryables, *indexes]


def test_a_load_indexes_the_filtered_properties_and_refreshes_statistics(
    database_url: str, contract: str
) -> None:
    _, items = lunar_release()
    expected = indexed_properties(items, property_kinds(items))
    assert {"mission", "gsd", "mass_g"} <= expected
    with psycopg.connect(database_url) as conn:
        indexed = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM pgstac.queryables"
                " WHERE collection_ids IS NULL AND property_index_type = 'BTREE'"
            )
        }
        partitions = {
            row[0]
            for row in conn.execute(
                "SELECT relid::oid FROM pg_partition_tree('pgstac.items') WHERE isleaf"
            )
        }
        definitions = [
            row[0]
            for row in conn.execute(
                "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = ANY(%s)",
                (list(partitions),),
            )
        ]
        with_statistics = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT starelid::oid FROM pg_statistic WHERE starelid = ANY(%s)",
                (list(partitions),),
            )
        }
    assert indexed == expected
    # every partition has a btree on each indexed property, as pgstac makes it from the row
    for name in expected:
        on = [d for d in definitions if f"'{name}'::text" in d]
        assert len(on) == len(partitions), (name, definitions)
    # the planner's statistics are there as soon as the load commits (a few rows each: far
    # below autovacuum's threshold, so only the load's ANALYZE can have made them)
    assert with_statistics == partitions


def test_reloading_keeps_the_queryables_and_their_indexes(database_url: str, contract: str) -> None:
    before = index_state(database_url)
    collections, items = lunar_release()
    assert load_release(database_url, next_version(), collections, items).loaded
    assert index_state(database_url) == before  # no row rewritten, no index rebuilt


def test_fields_keep_id_and_collection(client: httpx.Client, contract: str) -> None:
    """As the embedded search (and pgstac's own field filter) keep them."""
    body = {"fields": {"include": ["properties.gsd"], "exclude": ["properties"]}}
    found = client.post("/search", json={**body, "collections": ["orbital"]})
    assert found.status_code == 200, found.text
    for feature in found.json()["features"]:
        assert {"id", "collection", "type"} <= set(feature), feature
        assert set(feature["properties"]) == {"gsd"}
    got = client.get("/search", params={"fields": "properties.gsd", "collections": "orbital"})
    assert got.status_code == 200, got.text
    assert all({"id", "collection"} <= set(f) for f in got.json()["features"])


def test_items_come_back_whole(client: httpx.Client, contract: str) -> None:
    """Items are hydrated by the API (not by pgstac): every field comes back as loaded."""
    _, items = lunar_release()
    loaded = {feature["id"]: feature for feature in items}
    found = client.post("/search", json={"limit": 100}).json()["features"]
    assert sorted(feature["id"] for feature in found) == sorted(loaded)
    for feature in found:
        source = loaded[feature["id"]]
        for key in ("type", "stac_version", "stac_extensions", "collection", "bbox", "assets"):
            assert feature[key] == source[key], (feature["id"], key)
        assert feature["geometry"]["type"] == source["geometry"]["type"]
        assert feature["properties"] == {"datetime": None, **source["properties"]}


def test_an_older_release_never_replaces_a_newer_one(database_url: str, contract: str) -> None:
    collections, items = lunar_release()
    older = load_release(database_url, "19990101T000000Z-old", collections, items[:1])
    assert not older.loaded
    assert older.served == contract
    served = served_release(database_url)
    assert served is not None and served.version == contract and served.items == len(items)


def _release_v2() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """v2: one collection dropped, one added, items removed, changed and added."""
    collections, items = lunar_release()
    kept = [i for i in items if i["collection"] == "orbital" and i["id"] != "far-east"]
    for feature in kept:
        if feature["id"] == "eq-mare":
            feature["properties"]["gsd"] = 0.25
    cubes = collection("cubes", "Cubes")
    tile = item(
        "tile-n00e010",
        "cubes",
        polygon(10, 0, 20, 10),
        [10, 0, 20, 10],
        {"datetime": "2024-01-01T00:00:00Z", "resolution_m": 118.0},
    )
    return [collections[0], cubes], [*kept, tile]


def test_a_new_release_replaces_the_old_one_whole(
    client: httpx.Client, database_url: str, contract: str
) -> None:
    collections, items = _release_v2()
    result = load_release(database_url, next_version(), collections, items)
    assert result.loaded and result.previous == contract
    listed = sorted(c["id"] for c in client.get("/collections").json()["collections"])
    assert listed == ["cubes", "orbital"]
    everything = ids(client.post("/search", json={"limit": 100}))
    assert sorted(everything) == sorted(i["id"] for i in items)
    assert client.get("/collections/samples/items").status_code == 404
    mare = client.get("/collections/orbital/items/eq-mare").json()
    assert mare["properties"]["gsd"] == 0.25
    # the new release's properties are searchable at once; the old ones are gone
    assert ids(client.get("/search", params={"filter": "resolution_m > 100"})) == ["tile-n00e010"]
    gone = client.get("/search", params={"filter": "mass_g > 1"})
    assert gone.status_code == 400 and "unknown property 'mass_g'" in gone.text


def test_a_failed_load_leaves_the_old_release_served(
    client: httpx.Client, database_url: str, contract: str
) -> None:
    before = snapshot(database_url)
    collections, items = _release_v2()
    broken = orbital(
        "backwards",
        polygon(0, 0, 1, 1),
        [0, 0, 1, 1],
        start_datetime="2020-01-01T00:00:00Z",
        end_datetime="2010-01-01T00:00:00Z",
        datetime=None,
    )
    with pytest.raises(Exception, match="start_datetime"):
        load_release(database_url, next_version(), collections, [*items, broken])
    assert snapshot(database_url) == before
    served = served_release(database_url)
    assert served is not None and served.version == contract
    assert len(ids(client.post("/search", json={"limit": 100}))) == len(lunar_release()[1])


def test_readers_see_one_whole_release_during_a_switch(
    client: httpx.Client, database_url: str
) -> None:
    """A reader looping on /search while releases flip sees exactly one release each time."""

    def release_of(tag: str, count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        features = [
            orbital(
                f"{tag}-{n:04d}",
                polygon(-180 + n % 350, -60, -179 + n % 350, -59),
                [-180 + n % 350, -60, -179 + n % 350, -59],
                datetime="2015-01-01T00:00:00Z",
                mission=tag,
            )
            for n in range(count)
        ]
        return [collection("orbital", "Orbital products")], features

    releases = [release_of("a", 400), release_of("b", 600)]
    expected = [frozenset(i["id"] for i in release[1]) for release in releases]
    load_release(database_url, next_version(), *releases[0])
    seen: list[frozenset[str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as reader:
            while not stop.is_set():
                response = reader.post(
                    "/search", json={"limit": 1000, "fields": {"include": ["id"]}}
                )
                if response.status_code != 200:
                    errors.append(response.text)
                    continue
                seen.append(frozenset(f["id"] for f in response.json()["features"]))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for flip in range(4):
            load_release(database_url, next_version(), *releases[(flip + 1) % 2])
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors
    assert seen
    assert all(snapshot_ids in expected for snapshot_ids in seen)


def test_release_documents_from_release_files() -> None:
    col = collection("orbital", "Orbital products")
    col["links"] = [{"rel": "root", "href": "../catalog.json"}]
    feature = orbital("eq-mare", polygon(10, -5, 20, 5), [10, -5, 20, 5], datetime=None)
    feature["assets"]["data"]["href"] = "../../../../raw/lroc/eq-mare/eq-mare.tif"
    feature["links"] = [
        {"rel": "collection", "href": "../collection.json"},
        {"rel": "derived_from", "href": "https://pds.example/label.lbl"},
    ]
    files = {
        "catalog.json": b"{}",
        "orbital/collection.json": json.dumps(col).encode(),
        "orbital/eq-mare/eq-mare.json": json.dumps(feature).encode(),
        "items.parquet": b"PAR1",
    }
    collections, items = release_documents(
        files, base_href="https://data.example/lunarchive/releases/v1/"
    )
    assert [c["id"] for c in collections] == ["orbital"]
    assert collections[0]["links"] == []
    assert [i["id"] for i in items] == ["eq-mare"]
    assert items[0]["assets"]["data"]["href"] == (
        "https://data.example/lunarchive/raw/lroc/eq-mare/eq-mare.tif"
    )
    assert [link["rel"] for link in items[0]["links"]] == ["derived_from"]


def test_indexed_properties_are_the_ones_a_catalog_is_filtered_on() -> None:
    items = [
        {
            "properties": {
                "title": f"image {n}",  # one per item: never indexed
                "mission": "lro" if n % 2 else "kaguya",
                "gsd": n / 2,
                "proj:code": "IAU_2015:30100",  # the same everywhere: an index would not help
                "orbit": 7,
                "ssys:targets": ["Moon"],
            }
        }
        for n in range(MAX_INDEXED_VALUES + 5)
    ]
    assert indexed_properties(items, property_kinds(items)) == {"mission", "gsd"}


def test_property_kinds_match_what_the_embedded_search_sees() -> None:
    _, items = lunar_release()
    kinds = property_kinds(items)
    assert kinds["mass_g"] == "number"
    assert kinds["mission"] == "string"
    assert kinds["datetime"] == "timestamp"
    assert kinds["ssys:targets"] == "other"
    assert kinds["geometry"] == "geometry"


def test_installs_into_two_databases_of_one_cluster_at_once_both_succeed() -> None:
    """pgstac's roles are cluster-wide: two migrations at the same moment race on them."""
    from tests.conftest import new_database

    with new_database() as first, new_database() as second:
        start = threading.Barrier(2)
        versions: dict[str, str] = {}
        errors: list[BaseException] = []

        def install(url: str) -> None:
            start.wait()
            try:
                versions[url] = install_schema(url)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=install, args=(url,)) for url in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert versions == {first: "0.10.0", second: "0.10.0"}
        for url in (first, second):
            assert served_release(url) is None  # installed, nothing loaded yet
