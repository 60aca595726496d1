"""What every source kind provides, and the small types it shares with the engine."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin

from lunarchive.catalog.store import Store
from lunarchive.flows.sources import Fetcher
from lunarchive.schemas.sources import HarvestState, SourceSpec, UpstreamEntry

__all__ = ["KindContext", "Listing", "PlannedFile", "ProductPlan", "SourceKind", "selected"]

MAX_LABEL_BYTES = 4 * 1024 * 1024
MAX_INVENTORY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class KindContext:
    """What a kind may use: the source, its HTTP client, a base URL to resolve against, and
    the store (where a partner's inbox is)."""

    spec: SourceSpec
    fetcher: Fetcher
    base_url: str
    store: Store | None = None

    def url(self, relative: str) -> str:
        if not self.base_url.startswith(("http://", "https://")):
            return self.base_url + relative  # a store location: s3://, file://
        return urljoin(self.base_url, relative)

    def relative(self, url: str) -> str:
        return url.removeprefix(self.base_url) if url.startswith(self.base_url) else url

    @property
    def selection(self) -> str:
        """What the kept entries depend on: a cached inventory is reused only under it."""
        spec = self.spec
        text = "\n".join(
            [self.base_url, spec.access.model_dump_json(), *spec.include, "--", *spec.exclude]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Listing:
    """The upstream inventory, filtered by the registry's include/exclude globs.

    ``entries`` is None when the inventory is unchanged since ``etag``/``last_modified``
    (the engine then reuses the entries it kept). ``labels`` is the kind's updated map of
    product labels (PDS4), kept in the state; None leaves the kept map as it is.
    """

    entries: tuple[UpstreamEntry, ...] | None
    etag: str | None = None
    last_modified: str | None = None
    labels: dict[str, str] | None = None
    checkpoint: str | None = None  # where the next listing resumes (Search API)


@dataclass(frozen=True)
class PlannedFile:
    """One file of a product: where to get it and what its label declares about it."""

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    staged: bool = False  # already in the product's staging folder (the label)
    sha256: str | None = None


@dataclass(frozen=True)
class ProductPlan:
    label: str  # the file read_product() starts from
    files: tuple[PlannedFile, ...]
    # whether the label must name the listed product id and version (index and inventory
    # kinds); listings name products by file, so the label's own id is just recorded
    check_identity: bool = True


class SourceKind(Protocol):
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        """The products upstream lists now (only the selected ones)."""
        ...

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        """Fetch the product's label into ``folder`` and say which files make the product."""
        ...


def selected(spec: SourceSpec, name: str) -> bool:
    """Whether the registry's globs take the product called ``name`` (case-insensitive)."""
    upper = name.upper()
    return any(fnmatchcase(upper, glob.upper()) for glob in spec.include) and not any(
        fnmatchcase(upper, glob.upper()) for glob in spec.exclude
    )


def write_staged(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path
