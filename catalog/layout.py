"""Where each kind of object lives in a store (DESIGN.md, "Storage: one URL, one layout").

Only this module builds keys, so the layout can be read in one place.
"""

from __future__ import annotations

import hashlib
import re

from lunarchive.catalog.store import check_key

__all__ = [
    "LATEST_KEY",
    "content_version",
    "cube_inventory_key",
    "cube_key",
    "cube_quicklook_key",
    "drop_prefix",
    "drop_quarantine_prefix",
    "drop_report_key",
    "inbox_prefix",
    "manifest_key",
    "process_facts_key",
    "raw_key",
    "raw_prefix",
    "release_prefix",
    "restricted_root",
    "safe_id",
    "table_key",
    "table_latest_key",
    "table_prefix",
]

LATEST_KEY = "releases/latest.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A key segment made from an outside name: no separators, no dot-only names."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    if not cleaned:
        raise ValueError(f"{text!r} gives an empty identifier")
    return cleaned


def raw_prefix(source: str) -> str:
    return check_key(f"raw/{safe_id(source)}/")


def raw_key(source: str, product_id: str, filename: str) -> str:
    return check_key(f"raw/{safe_id(source)}/{safe_id(product_id)}/{safe_id(filename)}")


def cube_key(collection: str, tile: str, version: str) -> str:
    return check_key(f"cubes/{safe_id(collection)}/{safe_id(tile)}/{safe_id(version)}.zarr")


def cube_quicklook_key(collection: str, tile: str, version: str) -> str:
    """The thumbnail PNG of one tile version, beside its store."""
    return check_key(f"cubes/{safe_id(collection)}/{safe_id(tile)}/{safe_id(version)}.png")


def process_facts_key(source: str, product_id: str) -> str:
    """What ``process`` learnt of one raw product (checksums, CRS, bounds, times), so that a
    later run need not read or hash it again while its files are unchanged."""
    return check_key(f"state/process/{safe_id(source)}/{safe_id(product_id)}.json")


def release_prefix(version: str) -> str:
    return check_key(f"releases/{safe_id(version)}/")


def manifest_key(version: str) -> str:
    return release_prefix(version) + "manifest.json"


def cube_inventory_key(collection: str, tile: str, version: str) -> str:
    """Written last, beside a finished cube: its objects. Its presence means "complete"."""
    return check_key(
        f"cubes/{safe_id(collection)}/{safe_id(tile)}/{safe_id(version)}.inventory.json"
    )


def content_version(recipe: str, inputs: list[tuple[str, str]]) -> str:
    """A deterministic version from a recipe name and the (key, sha256) of every input."""
    digest = hashlib.sha256(recipe.encode())
    for key, sha in sorted(inputs):
        digest.update(f"\n{key}\t{sha}".encode())
    return digest.hexdigest()[:16]


# Partner sample drops and the tables they feed (DESIGN.md: inbox/, quarantine/, tables/).

INBOX_PREFIX = "inbox/"


def inbox_prefix(partner: str | None = None) -> str:
    """``inbox/`` or one partner's ``inbox/<partner>/``."""
    return INBOX_PREFIX if partner is None else check_key(f"inbox/{safe_id(partner)}/")


def drop_prefix(partner: str, drop: str) -> str:
    return check_key(f"inbox/{safe_id(partner)}/{safe_id(drop)}/")


def drop_report_key(partner: str, drop: str, suffix: str = "json") -> str:
    """``report.json`` / ``report.csv`` written back into the drop: its presence means done."""
    return drop_prefix(partner, drop) + f"report.{safe_id(suffix)}"


def drop_quarantine_prefix(partner: str, drop: str) -> str:
    return check_key(f"quarantine/{safe_id(partner)}/{safe_id(drop)}/")


def table_prefix(collection: str, version: str) -> str:
    return check_key(f"tables/{safe_id(collection)}/{safe_id(version)}/")


def table_key(collection: str, version: str, name: str) -> str:
    """An object of one table version; ``name`` may hold one sub-folder (``by-specimen/x``)."""
    parts = [safe_id(part) for part in name.split("/")]
    return table_prefix(collection, version) + "/".join(parts)


def table_latest_key(collection: str) -> str:
    """The pointer to a table's current version (its history is the ``previous`` chain)."""
    return check_key(f"tables/{safe_id(collection)}/latest.json")


def restricted_root(partner: str) -> str:
    """Where a partner's embargoed tree lives beside the public one on a folder store."""
    return check_key(f"restricted/{safe_id(partner)}")
