"""STAC validation against a local copy of the JSON Schemas: no network, ever.

A schema folder holds ``index.json`` (canonical URL → file, plus ``aliases`` for files whose
``$id`` differs from their URL). Every ``$ref`` resolves inside the folder; one that does not
is an error, never a download. An object is checked against its STAC core schema and against
every extension schema it declares in ``stac_extensions``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

__all__ = ["StacInvalid", "schema_urls", "validate_stac"]

_CORE = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}


class StacInvalid(ValueError):
    """A STAC object broke a schema; the message names the object, the place and the rule."""


@cache
def _registry(schema_dir: Path) -> Registry:
    index = json.loads((schema_dir / "index.json").read_text(encoding="utf-8"))
    resources = {
        url: Resource.from_contents(
            json.loads((schema_dir / rel).read_text(encoding="utf-8")),
            default_specification=DRAFT7,
        )
        for url, rel in index["schemas"].items()
    }
    for alias, url in index.get("aliases", {}).items():
        resources[alias] = resources[url]

    def refuse(uri: str) -> Resource:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

    return Registry(retrieve=refuse).with_resources(resources.items())  # type: ignore[call-arg]


def schema_urls(stac: Mapping[str, Any]) -> list[str]:
    """The core schema of the object's type and version, then its extensions'."""
    kind, version = stac.get("type"), stac.get("stac_version")
    if kind not in _CORE or not isinstance(version, str):
        raise StacInvalid(f"{stac.get('id')!r}: not a STAC object (type {kind!r})")
    core = f"https://schemas.stacspec.org/v{version}/{_CORE[kind]}"
    return [core, *stac.get("stac_extensions", [])]


def validate_stac(stac: Mapping[str, Any], schema_dir: Path) -> list[str]:
    """Validate ``stac``; return the schema URLs it passed, or raise :class:`StacInvalid`."""
    registry = _registry(schema_dir.resolve())
    urls = schema_urls(stac)
    for url in urls:
        try:
            schema = registry.contents(url)
        except NoSuchResource:
            raise StacInvalid(f"{stac.get('id')!r}: no local copy of the schema {url}") from None
        validator = jsonschema.Draft7Validator(schema, registry=registry)
        error = jsonschema.exceptions.best_match(validator.iter_errors(stac))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(root)"
            raise StacInvalid(f"{stac.get('id')!r}, at {where}: {error.message} (schema {url})")
    return urls
