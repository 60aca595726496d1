"""Embedded search over one release's stac-geoparquet file, with DuckDB and CQL2.

Why this shape: the embedded deployment has no server (DESIGN.md, "Search engine"), and a
release's items are one immutable stac-geoparquet file. The file is read once into Arrow and
kept open (a few releases, read again when the file changes) with a private in-memory DuckDB
table of its searchable columns, loaded once, and no file access at all; each search runs one
parameterised query built by :mod:`lunarchive.catalog._cql2sql` that picks the row numbers of
one page, and only those rows are turned into STAC item dicts, the way stac-geoparquet does,
but in bulk. Opening once and materialising 100 rows instead of every match is what makes a
search take milliseconds, not a second (issue 7, "Speed"). A store's release file is fetched
once into a local cache, named by its sha256 in the release manifest and checked against it
when read, so a search of a store costs one read of the release pointer, and a new release is
seen at once. ``sortby``, ``fields`` and paging follow pgstac's semantics
(:mod:`lunarchive.catalog._search_params`), so the embedded search and the STAC API give the
same items in the same order with the same fields. A page's ``next`` token is the offset of the
next page plus a fingerprint of the search: the file never changes and the order is total, so
offsets are stable. A bad request raises :class:`~lunarchive.schemas.errors.InvalidFilter`
with one readable line (RELIABILITY.md R17), which the API turns into a 400.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import duckdb.func
import duckdb.sqltypes
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pystac
import shapely
from stac_geoparquet.arrow._batch import StacArrowBatch

from lunarchive.catalog._cql2sql import (
    Area,
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
from lunarchive.catalog._search_params import (
    FieldSet,
    SortKey,
    apply_fields,
    parse_fields,
    parse_sortby,
    sortby_with_tiebreakers,
)
from lunarchive.catalog.layout import LATEST_KEY, release_prefix
from lunarchive.catalog.store import Store
from lunarchive.schemas.errors import ConfigurationError, InvalidFilter, TransientError
from lunarchive.schemas.parquet import read_parquet_bytes
from lunarchive.schemas.release import ManifestEntry, ReleasePointer

__all__ = [
    "CACHED_FILES",
    "DEFAULT_CACHE_DIR",
    "MAX_IDS",
    "SearchPage",
    "SearchQuery",
    "next_token",
    "release_items",
    "search",
    "search_items",
    "search_page",
    "search_release",
]

MAX_IDS: Final = 10_000
"""Most item ids in one search."""
_TOKEN: Final = re.compile(r"^(\d{1,12})\.([0-9a-f]{16})$")


@dataclass(frozen=True)
class SearchQuery:
    """One search, in the terms of the STAC API item search.

    ``bbox`` is lunar lon/lat degrees (-180..180, or 0..360); ``minx > maxx`` means it
    crosses +-180; 6 numbers are searched by their 2D footprint. ``intersects`` is a GeoJSON
    geometry (not with ``bbox``). ``datetime`` is an RFC 3339 instant or an interval ``a/b``
    (``..`` or '' for an open end). ``filter_lang`` None means: a dict is cql2-json, a string
    is cql2-text. ``sortby`` is ``'-datetime,id'`` or ``[{"field": ..., "direction": ...}]``
    (None: ``datetime`` descending); ``fields`` is ``'id,-assets'`` or ``{"include": [...],
    "exclude": [...]}``. ``limit`` None returns every match; ``token`` is a page's ``next``.
    """

    bbox: tuple[float, ...] | None = None
    datetime: str | None = None
    collections: tuple[str, ...] = ()
    filter: str | dict[str, Any] | None = None
    filter_lang: Literal["cql2-text", "cql2-json"] | None = None
    limit: int | None = None
    ids: tuple[str, ...] = ()
    intersects: Mapping[str, Any] | None = None
    sortby: str | Sequence[Mapping[str, str]] | None = None
    fields: str | Mapping[str, Any] | None = None
    token: str | None = None


@dataclass(frozen=True)
class SearchPage:
    """One page of results: item dicts, and the token of the next page (None: the last)."""

    features: list[dict[str, Any]]
    next: str | None


@dataclass(frozen=True)
class _Checked:
    """A query whose parts have all been checked before the file is opened."""

    box: Box | None
    area: Area | None
    span: TimeRange | None
    collections: tuple[str, ...]
    ids: tuple[str, ...]
    parsed: ParsedFilter | None
    fields: FieldSet | None
    limit: int | None
    offset: int
    fingerprint: str


def search(
    source: Store | str | Path, query: SearchQuery, *, cache_dir: Path | None = None
) -> pystac.ItemCollection:
    """The researcher's entry point: items matching ``query`` as a pystac ``ItemCollection``.

    ``source`` is a store (its current release is searched) or a stac-geoparquet file. The
    token of the next page, if any, is ``next_token(result)``. With ``fields`` that drop what
    a pystac Item needs (id, geometry, properties), use :func:`search_page` for plain dicts.
    Searching a store gives absolute asset hrefs (``file://…``, ``s3://…``), so that a
    researcher can open them as they are; a file's items keep the hrefs it holds. A store's
    release file is kept in ``cache_dir`` (default :data:`DEFAULT_CACHE_DIR`).
    """
    if isinstance(source, str | Path):
        page = search_page(Path(source), query)
        extra: dict[str, Any] = {}
    else:
        checked = _check_query(query)
        version, release = _store_release(source, cache_dir)
        page = _search(release, query, checked)
        extra = {"lunarchive:release": version}
        root = f"{source.url.rstrip('/')}/{release_prefix(version)}"
        for feature in page.features:
            for asset in (feature.get("assets") or {}).values():
                if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                    asset["href"] = absolute_href(root, asset["href"])
    try:
        items = [_pystac_item(feature) for feature in page.features]
    except (KeyError, TypeError, ValueError, pystac.STACError, pystac.STACTypeError) as error:
        raise InvalidFilter(
            f"these fields leave items pystac cannot read ({type(error).__name__}); "
            "use search_page() for partial items"
        ) from None
    extra |= {"numberReturned": len(items)} | ({"next": page.next} if page.next else {})
    # The items are new and ours alone: pystac's copy of each would be wasted time.
    return pystac.ItemCollection(items, extra_fields=extra, clone_items=False)


def absolute_href(root: str, href: str) -> str:
    """``href`` (relative to the release root ``root``, a URL) as an absolute URL.

    Not ``urllib.parse.urljoin``: it leaves relative references alone for schemes it does not
    know, ``s3://`` among them.
    """
    if "://" in href or href.startswith("/"):
        return href
    scheme, rest = root.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, href))}"


def next_token(collection: pystac.ItemCollection) -> str | None:
    """The token to pass as ``SearchQuery(token=...)`` for the next page, None on the last."""
    token = collection.extra_fields.get("next")
    return str(token) if token else None


def search_items(parquet_path: Path, query: SearchQuery) -> list[dict[str, Any]]:
    """Items of ``parquet_path`` matching ``query`` (one page when ``limit`` is given).

    Raises InvalidFilter for a bad query, FileNotFoundError when the file is missing.
    """
    return search_page(parquet_path, query).features


def search_page(parquet_path: Path, query: SearchQuery) -> SearchPage:
    """One page of items of ``parquet_path`` matching ``query``, in ``sortby`` order."""
    checked = _check_query(query)
    path = Path(parquet_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no stac-geoparquet file at {path}")
    return _search(_open(path), query, checked)


def search_release(
    store: Store, query: SearchQuery, *, cache_dir: Path | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """The current release's version and its items matching ``query`` (one page)."""
    checked = _check_query(query)
    version, release = _store_release(store, cache_dir)
    return version, _search(release, query, checked).features


@contextmanager
def release_items(store: Store, *, cache_dir: Path | None = None) -> Iterator[tuple[str, Path]]:
    """The current release's version and a local copy of its stac-geoparquet file.

    The copy is the cached one (see :func:`search`): it stays for the next search, so every
    page of a search reads the same release even if another is published meanwhile.
    """
    version, entry = _current_release(store)
    yield version, _fetch_verified(store, entry, _cache_folder(cache_dir))[0]


def _search(release: _Release, query: SearchQuery, checked: _Checked) -> SearchPage:
    """One page of ``release``'s items matching ``query`` (already checked as ``checked``)."""
    keys = parse_sortby(query.sortby, release.columns) if query.sortby is not None else ()
    translator = Translator(release.columns)
    where = _where(translator, checked)
    if checked.parsed is not None:
        validate_filter(checked.parsed)
    fetch = checked.limit + 1 if checked.limit is not None else None
    statement = _select(release.columns, where, keys, fetch, checked.offset)
    numbers = release.row_numbers(statement, translator.areas)
    more = bool(checked.limit) and len(numbers) > (checked.limit or 0)  # limit 0: no next page
    numbers = numbers[: checked.limit] if checked.limit is not None else numbers
    rows, clean = _to_items(release.table.take(numbers)) if numbers else ([], frozenset())
    token = f"{checked.offset + len(rows)}.{checked.fingerprint}" if more else None
    return SearchPage([apply_fields(row, checked.fields, clean=clean) for row in rows], token)


def _pystac_item(feature: dict[str, Any]) -> pystac.Item:
    """``feature`` as a pystac Item, taking it over (it is not used again).

    pystac migrates every dict it reads to its own STAC and extension versions, which costs
    more than the rest of a search; an item already at those versions (what pystac writes,
    so every item lunarchive publishes) is left alone by it, so that step is skipped for them.
    """
    current = feature.get("stac_version") == pystac.get_stac_version() and all(
        isinstance(uri, str) and _pystac_keeps(uri) for uri in feature.get("stac_extensions", ())
    )
    return pystac.Item.from_dict(feature, preserve_dict=False, migrate=not current)


@functools.lru_cache(maxsize=256)
def _pystac_keeps(uri: str) -> bool:
    """Whether pystac's migration leaves an item's extension ``uri`` as it is (asked of pystac
    itself, once per URI: it rewrites old versions and short names to its current schema)."""
    probe = {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [uri],
        "id": "probe",
        "geometry": None,
        "properties": {"datetime": "2000-01-01T00:00:00Z"},
        "links": [],
        "assets": {},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        migrated = pystac.Item.from_dict(probe, migrate=True)
    return migrated.stac_extensions == [uri]


def _check_query(query: SearchQuery) -> _Checked:
    """Everything that needs no file: fail fast on a malformed request."""
    collections = _strings(query.collections, "collections", "collection ids")
    ids = _strings(query.ids, "ids", "item ids")
    if len(ids) > MAX_IDS:
        raise InvalidFilter(f"ids lists {len(ids)} items; at most {MAX_IDS} are allowed")
    limit = query.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidFilter(f"limit must be a whole number of items, 0 or more, got {quote(limit)}")
    if query.bbox is not None and query.intersects is not None:
        raise InvalidFilter("give bbox or intersects, not both")
    parsed = parse_filter(query.filter, query.filter_lang) if query.filter is not None else None
    if query.sortby is not None and not isinstance(query.sortby, str | list | tuple | Mapping):
        raise InvalidFilter(f"sortby must be text or a list, got {quote(query.sortby)}")
    fingerprint = _fingerprint(query, parsed)
    return _Checked(
        box=check_bbox(query.bbox) if query.bbox is not None else None,
        area=_intersects(query.intersects) if query.intersects is not None else None,
        span=parse_datetime_param(query.datetime) if query.datetime is not None else None,
        collections=collections,
        ids=ids,
        parsed=parsed,
        fields=parse_fields(query.fields),
        limit=limit,
        offset=_token_offset(query.token, fingerprint),
        fingerprint=fingerprint,
    )


def _strings(value: object, name: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise InvalidFilter(f"{name} must be a list of {what}, got {quote(value)}")
    return tuple(value)


def _intersects(geometry: object) -> Area:
    if not isinstance(geometry, Mapping) or "type" not in geometry:
        raise InvalidFilter(f"intersects must be a GeoJSON geometry, got {quote(geometry)}")
    if geometry.get("type") in ("Feature", "FeatureCollection"):
        raise InvalidFilter("intersects must be a GeoJSON geometry, not a Feature")
    return Area.from_geojson(geometry)


def _fingerprint(query: SearchQuery, parsed: ParsedFilter | None) -> str:
    """What makes a search this search (not its limit, token or fields): a token from another
    search would page through the wrong list."""
    what = [
        query.bbox,
        query.intersects,
        query.datetime,
        sorted(query.collections) if isinstance(query.collections, tuple | list) else None,
        sorted(query.ids) if isinstance(query.ids, tuple | list) else None,
        parsed.tree if parsed is not None else None,
        query.sortby,
    ]
    text = json.dumps(what, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _token_offset(token: object, fingerprint: str) -> int:
    if token is None:
        return 0
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise InvalidFilter(f"paging token {quote(token)} is not one this search gave out")
    if match.group(2) != fingerprint:
        raise InvalidFilter(
            f"paging token {quote(token)} belongs to another search; "
            "page with the same query, or start again without a token"
        )
    return int(match.group(1))


class _Release:
    """One opened stac-geoparquet file: its rows in memory and a DuckDB that sees only them.

    Opening costs a file read and a DuckDB table load (hundreds of milliseconds for 100 000
    items); a search on an open release costs milliseconds, so releases are kept open
    (:func:`_open`, :func:`_store_release`). DuckDB gets a copy of the searchable columns plus
    a row-number column as its own in-memory table, which it scans faster than Arrow (with the
    bbox and time comparisons pushed into the scan), and has no file access at all: the SQL is
    built from parameters and schema names only, and this lock-down is the second wall. A
    search asks DuckDB for the row numbers of one page, and only those rows become items. UTC
    matters for the filter's timestamps; the lock because a DuckDB connection runs one
    statement at a time and the spatial UDFs are registered per search.
    """

    def __init__(self, table: pa.Table, stamp: tuple[int, int, int] | None = None) -> None:
        self.stamp = stamp
        self.table = table
        # What DuckDB holds: the rows in a spatial order (numbered by their place in the file),
        # without the columns no filter or sort can name.
        order = _spatial_order(table)
        searched = table.drop_columns(
            [name for name in _NEVER_SEARCHED if name in table.column_names]
        )
        numbered = _for_duckdb(searched.take(order)).append_column(_ROW, pa.array(order))
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
        self.lock = threading.Lock()
        self.con = duckdb.connect(":memory:", config=config)
        try:
            self.con.execute("SET TimeZone = ?", ["UTC"])
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET python_enable_replacements = false")
            self.con.register(_SOURCE, numbered)
            self.con.execute(f"CREATE TABLE {_ITEMS} AS SELECT * FROM {_SOURCE}")
            self.con.unregister(_SOURCE)
            self.con.execute("SET lock_configuration = true")
            rows = self.con.execute(f"DESCRIBE {_ITEMS}").fetchall()
        except BaseException:
            self.con.close()
            raise
        # Column names and DuckDB types: the only identifiers a filter may reach.
        self.columns = Columns.from_schema(
            (str(row[0]), str(row[1])) for row in rows if str(row[0]) != _ROW
        )

    def row_numbers(self, statement: Sql, areas: Sequence[Area]) -> list[int]:
        """Run ``statement`` (which selects the row-number column) with one UDF per area."""
        blob, boolean = duckdb.sqltypes.BLOB, duckdb.sqltypes.BOOLEAN
        with self.lock:
            names: list[str] = []
            try:
                # DuckDB has no spatial predicates here: shapely does the exact test.
                for index, area in enumerate(areas):
                    name = Translator.udf_name(index)
                    udf = make_intersects_udf(area)
                    self.con.create_function(name, udf, [blob], boolean, type=duckdb.func.ARROW)
                    names.append(name)
                found = self.con.execute(statement.text, list(statement.params)).fetchall()
            finally:
                for name in names:
                    self.con.remove_function(name)
        return [int(row[0]) for row in found]


def _spatial_order(table: pa.Table) -> npt.NDArray[np.int64]:
    """Row numbers in Z-order of their bbox's south-west corner on a grid of 5-degree cells.

    DuckDB calls the spatial UDF once per batch of rows that pass the bbox prefilter; with the
    rows in file order the few that pass a small box are spread over every batch, and the calls
    cost more than the test. Kept near each other, they take a handful of calls. The order of
    the results is the ``ORDER BY``'s, not this one.
    """
    rows = np.arange(table.num_rows, dtype=np.int64)
    if "bbox" not in table.column_names or not pa.types.is_struct(table.schema.field("bbox").type):
        return rows
    bbox = table.column("bbox")
    if not {"xmin", "ymin"} <= {field.name for field in bbox.type}:
        return rows
    cells = [
        np.clip(
            np.nan_to_num(
                (pc.struct_field(bbox, name).to_numpy(zero_copy_only=False) + offset) / _CELL,
                nan=0.0,
            ),
            0,
            2**_CELL_BITS - 1,
        ).astype(np.uint32)
        for name, offset in (("xmin", 180.0), ("ymin", 90.0))
    ]
    key = np.zeros(table.num_rows, dtype=np.uint32)
    for bit in range(_CELL_BITS):
        key |= ((cells[0] >> bit) & 1) << (2 * bit) | ((cells[1] >> bit) & 1) << (2 * bit + 1)
    ordered: npt.NDArray[np.int64] = rows[np.argsort(key, kind="stable")]
    return ordered


_CELL: Final = 5.0
_CELL_BITS: Final = 7
_NEVER_SEARCHED: Final = ("assets", "links")
"""Columns a filter or sort can never name (Columns.lookup refuses them): not given to DuckDB."""


def _for_duckdb(table: pa.Table) -> pa.Table:
    """The table with its footprint as plain WKB: as DuckDB's GEOMETRY every footprint would
    be converted on every scan, and the spatial test (shapely, in a UDF) wants WKB anyway."""
    if "geometry" not in table.column_names:
        return table
    index = table.schema.get_field_index("geometry")
    field = table.schema.field(index)
    return table.set_column(index, field.remove_metadata(), table.column(index))


DEFAULT_CACHE_DIR: Final = Path("~/.cache/lunarchive/search")
"""Where a store's release files are kept between searches (``cache_dir`` None)."""
CACHED_FILES: Final = 3
"""Release files kept in a cache folder: the current release and the two before it."""
_OPEN_RELEASES: Final = 2
"""Releases kept open: the current one, and the one before while a reader switches."""
_KNOWN_MANIFESTS: Final = 16
_ITEMS: Final = "items"
_SOURCE: Final = "lunarchive_source"
_ROW: Final = "lunarchive:row"
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_PART_TTL_S: Final = 86_400.0
# Open releases, by file (searched again when the file changes) or by the sha256 of a store's
# release file (content-addressed: it never changes).
_releases: OrderedDict[Path | str, _Release] = OrderedDict()
_releases_lock = threading.Lock()
_opening = threading.Lock()
# (store URL, manifest key) -> its items.parquet entry: a manifest never changes once written,
# and reading one again (22 MB for 100 000 items) would cost more than the search.
_manifests: OrderedDict[tuple[str, str], ManifestEntry] = OrderedDict()


def _open(path: Path) -> _Release:
    """The open release for ``path``, opened again when the file has changed since.

    A release dropped from the cache is not closed here: a search in another thread may still
    hold it; its connection closes when the last search lets go of it.
    """
    info = path.stat()
    stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
    release = _cached(path, stamp)
    if release is not None:
        return release
    with _opening:  # one file read at a time, not one per thread that wants the same file
        release = _cached(path, stamp)
        if release is None:
            release = _keep(path, _Release(pq.read_table(path), stamp))
    return release


def _store_release(store: Store, cache_dir: Path | None) -> tuple[str, _Release]:
    """The version of ``store``'s current release, and that release open.

    Once it is open, this costs one read of the release pointer, so a new release is searched
    as soon as it is published.
    """
    version, entry = _current_release(store)
    release = _cached(entry.sha256, None)
    if release is not None:
        return version, release
    with _opening:
        release = _cached(entry.sha256, None)
        if release is None:
            data = _fetch_verified(store, entry, _cache_folder(cache_dir))[1]
            release = _keep(entry.sha256, _Release(read_parquet_bytes(data)))
    return version, release


def _keep(key: Path | str, release: _Release) -> _Release:
    with _releases_lock:
        _releases[key] = release
        _releases.move_to_end(key)
        while len(_releases) > _OPEN_RELEASES:
            _releases.popitem(last=False)
    return release


def _cached(key: Path | str, stamp: tuple[int, int, int] | None) -> _Release | None:
    with _releases_lock:
        release = _releases.get(key)
        if release is None or release.stamp != stamp:
            return None
        _releases.move_to_end(key)
        return release


def _current_release(store: Store) -> tuple[str, ManifestEntry]:
    """The current version of ``store`` and its manifest's entry for ``items.parquet``."""
    tagged = store.read_tagged(LATEST_KEY)
    if tagged is None:
        raise ConfigurationError(
            f"{store.url}: no release is published yet (run `lunarchive pipeline` first)"
        )
    pointer = ReleasePointer.model_validate_json(tagged[0])
    known = (store.url, pointer.manifest)
    with _releases_lock:
        entry = _manifests.get(known)
    if entry is None:
        entry = _items_entry(store, pointer)
        with _releases_lock:
            _manifests[known] = entry
            while len(_manifests) > _KNOWN_MANIFESTS:
                _manifests.popitem(last=False)
    return pointer.version, entry


def _items_entry(store: Store, pointer: ReleasePointer) -> ManifestEntry:
    """The manifest's entry for the release's stac-geoparquet file. Only that entry is
    validated: the whole manifest as a model takes half a second for 100 000 items."""
    document = json.loads(store.read(pointer.manifest))
    key = release_prefix(pointer.version) + "items.parquet"
    if not isinstance(document, dict) or document.get("version") != pointer.version:
        raise ConfigurationError(
            f"{store.url}/{pointer.manifest}: not the manifest of release {pointer.version}"
        )
    for entry in document.get("objects") or ():
        if isinstance(entry, dict) and entry.get("key") == key:
            return ManifestEntry.model_validate(entry)
    raise ConfigurationError(f"{store.url}: release {pointer.version} has no items.parquet")


def _cache_folder(cache_dir: Path | None) -> Path:
    return (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def _fetch_verified(store: Store, entry: ManifestEntry, folder: Path) -> tuple[Path, bytes]:
    """The cached copy of ``entry`` (``<sha256>.parquet`` in ``folder``) and its bytes,
    fetched first when it is missing or differs from the manifest.

    Safe across threads and processes: a copy is fetched under a unique name, checked, and
    renamed into place; two processes fetching at once rename equal bytes.
    """
    path = folder / f"{entry.sha256}.parquet"
    data = _intact(path, entry)
    if data is not None:
        with suppress(OSError):
            os.utime(path)  # last use, for the eviction
        return path, data
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{entry.sha256}.{uuid.uuid4().hex}.part"
    try:
        store.download(entry.key, part)
        data = part.read_bytes()
        if _digest(data) != entry.sha256 or len(data) != entry.size:
            raise TransientError(
                f"{store.url}/{entry.key}: the fetched bytes differ from the manifest's "
                f"{entry.size} bytes with sha256 {entry.sha256}"
            )
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    _evict(folder, path)
    return path, data


def _intact(path: Path, entry: ManifestEntry) -> bytes | None:
    """The bytes of ``path`` if they are the manifest's, else None (and a damaged copy goes)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) == entry.size and _digest(data) == entry.sha256:
        return data
    path.unlink(missing_ok=True)
    return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _evict(folder: Path, keep: Path) -> None:
    """Keep the :data:`CACHED_FILES` release files used last (``keep`` among them), and drop
    the part files of fetches that died more than a day ago."""
    copies = [p for p in folder.glob("*.parquet") if _DIGEST.fullmatch(p.stem) and p != keep]
    copies.sort(key=_last_use, reverse=True)
    for old in copies[CACHED_FILES - 1 :]:
        old.unlink(missing_ok=True)
    for part in folder.glob(".*.part"):
        if _last_use(part) < time.time() - _PART_TTL_S:
            part.unlink(missing_ok=True)


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # another process evicted it just now
        return 0.0


def _to_items(table: pa.Table) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """stac-geoparquet's rows -> item dicts, without its slow per-row step; and the top-level
    members that hold no null in any of them (the null walk of ``apply_fields`` skips those).

    stac-geoparquet lowers the columns back to item shape (``to_json_batch``), then converts
    each row and each geometry one Python call at a time: for 100 rows that is most of a
    search. Here the rows come out in one ``to_pylist`` and the geometries in one vectorised
    ``shapely.to_geojson`` read by one ``json.loads``; the result is the same dicts (checked
    against ``stac_table_to_items``). Empty or non-finite geometries, which GEOS writes
    differently, take stac-geoparquet's own path.
    """
    items: list[dict[str, Any]] = []
    clean: frozenset[str] | None = None
    for batch in table.to_batches():
        lowered = StacArrowBatch(batch).to_json_batch().inner
        free = {
            name
            for name, column in zip(lowered.schema.names, lowered.columns, strict=True)
            if name != "geometry" and _null_free(column)
        }
        clean = frozenset(free) if clean is None else clean & free
        paths = _geometry_paths(lowered.schema)
        geometries = [_geojson_column(_column_at(lowered, path)) for path in paths]
        for index, row in enumerate(lowered.to_pylist()):
            for path, column in zip(paths, geometries, strict=True):
                _set_path(row, path, column[index])
            assets = row.setdefault("assets", {})
            if assets and isinstance(assets, dict):
                row["assets"] = {key: value for key, value in assets.items() if value is not None}
            items.append(row)
    return items, clean or frozenset()


def _null_free(array: pa.Array) -> bool:
    """Whether ``array`` holds no null at any depth, so its Python values hold no None.
    Children are checked whole (a superset of the rows); a type not known here may hold nulls."""
    if array.null_count:
        return False
    kind = array.type
    if pa.types.is_struct(kind):
        return all(_null_free(array.field(index)) for index in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _null_free(array.values)
    if pa.types.is_map(kind):
        return _null_free(array.keys) and _null_free(array.items)
    return not (pa.types.is_nested(kind) or pa.types.is_dictionary(kind))


def _geometry_paths(schema: pa.Schema) -> list[tuple[str, ...]]:
    """Where WKB geometries sit in a lowered batch: the footprint and any ``proj:geometry``."""
    paths: list[tuple[str, ...]] = [("geometry",)]
    if "properties" in schema.names:
        properties = schema.field("properties").type
        if pa.types.is_struct(properties) and properties.get_field_index("proj:geometry") >= 0:
            paths.append(("properties", "proj:geometry"))
    if "assets" in schema.names and pa.types.is_struct(schema.field("assets").type):
        for asset in schema.field("assets").type:
            if pa.types.is_struct(asset.type) and asset.type.get_field_index("proj:geometry") >= 0:
                paths.append(("assets", asset.name, "proj:geometry"))
    return paths


def _column_at(batch: pa.RecordBatch, path: tuple[str, ...]) -> pa.Array:
    column = batch.column(path[0])
    for name in path[1:]:
        column = pc.struct_field(column, name)
    return column


def _set_path(row: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = row
    for name in path[:-1]:
        node = node[name]
        if not isinstance(node, dict):  # an asset this item lacks: its geometry is null too
            return
    node[path[-1]] = value


def _geojson_column(column: pa.Array) -> list[Any]:
    """Each WKB of ``column`` as GeoJSON (None for a null): GEOS's text, all read by one
    ``json.loads``, where GEOS writes what stac-geoparquet would; shapely's mapping elsewhere."""
    shapes = shapely.from_wkb(column)
    texts = shapely.to_geojson(shapes)
    empty = shapely.is_empty(shapes)
    out: list[Any] = [None] * len(shapes)
    fast: list[int] = []
    for index, (shape, text, blank) in enumerate(zip(shapes, texts, empty, strict=True)):
        if shape is None:
            continue
        if not blank and text is not None and "null" not in text:
            fast.append(index)
        else:
            out[index] = _mapping(shape)
    parsed = json.loads("[" + ",".join(texts[index] for index in fast) + "]")
    for index, geometry in zip(fast, parsed, strict=True):
        out[index] = geometry
    return out


def _mapping(shape: Any) -> dict[str, Any]:
    """A geometry GEOS would write differently (empty, non-finite), the way stac-geoparquet
    writes it: shapely's mapping, with lists for tuples."""
    mapping = dict(shape.__geo_interface__)
    if "coordinates" in mapping:
        mapping["coordinates"] = _lists(mapping["coordinates"])
    return mapping


def _lists(value: Any) -> Any:
    return [_lists(part) for part in value] if isinstance(value, tuple | list) else value


def _where(translator: Translator, checked: _Checked) -> Sql | None:
    """AND of the spatial, datetime, collections, ids and filter conditions (None: none)."""
    parts: list[Sql] = []
    if checked.box is not None:
        parts.append(translator.bbox_condition(checked.box))
    if checked.area is not None:
        parts.append(translator.area_condition(checked.area))
    if checked.span is not None:
        parts.append(translator.time_condition(checked.span))
    if checked.collections:
        parts.append(_member_condition(translator.columns, "collection", checked.collections))
    if checked.ids:
        parts.append(_member_condition(translator.columns, "id", checked.ids))
    if checked.parsed is not None:
        parts.append(translator.condition(checked.parsed.tree))
    return join(" AND ", parts) if parts else None


def _member_condition(columns: Columns, name: str, values: Sequence[str]) -> Sql:
    """Items whose ``name`` is one of ``values``; a file without that column matches none."""
    if not columns.has(name):
        return sql("CAST({} AS BOOLEAN)", param(False))
    column = Sql(quote_identifier(name))
    return sql("list_contains(CAST({} AS VARCHAR[]), {})", param(list(values)), column)


def _sort_expression(columns: Columns, field: str) -> str | None:
    """What pgstac sorts ``field`` by: its ``datetime`` column is the item's datetime or else
    its start, its ``end_datetime`` the end or else the datetime."""
    order = {
        "datetime": ("datetime", "start_datetime"),
        "start_datetime": ("datetime", "start_datetime"),
        "end_datetime": ("end_datetime", "datetime"),
    }.get(field, (field,))
    names = [quote_identifier(name) for name in order if columns.has(name)]
    if not names:
        return None
    return names[0] if len(names) == 1 else f"COALESCE({', '.join(names)})"


def _order_by(columns: Columns, keys: tuple[SortKey, ...]) -> str:
    """ORDER BY text (schema names only): PostgreSQL puts nulls last ascending, first
    descending, and so do we."""
    parts = []
    for key in sortby_with_tiebreakers(keys):
        expression = _sort_expression(columns, key.field)
        if expression is not None:
            nulls = "LAST" if key.direction == "asc" else "FIRST"
            parts.append(f"{expression} {key.direction.upper()} NULLS {nulls}")
    return ", ".join(parts)


def _select(
    columns: Columns,
    where: Sql | None,
    keys: tuple[SortKey, ...],
    limit: int | None,
    offset: int,
) -> Sql:
    """The whole statement: the row numbers of one page, in order (the rows come from Arrow)."""
    order = _order_by(columns, keys)
    text = f"SELECT {quote_identifier(_ROW)} FROM {_ITEMS}"
    parts: list[Sql] = []
    if where is not None:
        text += " WHERE {}"
        parts.append(where)
    text += f" ORDER BY {order}, " if order else " ORDER BY "
    text += quote_identifier(_ROW)
    if limit is not None:
        text += " LIMIT {}"
        parts.append(param(limit))
    if offset:
        text += " OFFSET {}"
        parts.append(param(offset))
    return sql(text, *parts)
