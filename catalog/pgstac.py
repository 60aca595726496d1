"""Serve a release from pgstac: install the schema, load a release, say which one is served.

Why one transaction per release: the STAC API must serve the current release and never a
half-loaded one (issue 7). Two ways were weighed:

* load under versioned collection ids (``lola@v2``) and switch atomically: every response
  would need its ids rewritten back, and a client's paging token, ``collections`` filter and
  links would all see the versioned names, so the API layer would grow a second translator;
* load in **one PostgreSQL transaction**: delete what the new release no longer has, upsert its
  collections and items (pypgstac's own loader, whose per-partition transactions become
  savepoints of ours; a collection with no rows yet is COPied straight into its partition, as
  ``pypgstac load`` does), record the version, refresh the planner's statistics, commit.
  Until the commit every reader sees the old release; after it, the new one; a failure rolls
  everything back and the old release stays served. Partition DDL is transactional in
  PostgreSQL, so it is part of the same unit.

The second is chosen. The API reads with ``default_transaction_isolation = repeatable read``
(see :mod:`lunarchive.catalog.api`), so a search — one ``search()`` call whose PL/pgSQL runs
several queries — also sees a single snapshot, never the commit in the middle of it.

Idempotent: the served version is recorded in ``lunarchive.release_state``; loading that
version again is a no-op, and pypgstac's upsert leaves unchanged rows alone anyway. A load of
a release older than the one served is refused (a slow publisher must not roll the API back),
unless asked for. Loads are serialised by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from posixpath import dirname, normpath
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate

from lunarchive.schemas.errors import ConfigurationError

__all__ = [
    "MAX_INDEXED_VALUES",
    "PGSTAC_VERSION",
    "LoadResult",
    "PropertyKind",
    "ServedRelease",
    "indexed_properties",
    "install_schema",
    "load_release",
    "property_kinds",
    "release_documents",
    "served_release",
]

PGSTAC_VERSION: Final = "0.10.0"
"""The pgstac schema version pypgstac installs (and the API was checked against)."""

PropertyKind = Literal["string", "number", "boolean", "timestamp", "geometry", "null", "other"]

# Properties stac-geoparquet turns into timestamps; the embedded search sees them as times.
_TIME_PROPERTIES: Final = frozenset(
    {"datetime", "start_datetime", "end_datetime", "created", "updated"}
    | {"expires", "published", "unpublished"}
)
_LOCK_KEY: Final = 0x6C756E6172  # "lunar": one publisher loads at a time
_STATE_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS lunarchive;
CREATE TABLE IF NOT EXISTS lunarchive.release_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    collections integer NOT NULL,
    items bigint NOT NULL,
    properties jsonb NOT NULL
);
GRANT USAGE ON SCHEMA lunarchive TO pgstac_read;
GRANT SELECT ON lunarchive.release_state TO pgstac_read;
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_release` did."""

    version: str
    loaded: bool  # False: this version (or a newer one) was already served; nothing changed
    served: str  # the version the API serves after the call
    previous: str | None
    collections: int
    items: int


@dataclass(frozen=True)
class ServedRelease:
    """The release the database serves, and the kind of each searchable property."""

    version: str
    collections: int
    items: int
    properties: Mapping[str, PropertyKind]


@contextmanager
def _pgstac(
    database_url: str, *, autocommit: bool = False
) -> Iterator[tuple[psycopg.Connection[Any], PgstacDB]]:
    """One connection and a PgstacDB bound to it, closed on the way out."""
    pool = ConnectionPool(
        database_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": autocommit}
    )
    try:
        pool.open(wait=True, timeout=30)
    except psycopg.OperationalError as error:
        pool.close()
        raise ConfigurationError(f"cannot connect to the pgstac database: {error}") from None
    except Exception:
        pool.close()
        raise
    try:
        with pool.connection() as conn:
            conn.execute("SET search_path TO pgstac, public")
            if not autocommit:
                conn.commit()
            db = PgstacDB(pool=pool, connection=conn, commit_on_exit=False)
            try:
                yield conn, db
            finally:
                db.connection = None  # the pool takes the connection back, not PgstacDB
    finally:
        pool.close()


def install_schema(database_url: str) -> str:
    """Install or upgrade pgstac (``pypgstac migrate``) and lunarchive's state table.

    Needs PostGIS available to the database (pgstac creates the extension if it may). Safe to
    run again and from several processes at once (an advisory lock serialises them). Returns
    the pgstac version now installed.
    """
    with psycopg.connect(database_url, autocommit=True) as guard:
        guard.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            version = _migrate(database_url)
            # Not on the migration's connection: pgstac's scripts leave it in role pgstac_admin.
            with guard.transaction():
                guard.execute(_STATE_DDL)
        finally:
            guard.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return str(version)


def _migrate(database_url: str, *, attempts: int = 5) -> str:
    """``pypgstac migrate``, again when another database of the cluster was migrating at the
    same moment: pgstac's roles are cluster-wide, the advisory lock is per database, and
    PostgreSQL then refuses one of the two role updates ("tuple concurrently updated")."""
    for attempt in range(1, attempts + 1):
        try:
            with _pgstac(database_url, autocommit=True) as (conn, db):
                version = Migrate(db).run_migration()
                conn.rollback()  # Migrate leaves the connection out of autocommit
            return str(version)
        except psycopg.errors.InternalError as error:
            if "concurrently updated" not in str(error) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def served_release(database_url: str) -> ServedRelease | None:
    """The release the database serves now (None before the first load)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT version, collections, items, properties FROM lunarchive.release_state"
        ).fetchone()
    if row is None:
        return None
    return ServedRelease(str(row[0]), int(row[1]), int(row[2]), dict(row[3]))


def load_release(
    database_url: str,
    version: str,
    collections: Iterable[Mapping[str, Any]],
    items: Iterable[Mapping[str, Any]],
    *,
    allow_older: bool = False,
) -> LoadResult:
    """Make ``version`` the served release: exactly these collections and items, atomically.

    Collections and items are STAC dicts (as :func:`release_documents` gives them). Whatever the
    database held that the release lacks is deleted in the same transaction. Raises ValueError
    for a release that does not hold together (an item of an unknown collection, a duplicate
    id); any database error rolls the whole load back and propagates.
    """
    collection_list = [dict(collection) for collection in collections]
    item_list = [dict(item) for item in items]
    _check_release(collection_list, item_list)
    kinds = property_kinds(item_list)
    collection_ids = [str(collection["id"]) for collection in collection_list]
    with _pgstac(database_url) as (conn, db), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute("SELECT version, properties FROM lunarchive.release_state").fetchone()
        previous = str(row[0]) if row is not None else None
        previous_kinds: dict[str, Any] = dict(row[1]) if row is not None else {}
        if previous is not None and (
            previous == version or (previous > version and not allow_older)
        ):
            log.info("pgstac already serves %s; %s not loaded", previous, version)
            return LoadResult(version, False, previous, previous, 0, 0)
        _register_queryables(conn, kinds, indexed_properties(item_list, kinds), previous_kinds)
        _replace(conn, db, collection_list, item_list, collection_ids)
        _analyze(conn)
        conn.execute(
            """
                INSERT INTO lunarchive.release_state
                    (singleton, version, loaded_at, collections, items, properties)
                VALUES (true, %s, now(), %s, %s, %s)
                ON CONFLICT (singleton) DO UPDATE SET
                    version = EXCLUDED.version, loaded_at = EXCLUDED.loaded_at,
                    collections = EXCLUDED.collections, items = EXCLUDED.items,
                    properties = EXCLUDED.properties
                """,
            (version, len(collection_list), len(item_list), Jsonb(kinds)),
        )
    return LoadResult(version, True, version, previous, len(collection_list), len(item_list))


def _replace(
    conn: psycopg.Connection[Any],
    db: PgstacDB,
    collections: list[dict[str, Any]],
    items: list[dict[str, Any]],
    collection_ids: list[str],
) -> None:
    """Inside the caller's transaction: the database's content becomes exactly the release.

    A collection with no rows yet (the first load, a new collection) gets its items by COPY
    straight into its partition, as ``pypgstac load`` does; one already holding rows gets an
    upsert that deletes what the release lacks and leaves unchanged rows unwritten.
    """
    conn.execute("DELETE FROM items WHERE NOT (collection = ANY(%s))", (collection_ids,))
    conn.execute("DELETE FROM collections WHERE NOT (id = ANY(%s))", (collection_ids,))
    filled = {
        str(row[0])
        for row in conn.execute(
            "SELECT id FROM collections c"
            " WHERE EXISTS (SELECT 1 FROM items i WHERE i.collection = c.id)"
        )
    }
    loader = Loader(db)
    loader.load_collections(iter(collections), Methods.upsert)
    if filled:
        _delete_items_not_in(conn, [item for item in items if item["collection"] in filled])
    fresh = [item for item in items if item["collection"] not in filled]
    kept = [item for item in items if item["collection"] in filled]
    if fresh:
        loader.load_items(iter(fresh), Methods.insert)
    if kept:
        loader.load_items(iter(kept), Methods.upsert)


def _analyze(conn: psycopg.Connection[Any]) -> None:
    """Fresh planner statistics for every partition, in the load's transaction.

    Without them the planner guesses that a property filter keeps 1 row in 200 and scans
    whole partitions for it. A sample of 3 000 rows a partition (statistics target 10, not
    100) is enough to tell a collection's instruments and resolutions apart, and a tenth of
    the cost: the sample's item documents are what ANALYZE spends its time on.
    """
    conn.execute("SET LOCAL default_statistics_target = 10")
    names = [
        str(row[0])
        for row in conn.execute(
            "SELECT c.relname FROM pg_partition_tree('pgstac.items') t"
            " JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf"
        )
    ]
    if names:
        conn.execute(
            sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier("pgstac", name) for name in names)
            )
        )
    conn.execute("RESET default_statistics_target")


def _delete_items_not_in(conn: psycopg.Connection[Any], items: list[dict[str, Any]]) -> None:
    """Deletes every item of the filled collections that ``items`` does not hold."""
    conn.execute("CREATE TEMP TABLE lunarchive_keep (collection text, id text) ON COMMIT DROP")
    with conn.cursor() as cur, cur.copy("COPY lunarchive_keep (collection, id) FROM STDIN") as copy:
        for item in items:
            copy.write_row((item["collection"], item["id"]))
    conn.execute(
        """
        DELETE FROM items i WHERE NOT EXISTS (
            SELECT 1 FROM lunarchive_keep k WHERE k.collection = i.collection AND k.id = i.id
        )
        """
    )


_BUILTIN_QUERYABLES: Final = frozenset({"id", "collection", "geometry", "datetime"})
_WRAPPERS: Final[Mapping[str, tuple[str, dict[str, str]]]] = {
    "number": ("to_float", {"type": "number"}),
    "string": ("to_text", {"type": "string"}),
    "timestamp": ("to_tstz", {"type": "string", "format": "date-time"}),
}
MAX_INDEXED_VALUES: Final = 1000
"""A string property with more distinct values than this (a title, a per-item name) gets no
index: nobody filters a catalog on it, and its index would cost as much as the table's."""


def _register_queryables(
    conn: psycopg.Connection[Any],
    kinds: Mapping[str, str],
    indexed: frozenset[str],
    previous: Mapping[str, Any],
) -> None:
    """pgstac queryables for the release's typed properties (replacing the last release's).

    Without them pgstac sorts every property as text ("1935.3" before "50.5"), and its
    ``/queryables`` lists nothing; with a wrapper it compares and sorts numbers and times as
    such. The ``indexed`` ones get a btree index on every partition (pgstac makes it from the
    row's ``property_index_type``), so a filter on them reads the matching rows, not the
    table. Registered before the items are loaded: a new partition is made with the indexes
    and the COPY fills them (cheaper than building each afterwards from the stored items).
    Rows already right are left alone, so their indexes are not rebuilt on every load.
    """
    managed = sorted((set(kinds) | set(previous)) - _BUILTIN_QUERYABLES)
    wanted = {
        name: (
            Jsonb({"title": name, **_WRAPPERS[kind][1]}),
            _WRAPPERS[kind][0],
            "BTREE" if name in indexed else None,
        )
        for name, kind in sorted(kinds.items())
        if name not in _BUILTIN_QUERYABLES and kind in _WRAPPERS
    }
    current = {
        str(row[1]): (int(row[0]), row[2], row[3], row[4])
        for row in conn.execute(
            "SELECT id, name, definition, property_wrapper, property_index_type FROM queryables"
            " WHERE collection_ids IS NULL AND name = ANY(%s)",
            (managed,),
        )
    }
    stale = [
        (row_id, index_type)
        for name, (row_id, definition, wrapper, index_type) in current.items()
        if name not in wanted
        or (definition, wrapper, index_type)
        != (wanted[name][0].obj, wanted[name][1], wanted[name][2])
    ]
    if stale:
        conn.execute("DELETE FROM queryables WHERE id = ANY(%s)", ([row for row, _ in stale],))
    if any(index_type for _, index_type in stale):
        conn.execute("SELECT maintain_partitions('items', true)")  # drop the orphaned indexes
    stale_ids = {row_id for row_id, _ in stale}
    kept = {name for name, row in current.items() if row[0] not in stale_ids}
    new = [(name, *row) for name, row in wanted.items() if name not in kept]
    if new:
        with conn.cursor() as cur:  # one statement: pgstac's trigger indexes once per statement
            cur.execute(
                "INSERT INTO queryables (name, definition, property_wrapper, property_index_type)"
                " SELECT * FROM unnest(%s::text[], %s::jsonb[], %s::text[], %s::text[])",
                tuple(list(column) for column in zip(*new, strict=True)),
            )


def _check_release(collections: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    ids = [collection.get("id") for collection in collections]
    if not all(isinstance(value, str) and value for value in ids) or len(set(ids)) != len(ids):
        raise ValueError("every collection needs a unique, non-empty string id")
    known = set(ids)
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (item.get("collection"), item.get("id"))
        if not all(isinstance(part, str) and part for part in key):
            raise ValueError(f"an item lacks a collection or an id: {key!r}")
        if key[0] not in known:
            raise ValueError(f"item {key[1]!r} names collection {key[0]!r}, not in the release")
        if key in seen:
            raise ValueError(f"item {key[1]!r} appears twice in collection {key[0]!r}")
        seen.add((str(key[0]), str(key[1])))


def property_kinds(items: Iterable[Mapping[str, Any]]) -> dict[str, PropertyKind]:
    """What a filter may do with each property, read as stac-geoparquet would type it.

    The embedded search names exactly the columns of the release's stac-geoparquet file; this
    gives the API the same names and kinds, so both refuse the same filters.
    """
    types: dict[str, set[type]] = {}
    for item in items:  # the types first, their kinds once: this loop sees every value
        for name, value in (item.get("properties") or {}).items():
            known = types.get(name)
            if known is None:
                types[name] = {type(value)}
            else:
                known.add(type(value))
    seen = {name: {_TYPE_KINDS.get(t, "other") for t in known} for name, known in types.items()}
    kinds: dict[str, PropertyKind] = {
        "id": "string",
        "collection": "string",
        "geometry": "geometry",
    }
    for name, found in seen.items():
        values = found - {"null"}
        kind: PropertyKind
        if name in _TIME_PROPERTIES:
            kind = "timestamp"
        elif not values:
            kind = "null"
        elif len(values) == 1:
            kind = _as_kind(values.pop())
        else:
            kind = "other"
        kinds.setdefault(name, kind)
    return dict(sorted(kinds.items()))


def indexed_properties(
    items: Iterable[Mapping[str, Any]], kinds: Mapping[str, PropertyKind]
) -> frozenset[str]:
    """The properties worth an index: numbers that vary, and strings that vary among at most
    :data:`MAX_INDEXED_VALUES` values (mission, instrument, product type; not a title)."""
    open_: dict[str, set[Any]] = {
        name: set()
        for name, kind in kinds.items()
        if kind in ("number", "string") and name not in _BUILTIN_QUERYABLES
    }
    varied: set[str] = set()
    for item in items:
        if not open_:
            break
        properties = item.get("properties") or {}
        for name, values in list(open_.items()):
            value = properties.get(name)
            if value is None:
                continue
            values.add(value)
            if kinds[name] == "number" and len(values) > 1:
                varied.add(name)
                del open_[name]  # a number that varies is indexed: no need to count further
            elif len(values) > MAX_INDEXED_VALUES:
                del open_[name]  # a per-item string: never indexed
    return frozenset(varied | {name for name, values in open_.items() if len(values) > 1})


_TYPE_KINDS: Final[Mapping[type, str]] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
}  # the types json.loads gives; anything else (list, dict) is "other"


def _as_kind(text: str) -> PropertyKind:
    kinds: dict[str, PropertyKind] = {
        "boolean": "boolean",
        "number": "number",
        "string": "string",
    }
    return kinds.get(text, "other")


def release_documents(
    files: Mapping[str, bytes], *, base_href: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The collections and items of a release, from its files keyed relative to its root.

    ``files`` is :attr:`ReleaseDraft.files` (or the same keys read back from the store):
    ``<collection>/collection.json`` and ``<collection>/<item>/<item>.json``. With
    ``base_href`` (the URL of the release root, ending in ``/``) relative asset hrefs become
    absolute, so API clients can fetch them; links are dropped except ``derived_from`` and
    ``license`` ones (the API writes its own navigation links).
    """
    collections: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for key, data in sorted(files.items()):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == "collection.json":
            collection = json.loads(data)
            collection["links"] = _kept_links(collection, key, base_href)
            collections.append(collection)
        elif len(parts) == 3 and parts[2] == f"{parts[1]}.json":
            item = json.loads(data)
            if item.get("type") != "Feature":
                continue
            item["links"] = _kept_links(item, key, base_href)
            for asset in (item.get("assets") or {}).values():
                asset["href"] = _absolute(asset.get("href", ""), key, base_href)
            items.append(item)
    return collections, items


def _kept_links(document: Mapping[str, Any], key: str, base_href: str | None) -> list[Any]:
    kept = []
    for link in document.get("links") or []:
        if isinstance(link, dict) and link.get("rel") in ("derived_from", "license"):
            kept.append(link | {"href": _absolute(str(link.get("href", "")), key, base_href)})
    return kept


def _absolute(href: str, key: str, base_href: str | None) -> str:
    """``href`` as written in the file at ``key``, resolved against the release root."""
    if base_href is None or "://" in href or href.startswith("/"):
        return href
    resolved = normpath(f"{dirname(key)}/{href}") if dirname(key) else normpath(href)
    parts = resolved.split("/")
    base = base_href.rstrip("/").split("/")
    while parts and parts[0] == "..":
        parts.pop(0)
        if len(base) > 3:  # never climb above scheme://host
            base.pop()
    return "/".join(base + [part for part in parts if part != "."])
