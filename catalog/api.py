"""The STAC API: stac-fastapi-pgstac over the release :mod:`lunarchive.catalog.pgstac` loaded,
behind a layer that makes every search request lunar-correct and safe before pgstac sees it.

Why a rewriting layer (issue 7, "known defects of the anchor"): stac-fastapi-pgstac 7.2.0 on
pgstac 0.10.0 reads a bbox whose west edge is east of its east edge as the band between the
two longitudes, and a 6-number bbox makes pgstac fail mid-query. The layer, one ASGI
middleware on ``/search`` (GET and POST) and ``/collections/{id}/items`` (GET), checks and
rewrites the request with the same code the embedded search uses
(:mod:`lunarchive.catalog._cql2sql`), so both engines read a query the same way:

* ``bbox``: 4 or 6 numbers; a 6-number box is searched by its 2D footprint; longitudes are
  -180..180 or 0..360 (normalised to -180..180); a box crossing +-180 (west > east) becomes
  an ``intersects`` MultiPolygon of its two halves (on ``/collections/{id}/items``, which has
  no ``intersects``, an ``S_INTERSECTS`` ANDed into the filter);
* ``intersects`` and geometry / BBOX literals inside a filter: the same normalisation;
* ``filter`` (cql2-text or cql2-json) and ``query``: parsed, size- and depth-bounded, checked
  against the properties of the served release and their kinds (an unknown property, a string
  compared with a number, an unsupported operator is refused), then sent as cql2-json;
* ``sortby`` and ``fields``: read by :mod:`lunarchive.catalog._search_params`, as the embedded
  search reads them (the same order, the same fields), and passed on in a form pgstac applies
  the same way (property names bare; the Fields extension's default set made explicit);
* ``datetime``, ``limit``, ``collections``, ``ids`` (one id as a string is a list of one),
  and the paging ``token`` (pgstac's ``next:`` / ``prev:`` form only): checked.

Responses are fixed in two ways pgstac gets wrong: an item dated by a range gets back its
``properties.datetime: null`` (pgstac strips nulls; STAC requires the key), and item
collections are labelled ``application/geo+json`` even when the fields extension is used.

Anything refused is a 400 with one readable line ``{"code": ..., "description": ...}``, never
SQL text, never a 500 (RELIABILITY.md R17). The database connections are read-only,
``repeatable read`` (one snapshot per search, so a release switch is never seen half-way) and
``pgstac.readonly`` (a search writes nothing), with a statement timeout.

Speed (issue 7, measured by ``tests/benchmarks/catalog_api.py`` against plain
stac-fastapi-pgstac on the same data): items are hydrated here, in Python
(``use_api_hydrate``), not by pgstac's PL/pgSQL, which took most of a 100-item page's time;
JIT compilation is off (PostgreSQL compiled the partition scans of each search anew, for more
time than they ran); the served release's properties are read once per release, not per request.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import asyncpg  # type: ignore[import-untyped]
from buildpg import asyncpg as buildpg_asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from stac_fastapi.extensions import (  # type: ignore[import-untyped]
    ItemCollectionFilterExtension,
    SearchFilterExtension,
)
from stac_fastapi.extensions.filter.filter import (  # type: ignore[import-untyped]
    FilterConformanceClasses,
)
from stac_fastapi.pgstac.app import instantiate_api  # type: ignore[import-untyped]
from stac_fastapi.pgstac.config import Settings  # type: ignore[import-untyped]
from stac_fastapi.pgstac.core import CoreCrudClient  # type: ignore[import-untyped]
from stac_fastapi.pgstac.db import con_init, get_connection  # type: ignore[import-untyped]
from stac_fastapi.pgstac.extensions.filter import FiltersClient  # type: ignore[import-untyped]
from stac_fastapi.pgstac.models.extensions import Extensions  # type: ignore[import-untyped]

from lunarchive.catalog._cql2sql import (
    Area,
    Column,
    Columns,
    Kind,
    Translator,
    check_bbox,
    parse_datetime_param,
    parse_filter,
    quote,
    validate_filter,
)
from lunarchive.catalog._search_params import (
    FieldSet,
    fields_to_get,
    parse_fields,
    parse_sortby,
)
from lunarchive.schemas.errors import InvalidFilter

__all__ = ["CONFORMANCE_CLASSES", "MAX_BODY_BYTES", "create_app"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 8_000_000
"""Largest POST /search body read (a cql2-json filter may hold up to 4 MB of text)."""
_MAX_LIMIT: Final = 10_000

_FILTER_CLASSES: Final = [
    FilterConformanceClasses.FILTER,
    FilterConformanceClasses.SEARCH,
    FilterConformanceClasses.ITEMS,
    FilterConformanceClasses.BASIC_CQL2,
    FilterConformanceClasses.CQL2_JSON,
    FilterConformanceClasses.CQL2_TEXT,
    FilterConformanceClasses.ADVANCED_COMPARISON_OPERATORS,  # LIKE, BETWEEN, IN
    FilterConformanceClasses.BASIC_SPATIAL_FUNCTIONS,  # S_INTERSECTS
]
CONFORMANCE_CLASSES: Final = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    *(str(value) for value in _FILTER_CLASSES),
    "https://api.stacspec.org/v1.1.0/item-search#sort",
    "https://api.stacspec.org/v1.1.0/ogcapi-features#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#fields",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#query",
)
"""Every class the app advertises on ``/conformance`` (and implements)."""

_DUCK_TYPES: Final[Mapping[str, str]] = {
    "string": "VARCHAR",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "geometry": "BLOB",
    "null": '"NULL"',
    "other": "STRUCT",
}
_BASE_KINDS: Final[Mapping[str, Kind]] = {
    "id": "string",
    "collection": "string",
    "geometry": "geometry",
    "datetime": "timestamp",
}
_ITEMS_PATH: Final = re.compile(r"^/collections/([^/]+)/items/?$")
_PAGE_TOKEN: Final = re.compile(r"^(next|prev):([0-9a-f]{2})+:([0-9a-f]{2})+$", re.IGNORECASE)
_QUERY_OPS: Final[Mapping[str, str]] = {
    "eq": "=",
    "neq": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
}
_QUERY_LIKE: Final[Mapping[str, str]] = {
    "startsWith": "{}%",
    "endsWith": "%{}",
    "contains": "%{}%",
}


def create_app(
    database_url: str,
    *,
    title: str = "lunarchive STAC API",
    description: str = "Lunar orbital products, cubes and returned samples",
    root_path: str = "",
    pool_size: int = 10,
    statement_timeout_ms: int = 30_000,
) -> FastAPI:
    """The STAC API app serving the release loaded into ``database_url`` (read-only).

    Transactions are disabled; the conformance classes are :data:`CONFORMANCE_CLASSES`. The
    database pool opens with the app's lifespan (``with TestClient(app)``, or uvicorn).
    """
    settings = Settings(
        stac_fastapi_title=title,
        stac_fastapi_description=description,
        stac_fastapi_landing_id="lunarchive",
        stac_fastapi_version=_version(),
        enabled_extensions=["query", "sort", "fields", "filter", "pagination"],
        enable_transactions_extensions=False,
        use_api_hydrate=True,
        root_path=root_path,
        cors_methods=["GET", "POST", "OPTIONS"],
    )
    extensions = Extensions(
        settings=settings,
        search_map={"filter": SearchFilterExtension(client=FiltersClient())},
        item_collection_map={
            "filter": ItemCollectionFilterExtension(client=FiltersClient()),
        },
    )
    extensions.search_map["filter"].conformance_classes = list(_FILTER_CLASSES)
    extensions.item_collection_map["filter"].conformance_classes = [
        FilterConformanceClasses.FILTER,
        FilterConformanceClasses.ITEMS,
    ]

    server_settings = {
        "search_path": "pgstac,public",
        "application_name": "lunarchive-api",
        "default_transaction_isolation": "repeatable read",
        "default_transaction_read_only": "on",
        "statement_timeout": str(statement_timeout_ms),
        "pgstac.readonly": "true",
        "pgstac.context": "off",
        "jit": "off",
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.readpool = await buildpg_asyncpg.create_pool(
            database_url,
            min_size=1,
            max_size=pool_size,
            init=con_init,
            server_settings=server_settings,
        )
        app.state.get_connection = get_connection
        try:
            yield
        finally:
            await app.state.readpool.close()

    api = instantiate_api(
        client=LunarCoreClient, extensions=extensions, lifespan=lifespan, settings=settings
    )
    app: FastAPI = api.app
    app.add_exception_handler(asyncpg.PostgresError, _database_refused)
    app.add_middleware(SearchRewriteMiddleware)
    return app


class LunarCoreClient(CoreCrudClient):  # type: ignore[misc]
    """pgstac's client, with items given back their ``datetime: null``.

    pgstac strips null values when it rebuilds an item, so an item dated by
    ``start_datetime`` / ``end_datetime`` (a mosaic, a polar cap) would come back without
    ``properties.datetime``, which STAC requires to be present (null when a range is given).
    """

    async def _search_base(self, search_request: Any, request: Request) -> Any:
        collection = await super()._search_base(search_request, request=request)
        fields = getattr(search_request, "fields", None)
        include = set(fields.include or ()) if fields is not None else set()
        exclude = set(fields.exclude or ()) if fields is not None else set()
        wanted = "properties.datetime"
        if exclude & {wanted, "properties"} or (include and not include & {wanted, "properties"}):
            return collection
        for feature in collection.get("features", []):
            properties = feature.get("properties")
            if isinstance(properties, dict):
                properties.setdefault("datetime", None)
        return collection


def _version() -> str:
    try:
        return importlib.metadata.version("lunarchive")
    except importlib.metadata.PackageNotFoundError:
        return "0"


async def _database_refused(request: Request, exc: Exception) -> JSONResponse:
    """A query the database could not run: its fault or the request's, never its SQL text."""
    state = str(getattr(exc, "sqlstate", "") or "")
    if state.startswith(("22", "42", "P0", "2F", "39")):
        log.info("search refused by the database (SQLSTATE %s): %s", state, exc)
        return _error(400, f"the search could not be run with these values (SQLSTATE {state})")
    if state == "57014":
        return _error(503, "the search took too long and was stopped; narrow it down")
    log.error("database error during %s %s: %s", request.method, request.url.path, exc)
    return _error(500, f"the database failed (SQLSTATE {state or 'unknown'})")


def _error(status: int, message: str) -> JSONResponse:
    code = "InvalidParameterValue" if status == 400 else "ServerError"
    return JSONResponse({"code": code, "description": message}, status_code=status)


# --- the rewriting middleware ------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SearchRewriteMiddleware:
    """Checks and rewrites search requests (see the module docstring); passes the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._columns: tuple[str, Columns] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        method = str(scope.get("method", "GET"))
        items = _ITEMS_PATH.match(path)
        is_search = path.rstrip("/") == "/search"
        if not (is_search or items) or method not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        try:
            columns = await self._served_columns(scope)
            if method == "GET":
                pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
                rewritten = _rewrite_get(pairs, columns, is_search)
                scope = dict(scope, query_string=urlencode(rewritten).encode("latin-1"))
            elif is_search:
                body = await _read_body(receive)
                new_body = json.dumps(_rewrite_post(_load_body(body), columns)).encode()
                scope = dict(scope, headers=_with_length(scope.get("headers", []), new_body))
                receive = _replay(new_body)
        except InvalidFilter as error:
            response = _error(400, str(error))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, _as_geojson(send))

    async def _served_columns(self, scope: Scope) -> Columns:
        """The properties of the served release (cached until another version is loaded)."""
        pool = scope["app"].state.readpool
        async with pool.acquire() as conn:
            # the version alone on every request (one short row); the properties on a change
            served = await conn.fetchval("SELECT version FROM lunarchive.release_state")
            if self._columns is not None and self._columns[0] == str(served or ""):
                return self._columns[1]
            row = await conn.fetchrow("SELECT version, properties FROM lunarchive.release_state")
        version = str(row["version"]) if row is not None else ""
        raw = row["properties"] if row is not None else {}
        kinds = dict(_BASE_KINDS) | dict(json.loads(raw) if isinstance(raw, str) else raw)
        columns = Columns(
            {
                name: Column(name, _DUCK_TYPES.get(kind, "STRUCT"), kind)
                for name, kind in kinds.items()
            }
        )
        self._columns = (version, columns)
        return columns


def _as_geojson(send: Send) -> Send:
    """Item collections are GeoJSON: stac-fastapi labels them ``application/json`` when the
    fields extension is used (it skips its own model then); the STAC API says geo+json."""

    async def send_geojson(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 200:
            headers = list(message.get("headers", []))
            message = dict(
                message,
                headers=[
                    (k, b"application/geo+json")
                    if k.lower() == b"content-type" and v.split(b";")[0] == b"application/json"
                    else (k, v)
                    for k, v in headers
                ],
            )
        await send(message)

    return send_geojson


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidFilter("the client went away before sending the whole request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidFilter(f"request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_length(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    return [
        *kept,
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]


def _load_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidFilter("the search body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidFilter("the search body must be a JSON object")
    return data


# --- rewriting, in the POST form ---------------------------------------------------------


def _rewrite_post(body: dict[str, Any], columns: Columns) -> dict[str, Any]:
    """POST /search: the same search, checked and made lunar-correct."""
    out = dict(body)
    out.pop("filter_lang", None)
    lang = body.get("filter-lang", body.get("filter_lang"))
    for name in ("collections", "ids"):
        if body.get(name) is not None:
            out[name] = _string_list(body[name], name)
    if "limit" in body and body["limit"] is not None:
        out["limit"] = _check_limit(body["limit"])
    if body.get("token") is not None:
        _check_token(body["token"])
    if body.get("datetime") is not None:
        parse_datetime_param(body["datetime"])
    if body.get("sortby") is not None:
        out["sortby"] = [
            {"field": key.field, "direction": key.direction}
            for key in parse_sortby(body["sortby"], columns)
        ]
    if "fields" in body:
        fields = parse_fields(body["fields"]) if body["fields"] is not None else None
        if fields is None:
            raise InvalidFilter("fields must be an object with include / exclude lists, not null")
        fields = _with_identity(fields)
        out["fields"] = {"include": list(fields.include), "exclude": list(fields.exclude)}
    spatial = _spatial(body.get("bbox"), body.get("intersects"))
    out.pop("bbox", None)
    out.pop("intersects", None)
    if isinstance(spatial, list):
        out["bbox"] = spatial
    elif spatial is not None:
        out["intersects"] = spatial
    tree = _combined_filter(body.get("filter"), lang, body.get("query"), None, columns)
    out.pop("query", None)
    out.pop("filter", None)
    out.pop("filter-lang", None)
    if tree is not None:
        out["filter"] = tree
        out["filter-lang"] = "cql2-json"
    return out


def _rewrite_get(
    pairs: list[tuple[str, str]], columns: Columns, is_search: bool
) -> list[tuple[str, str]]:
    """GET /search or /collections/{id}/items: the same rules, on query parameters."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidFilter(f"parameter {quote(name)} is given more than once")
        params[name] = value
    out = dict(params)
    if "limit" in params:
        out["limit"] = str(_check_limit(_as_int(params["limit"], "limit")))
    if "token" in params:
        _check_token(params["token"])
    if "datetime" in params:
        parse_datetime_param(params["datetime"])
    if "sortby" in params:
        out["sortby"] = ",".join(
            ("-" if key.direction == "desc" else "+") + key.field
            for key in parse_sortby(params["sortby"], columns)
        )
    if "fields" in params:
        fields = parse_fields(params["fields"])
        assert fields is not None  # a string always gives a field set
        out["fields"] = fields_to_get(_with_identity(fields))
    bbox = _get_numbers(params["bbox"]) if "bbox" in params else None
    intersects = _get_json(params["intersects"], "intersects") if "intersects" in params else None
    if intersects is not None and not is_search:
        raise InvalidFilter("intersects is a parameter of /search only")
    spatial = _spatial(bbox, intersects)
    out.pop("bbox", None)
    out.pop("intersects", None)
    extra: dict[str, Any] | None = None
    if isinstance(spatial, list):
        out["bbox"] = ",".join(repr(value) for value in spatial)
    elif spatial is not None and is_search:
        out["intersects"] = json.dumps(spatial)
    elif spatial is not None:
        extra = {"op": "s_intersects", "args": [{"property": "geometry"}, spatial]}
    lang = params.get("filter-lang", params.get("filter_lang"))
    filter_value: object = params.get("filter")
    if filter_value is not None and lang == "cql2-json":
        filter_value = _get_json(str(filter_value), "filter")
    query = _get_json(params["query"], "query") if "query" in params else None
    tree = _combined_filter(filter_value, lang, query, extra, columns)
    for name in ("filter", "filter-lang", "filter_lang", "query"):
        out.pop(name, None)
    if tree is not None:
        out["filter"] = json.dumps(tree)
        out["filter-lang"] = "cql2-json"
    return list(out.items())


def _with_identity(fields: FieldSet) -> FieldSet:
    """The field set with ``id`` and ``collection`` kept, as the embedded search keeps them:
    stac-fastapi filters the items it hydrates itself and keeps only the paths listed."""
    if not fields.include:
        return fields
    missing = tuple(name for name in ("id", "collection") if name not in fields.include)
    return FieldSet(fields.include + missing, fields.exclude)


def _spatial(bbox: object, intersects: object) -> list[float] | dict[str, Any] | None:
    """A plain 2D bbox (a list), a GeoJSON geometry for ``intersects``, or None."""
    if bbox is not None and intersects is not None:
        raise InvalidFilter("give bbox or intersects, not both")
    if bbox is not None:
        box = check_bbox(bbox)
        if box[0] <= box[2]:
            return list(box)
        return Area.from_box(box).to_geojson()
    if intersects is not None:
        if not isinstance(intersects, dict):
            raise InvalidFilter(f"intersects must be a GeoJSON geometry, got {quote(intersects)}")
        if intersects.get("type") in ("Feature", "FeatureCollection"):
            raise InvalidFilter("intersects must be a GeoJSON geometry, not a Feature")
        return Area.from_geojson(intersects).to_geojson()
    return None


def _combined_filter(
    value: object,
    lang: object,
    query: object,
    extra: dict[str, Any] | None,
    columns: Columns,
) -> dict[str, Any] | None:
    """The filter, the ``query`` object and an extra condition, as one checked cql2-json tree."""
    parts: list[Any] = []
    if value is not None:
        if lang is not None and not isinstance(lang, str):
            raise InvalidFilter(f"unknown filter-lang {quote(lang)}")
        parsed = parse_filter(value, lang)  # type: ignore[arg-type]
        validate_filter(parsed)
        parts.append(parsed.tree)
    if query is not None:
        parts.extend(_query_conditions(query, columns))
    if extra is not None:
        parts.append(extra)
    if not parts:
        return None
    tree = parts[0] if len(parts) == 1 else {"op": "and", "args": parts}
    Translator(columns).condition(tree)  # names, kinds and operators, as the embedded search
    normalised = _normalise_literals(tree)
    assert isinstance(normalised, dict)
    return normalised


def _query_conditions(query: object, columns: Columns) -> list[dict[str, Any]]:
    """The Query extension's ``{"prop": {"op": value}}`` as CQL2 conditions.

    Values may come as strings (a GET query string, or clients such as stac-api-validator
    that send ``{"gsd": {"lt": "7"}}``): for a number or time property a string is read as a
    number or an RFC 3339 time, as the Query extension's users expect.
    """
    if not isinstance(query, dict):
        raise InvalidFilter(f"query must be an object of property conditions, got {quote(query)}")
    conditions: list[dict[str, Any]] = []
    for name, tests in query.items():
        if not isinstance(tests, dict) or not tests:
            raise InvalidFilter(f"query for {quote(name)} must be an object like {{'eq': value}}")
        prop = {"property": name}
        kind = columns.lookup(name).kind
        for op, raw in tests.items():
            value = [_query_value(v, kind) for v in raw] if isinstance(raw, list) else raw
            value = _query_value(value, kind) if op in _QUERY_OPS and op != "in" else value
            if op in _QUERY_LIKE:
                if not isinstance(value, str):
                    raise InvalidFilter(f"query operator {quote(op)} needs a string")
                escaped = re.sub(r"([\\%_])", r"\\\1", value)
                pattern = _QUERY_LIKE[op].format(escaped)
                conditions.append({"op": "like", "args": [prop, pattern]})
            elif op == "in":
                if not isinstance(value, list):
                    raise InvalidFilter("query operator 'in' needs a list")
                conditions.append({"op": "in", "args": [prop, value]})
            elif op in _QUERY_OPS:
                conditions.append({"op": _QUERY_OPS[op], "args": [prop, value]})
            else:
                known = ", ".join([*_QUERY_OPS, *_QUERY_LIKE])
                raise InvalidFilter(f"unknown query operator {quote(op)}; use one of {known}")
    return conditions


def _query_value(value: object, kind: Kind) -> object:
    """A string given for a number or time property, as a number or a CQL2 timestamp."""
    if not isinstance(value, str):
        return value
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return value  # refused by the kind check, with the property named
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "timestamp":
        return {"timestamp": value}
    return value


def _normalise_literals(node: object) -> object:
    """Geometry and BBOX literals of spatial operators, brought to -180..180 and split at the
    seam (pgstac would read a BBOX crossing +-180 as the band between its edges)."""
    if isinstance(node, list):
        return [_normalise_literals(child) for child in node]
    if not isinstance(node, dict):
        return node
    op = node.get("op")
    if isinstance(op, str) and op.lower().startswith("s_") and isinstance(node.get("args"), list):
        args = []
        for arg in node["args"]:
            if isinstance(arg, dict) and "bbox" in arg:
                box = check_bbox(arg["bbox"], "BBOX")
                arg = {"bbox": list(box)} if box[0] <= box[2] else Area.from_box(box).to_geojson()
            elif isinstance(arg, dict) and "type" in arg and "coordinates" in arg:
                arg = Area.from_geojson(arg).to_geojson()
            args.append(arg)
        return {**node, "args": args}
    return {key: _normalise_literals(value) for key, value in node.items()}


def _string_list(value: object, what: str) -> list[str]:
    """A list of ids; one id given as a string is a list of one (clients send both)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidFilter(f"{what} must be a list of strings, got {quote(value)}")
    return value


def _check_token(value: object) -> None:
    """pgstac's own tokens only (``next:`` or ``prev:`` and the hex of a collection and id)."""
    if not isinstance(value, str) or not _PAGE_TOKEN.match(value):
        raise InvalidFilter(f"paging token {quote(value)} is not one this search gave out")


def _check_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidFilter(f"limit must be a whole number of items, 1 or more, got {quote(value)}")
    return min(value, _MAX_LIMIT)


def _as_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidFilter(f"{what} must be a whole number, got {quote(text)}") from None


def _get_numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise InvalidFilter(
            f"bbox must be 4 or 6 comma-separated numbers, got {quote(text)}"
        ) from None


def _get_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidFilter(f"{what} is not valid JSON") from None
