"""The ``sortby``, ``fields`` and paging parameters of a STAC search, read one way for both engines.

Why one module: the contract suite asserts that the embedded search and the STAC API give the
same items in the same order with the same fields, so both must read these parameters alike.
The semantics are pgstac's, as stac-fastapi-pgstac 7.2 on pgstac 0.10 applies them:

* ``sortby``: keys in order, then ``collection`` and ``id`` (unless named) in the first key's
  direction, so the order is total; no sortby is ``datetime`` descending. ``datetime`` (and
  ``start_datetime``) sort an item by its ``datetime`` or else its ``start_datetime``,
  ``end_datetime`` by its ``end_datetime`` or else its ``datetime``; nulls come last ascending
  and first descending (PostgreSQL's rule); text sorts by code point (collation "C").
* ``fields`` (STAC API Fields extension, with the recommended defaults): no ``fields`` is the
  whole item; ``include`` keeps those paths plus ``type``, ``id`` and ``collection``;
  ``exclude`` removes paths, but never one that is, or is a parent of, an included path (the
  include wins); an empty or null ``include`` (or an empty ``fields``) means the default set
  :data:`DEFAULT_FIELDS`, minus any ``exclude``; ``exclude`` alone removes from the whole item.
  Item ``links`` stay unless excluded; null values are left out, except
  ``properties.datetime``, which STAC requires (null when a range is given).

Anything malformed raises :class:`~lunarchive.schemas.errors.InvalidFilter` with one line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from lunarchive.catalog._cql2sql import Columns, quote
from lunarchive.schemas.errors import InvalidFilter

__all__ = [
    "DEFAULT_FIELDS",
    "MAX_FIELDS",
    "MAX_SORT_KEYS",
    "FieldSet",
    "SortKey",
    "apply_fields",
    "fields_to_get",
    "parse_fields",
    "parse_sortby",
    "sortby_with_tiebreakers",
]

MAX_SORT_KEYS: Final = 16
"""Most keys in one ``sortby``."""
MAX_FIELDS: Final = 256
"""Most paths in one ``fields`` (include and exclude together)."""
DEFAULT_FIELDS: Final = (
    "type",
    "stac_version",
    "id",
    "geometry",
    "bbox",
    "links",
    "assets",
    "properties.datetime",
)
"""The Fields extension's recommended default set (empty ``fields``, or a null ``include``)."""

_SORTABLE: Final = frozenset({"string", "number", "boolean", "timestamp", "null"})
_DIRECTIONS: Final[Mapping[str, Literal["asc", "desc"]]] = {
    "asc": "asc",
    "ascending": "asc",
    "desc": "desc",
    "descending": "desc",
}
_PATH: Final = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")
_TIME_FIELDS: Final = frozenset({"datetime", "start_datetime", "end_datetime"})


@dataclass(frozen=True)
class SortKey:
    """One sort key: a field (``id``, ``collection`` or a property's bare name) and a direction."""

    field: str
    direction: Literal["asc", "desc"]


def parse_sortby(value: object, columns: Columns) -> tuple[SortKey, ...]:
    """Sort keys from the GET form (``-properties.datetime,id``) or the POST form (a list of
    ``{"field", "direction"}``), each checked against the release's sortable properties."""
    entries = _sortby_entries(value)
    if not entries:
        raise InvalidFilter("sortby names no field")
    if len(entries) > MAX_SORT_KEYS:
        raise InvalidFilter(f"sortby has {len(entries)} keys; at most {MAX_SORT_KEYS} are allowed")
    keys: list[SortKey] = []
    for field, direction in entries:
        name = _sort_field(field, columns)
        if name not in (key.field for key in keys):
            keys.append(SortKey(name, direction))
    return tuple(keys)


def sortby_with_tiebreakers(keys: tuple[SortKey, ...]) -> tuple[SortKey, ...]:
    """The keys pgstac sorts by: the given ones (or ``datetime`` descending), then
    ``collection`` and ``id`` in the first key's direction, for a total, stable order."""
    keys = keys or (SortKey("datetime", "desc"),)
    named = {key.field for key in keys}
    extra = tuple(
        SortKey(name, keys[0].direction) for name in ("collection", "id") if name not in named
    )
    return keys + extra


def _sortby_entries(value: object) -> list[tuple[str, Literal["asc", "desc"]]]:
    if isinstance(value, str):
        out: list[tuple[str, Literal["asc", "desc"]]] = []
        for part in value.split(","):
            token = part.strip()  # a '+' in a query string arrives as a space
            direction: Literal["asc", "desc"] = "desc" if token.startswith("-") else "asc"
            out.append((token[1:].strip() if token[:1] in "+-" else token, direction))
        return out
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise InvalidFilter(
            f"sortby must be text like '-datetime,id' or a list of {{field, direction}}, "
            f"got {quote(value)}"
        )
    return [_sortby_entry(entry) for entry in value]


def _sortby_entry(entry: object) -> tuple[str, Literal["asc", "desc"]]:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("field"), str):
        raise InvalidFilter(f"sortby entries need a 'field' (text), got {quote(entry)}")
    unknown = set(entry) - {"field", "direction"}
    if unknown:
        raise InvalidFilter(f"sortby entry has unknown key {quote(sorted(unknown)[0])}")
    raw = entry.get("direction", "asc")
    direction = _DIRECTIONS.get(raw.strip().lower()) if isinstance(raw, str) else None
    if direction is None:
        raise InvalidFilter(f"sortby direction must be 'asc' or 'desc', got {quote(raw)}")
    return str(entry["field"]).strip(), direction


def _sort_field(field: str, columns: Columns) -> str:
    """The bare name sorted on; ``properties.x`` is ``x``, as in pgstac."""
    if not field or field == "properties.":
        raise InvalidFilter("sortby has an empty field")
    bare = field.removeprefix("properties.")
    if bare in ("id", "collection") or (bare in _TIME_FIELDS and columns.has("datetime")):
        return bare
    try:
        column = columns.lookup(field)
    except InvalidFilter:
        listing = ", ".join(sorted(_sortable(columns)))
        raise InvalidFilter(
            f"cannot sort by unknown property {quote(field)}; sortable: {listing}"
        ) from None
    if column.kind not in _SORTABLE:
        raise InvalidFilter(f"cannot sort by {quote(column.name)}: it is not a single value")
    return column.name


def _sortable(columns: Columns) -> list[str]:
    names = [name for name in columns.searchable() if columns.by_name[name].kind in _SORTABLE]
    return sorted({"id", "collection", *names})


# --- fields ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSet:
    """What to keep of each item: ``include`` empty means the whole item minus ``exclude``."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]


def parse_fields(value: object) -> FieldSet | None:
    """The GET form (``id,properties.mission,-assets``; '' for the defaults) or the POST form
    (``{"include": [...], "exclude": [...]}``). None is "no fields": the whole item."""
    if value is None:
        return None
    if isinstance(value, str):
        include, exclude, include_given = _get_form(value)
    elif isinstance(value, Mapping):
        include, exclude, include_given = _post_form(value)
    else:
        raise InvalidFilter(
            f"fields must be an object with include / exclude lists, got {quote(value)}"
        )
    if len(include) + len(exclude) > MAX_FIELDS:
        raise InvalidFilter(f"fields names more than {MAX_FIELDS} paths")
    for path in (*include, *exclude):
        if not _PATH.match(path):
            raise InvalidFilter(
                f"fields path {quote(path)} is not a dotted name like 'properties.x'"
            )
    if not include and (include_given or not exclude):
        return _defaults_without(exclude)
    if include:
        include.append("type")  # a Feature stays a Feature, as pgstac keeps id and collection
    kept = set(include)
    cleaned = [
        path
        for path in exclude
        if path not in kept and not any(name.startswith(path + ".") for name in kept)
    ]
    return FieldSet(tuple(dict.fromkeys(include)), tuple(dict.fromkeys(cleaned)))


def _defaults_without(exclude: list[str]) -> FieldSet:
    """The default set, from which an exclude does remove fields (made conflict-free here:
    stac-fastapi lets an include win over an exclude of the same path)."""

    def covered(path: str, by: str) -> bool:
        return path == by or path.startswith(by + ".")

    include = [p for p in DEFAULT_FIELDS if not any(covered(p, e) for e in exclude)]
    rest = [e for e in exclude if not any(covered(p, e) for p in include)]
    return FieldSet(tuple(include) or ("id",), tuple(dict.fromkeys(rest)))


def _get_form(text: str) -> tuple[list[str], list[str], bool]:
    include: list[str] = []
    exclude: list[str] = []
    for part in text.split(","):
        token = part.strip()  # '+' arrives as a space from a query string
        if not token:
            continue
        if token.startswith("-"):
            exclude.append(token[1:].strip())
        else:
            include.append(token.removeprefix("+").strip())
    return include, exclude, not text.strip()


def _post_form(value: Mapping[Any, Any]) -> tuple[list[str], list[str], bool]:
    unknown = set(value) - {"include", "exclude"}
    if unknown:
        raise InvalidFilter(f"fields has unknown key {quote(sorted(map(str, unknown))[0])}")
    lists = []
    for key in ("include", "exclude"):
        entry = value.get(key)
        if entry is None:
            entry = []
        if not isinstance(entry, list | tuple) or not all(isinstance(p, str) for p in entry):
            raise InvalidFilter(f"fields.{key} must be a list of paths, got {quote(entry)}")
        lists.append([path.strip() for path in entry])
    include_given = "include" in value or not value
    return lists[0], lists[1], include_given


def fields_to_get(fields: FieldSet) -> str:
    """The same field set in the GET form (``+a,-b``)."""
    return ",".join([*(f"+{p}" for p in fields.include), *(f"-{p}" for p in fields.exclude)])


def apply_fields(
    item: dict[str, Any], fields: FieldSet | None, *, clean: Collection[str] = ()
) -> dict[str, Any]:
    """``item`` as the STAC API returns it for ``fields``: nulls left out (but
    ``properties.datetime``), included paths (plus ``id``, ``collection``), excluded paths.

    ``clean`` names top-level members the caller knows hold no null at any depth (the
    embedded search knows it from Arrow's null counts): they are kept without a walk, not
    copied, so the result may share (and ``fields`` change) them with ``item``.
    """
    full = _item_without_nulls(item, clean)
    if fields is None:
        out = full
    else:
        out = full
        if fields.include:
            out = {}
            for path in (*fields.include, "id", "collection"):
                _copy_path(full, out, path.split("."))
            if "links" in full and "links" not in fields.exclude:
                out["links"] = full["links"]
        for path in fields.exclude:
            _drop_path(out, path.split("."))
    if _wants_datetime(fields) and isinstance(out.get("properties"), dict):
        out["properties"].setdefault("datetime", None)
    return out


def _wants_datetime(fields: FieldSet | None) -> bool:
    if fields is None:
        return True
    names = {"properties", "properties.datetime"}
    if names & set(fields.exclude):
        return False
    return not fields.include or bool(names & set(fields.include))


def _item_without_nulls(item: dict[str, Any], clean: Collection[str]) -> dict[str, Any]:
    """The item without null values (keys in order). Its geometry's coordinates are numbers
    only, so they are kept as they are rather than walked one number at a time."""
    return {
        key: value
        if key in clean
        else _geometry_without_nulls(value)
        if key == "geometry"
        else _without_nulls(value)
        for key, value in item.items()
        if value is not None
    }


def _geometry_without_nulls(geometry: Any) -> Any:
    if isinstance(geometry, dict) and isinstance(geometry.get("coordinates"), list):
        return {key: value for key, value in geometry.items() if value is not None}
    return _without_nulls(geometry)


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _without_nulls(value) if isinstance(value, dict | list) else value
            for key, value in node.items()
            if value is not None
        }
    if isinstance(node, list):
        return [
            _without_nulls(value) if isinstance(value, dict | list) else value for value in node
        ]
    return node


def _copy_path(source: dict[str, Any], target: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in source:
        return
    value = source[head]
    if not rest:
        target[head] = value
        return
    if isinstance(value, dict):
        branch = target.get(head)
        if not isinstance(branch, dict):
            branch = target[head] = {}
        _copy_path(value, branch, rest)


def _drop_path(target: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if not rest:
        target.pop(head, None)
    elif isinstance(target.get(head), dict):
        _drop_path(target[head], rest)
