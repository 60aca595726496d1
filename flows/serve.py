"""Keep the STAC API on the current release: load it into pgstac, from ``serve`` or ``publish``.

The release is read from the store through its manifest (the same objects a syncer copies),
or taken from the files a publish just wrote, and loaded into PostgreSQL in one transaction
(``catalog.pgstac.load_release``: a reader sees the old or the new release, never a mix); then
stac-fastapi-pgstac serves it read-only.

The publish flow loads each release right after its pointer flips. The pointer is the truth:
if that load fails, the release stays published and the API keeps serving the one before,
which :func:`update_api` reports (``ApiState.behind``); the next publish, or ``lunarchive
serve``, loads the current release and catches up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from lunarchive.catalog.layout import release_prefix
from lunarchive.catalog.pgstac import (
    LoadResult,
    install_schema,
    load_release,
    release_documents,
    served_release,
)
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.store import Store
from lunarchive.schemas.errors import ConfigurationError, LunarchiveError

__all__ = ["ApiState", "load_current_release", "load_release_files", "release_files", "update_api"]

_NOT_STAC = ("/manifest.json", "/queryables.json")
# What a failed load can raise: the database (unreachable, refused, a failed statement), the
# release (one that does not hold together), the store (reading the release back).
_LOAD_ERRORS = (LunarchiveError, psycopg.Error, ValueError, OSError)


@dataclass(frozen=True)
class ApiState:
    """Whether the STAC API's database serves the current release after a load attempt."""

    current: str  # the store's current release
    served: str | None  # the release pgstac serves (None: nothing, or the database unreadable)
    loaded: bool  # this attempt loaded ``current`` (False: it was served already, or failed)
    error: str | None = None  # why the load failed

    @property
    def behind(self) -> bool:
        return self.served != self.current


def release_files(store: Store) -> tuple[str, dict[str, bytes]]:
    """The current release's version and its STAC JSON files, keyed within the release."""
    current = read_current(store)
    if current is None:
        raise ConfigurationError(f"{store.url}: no release is published yet, nothing to serve")
    pointer, manifest, _ = current
    prefix = release_prefix(pointer.version)
    files = {
        entry.key.removeprefix(prefix): store.read(entry.key)
        for entry in manifest.objects
        if entry.key.startswith(prefix)
        and entry.key.endswith(".json")
        and not entry.key.endswith(_NOT_STAC)
    }
    return pointer.version, files


def load_release_files(
    store: Store,
    database_url: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    asset_base: str | None = None,
) -> LoadResult:
    """Install pgstac if needed and load release ``version`` from its files (keyed within the
    release); a no-op when that release, or a newer one, is served already.

    Asset hrefs are made absolute against ``asset_base`` (default: the store's own URL), so
    that API clients can reach them.
    """
    install_schema(database_url)
    base = (asset_base or store.url).rstrip("/") + f"/{release_prefix(version)}"
    collections, items = release_documents(files, base_href=base)
    return load_release(database_url, version, collections, items)


def load_current_release(
    store: Store, database_url: str, *, asset_base: str | None = None
) -> LoadResult:
    """Install pgstac if needed and load the store's current release (a no-op if loaded)."""
    version, files = release_files(store)
    return load_release_files(store, database_url, version, files, asset_base=asset_base)


def update_api(
    store: Store,
    database_url: str,
    version: str,
    files: Mapping[str, bytes] | None = None,
) -> ApiState:
    """Make the API serve release ``version`` (the current one), and say whether it does.

    ``files`` are the release's files when the caller has them (a publish); otherwise they are
    read from the store. A failed load changes nothing in the database (one transaction) and
    is reported, not raised: the release is published whatever the API's database does.
    """
    try:
        if files is None:
            loaded = load_current_release(store, database_url)
        else:
            loaded = load_release_files(store, database_url, version, files)
    except _LOAD_ERRORS as error:
        return ApiState(version, _served_version(database_url), False, _one_line(error))
    return ApiState(version, loaded.served, loaded.loaded)


def _served_version(database_url: str) -> str | None:
    try:
        served = served_release(database_url)
    except psycopg.Error:
        return None
    return served.version if served else None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"
