"""Embedded search over one release's stac-geoparquet file, with DuckDB and CQL2.

Why this shape: the embedded deployment has no server (DESIGN.md, "Search engine"), and a
release's items are one immutable stac-geoparquet file, so each search opens a private in-memory
DuckDB connection that may read that one file and nothing else, runs one parameterised query
built by :mod:`lunarchive.catalog._cql2sql`, and hands the rows back to stac-geoparquet to turn
into STAC item dicts. A bad request raises :class:`~lunarchive.schemas.errors.InvalidFilter`
with one readable line (RELIABILITY.md R17), which the API turns into a 400.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import duckdb.func
import duckdb.sqltypes
from stac_geoparquet.arrow import stac_table_to_items

from lunarchive.catalog._cql2sql import (
    Box,
    Columns,
    ParsedFilter,
    Sql,
    TimeRange,
    Translator,
    check_bbox,
    join,
    make_intersects_udf,
    param,
    parse_datetime_param,
    parse_filter,
    quote,
    quote_identifier,
    sql,
    validate_filter,
)
from lunarchive.catalog.layout import release_prefix
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.store import Store
from lunarchive.schemas.errors import ConfigurationError, InvalidFilter

__all__ = ["SearchQuery", "search_items", "search_release"]


@dataclass(frozen=True)
class SearchQuery:
    """One search, in the terms of the STAC API item search.

    ``bbox`` is lunar lon/lat degrees (-180..180); ``minx > maxx`` means it crosses +-180.
    ``datetime`` is an RFC 3339 instant or an interval ``a/b`` (``..`` or '' for an open end).
    ``filter_lang`` None means: a dict is cql2-json, a string is cql2-text.
    """

    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    collections: tuple[str, ...] = ()
    filter: str | dict[str, Any] | None = None
    filter_lang: Literal["cql2-text", "cql2-json"] | None = None
    limit: int | None = None


@dataclass(frozen=True)
class _Checked:
    """A query whose parts have all been checked before the file is opened."""

    box: Box | None
    span: TimeRange | None
    collections: tuple[str, ...]
    parsed: ParsedFilter | None
    limit: int | None


def search_items(parquet_path: Path, query: SearchQuery) -> list[dict[str, Any]]:
    """Items of ``parquet_path`` matching ``query``, ordered by (collection, id).

    Items come back as stac-geoparquet restores them (properties that some items lack are
    present as ``None``; datetimes as ``...Z`` strings). Raises InvalidFilter for a bad query,
    FileNotFoundError when the file is missing.
    """
    checked = _check_query(query)
    path = Path(parquet_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no stac-geoparquet file at {path}")
    with _connect(path) as con:
        columns = Columns.from_schema(_describe(con, path))
        translator = Translator(columns)
        statement = _select(path, columns, _where(translator, checked), checked.limit)
        if checked.parsed is not None:
            validate_filter(checked.parsed)
        _register_areas(con, translator)
        table = con.sql(statement.text, params=list(statement.params)).to_arrow_table()
    return list(stac_table_to_items(table)) if table.num_rows else []


def search_release(store: Store, query: SearchQuery) -> tuple[str, list[dict[str, Any]]]:
    """The current release's version and its items matching ``query``.

    The query is checked before anything is read; the release's stac-geoparquet is copied to
    a temporary file (it is immutable, one object per release) and searched there.
    """
    _check_query(query)
    current = read_current(store)
    if current is None:
        raise ConfigurationError(
            f"{store.url}: no release is published yet (run `lunarchive pipeline` first)"
        )
    version = current[0].version
    with tempfile.TemporaryDirectory(prefix="lunarchive-search-") as tmp:
        local = store.download(
            release_prefix(version) + "items.parquet", Path(tmp) / "items.parquet"
        )
        return version, search_items(local, query)


def _check_query(query: SearchQuery) -> _Checked:
    """Everything that needs no file: fail fast on a malformed request."""
    collections = query.collections
    if not isinstance(collections, tuple | list) or not all(
        isinstance(c, str) for c in collections
    ):
        raise InvalidFilter(
            f"collections must be a list of collection ids, got {quote(collections)}"
        )
    limit = query.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidFilter(f"limit must be a whole number of items, 0 or more, got {quote(limit)}")
    return _Checked(
        box=check_bbox(query.bbox) if query.bbox is not None else None,
        span=parse_datetime_param(query.datetime) if query.datetime is not None else None,
        collections=tuple(collections),
        parsed=parse_filter(query.filter, query.filter_lang) if query.filter is not None else None,
        limit=limit,
    )


@contextmanager
def _connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A private DuckDB that can read ``path`` only: no other file, no extension download.

    The SQL is built from parameters and schema names only; this lock-down is the second wall.
    UTC matters: DuckDB hands TIMESTAMPTZ to Arrow in the session zone, and stac-geoparquet
    writes them back with a ``Z`` suffix whatever the zone.
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute("SET TimeZone = ?", ["UTC"])
        con.execute("SET allowed_paths = ?", [[str(path)]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def _register_areas(con: duckdb.DuckDBPyConnection, translator: Translator) -> None:
    """One Arrow UDF per query area: DuckDB has no spatial functions here, shapely does the test."""
    blob, boolean = duckdb.sqltypes.BLOB, duckdb.sqltypes.BOOLEAN
    for index, area in enumerate(translator.areas):
        udf = make_intersects_udf(area)
        con.create_function(
            translator.udf_name(index), udf, [blob], boolean, type=duckdb.func.ARROW
        )


def _describe(con: duckdb.DuckDBPyConnection, path: Path) -> list[tuple[str, str]]:
    """Column names and DuckDB types: the only identifiers a filter may reach."""
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


def _where(translator: Translator, checked: _Checked) -> Sql | None:
    """AND of the bbox, datetime, collections and filter conditions (None: no condition)."""
    parts: list[Sql] = []
    if checked.box is not None:
        parts.append(translator.bbox_condition(checked.box))
    if checked.span is not None:
        parts.append(translator.time_condition(checked.span))
    if checked.collections:
        parts.append(_collections_condition(translator.columns, checked.collections))
    if checked.parsed is not None:
        parts.append(translator.condition(checked.parsed.tree))
    return join(" AND ", parts) if parts else None


def _collections_condition(columns: Columns, collections: Sequence[str]) -> Sql:
    """Items of any of ``collections``; a file without a collection column matches none."""
    if not columns.has("collection"):
        return sql("CAST({} AS BOOLEAN)", param(False))
    column = Sql(quote_identifier("collection"))
    return sql("list_contains(CAST({} AS VARCHAR[]), {})", param(list(collections)), column)


def _select(path: Path, columns: Columns, where: Sql | None, limit: int | None) -> Sql:
    """The whole statement: every column (stac-geoparquet needs them all to rebuild items)."""
    order = ", ".join(quote_identifier(name) for name in ("collection", "id") if columns.has(name))
    text = "SELECT * FROM read_parquet({})"
    parts = [param(str(path))]
    if where is not None:
        text += " WHERE {}"
        parts.append(where)
    if order:
        text += f" ORDER BY {order}"
    if limit is not None:
        text += " LIMIT {}"
        parts.append(param(limit))
    return sql(text, *parts)
