"""Partner sample tables and drops in the store: objects, keys and a compare-and-swap pointer.

Why here: what a table *holds* (rows, Parquet bytes, which row supersedes which) is computed
by :mod:`lunarchive.processing.samples`; this module knows only objects. A table version is
``tables/<partner>/<version>/`` (the version is a hash of its files, so an unchanged table
writes nothing, and older versions stay as history); ``tables/<partner>/latest.json`` names
the current one and is replaced by compare-and-swap only. When two runs change the same
table at once, the loser re-reads the new current version, re-applies its change to it and
tries again (:func:`update_table`), so neither loses the other's rows.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

from lunarchive.catalog.layout import (
    INBOX_PREFIX,
    drop_prefix,
    drop_report_key,
    table_key,
    table_latest_key,
)
from lunarchive.catalog.publish import create_once
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.schemas.errors import StoreConflict

__all__ = [
    "MANIFEST_NAME",
    "UPDATE_ATTEMPTS",
    "TableChange",
    "TableRecord",
    "find_new_drops",
    "read_drop",
    "read_table_record",
    "table_partners",
    "update_table",
    "write_drop_report",
    "write_table_version",
]

MANIFEST_NAME: Final = "manifest.json"
UPDATE_ATTEMPTS: Final = 8  # a run gives up (its drop waits for the next run) after these


@dataclass(frozen=True)
class TableRecord:
    """One version of a partner's table as ``table.json`` / ``latest.json`` describe it."""

    partner: str
    version: str
    previous: str | None
    drops: tuple[dict[str, Any], ...]
    objects: tuple[dict[str, Any], ...]
    tag: str  # of latest.json when it was read: the compare-and-swap expects it

    def key(self, name: str) -> str:
        """The key of one of the version's objects (``specimens.parquet``)."""
        return table_key(self.partner, self.version, name)

    def has(self, name: str) -> bool:
        return any(PurePosixPath(o["key"]).name == name for o in self.objects)


@dataclass(frozen=True)
class TableChange:
    """What a table version should hold: its files, its drops (oldest first), its counts."""

    files: Mapping[str, bytes]
    drops: Sequence[Mapping[str, Any]]
    counts: Mapping[str, int]


def read_table_record(store: Store, partner: str) -> TableRecord | None:
    """The partner's current table version in ``store``, or None when it has none."""
    tagged = store.read_tagged(table_latest_key(partner))
    if tagged is None:
        return None
    record = json.loads(tagged[0])
    return TableRecord(
        partner=partner,
        version=record["version"],
        previous=record.get("previous"),
        drops=tuple(record["drops"]),
        objects=tuple(record["objects"]),
        tag=tagged[1],
    )


def table_partners(store: Store) -> list[str]:
    """The partners with a table in ``store``."""
    return sorted(
        info.key.split("/")[1]
        for info in store.list("tables/")
        if info.key.count("/") == 2 and info.key.endswith("/latest.json")
    )


def table_version(files: Mapping[str, bytes]) -> str:
    """A version is the hash of the names and contents of its files."""
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(f"{name}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


def write_table_version(
    store: Store, partner: str, change: TableChange, current: TableRecord | None
) -> TableRecord | None:
    """Write ``change`` as a new version after ``current`` and make it the current one.

    Nothing is written when the files equal the current version's. Raises
    :class:`StoreConflict` when another writer moved ``latest.json`` since ``current`` was
    read (retry from a fresh read: :func:`update_table`).
    """
    version = table_version(change.files)
    if current is not None and version == current.version:
        return current
    objects = [
        create_once(store, table_key(partner, version, name), data).model_dump()
        for name, data in change.files.items()
    ]
    record = {
        "partner": partner,
        "version": version,
        "previous": None if current is None else current.version,
        "drops": list(change.drops),
        "counts": dict(change.counts),
        "objects": sorted(objects, key=lambda o: o["key"]),
    }
    data = json_bytes(record)
    try:
        create_once(store, table_key(partner, version, "table.json"), data)
    except StoreConflict:
        # Another run wrote this very content (same files) with its own record; the files
        # are the same, and the record the first writer left is the version's history.
        data = store.read(table_key(partner, version, "table.json"))
    store.swap(
        table_latest_key(partner), data, expected_tag=None if current is None else current.tag
    )
    return read_table_record(store, partner)


def update_table(
    store: Store,
    partner: str,
    change: Callable[[TableRecord | None], TableChange | None],
    *,
    attempts: int = UPDATE_ATTEMPTS,
) -> TableRecord | None:
    """Read the current version, apply ``change`` (None: nothing to write), write the result;
    when another writer got there first, re-read and re-apply, up to ``attempts`` times.

    ``change`` must be a pure function of the version it is given, so applying it again to a
    newer version keeps the other writer's rows.
    """
    for attempt in range(1, attempts + 1):
        current = read_table_record(store, partner)
        wanted = change(current)
        if wanted is None:
            return current
        try:
            return write_table_version(store, partner, wanted, current)
        except StoreConflict as exc:
            if attempt == attempts:
                raise StoreConflict(
                    f"tables/{partner}: changed by other runs {attempts} times while this run "
                    f"merged its rows; nothing of this run was lost or written ({exc})"
                ) from exc
            time.sleep(random.uniform(0.0, 0.05 * attempt))  # jitter: the runs part
    raise AssertionError("unreachable")  # pragma: no cover


def find_new_drops(store: Store) -> list[tuple[str, str]]:
    """``(partner, drop)`` of every complete (manifest present), unprocessed (no
    ``report.json``) drop under ``inbox/``, sorted."""
    names: dict[tuple[str, str], set[str]] = {}
    for info in store.list(INBOX_PREFIX):
        parts = info.key.split("/")
        if len(parts) >= 4:
            names.setdefault((parts[1], parts[2]), set()).add("/".join(parts[3:]))
    return sorted(
        d for d, files in names.items() if MANIFEST_NAME in files and "report.json" not in files
    )


def read_drop(store: Store, partner: str, drop: str) -> dict[str, bytes]:
    """Every object of a drop, by its path inside the drop folder."""
    prefix = drop_prefix(partner, drop)
    return {info.key.removeprefix(prefix): store.read(info.key) for info in store.list(prefix)}


def write_drop_report(
    store: Store, partner: str, drop: str, report: Mapping[str, Any], csv_data: bytes
) -> None:
    """The CSV first, the JSON last: ``report.json`` marks the drop as processed."""
    store.write(drop_report_key(partner, drop, "csv"), csv_data)
    data = (json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode()
    store.write(drop_report_key(partner, drop, "json"), data)
