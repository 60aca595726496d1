"""STAC validation before anything is published: no object leaves unvalidated.

Schemas come from, in order: a local schema map (a folder with ``index.json`` mapping each
canonical URL to a file, plus ``aliases`` for files whose ``$id`` differs from their URL, the
layout of ``shared/stac-schemas``), the STAC core schemas that pystac ships, a cache folder of
schemas fetched before, and, when allowed, the network (the fetched schema is then cached).
A ``$ref`` that none of these can resolve is reported as unavailable, never guessed.

An object is checked against its STAC core schema and against every extension schema it
declares in ``stac_extensions``.

Speed (a release holds 100 000 items, each checked against two or three schemas): each schema
is compiled once per validator, and when ``jsonschema-rs`` is installed its compiled (Rust)
validator decides first — about a hundred times faster than ``jsonschema`` walking the schema.
An object it finds invalid is checked again by ``jsonschema``, whose ``best_match`` names the
place and the rule in the error; formats are not asserted by either (as ``jsonschema``'s
Draft 7 default), so both judge the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7

try:  # optional: the fast path (see the module docstring)
    import jsonschema_rs
except ImportError:  # pragma: no cover - depends on the environment
    jsonschema_rs = None  # type: ignore[assignment]

from lunarchive.catalog.publish import paused_gc
from lunarchive.schemas.errors import LunarchiveError

__all__ = [
    "SchemaUnavailable",
    "StacInvalid",
    "StacValidator",
    "schema_urls",
    "validate_stac",
]

_CORE = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}
_FETCH_LIMIT_BYTES = 4 * 1024 * 1024


class StacInvalid(LunarchiveError, ValueError):
    """A STAC object broke a schema; the message names the object, the place and the rule."""


class SchemaUnavailable(LunarchiveError, LookupError):
    """No local copy of a schema, and fetching it was not allowed or failed."""


def schema_urls(stac: Mapping[str, Any]) -> list[str]:
    """The core schema of the object's type and version, then its extensions'."""
    kind, version = stac.get("type"), stac.get("stac_version")
    if kind not in _CORE or not isinstance(version, str):
        raise StacInvalid(f"{stac.get('id')!r}: not a STAC object (type {kind!r})")
    core = f"https://schemas.stacspec.org/v{version}/{_CORE[kind]}"
    return [core, *stac.get("stac_extensions", [])]


class StacValidator:
    """Validates STAC objects against schemas found locally, or fetched once and cached."""

    def __init__(
        self,
        schema_dir: Path | None = None,
        *,
        cache_dir: Path | None = None,
        fetch: bool = False,
        strict: bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        """``strict=False`` skips a schema that cannot be found (core schemas always can),
        recording it in :attr:`unavailable`; ``strict=True`` raises SchemaUnavailable."""
        self.unavailable: set[str] = set()
        self._strict = strict
        self._cache_dir = cache_dir
        self._fetch = fetch
        self._timeout_s = timeout_s
        known = _pystac_core_schemas()
        if schema_dir is not None:
            known |= _schema_map(schema_dir.resolve())
        self._registry: Registry = Registry(retrieve=self._retrieve).with_resources(  # type: ignore[call-arg]
            known.items()
        )
        self._compiled: dict[str, _Compiled] = {}

    def validate(self, stac: Mapping[str, Any]) -> list[str]:
        """The schema URLs ``stac`` was checked against; raises StacInvalid (and, when
        strict, SchemaUnavailable)."""
        checked = []
        for url in schema_urls(stac):
            try:
                error = self._first_error(url, stac)
            except (NoSuchResource, Unresolvable) as exc:
                if self._strict:
                    raise SchemaUnavailable(f"{stac.get('id')!r}: schema {url}: {exc}") from None
                self.unavailable.add(url)
                continue
            if error is not None:
                where, message = error
                raise StacInvalid(f"{stac.get('id')!r}, at {where}: {message} (schema {url})")
            checked.append(url)
        return checked

    def _first_error(self, url: str, stac: Mapping[str, Any]) -> tuple[str, str] | None:
        """Where and why ``stac`` breaks schema ``url`` (None: it does not)."""
        compiled = self._compiled.get(url)
        if compiled is None:
            schema = self._registry.get_or_retrieve(url).value.contents
            compiled = self._compiled[url] = _Compiled(
                jsonschema.Draft7Validator(schema, registry=self._registry),
                self._fast_validator(schema),
            )
        if compiled.fast is not None and compiled.fast.is_valid(stac):
            return None
        error = jsonschema.exceptions.best_match(compiled.slow.iter_errors(stac))
        if error is not None:
            return "/".join(str(part) for part in error.absolute_path) or "(root)", error.message
        if compiled.fast is None:
            return None
        fast_error = next(iter(compiled.fast.iter_errors(stac)))  # the two judge differently
        return "/".join(str(part) for part in fast_error.instance_path) or "(root)", str(
            fast_error.message
        )

    def _fast_validator(self, schema: Any) -> Any:
        """The schema compiled by jsonschema-rs, its references resolved as ours are; None
        without jsonschema-rs, or when it cannot compile the schema (jsonschema then judges)."""
        if jsonschema_rs is None:
            return None

        def retrieve(uri: str) -> Any:
            return self._registry.get_or_retrieve(uri.rstrip("#")).value.contents

        try:
            return jsonschema_rs.Draft7Validator(schema, validate_formats=False, retriever=retrieve)
        except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError):
            return None

    def validate_files(self, files: Mapping[str, bytes]) -> list[str]:
        """Validate every STAC JSON document of a rendered release; returns their keys.

        Files that are not STAC objects (queryables, manifests) are left out."""
        with paused_gc():
            return self._validate_files(files)

    def _validate_files(self, files: Mapping[str, bytes]) -> list[str]:
        documents = []
        for key, data in files.items():
            if key.endswith(".json"):
                document = orjson.loads(data)
                if document.get("type") not in _CORE:
                    continue  # not a STAC object (queryables: a JSON Schema)
                try:
                    self.validate(document)
                except StacInvalid as exc:
                    raise StacInvalid(f"{key}: {exc}") from None
                documents.append(key)
        return documents

    def _retrieve(self, uri: str) -> Resource:
        cached = self._cache_path(uri)
        if cached is not None and cached.is_file():
            return _resource(json.loads(cached.read_text(encoding="utf-8")))
        if not self._fetch:
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
        contents = self._download(uri)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temp = cached.with_suffix(".tmp")
            temp.write_text(json.dumps(contents), encoding="utf-8")
            temp.replace(cached)
        return _resource(contents)

    def _download(self, uri: str) -> Any:
        if not uri.startswith("https://"):
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
        try:
            response = httpx.get(uri, timeout=self._timeout_s, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError:
            raise NoSuchResource(ref=uri) from None  # type: ignore[call-arg]
        if len(response.content) > _FETCH_LIMIT_BYTES:
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
        return response.json()

    def _cache_path(self, uri: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / (hashlib.sha256(uri.encode()).hexdigest()[:32] + ".json")


@dataclass(frozen=True)
class _Compiled:
    slow: jsonschema.Draft7Validator  # names the error
    fast: Any  # jsonschema_rs.Draft7Validator, or None


def validate_stac(stac: Mapping[str, Any], schema_dir: Path) -> list[str]:
    """Validate one object against a local schema map only (no network)."""
    return StacValidator(schema_dir).validate(stac)


def _resource(contents: Any) -> Resource:
    return Resource.from_contents(contents, default_specification=DRAFT7)


def _schema_map(schema_dir: Path) -> dict[str, Resource]:
    index = json.loads((schema_dir / "index.json").read_text(encoding="utf-8"))
    found = {
        url: _resource(json.loads((schema_dir / rel).read_text(encoding="utf-8")))
        for url, rel in index["schemas"].items()
    }
    for alias, url in index.get("aliases", {}).items():
        found[alias] = found[url]
    return found


def _pystac_core_schemas() -> dict[str, Resource]:
    """The STAC core and GeoJSON schemas that pystac ships, under their own ``$id``."""
    root = resources.files("pystac.validation") / "jsonschemas"
    found: dict[str, Resource] = {}
    for file in _walk(root.iterdir()):
        contents = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(contents, dict) and isinstance(contents.get("$id"), str):
            declared = contents["$id"].rstrip("#")
            # Some declared ids are off ("…/commonjson"); register the published URL as well.
            published = declared.rsplit("/", 1)[0] + "/" + file.name
            found[declared] = found[published] = _resource(contents)
    return found


def _walk(entries: Iterable[Any]) -> Iterable[Any]:
    for entry in entries:
        if entry.is_dir():
            yield from _walk(entry.iterdir())
        elif entry.name.endswith(".json"):
            yield entry
