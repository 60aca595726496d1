"""Turn CQL2 (and the ``bbox`` / ``datetime`` search parameters) into parameterised DuckDB SQL.

Why our own translator rather than ``cql2``'s ``to_sql()``: that one inlines literals as SQL
text, and a search filter comes from strangers (RELIABILITY.md R17). Here every literal becomes a
``?`` parameter, every name must be a column of the release's stac-geoparquet file (quoted), and
anything we do not understand is refused with one readable line, never SQL or a traceback.

``cql2`` still parses and validates (text and JSON); we translate its JSON tree. Spatial tests
run in a Python UDF with shapely, because DuckDB's spatial extension cannot be installed offline;
coordinates are lunar planetocentric lon/lat degrees, -180..180, footprints split at +-180
(LUNAR-DATA.md section 4), so planar tests on lon/lat are the right ones.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final, Literal

import cql2
import pyarrow as pa  # type: ignore[import-untyped]
import shapely  # type: ignore[import-untyped]
import shapely.affinity  # type: ignore[import-untyped]
import shapely.geometry  # type: ignore[import-untyped]
from shapely.errors import GEOSException  # type: ignore[import-untyped]

from lunarchive.schemas.errors import InvalidFilter

__all__ = [
    "MAX_FILTER_CHARS",
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_VALUES",
    "Area",
    "Box",
    "Column",
    "Columns",
    "ParsedFilter",
    "Sql",
    "TimeRange",
    "Translator",
    "check_bbox",
    "join",
    "make_intersects_udf",
    "normalise_box",
    "normalise_shape",
    "param",
    "parse_datetime_param",
    "parse_filter",
    "quote",
    "quote_identifier",
    "sql",
    "temporal_sql",
    "validate_filter",
]

# Limits, checked before anything large is built (STYLE.md 7). cql2 0.6's parser overflows the
# C stack (the process dies) somewhere past ~2000 nested parentheses, and its validation time
# grows by ~50 ms per nesting level, so nesting is bounded long before either.
MAX_FILTER_CHARS: Final = 4_000_000
"""Longest filter text (cql2-text or a cql2-json string) we hand to the parser."""
MAX_FILTER_DEPTH: Final = 16
"""Deepest nesting of CQL2 operators in one filter."""
MAX_FILTER_VALUES: Final = 100_000
"""Most literal values (IN-list members, coordinates ...) in one filter."""
_MAX_TEXT_NESTING: Final = 200  # parentheses + NOTs + minus runs in cql2-text, before parsing
_MAX_JSON_DEPTH: Final = 64  # nested JSON containers (geometries add a few levels per operator)
_MAX_CACHED_CHARS: Final = 64_000  # longer filters are validated every time, not remembered

Kind = Literal["string", "number", "boolean", "timestamp", "geometry", "null", "other"]
Box = tuple[float, float, float, float]

_KIND_WORDS: Final[Mapping[Kind, str]] = {
    "string": "strings",
    "number": "numbers",
    "boolean": "booleans",
    "timestamp": "timestamps",
    "geometry": "a geometry",
    "null": "only nulls",
    "other": "lists or records",
}
_COMPARABLE: Final = frozenset({"string", "number", "boolean", "timestamp", "null"})
_LIST_TYPES: Final[Mapping[str, str]] = {
    "string": "VARCHAR",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
}
_NUMERIC_TYPES: Final = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE"}
    | {"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
_TIME_TYPES: Final = frozenset(
    {"TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"}
)
# Columns stac-geoparquet keeps at the top level that are not item properties to filter on.
_NOT_QUERYABLE: Final = frozenset(
    {"assets", "links", "bbox", "type", "stac_version", "stac_extensions"}
)


# --- SQL fragments -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sql:
    """SQL text with its ``?`` parameters, in the order the markers appear in the text.

    Fragments are only ever combined by :func:`sql`, which keeps that order, so a parameter can
    never be bound to the wrong marker however the pieces nest.
    """

    text: str
    params: tuple[object, ...] = ()


def sql(template: str, *parts: Sql) -> Sql:
    """Fill each ``{}`` of ``template`` (our own constant text) with a fragment, left to right."""
    text = template.format(*(part.text for part in parts))
    return Sql(text, tuple(chain.from_iterable(part.params for part in parts)))


def param(value: object) -> Sql:
    """A literal, always bound as a parameter, never spliced into the text."""
    return Sql("?", (value,))


def join(separator: str, parts: Sequence[Sql]) -> Sql:
    """``(a SEP b SEP c)``, parameters kept in order."""
    return sql("(" + separator.join("{}" for _ in parts) + ")", *parts)


def quote_identifier(name: str) -> str:
    """Double-quote a column name (names come from the file's schema, never from a filter)."""
    return '"' + name.replace('"', '""') + '"'


# --- messages ------------------------------------------------------------------------------


def one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace and cut long text, so every error stays one readable line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def quote(value: object, limit: int = 60) -> str:
    """Quote a user's token for a message: shortened, newlines escaped by ``repr``."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# --- the file's columns --------------------------------------------------------------------


def _kind_of(name: str, duck_type: str) -> Kind:
    """What a DuckDB column type lets a filter do with it."""
    if duck_type.startswith("GEOMETRY") or (duck_type == "BLOB" and name == "geometry"):
        return "geometry"
    if duck_type in _NUMERIC_TYPES or duck_type.startswith("DECIMAL"):
        return "number"
    simple: dict[str, Kind] = {"VARCHAR": "string", "BOOLEAN": "boolean", '"NULL"': "null"}
    if duck_type in simple:
        return simple[duck_type]
    return "timestamp" if duck_type in _TIME_TYPES else "other"


@dataclass(frozen=True)
class Column:
    """One top-level column of the stac-geoparquet file (stac-geoparquet flattens properties)."""

    name: str
    duck_type: str
    kind: Kind

    @property
    def sql(self) -> Sql:
        return Sql(quote_identifier(self.name))

    @property
    def wkb_sql(self) -> Sql:
        """The geometry as WKB: DuckDB >= 1.5 reads GeoParquet geometry as GEOMETRY, older BLOB."""
        name = quote_identifier(self.name)
        return Sql(f"ST_AsWKB({name})" if self.duck_type.startswith("GEOMETRY") else name)


@dataclass(frozen=True)
class Columns:
    """The names a filter may use: exactly the columns of this release's file."""

    by_name: Mapping[str, Column]

    @classmethod
    def from_schema(cls, rows: Iterable[tuple[str, str]]) -> Columns:
        """Build from ``(name, DuckDB type)`` pairs, as ``DESCRIBE`` lists them."""
        return cls(
            {name: Column(name, duck_type, _kind_of(name, duck_type)) for name, duck_type in rows}
        )

    def has(self, name: str) -> bool:
        return name in self.by_name

    def searchable(self) -> list[str]:
        return sorted(name for name in self.by_name if name not in _NOT_QUERYABLE)

    def lookup(self, name: object) -> Column:
        """The column a CQL2 property names; ``properties.x`` is accepted for ``x``."""
        if isinstance(name, str):
            bare = name.removeprefix("properties.")
            for candidate in (name, bare):
                if candidate in self.by_name and candidate not in _NOT_QUERYABLE:
                    return self.by_name[candidate]
        listing = ", ".join(self.searchable())
        raise InvalidFilter(f"unknown property {quote(name)}; searchable properties: {listing}")

    def bbox_struct(self) -> Sql | None:
        """The ``bbox`` struct column used as a cheap spatial prefilter, when the file has one."""
        column = self.by_name.get("bbox")
        if column is None or not column.duck_type.startswith("STRUCT(xmin"):
            return None
        return column.sql

    def time_extent(self, column: Column) -> tuple[Sql, Sql]:
        """Start and end of an item's time for T_INTERSECTS on ``column``.

        For ``datetime`` an item with ``start_datetime``/``end_datetime`` (and, often,
        ``datetime: null``) counts by its whole range, as STAC and the STAC API say.
        """
        if column.kind not in ("timestamp", "null"):
            raise InvalidFilter(
                f"property {quote(column.name)} holds {_KIND_WORDS[column.kind]}, not times"
            )
        if column.name != "datetime":
            return column.sql, column.sql
        start, end = (
            [quote_identifier(name), column.sql.text] if self.has(name) else [column.sql.text]
            for name in ("start_datetime", "end_datetime")
        )
        return Sql(f"COALESCE({', '.join(start)})"), Sql(f"COALESCE({', '.join(end)})")


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedFilter:
    """A filter ``cql2`` has parsed, as the JSON tree it gives back (its own normal form)."""

    tree: object


def parse_filter(value: object, lang: str | None) -> ParsedFilter:
    """Parse a cql2-text string or a cql2-json string/dict, refusing oversized input first."""
    lang = _filter_lang(value, lang)
    if isinstance(value, str) and len(value) > MAX_FILTER_CHARS:
        raise InvalidFilter(f"filter is longer than {MAX_FILTER_CHARS} characters")
    if lang == "cql2-text":
        assert isinstance(value, str)  # _filter_lang checked it
        expr = _parse_text(value)
        tree: object = expr.to_json()
        _check_tree(tree)
    else:
        tree = _load_json(value)
        _check_tree(tree)
        expr = _parse_json_tree(_between_pairs(tree))
        tree = expr.to_json()
    return ParsedFilter(tree)


def _between_pairs(node: object) -> object:
    """``BETWEEN`` written as ``[value, [low, high]]`` (a draft form clients such as
    stac-api-validator still send) becomes the standard ``[value, low, high]``. The tree's
    depth is already bounded by :func:`_check_tree`."""
    if isinstance(node, list):
        return [_between_pairs(child) for child in node]
    if not isinstance(node, Mapping):
        return node
    out = {key: _between_pairs(child) for key, child in node.items()}
    args = out.get("args")
    if (
        str(out.get("op", "")).lower() == "between"
        and isinstance(args, list)
        and len(args) == 2
        and isinstance(args[1], list)
        and len(args[1]) == 2
    ):
        out["args"] = [args[0], *args[1]]
    return out


def validate_filter(parsed: ParsedFilter) -> None:
    """Run cql2's own JSON-schema validation (it quotes the whole expression, so we cut it).

    It costs ~0.1 s a call in cql2 0.6, so results are remembered per canonical filter:
    an API client paging through results sends the same filter again and again.
    """
    canonical = json.dumps(parsed.tree, sort_keys=True)
    check = _schema_problem if len(canonical) <= _MAX_CACHED_CHARS else _schema_problem.__wrapped__
    problem = check(canonical)
    if problem is not None:
        raise InvalidFilter(f"CQL2 filter is not valid: {problem}")


@functools.lru_cache(maxsize=256)
def _schema_problem(canonical: str) -> str | None:
    """None when cql2 accepts the filter, else its complaint on one line."""
    try:
        cql2.parse_json(canonical).validate()
    except (cql2.ValidationError, cql2.ParseError) as error:
        return one_line(str(error))
    return None


def _filter_lang(value: object, lang: str | None) -> str:
    if lang is None:
        if isinstance(value, Mapping):
            return "cql2-json"
        if isinstance(value, str):
            return "cql2-text"
        raise InvalidFilter(
            f"filter must be cql2-text (a string) or cql2-json, got {type(value).__name__}"
        )
    if lang not in ("cql2-text", "cql2-json"):
        raise InvalidFilter(f"unknown filter_lang {quote(lang)}; use 'cql2-text' or 'cql2-json'")
    if lang == "cql2-text" and not isinstance(value, str):
        raise InvalidFilter("filter_lang 'cql2-text' needs the filter as a string")
    return lang


# Tokens of cql2-text that make its parser recurse: quoted strings and names are skipped whole.
_NESTING_TOKENS: Final = re.compile(
    r"'(?:[^']|'')*'|\"[^\"]*\"|\(|\)|\bnot\b|-(?:\s*-)+", re.IGNORECASE
)


def _check_text_nesting(text: str) -> None:
    """Refuse deep nesting before cql2 sees it: its parser recursion can crash the process."""
    depth = deepest = total = 0
    for token in _NESTING_TOKENS.finditer(text):
        symbol = token.group()
        if symbol == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif symbol == ")":
            depth -= 1
        elif symbol[0] not in "'\"":
            total += len(symbol) if symbol[0] == "-" else 1
        if deepest + total > _MAX_TEXT_NESTING:
            raise _too_deep()


def _too_deep() -> InvalidFilter:
    return InvalidFilter(f"filter nests too deeply (limit {MAX_FILTER_DEPTH} nested operators)")


_PEST_WHERE: Final = re.compile(r"-->\s*(\d+):(\d+)")


def _parse_text(text: str) -> cql2.Expr:
    """cql2-text to an expression; pest's multi-line report becomes one line with a position."""
    _check_text_nesting(text)
    try:
        return cql2.parse_text(text)
    except cql2.ParseError as error:
        raise InvalidFilter(_text_error(text, str(error))) from None


def _text_error(text: str, report: str) -> str:
    where = _PEST_WHERE.search(report)
    lines = report.strip().splitlines()
    detail = lines[-1].strip().removeprefix("= ").strip() if lines else "syntax error"
    if where is None:
        return f"invalid CQL2 text: {one_line(report)}"
    line, column = int(where.group(1)), int(where.group(2))
    source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    near = source[column - 1 : column + 29]
    place = f" near {quote(near)}" if near.strip() else " at the end"
    return f"invalid CQL2 text at line {line}, column {column}{place}: {one_line(detail)}"


def _load_json(value: object) -> object:
    """cql2-json as Python objects; Python's own parser refuses absurd nesting safely."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidFilter(
            f"invalid CQL2 JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise _too_deep() from None


def _parse_json_tree(tree: object) -> cql2.Expr:
    try:
        text = json.dumps(tree, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidFilter(f"invalid CQL2 JSON: {one_line(str(error))}") from None
    try:
        return cql2.parse_json(text)
    except cql2.ParseError as error:
        detail = str(error)
        if "did not match any variant" in detail:
            detail = "not a CQL2 expression"
        raise InvalidFilter(f"invalid CQL2 JSON: {one_line(detail)}") from None


def _check_tree(tree: object) -> None:
    """Bound nesting and size without recursion (a hostile dict may be nested thousands deep)."""
    stack: list[tuple[object, int, int]] = [(tree, 1, 0)]
    values = 0
    while stack:
        node, depth, ops = stack.pop()
        if depth > _MAX_JSON_DEPTH or ops > MAX_FILTER_DEPTH:
            raise _too_deep()
        if isinstance(node, Mapping):
            ops += 1 if "op" in node else 0
            stack.extend((child, depth + 1, ops) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1, ops) for child in node)
        else:
            values += 1
            if values > MAX_FILTER_VALUES:
                raise InvalidFilter(f"filter has more than {MAX_FILTER_VALUES} values")


# --- time ------------------------------------------------------------------------------------

_RFC3339: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_OPEN: Final = ("", "..")


def parse_instant(text: object, what: str) -> datetime:
    """An RFC 3339 date-time with an offset, as aware UTC (fractions past microseconds dropped)."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidFilter(
            f"{what} {quote(text)} is not an RFC 3339 date-time like '2020-01-01T00:00:00Z'"
        )
    day, clock, fraction, offset = match.groups()
    micros = f".{fraction[:6].ljust(6, '0')}" if fraction else ""
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{day}T{clock}{micros}{zone}").astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidFilter(f"{what} {quote(text)} is not a valid date-time") from None


def _parse_day(text: object, what: str) -> datetime:
    """A ``YYYY-MM-DD`` date as its first instant, midnight UTC."""
    if not isinstance(text, str) or _DATE.fullmatch(text) is None:
        raise InvalidFilter(f"{what} {quote(text)} is not a date like '2020-01-01'")
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidFilter(f"{what} {quote(text)} is not a valid date") from None


@dataclass(frozen=True)
class TimeRange:
    """A query's time: ``start`` inclusive, ``end`` inclusive unless ``end_inclusive`` is False.

    A DATE covers its whole day, so it becomes ``[midnight, next midnight)``.
    """

    start: datetime | None
    end: datetime | None
    end_inclusive: bool = True

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidFilter("time interval ends before it starts")


def _instant_range(node: Mapping[str, object]) -> TimeRange:
    """``{"timestamp": ...}`` or ``{"date": ...}`` as a range."""
    if "timestamp" in node:
        moment = parse_instant(node["timestamp"], "TIMESTAMP")
        return TimeRange(moment, moment)
    day = _parse_day(node.get("date"), "DATE")
    return TimeRange(day, day + timedelta(days=1), end_inclusive=False)


def _interval_range(bounds: object) -> TimeRange:
    """``{"interval": [a, b]}`` with ``..`` for an open end; bounds are dates or date-times."""
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise InvalidFilter(f"INTERVAL needs two bounds, got {quote(bounds)}")
    parts = [_bound_range(bound) for bound in bounds]
    start = parts[0].start if parts[0] is not None else None
    end, inclusive = (
        (parts[1].end, parts[1].end_inclusive) if parts[1] is not None else (None, True)
    )
    return TimeRange(start, end, end_inclusive=inclusive)


def _bound_range(bound: object) -> TimeRange | None:
    if isinstance(bound, str) and bound in _OPEN:
        return None
    if isinstance(bound, Mapping) and ("timestamp" in bound or "date" in bound):
        return _instant_range(bound)
    if isinstance(bound, str) and _DATE.fullmatch(bound):
        return _instant_range({"date": bound})
    if isinstance(bound, str):
        return _instant_range({"timestamp": bound})
    raise InvalidFilter(f"INTERVAL bounds must be dates or date-times, got {quote(bound)}")


def parse_datetime_param(text: object) -> TimeRange:
    """The STAC API ``datetime`` parameter: an instant, or ``a/b`` with ``..`` or '' open."""
    if not isinstance(text, str):
        raise InvalidFilter(f"datetime must be a string, got {type(text).__name__}")
    pieces = text.split("/")
    if len(pieces) == 1:
        moment = parse_instant(text, "datetime")
        return TimeRange(moment, moment)
    if len(pieces) != 2:
        raise InvalidFilter(
            f"datetime {quote(text)} is neither an instant nor one 'start/end' interval"
        )
    start, end = (None if piece in _OPEN else parse_instant(piece, "datetime") for piece in pieces)
    if start is None and end is None:
        raise InvalidFilter(f"datetime interval {quote(text)} needs at least one bound")
    return TimeRange(start, end)


def temporal_sql(extent: tuple[Sql, Sql], span: TimeRange) -> Sql:
    """An item whose ``[lo, hi]`` overlaps the query range; open ends add no condition."""
    low, high = extent
    parts: list[Sql] = []
    if span.start is not None:
        parts.append(sql("{} >= CAST({} AS TIMESTAMPTZ)", high, param(span.start.isoformat())))
    if span.end is not None:
        operator = "<=" if span.end_inclusive else "<"
        parts.append(
            sql(f"{{}} {operator} CAST({{}} AS TIMESTAMPTZ)", low, param(span.end.isoformat()))
        )
    if not parts:
        parts = [sql("{} IS NOT NULL", low), sql("{} IS NOT NULL", high)]
    return join(" AND ", parts)


# --- space -----------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_lonlat(bounds: Sequence[float], what: str) -> None:
    """Lunar lon/lat ranges, after 0..360 longitudes have been brought to -180..180."""
    minx, miny, maxx, maxy = bounds
    for lon in (minx, maxx):
        if not -180.0 <= lon <= 180.0:
            raise InvalidFilter(
                f"{what} longitude {lon:g} is outside -180..180 (lunar east-positive)"
            )
    _check_lat(miny, maxy, what)


def _check_lat(miny: float, maxy: float, what: str) -> None:
    for lat in (miny, maxy):
        if not -90.0 <= lat <= 90.0:
            raise InvalidFilter(f"{what} latitude {lat:g} is outside -90..90")
    if miny > maxy:
        raise InvalidFilter(f"{what} has miny {miny:g} greater than maxy {maxy:g}")


def _check_longitude(lon: float, what: str) -> None:
    if not -180.0 <= lon <= 360.0:
        raise InvalidFilter(
            f"{what} longitude {lon:g} is outside -180..180 and 0..360 (lunar east-positive)"
        )


def _wrap(lon: float) -> float:
    """A longitude of -180..360 as -180..180 (0..360 is the other east-positive convention)."""
    return lon - 360.0 if lon > 180.0 else lon


def normalise_box(box: Box, what: str = "bbox") -> Box:
    """A bbox with longitudes in -180..180, read from either convention (LUNAR-DATA.md 4.2).

    Each edge is read on its own: ``west`` is where the box starts and ``east`` where it ends
    going east, so ``[170, 0, 190, 10]`` (0..360) becomes ``[170, 0, -170, 10]``, a box across
    +-180, and ``[350, 0, 10, 10]`` becomes ``[-10, 0, 10, 10]``. A box going once round or
    more (``[0, .., 360, ..]``) is every longitude.
    """
    minx, miny, maxx, maxy = box
    _check_longitude(minx, what)
    _check_longitude(maxx, what)
    _check_lat(miny, maxy, what)
    if maxx - minx >= 360.0:
        return (-180.0, miny, 180.0, maxy)
    west, east = _wrap(minx), _wrap(maxx)
    if west == 180.0 and east != 180.0:
        west = -180.0  # a box starting on the seam starts on its western side
    if east == -180.0 and west != -180.0:
        east = 180.0
    return (west, miny, east, maxy)


_EAST_OF_SEAM: Final = shapely.box(180.0, -90.0, 360.0, 90.0)
_WEST_OF_SEAM: Final = shapely.box(-180.0, -90.0, 180.0, 90.0)


def normalise_shape(shape: Any, what: str = "geometry literal") -> Any:
    """A shape with longitudes in -180..180: a 0..360 shape is cut at 180 and its eastern part
    moved by -360 (so a polygon across 180 becomes a MultiPolygon on both sides of the seam).

    A shape whose longitudes mix the two conventions (below 0 and above 180) is refused: it
    has no single reading.
    """
    minx, miny, maxx, maxy = (float(value) for value in shape.bounds)
    _check_longitude(minx, what)
    _check_longitude(maxx, what)
    _check_lat(miny, maxy, what)
    if maxx <= 180.0:
        return shape
    if minx < 0.0:
        raise InvalidFilter(
            f"{what} mixes longitudes below 0 and above 180; use -180..180 or 0..360, not both"
        )
    west = shapely.intersection(shape, _WEST_OF_SEAM)
    east = shapely.affinity.translate(shapely.intersection(shape, _EAST_OF_SEAM), xoff=-360.0)
    parts = [part for part in (west, east) if not part.is_empty]
    return shapely.union_all(parts) if len(parts) > 1 else parts[0]


def check_bbox(values: object, what: str = "bbox") -> Box:
    """A 2D ``[minx, miny, maxx, maxy]`` (or 3D ``[minx, miny, minz, maxx, maxy, maxz]``, searched
    by its 2D footprint), longitudes -180..180 or 0..360; in the result ``minx > maxx`` means the
    box crosses +-180."""
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) not in (4, 6):
        raise InvalidFilter(
            f"{what} needs 4 numbers [minx, miny, maxx, maxy], got {quote(_as_list(values))}"
        )
    if not all(_is_number(value) and math.isfinite(float(value)) for value in values):
        raise InvalidFilter(
            f"{what} holds something that is not a finite number: {quote(list(values))}"
        )
    coords = [float(value) for value in values]
    box: Box = (
        (coords[0], coords[1], coords[2], coords[3])
        if len(coords) == 4
        else (coords[0], coords[1], coords[3], coords[4])
    )
    return normalise_box(box, what)


def _as_list(value: object) -> object:
    """A tuple as a list, so messages show JSON-looking brackets."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Area:
    """A query area: the exact shape for the UDF, and boxes for the cheap ``bbox`` prefilter."""

    shape: Any
    boxes: tuple[Box, ...]

    @classmethod
    def from_box(cls, box: Box) -> Area:
        """A box crossing +-180 (``minx > maxx``) is searched as two boxes, one each side."""
        minx, miny, maxx, maxy = box
        boxes: tuple[Box, ...] = (
            (box,) if minx <= maxx else ((minx, miny, 180.0, maxy), (-180.0, miny, maxx, maxy))
        )
        # envelope() of the corners gives a Point or LineString for degenerate boxes, which
        # intersect correctly where a zero-area Polygon would not.
        pieces = [
            shapely.envelope(shapely.multipoints([(b[0], b[1]), (b[2], b[3])])) for b in boxes
        ]
        return cls(shapely.union_all(pieces), boxes)

    @classmethod
    def from_geojson(cls, node: Mapping[str, object]) -> Area:
        """A GeoJSON literal; an invalid ring is repaired so GEOS never fails mid-query."""
        try:
            shape = shapely.geometry.shape(node)
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            GEOSException,
        ) as error:
            raise InvalidFilter(f"invalid geometry literal: {one_line(str(error), 120)}") from None
        if shape.is_empty:
            raise InvalidFilter("geometry literal is empty")
        bounds = tuple(float(value) for value in shape.bounds)
        if not all(math.isfinite(value) for value in bounds):
            raise InvalidFilter("geometry literal has coordinates that are not finite numbers")
        if not shape.is_valid:
            shape = shapely.make_valid(shape)
        shape = normalise_shape(shape)
        _check_lonlat(tuple(float(value) for value in shape.bounds), "geometry literal")
        # One prefilter box per part: a shape split at the seam is two narrow boxes, not one
        # box round the whole Moon.
        boxes = tuple(
            (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
            for b in (part.bounds for part in shapely.get_parts(shape))
        )
        return cls(shape, boxes)

    def to_geojson(self) -> dict[str, Any]:
        """The area as GeoJSON (lunar lon/lat, -180..180), e.g. for a database that searches it."""
        mapping: dict[str, Any] = json.loads(json.dumps(shapely.geometry.mapping(self.shape)))
        return mapping


def _box_prefilter(bbox: Sql, box: Box) -> Sql:
    """Item bbox overlaps ``box``."""
    return sql("({} AND {})", _lat_prefilter(bbox, box[1], box[3]), _lon_prefilter(bbox, box))


def _lat_prefilter(bbox: Sql, south: float, north: float) -> Sql:
    """Item bbox overlaps the latitudes ``south``..``north``."""
    b = bbox.text
    return sql(f'({b}."ymin" <= {{}} AND {b}."ymax" >= {{}})', param(north), param(south))


def _lon_prefilter(bbox: Sql, box: Box) -> Sql:
    """Item bbox overlaps the longitudes of ``box``; an item bbox with xmin > xmax (crossing
    +-180) is two ranges."""
    b = bbox.text
    minx, maxx = param(box[0]), param(box[2])
    text = (
        f'(({b}."xmin" <= {b}."xmax" AND {b}."xmin" <= {{}} AND {b}."xmax" >= {{}}) OR '
        f'({b}."xmin" > {b}."xmax" AND ({b}."xmin" <= {{}} OR {b}."xmax" >= {{}})))'
    )
    return sql(text, maxx, minx, maxx, minx)


def make_intersects_udf(area: Area) -> Callable[[Any], Any]:
    """A vectorised DuckDB UDF (Arrow in, Arrow out): does each WKB footprint meet ``area``?

    A null or unreadable geometry never matches. The lock is there because GEOS prepared
    geometries are not safe to share across the threads DuckDB may call us from.
    """
    shape = area.shape
    shapely.prepare(shape)
    lock = threading.Lock()

    def intersects(wkb: Any) -> Any:
        footprints = shapely.from_wkb(wkb.to_numpy(zero_copy_only=False), on_invalid="ignore")
        with lock:
            hits = shapely.intersects(shape, footprints)
        return pa.array(hits, type=pa.bool_())

    return intersects


# --- the translator --------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """A value in a comparison: its SQL, what kind of value it is, and how to name it."""

    sql: Sql
    kind: Kind
    label: str


def _arguments(node: Mapping[str, object], count: int | None = None) -> list[object]:
    """The operator's arguments, checked for number; messages name the operator as written."""
    args, op = node.get("args"), quote(node.get("op"))
    if not isinstance(args, list) or not args:
        raise InvalidFilter(f"CQL2 operator {op} needs a non-empty 'args' list")
    if count is not None and len(args) != count:
        plural = "argument" if count == 1 else "arguments"
        raise InvalidFilter(f"CQL2 operator {op} takes {count} {plural}, got {len(args)}")
    return args


def _is_property(node: object) -> bool:
    return isinstance(node, Mapping) and "property" in node


class Translator:
    """CQL2 JSON tree -> one SQL condition, checked against the file's columns.

    Spatial conditions call a UDF per query area; :attr:`areas` lists them, and
    :meth:`udf_name` names the UDF the caller must register for each.
    """

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self.areas: list[Area] = []

    @staticmethod
    def udf_name(index: int) -> str:
        return f"lunarchive_intersects_{index}"

    def condition(self, node: object) -> Sql:
        """A boolean CQL2 expression."""
        if isinstance(node, bool):
            return sql("CAST({} AS BOOLEAN)", param(node))
        if not isinstance(node, Mapping) or not isinstance(node.get("op"), str):
            raise InvalidFilter(f"expected a CQL2 condition, got {quote(node)}")
        op = str(node["op"])
        handler = _CONDITIONS.get(op.lower())
        if handler is None:
            raise InvalidFilter(f"unsupported CQL2 operator {quote(op)}")
        return handler(self, op.lower(), node)

    def bbox_condition(self, box: Box) -> Sql:
        """The ``bbox`` search parameter: the same path as S_INTERSECTS with BBOX(...)."""
        return self._spatial(self.columns.lookup("geometry"), Area.from_box(box))

    def area_condition(self, area: Area) -> Sql:
        """The ``intersects`` search parameter: S_INTERSECTS with a checked area."""
        return self._spatial(self.columns.lookup("geometry"), area)

    def time_condition(self, span: TimeRange) -> Sql:
        """The ``datetime`` search parameter: T_INTERSECTS on the item's datetime or range."""
        return temporal_sql(self.columns.time_extent(self.columns.lookup("datetime")), span)

    def _logical(self, op: str, node: Mapping[str, object]) -> Sql:
        parts = [self.condition(arg) for arg in _arguments(node)]
        return join(f" {op.upper()} ", parts)

    def _not(self, op: str, node: Mapping[str, object]) -> Sql:
        (arg,) = _arguments(node, 1)
        return sql("(NOT {})", self.condition(arg))

    def _compare(self, op: str, node: Mapping[str, object]) -> Sql:
        left, right = (self.operand(arg) for arg in _arguments(node, 2))
        _check_comparable(op, left, right)
        return sql(f"({{}} {op} {{}})", left.sql, right.sql)

    def _between(self, op: str, node: Mapping[str, object]) -> Sql:
        value, low, high = (self.operand(arg) for arg in _arguments(node, 3))
        _check_comparable(op, value, low)
        _check_comparable(op, value, high)
        return sql("({} BETWEEN {} AND {})", value.sql, low.sql, high.sql)

    def _like(self, op: str, node: Mapping[str, object]) -> Sql:
        value_node, pattern = _arguments(node, 2)
        value = self.operand(value_node)
        if value.kind not in ("string", "null") or not isinstance(pattern, str):
            raise InvalidFilter(
                f"LIKE needs a string property and a string pattern, got {value.label}"
            )
        # CQL2's escape character is the backslash; bound as a parameter like any literal.
        return sql("({} LIKE {} ESCAPE {})", value.sql, param(pattern), param("\\"))

    def _is_null(self, op: str, node: Mapping[str, object]) -> Sql:
        (arg,) = _arguments(node, 1)
        return sql("({} IS NULL)", self.operand(arg, any_kind=True).sql)

    def _in(self, op: str, node: Mapping[str, object]) -> Sql:
        """One list parameter, not one marker per value: 10 000 values bind in milliseconds."""
        value_node, members = _arguments(node, 2)
        value = self.operand(value_node)
        if not isinstance(members, list):
            raise InvalidFilter(f"IN needs a list of values, got {quote(members)}")
        kind, items = _list_literal(members, value)
        sql_type = _LIST_TYPES[kind]
        return sql(
            f"list_contains(CAST({{}} AS {sql_type}[]), CAST({{}} AS {sql_type}))",
            param(items),
            value.sql,
        )

    def _s_intersects(self, op: str, node: Mapping[str, object]) -> Sql:
        first, second = _arguments(node, 2)
        prop, literal = (first, second) if _is_property(first) else (second, first)
        if not _is_property(prop) or not isinstance(literal, Mapping) or _is_property(literal):
            raise InvalidFilter(
                "S_INTERSECTS needs the geometry property and a geometry or BBOX literal"
            )
        assert isinstance(prop, Mapping)
        column = self.columns.lookup(prop["property"])
        if column.kind != "geometry":
            raise InvalidFilter(
                f"property {quote(column.name)} holds {_KIND_WORDS[column.kind]}, not a geometry"
            )
        if "bbox" in literal:
            return self._spatial(column, Area.from_box(check_bbox(literal["bbox"], "BBOX")))
        return self._spatial(column, Area.from_geojson(literal))

    def _t_intersects(self, op: str, node: Mapping[str, object]) -> Sql:
        first, second = _arguments(node, 2)
        prop, literal = (first, second) if _is_property(first) else (second, first)
        if not _is_property(prop) or not isinstance(literal, Mapping):
            raise InvalidFilter(
                "T_INTERSECTS needs a time property and a TIMESTAMP, DATE or INTERVAL"
            )
        assert isinstance(prop, Mapping)
        column = self.columns.lookup(prop["property"])
        return temporal_sql(self.columns.time_extent(column), _time_literal(literal))

    def _spatial(self, column: Column, area: Area) -> Sql:
        """Prefilter on the ``bbox`` struct (cheap), then the exact shapely test in the UDF."""
        name = self.udf_name(len(self.areas))
        self.areas.append(area)
        exact = sql(f"{name}({{}})", column.wkb_sql)
        bbox = self.columns.bbox_struct()
        if bbox is None:
            return exact
        south, north = min(box[1] for box in area.boxes), max(box[3] for box in area.boxes)
        band = _lat_prefilter(bbox, south, north)
        if all((box[1], box[3]) == (south, north) for box in area.boxes):
            # One box, or a box split at +-180: one range of latitudes, which DuckDB pushes
            # into its scan (it pushes no OR), then the longitudes of each part.
            lons = join(" OR ", [_lon_prefilter(bbox, box) for box in area.boxes])
            terms = [sql("({} IS NULL OR ({} AND {}))", bbox, band, lons)]
        else:
            # Parts at other latitudes: the band that spans them all (implied by the OR of
            # the parts) for the scan, then each part.
            parts = join(" OR ", [_box_prefilter(bbox, box) for box in area.boxes])
            terms = [sql("({} IS NULL OR {})", bbox, band), sql("({} IS NULL OR {})", bbox, parts)]
        # AND, not CASE: DuckDB runs a conjunction's terms in turn, each on the rows the
        # earlier ones kept, so the costly exact test (a Python UDF) sees only prefiltered
        # rows, and a CASE or COALESCE around the prefilter doubles the cost of the query.
        # The result is TRUE or FALSE (a bbox with a null corner would make it NULL, but
        # stac-geoparquet neither writes one nor reads such a row back as an item).
        return join(" AND ", [*terms, exact])

    def operand(self, node: object, *, any_kind: bool = False) -> Operand:
        """A property or a literal; literals only ever become parameters."""
        if isinstance(node, Mapping):
            return self._mapping_operand(node, any_kind)
        if isinstance(node, bool):
            return Operand(param(node), "boolean", f"the boolean {str(node).lower()}")
        if _is_number(node):
            number = float(node)  # type: ignore[arg-type]
            if not math.isfinite(number):
                raise InvalidFilter(f"number {number!r} is out of range")
            return Operand(param(number), "number", f"the number {number:g}")
        if isinstance(node, str):
            return Operand(param(node), "string", f"the string {quote(node)}")
        if node is None:
            raise InvalidFilter("NULL is not a value to compare with; use IS NULL")
        if isinstance(node, list):
            raise InvalidFilter("a list of values is only allowed after IN")
        raise InvalidFilter(f"unrecognised CQL2 value {quote(node)}")

    def _mapping_operand(self, node: Mapping[str, object], any_kind: bool) -> Operand:
        if "property" in node:
            column = self.columns.lookup(node["property"])
            label = f"property {quote(column.name)} ({_KIND_WORDS[column.kind]})"
            if column.kind not in _COMPARABLE and not any_kind:
                raise InvalidFilter(f"{label} cannot be compared; {_hint(column.kind)}")
            return Operand(column.sql, column.kind, label)
        if "timestamp" in node or "date" in node:
            start = _instant_range(node).start
            assert start is not None
            cast = sql("CAST({} AS TIMESTAMPTZ)", param(start.isoformat()))
            return Operand(cast, "timestamp", f"the time {quote(node)}")
        if isinstance(node.get("op"), str):
            op = str(node["op"])
            if op.lower() in _CONDITIONS:
                raise InvalidFilter(f"CQL2 operator {quote(op)} gives a condition, not a value")
            raise InvalidFilter(f"unsupported CQL2 operator {quote(op)}")
        raise InvalidFilter(f"{quote(node)} is only allowed in S_INTERSECTS or T_INTERSECTS")


def _hint(kind: Kind) -> str:
    return "use S_INTERSECTS" if kind == "geometry" else "only IS NULL applies"


def _check_comparable(op: str, left: Operand, right: Operand) -> None:
    """Refuse mixed kinds here, so DuckDB never meets a cast it cannot do at run time."""
    if left.kind == right.kind or "null" in (left.kind, right.kind):
        return
    hint = ""
    if {left.kind, right.kind} == {"timestamp", "string"}:
        hint = "; write times as TIMESTAMP('...') or DATE('...')"
    raise InvalidFilter(f"cannot compare {left.label} with {right.label} using {quote(op)}{hint}")


def _list_literal(members: list[object], value: Operand) -> tuple[str, list[object]]:
    """IN-list members as one homogeneous Python list, and their kind."""
    probe = Translator(Columns({}))
    operands = [probe.operand(member) for member in members if not _is_property(member)]
    if len(operands) != len(members):
        raise InvalidFilter("IN lists may hold literal values only, not properties")
    kinds = {operand.kind for operand in operands} or {value.kind}
    kind = kinds.pop()
    if kinds or kind not in _LIST_TYPES:
        raise InvalidFilter(
            "IN list values must all be of one kind: strings, numbers, booleans or times"
        )
    if operands:
        _check_comparable("in", value, operands[0])
    items = list(chain.from_iterable(operand.sql.params for operand in operands))
    return kind, items


def _time_literal(node: Mapping[str, object]) -> TimeRange:
    if "interval" in node:
        return _interval_range(node["interval"])
    if "timestamp" in node or "date" in node:
        return _instant_range(node)
    raise InvalidFilter(f"T_INTERSECTS needs a TIMESTAMP, DATE or INTERVAL, got {quote(node)}")


_Handler = Callable[[Translator, str, Mapping[str, object]], Sql]
_CONDITIONS: Final[Mapping[str, _Handler]] = {
    "and": Translator._logical,
    "or": Translator._logical,
    "not": Translator._not,
    "=": Translator._compare,
    "<>": Translator._compare,
    "<": Translator._compare,
    "<=": Translator._compare,
    ">": Translator._compare,
    ">=": Translator._compare,
    "between": Translator._between,
    "like": Translator._like,
    "in": Translator._in,
    "isnull": Translator._is_null,
    "s_intersects": Translator._s_intersects,
    "t_intersects": Translator._t_intersects,
}
