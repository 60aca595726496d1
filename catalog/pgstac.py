"""Serve a release from pgstac: install the schema, load a release, say which one is served.

Why one transaction per release: the STAC API must serve the current release and never a
half-loaded one (issue 7). Two ways were weighed:

* load under versioned collection ids (``lola@v2``) and switch atomically: every response
  would need its ids rewritten back, and a client's paging token, ``collections`` filter and
  links would all see the versioned names, so the API layer would grow a second translator;
* load in **one PostgreSQL transaction**: delete what the new release no longer has, upsert its
  collections and items (pypgstac's own loader, whose per-partition transactions become
  savepoints of ours), record the version, commit. Until the commit every reader sees the
  old release; after it, the new one; a failure rolls everything back and the old release
  stays served. Partition DDL is transactional in PostgreSQL, so it is part of the same unit.

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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from posixpath import dirname, normpath
from typing import Any, Final, Literal

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate

from lunarchive.schemas.errors import ConfigurationError

__all__ = [
    "PGSTAC_VERSION",
    "LoadResult",
    "PropertyKind",
    "ServedRelease",
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
            with _pgstac(database_url, autocommit=True) as (conn, db):
                version = Migrate(db).run_migration()
                conn.rollback()  # Migrate leaves the connection out of autocommit
            # Not on the migration's connection: pgstac's scripts leave it in role pgstac_admin.
            with guard.transaction():
                guard.execute(_STATE_DDL)
        finally:
            guard.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return str(version)


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
        _replace(conn, db, collection_list, item_list, collection_ids)
        _register_queryables(conn, kinds, previous_kinds)
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
    """Inside the caller's transaction: the database's content becomes exactly the release."""
    conn.execute("DELETE FROM items WHERE NOT (collection = ANY(%s))", (collection_ids,))
    conn.execute("DELETE FROM collections WHERE NOT (id = ANY(%s))", (collection_ids,))
    loader = Loader(db)
    loader.load_collections(iter(collections), Methods.upsert)
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
    if items:
        loader.load_items(iter(items), Methods.upsert)


_BUILTIN_QUERYABLES: Final = frozenset({"id", "collection", "geometry", "datetime"})
_WRAPPERS: Final[Mapping[str, tuple[str, dict[str, str]]]] = {
    "number": ("to_float", {"type": "number"}),
    "string": ("to_text", {"type": "string"}),
    "timestamp": ("to_tstz", {"type": "string", "format": "date-time"}),
}


def _register_queryables(
    conn: psycopg.Connection[Any], kinds: Mapping[str, str], previous: Mapping[str, Any]
) -> None:
    """pgstac queryables for the release's typed properties (replacing the last release's).

    Without them pgstac sorts every property as text ("1935.3" before "50.5"), and its
    ``/queryables`` lists nothing; with a wrapper it compares and sorts numbers and times as
    such. No index is asked for: a load stays one quick transaction.
    """
    managed = sorted((set(kinds) | set(previous)) - _BUILTIN_QUERYABLES)
    conn.execute(
        "DELETE FROM queryables WHERE collection_ids IS NULL AND name = ANY(%s)", (managed,)
    )
    rows = [
        (name, Jsonb({"title": name, **_WRAPPERS[kind][1]}), _WRAPPERS[kind][0])
        for name, kind in sorted(kinds.items())
        if name not in _BUILTIN_QUERYABLES and kind in _WRAPPERS
    ]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO queryables (name, definition, property_wrapper) VALUES (%s, %s, %s)",
                rows,
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
    seen: dict[str, set[str]] = {}
    for item in items:
        for name, value in (item.get("properties") or {}).items():
            seen.setdefault(name, set()).add(_json_kind(value))
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


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "other"


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
