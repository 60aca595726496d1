"""Release retention: keep the newest releases, collect the rest and crashed leftovers.

A release is ``releases/<version>/``; its version starts with its UTC publication time
(``20261125T215500Z-3f2a9c``). Collection keeps the current release (the pointer's), the
``keep`` newest complete releases (those with a manifest), and anything younger than the
grace period (a publish in flight writes its files before its manifest and pointer). Every
other release prefix is deleted, its manifest first, so that a half-deleted release is never
mistaken for a complete one. Objects outside ``releases/`` (cubes, raw files) are shared
between releases and are not touched here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from lunarchive.catalog.layout import LATEST_KEY, manifest_key, release_prefix
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.store import Store

__all__ = ["Collected", "collect_releases"]

_VERSION_TIME = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Collected:
    kept: list[str]
    deleted: list[str]  # versions whose prefix was removed
    objects_deleted: int = 0
    young: list[str] = field(default_factory=list)  # not kept, but inside the grace period


def collect_releases(
    store: Store, *, keep: int, grace: timedelta, now: datetime | None = None
) -> Collected:
    """Delete the releases that are neither current, among the ``keep`` newest, nor young."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the current release), not {keep}")
    now = now or datetime.now(UTC)
    versions = _release_versions(store)
    complete = [v for v in versions if store.exists(manifest_key(v))]
    current = read_current(store)
    kept = set(complete[-keep:]) | ({current[0].version} if current else set())
    young = [v for v in versions if v not in kept and now - _published(v) < grace]
    doomed = [v for v in versions if v not in kept and v not in young]
    count = sum(_delete_release(store, version) for version in doomed)
    return Collected(sorted(kept), doomed, count, young)


def _release_versions(store: Store) -> list[str]:
    versions = {
        info.key.split("/", 2)[1]
        for info in store.list("releases/")
        if info.key != LATEST_KEY and info.key.count("/") >= 2
    }
    return sorted(v for v in versions if _is_version(v))


def _is_version(name: str) -> bool:
    try:
        _published(name)
    except ValueError:
        return False
    return True


def _published(version: str) -> datetime:
    return datetime.strptime(version.split("-", 1)[0], _VERSION_TIME).replace(tzinfo=UTC)


def _delete_release(store: Store, version: str) -> int:
    """Remove one release prefix, manifest first; the number of objects deleted."""
    keys = sorted(info.key for info in store.list(release_prefix(version)))
    first = [k for k in keys if k == manifest_key(version)]
    for key in first + [k for k in keys if k not in first]:
        store.delete(key)
    return len(keys)
