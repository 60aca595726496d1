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
    "manifest_key",
    "raw_key",
    "raw_prefix",
    "release_prefix",
    "safe_id",
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
