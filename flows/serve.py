"""``lunarchive serve``: load the store's current release into pgstac and serve the STAC API.

The release is read from the store through its manifest (the same objects a syncer copies),
loaded into PostgreSQL in one transaction (``catalog.pgstac.load_release``: a reader sees
the old or the new release, never a mix), then stac-fastapi-pgstac serves it read-only.
"""

from __future__ import annotations

from lunarchive.catalog.layout import release_prefix
from lunarchive.catalog.pgstac import LoadResult, install_schema, load_release, release_documents
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.store import Store
from lunarchive.schemas.errors import ConfigurationError

__all__ = ["load_current_release", "release_files"]

_NOT_STAC = ("/manifest.json", "/queryables.json")


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


def load_current_release(
    store: Store, database_url: str, *, asset_base: str | None = None
) -> LoadResult:
    """Install pgstac if needed and load the store's current release (a no-op if loaded).

    Asset hrefs are made absolute against ``asset_base`` (default: the store's own URL), so
    that API clients can reach them.
    """
    install_schema(database_url)
    version, files = release_files(store)
    base = (asset_base or store.url).rstrip("/") + f"/{release_prefix(version)}"
    collections, items = release_documents(files, base_href=base)
    return load_release(database_url, version, collections, items)
