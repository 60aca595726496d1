"""Harvest sources: the registry entry of one upstream archive, and what harvesting keeps.

A :class:`SourceSpec` is one file of ``flows/registry/`` (validated against
``contracts/source.schema.json``, which is generated from this model). It says where the
archive is, how it lists its products (its *access kind*: a PDS3 index table, a PDS4
collection inventory, an HTTP directory listing, an S3 prefix or a partner's payload
inbox), which products to take, how often it is expected to change and under which
licence. Credentials never live here: a source that needs them names the setting that
holds them.

:class:`HarvestState` is what the harvester keeps per source in the store (the versions it
holds, with the size and checksums of every file, and the products it gave up on);
:class:`CompletenessReport` is the per-source summary that ``lunarchive status`` shows.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PAYLOAD_MANIFEST_SCHEMA",
    "SOURCE_SCHEMA",
    "CompletenessReport",
    "HarvestState",
    "HeldFile",
    "HeldVersion",
    "HttpListingAccess",
    "InventoryState",
    "ListedFile",
    "PartnerInboxAccess",
    "PayloadFile",
    "PayloadManifest",
    "PayloadProduct",
    "Pds3IndexAccess",
    "Pds4InventoryAccess",
    "Pds4SearchApiAccess",
    "Problem",
    "ProductState",
    "RunCounts",
    "S3PrefixAccess",
    "SourceSpec",
    "UpstreamEntry",
    "payload_manifest_json_schema",
    "source_json_schema",
]

SOURCE_SCHEMA = "source.schema.json"
PAYLOAD_MANIFEST_SCHEMA = "payload-manifest.schema.json"
_RELATIVE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_PARTNER = r"^[a-z0-9][a-z0-9-]{1,62}$"
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _relative_path(value: str) -> str:
    if not _RELATIVE.fullmatch(value) or any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"{value!r} is not a relative path below the source's base URL")
    return value


class Pds3IndexAccess(_Frozen):
    """A PDS3 volume whose index table (``.lbl`` + ``.tab``) lists every product."""

    kind: Literal["pds3-index"] = "pds3-index"
    index_label: str = Field(
        description="The index table's PDS3 label, relative to base_url (e.g. index/rdrindex.lbl)."
    )
    path_column: str = Field(
        default="FILE_SPECIFICATION_NAME",
        description="Column holding each product's path relative to the volume root (its "
        "label or its data file).",
    )
    id_column: str = Field(default="PRODUCT_ID", description="Column holding the product id.")
    version_column: str | None = Field(
        default="PRODUCT_VERSION_ID", description="Column holding the product version, if any."
    )
    path_case: Literal["lower", "upper", "as-is"] = Field(
        default="lower",
        description="How the host spells paths that the index and labels give in upper case.",
    )

    @field_validator("index_label")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _relative_path(value)


class Pds4InventoryAccess(_Frozen):
    """A PDS4 bundle whose collections list their members in ``collection_*_inventory.csv``."""

    kind: Literal["pds4-inventory"] = "pds4-inventory"
    collections: tuple[str, ...] = Field(
        min_length=1,
        description="Collection labels relative to base_url (e.g. "
        "document/collection_document.xml); each names its inventory CSV.",
    )
    crawl_depth: int = Field(
        default=6,
        ge=0,
        le=12,
        description="How deep product labels are looked for below each collection's folder.",
    )

    @field_validator("collections")
    @classmethod
    def _relative(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_relative_path(item) for item in value)


def _suffixes(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        if not _SUFFIX.fullmatch(item):
            raise ValueError(f"{item!r} is not a lower-case file suffix such as '.img'")
    return value


class HttpListingAccess(_Frozen):
    """An archive published as plain HTTP directory listings (JAXA DARTS, Apache-style).

    Data-set directories are discovered in the listing of ``base_url`` (a new processing
    version is a new directory: ``...-v2.0`` then ``...-v3.0``); below each, the files are
    grouped by stem into products. A product's fingerprint is its files' names plus what the
    listing shows beside each link (date and size), so a file replaced in place is fetched
    again.
    """

    kind: Literal["http-listing"] = "http-listing"
    datasets: tuple[str, ...] = Field(
        min_length=1,
        description="Case-insensitive globs on the directory names of base_url's listing "
        "(e.g. sln-l-tc-5-dtm-map-v*); each matching directory is crawled.",
    )
    crawl_depth: int = Field(
        default=3, ge=0, le=8, description="How deep files are looked for below each data set."
    )
    suffixes: tuple[str, ...] = Field(
        default=(".lbl", ".img", ".xml"),
        min_length=1,
        description="The file suffixes that make a product (lower case); other files are ignored.",
    )
    label_suffixes: tuple[str, ...] = Field(
        default=(".xml", ".lbl"),
        description="Which file a product is read from, by suffix in order of preference; "
        "without one, its first file (an attached label, a GeoTIFF).",
    )

    @field_validator("suffixes", "label_suffixes")
    @classmethod
    def _lower_suffixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _suffixes(value)


class S3PrefixAccess(_Frozen):
    """A bucket listed with S3 ListObjectsV2 (``?list-type=2&prefix=...``), read anonymously.

    Objects are grouped by stem into products; an object's fingerprint is its ETag and size.
    A PDS4 label in the group declares its files' md5 and size, which are then verified.
    """

    kind: Literal["s3-prefix"] = "s3-prefix"
    prefixes: tuple[str, ...] = Field(
        min_length=1,
        description="Key prefixes to list, each ending with '/' (the bucket endpoint is "
        "base_url; an object's URL is base_url + its key).",
    )
    suffixes: tuple[str, ...] = Field(
        default=(".xml", ".img", ".lbl", ".tif"),
        min_length=1,
        description="The object suffixes that make a product (lower case).",
    )
    label_suffixes: tuple[str, ...] = Field(
        default=(".xml", ".lbl"),
        description="Which object a product is read from, by suffix in order of preference.",
    )
    etag_is_md5: bool = Field(
        default=False,
        description="Whether a 32-hex ETag is the object's md5 (true for single-part uploads "
        "without KMS encryption); only then is it verified.",
    )
    page_size: int = Field(default=1000, ge=1, le=1000, description="max-keys per listing page.")

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item.endswith("/"):
                raise ValueError(f"prefix {item!r} must end with '/'")
            _relative_path(item.rstrip("/"))
        return value

    @field_validator("suffixes", "label_suffixes")
    @classmethod
    def _lower_suffixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _suffixes(value)


class Pds4SearchApiAccess(_Frozen):
    """A PDS4 collection listed by the PDS Registry Search API (``/api/search/1/``).

    base_url is the API root; members are paged by ``harvest_date_time`` from a checkpoint.
    """

    kind: Literal["pds4-search-api"] = "pds4-search-api"
    collection: str = Field(
        pattern=r"^urn:[a-z0-9._:-]+$",
        description="The collection LID (lower case); its latest version is paged.",
    )
    page_size: int = Field(
        default=500, ge=1, le=2000, description="Members per page (the API's 'limit')."
    )


class PartnerInboxAccess(_Frozen):
    """A payload team's drops in the archive's own store: ``inbox/<partner>/payload/<drop>/``.

    Each drop is complete once its ``manifest.json`` (:class:`PayloadManifest`, written last)
    is there. The ``payload/`` level keeps these drops apart from sample drops, which sit
    directly in ``inbox/<partner>/<drop>/``.
    """

    kind: Literal["partner-inbox"] = "partner-inbox"
    partner: str = Field(pattern=_PARTNER, description="The partner id: inbox/<partner>/.")


Access = Annotated[
    Pds3IndexAccess
    | Pds4InventoryAccess
    | Pds4SearchApiAccess
    | HttpListingAccess
    | S3PrefixAccess
    | PartnerInboxAccess,
    Field(discriminator="kind"),
]


class SourceSpec(_Frozen):
    """One upstream archive, as the registry describes it."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{1,62}$",
        description="The source id: raw/<name>/, reports/harvest/<name>.json.",
    )
    title: str = Field(min_length=1)
    mission: str = Field(min_length=1)
    instrument: str = Field(min_length=1)
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+/([^?#\s]*/)?$",
        description="The archive root every relative path starts from (ends with '/'). "
        "Required for every kind but partner-inbox, whose drops are in the archive's store.",
    )
    access: Access
    include: tuple[str, ...] = Field(
        default=("*",),
        min_length=1,
        description="Products to take: case-insensitive globs on the product's path "
        "(PDS3) or LID (PDS4).",
    )
    exclude: tuple[str, ...] = Field(default=(), description="Globs of products to leave out.")
    min_interval_s: float = Field(
        default=0,
        ge=0,
        le=600,
        description="Least time between the starts of two requests to one host of this "
        "source, for archives that refuse bursts (JAXA DARTS).",
    )
    max_per_host: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Concurrent requests per host for this source, if lower than "
        "LUNARCHIVE_HARVEST_PER_HOST.",
    )
    cadence_days: float = Field(
        gt=0,
        description="How often the archive is expected to change; an inventory unchanged for "
        "longer is flagged stale.",
    )
    licence: str = Field(min_length=1)
    citation: str | None = None
    credentials_setting: str | None = Field(
        default=None,
        pattern=r"^LUNARCHIVE_[A-Z0-9_]+$",
        description="The setting that holds credentials or a registration token, if the "
        "archive needs one. Never the secret itself.",
    )
    notes: str = Field(default="", description="What is verified about this source and what not.")

    @model_validator(mode="after")
    def _base_url_when_remote(self) -> Self:
        inbox = self.access.kind == "partner-inbox"
        if inbox and self.base_url is not None:
            raise ValueError("a partner-inbox source reads the store: it has no base_url")
        if not inbox and self.base_url is None:
            raise ValueError(f"a {self.access.kind} source needs a base_url")
        return self

    @property
    def kind(self) -> str:
        return self.access.kind


def source_json_schema() -> dict[str, Any]:
    """The registry file's JSON Schema (2020-12), generated from :class:`SourceSpec`."""
    schema = SourceSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lunarchive.example/schemas/source.schema.json",
        **schema,
    }


def stored_source_schema() -> dict[str, Any]:
    """The schema file shipped beside this module (a test keeps it equal to the model's)."""
    return _stored(SOURCE_SCHEMA)


def _stored(name: str) -> dict[str, Any]:
    text = files("lunarchive.schemas.contracts").joinpath(name).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


# --- a partner's payload drop ------------------------------------------------------------

_SHA256 = r"^[0-9a-f]{64}$"
# no '.', '..' or hidden segment: every segment starts with a letter, digit, '_' or '-'
_DROP_PATH = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"
_LABEL_SUFFIXES = {
    "geotiff": (".tif", ".tiff"),
    "fits": (".fits", ".fit", ".fts"),
    "pds4": (".xml",),
}


class PayloadFile(_Frozen):
    """One file of a payload product, with the checksum the harvester verifies."""

    path: str = Field(
        pattern=_DROP_PATH, max_length=512, description="Relative to the drop's folder."
    )
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0, description="Bytes.")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative_path(value)


class PayloadProduct(_Frozen):
    """One product of a drop: a GeoTIFF, a FITS file, or a PDS4 label and its data files."""

    product_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$",
        description="The partner's product id (a PDS4 LID for format pds4); a later drop "
        "with the same id and a new version adds a version.",
    )
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    format: Literal["geotiff", "fits", "pds4"]
    label: str = Field(
        pattern=_DROP_PATH,
        description="The file read first: the .tif, the .fits, or the PDS4 .xml label.",
    )
    files: tuple[PayloadFile, ...] = Field(min_length=1, description="Every file, label included.")
    title: str | None = Field(default=None, max_length=4000)
    acquired: datetime | None = Field(default=None, description="Start of acquisition (UTC).")

    @model_validator(mode="after")
    def _label_listed(self) -> Self:
        paths = [item.path for item in self.files]
        if self.label not in paths:
            raise ValueError(f"label {self.label!r} is not one of the product's files")
        names = [path.rsplit("/", 1)[-1].lower() for path in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"product {self.product_id}: two files share a name")
        if not self.label.lower().endswith(_LABEL_SUFFIXES[self.format]):
            wanted = " or ".join(_LABEL_SUFFIXES[self.format])
            raise ValueError(f"a {self.format} product's label must end in {wanted}")
        return self


class PayloadManifest(_Frozen):
    """``inbox/<partner>/payload/<drop>/manifest.json``: what a payload team delivers.

    ``kind`` is always ``payload``: a sample-drop manifest (``drop-manifest.schema.json``)
    has no such field, so neither harvester can take the other's manifest for its own.
    """

    kind: Literal["payload"]
    partner: str = Field(pattern=_PARTNER)
    mission: str = Field(min_length=1, max_length=200)
    instrument: str = Field(min_length=1, max_length=200)
    contact: str = Field(
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254, description="An e-mail."
    )
    licence: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.+-]{1,63}$", description="An SPDX licence identifier."
    )
    created: datetime
    products: tuple[PayloadProduct, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [(p.product_id, p.version) for p in self.products]
        if len(set(ids)) != len(ids):
            raise ValueError("a product id and version is listed twice")
        paths = [f.path for p in self.products for f in p.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file belongs to two products")
        return self


def payload_manifest_json_schema() -> dict[str, Any]:
    """The payload manifest's JSON Schema (2020-12), generated from :class:`PayloadManifest`."""
    schema = PayloadManifest.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lunarchive.example/schemas/payload-manifest.schema.json",
        **schema,
    }


def stored_payload_manifest_schema() -> dict[str, Any]:
    return _stored(PAYLOAD_MANIFEST_SCHEMA)


# --- what the harvester keeps in the store -----------------------------------------------


class ListedFile(_Frozen):
    """One file of a product as a listing shows it (S3, a payload manifest): what it declares."""

    path: str  # relative to base_url (or to the partner's payload folder)
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


class UpstreamEntry(_Frozen):
    """One product as the upstream inventory lists it."""

    product_id: str  # PDS3 PRODUCT_ID, or the PDS4 LID
    version: str | None = None  # PRODUCT_VERSION_ID, or the VID
    fingerprint: str  # changes whenever upstream changes the product (row text, LIDVID)
    path: str | None = None  # relative to base_url: the label (or data file) to start from
    files: tuple[ListedFile, ...] = ()  # listing kinds: every file of the product


class HeldFile(_Frozen):
    name: str
    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")


class HeldVersion(_Frozen):
    """One complete, verified version of a product under ``raw/<source>/<id>/<segment>/``."""

    version: str | None
    segment: str
    fingerprint: str
    files: tuple[HeldFile, ...]
    fetched: datetime


class Problem(_Frozen):
    """Why an upstream version is not held: quarantined (permanent) or failed (transient)."""

    fingerprint: str
    rule: str
    reason: str
    since: datetime


class ProductState(_Frozen):
    versions: tuple[HeldVersion, ...] = ()
    quarantined: Problem | None = None
    failed: Problem | None = None

    def holds(self, fingerprint: str) -> bool:
        return any(held.fingerprint == fingerprint for held in self.versions)


class InventoryState(_Frozen):
    """The upstream inventory last seen, and when it last changed."""

    fingerprint: str
    products: int = Field(ge=0)
    changed: datetime
    previous_products: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    selection: str = Field(
        default="", description="Hash of the base URL, access and globs the entries came from."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Where the next listing resumes: the collection LIDVID and the last "
        "harvest_date_time paged (Search API).",
    )
    entries: tuple[UpstreamEntry, ...] = ()

    @property
    def shrank(self) -> bool:
        return self.previous_products is not None and self.products < self.previous_products


class HarvestState(_Frozen):
    """Everything the harvester needs to know between runs, for one source."""

    source: str
    kind: str
    products: dict[str, ProductState] = Field(default_factory=dict)
    inventory: InventoryState | None = None
    labels: dict[str, str] = Field(
        default_factory=dict, description="PDS4: product label URL (relative) → its LIDVID."
    )


class RunCounts(_Frozen):
    """What one run found: upstream = unchanged + fetched + missing; new = fetched + failed +
    quarantined by this run; missing = failed + quarantined (ever, for the current version)."""

    upstream: int = 0
    new: int = 0
    fetched: int = 0
    unchanged: int = 0
    failed: int = 0
    quarantined: int = 0
    missing: int = 0


class CompletenessReport(_Frozen):
    """Holdings against the upstream inventory, as of the last run that changed anything."""

    source: str
    kind: str
    base_url: str
    cadence_days: float
    counts: RunCounts
    missing: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    withdrawn: tuple[str, ...] = Field(
        default=(), description="Held products the upstream inventory no longer lists."
    )
    inventory_products: int = 0
    inventory_changed: datetime | None = None
    flags: tuple[str, ...] = ()
    changed: datetime | None = Field(
        default=None, description="When a run last changed the holdings or the inventory."
    )

    def flags_at(self, now: datetime) -> tuple[str, ...]:
        """The stored flags plus ``stale`` when the inventory outlived its cadence."""
        stale = self.inventory_changed is not None and now - self.inventory_changed > timedelta(
            days=self.cadence_days
        )
        return (*self.flags, "stale") if stale else self.flags
