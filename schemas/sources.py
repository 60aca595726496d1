"""Harvest sources: the registry entry of one upstream archive, and what harvesting keeps.

A :class:`SourceSpec` is one file of ``flows/registry/`` (validated against
``contracts/source.schema.json``, which is generated from this model). It says where the
archive is, how it lists its products (its *access kind*: a PDS3 index table, a PDS4
collection inventory, later an HTTP listing, an S3 prefix or a partner inbox), which products
to take, how often it is expected to change and under which licence. Credentials never live
here: a source that needs them names the setting that holds them.

:class:`HarvestState` is what the harvester keeps per source in the store (the versions it
holds, with the size and checksums of every file, and the products it gave up on);
:class:`CompletenessReport` is the per-source summary that ``lunarchive status`` shows.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SOURCE_SCHEMA",
    "CompletenessReport",
    "HarvestState",
    "HeldFile",
    "HeldVersion",
    "InventoryState",
    "Pds3IndexAccess",
    "Pds4InventoryAccess",
    "Problem",
    "ProductState",
    "RunCounts",
    "SourceSpec",
    "UpstreamEntry",
    "source_json_schema",
]

SOURCE_SCHEMA = "source.schema.json"
_RELATIVE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


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


Access = Annotated[Pds3IndexAccess | Pds4InventoryAccess, Field(discriminator="kind")]


class SourceSpec(_Frozen):
    """One upstream archive, as the registry describes it."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{1,62}$",
        description="The source id: raw/<name>/, reports/harvest/<name>.json.",
    )
    title: str = Field(min_length=1)
    mission: str = Field(min_length=1)
    instrument: str = Field(min_length=1)
    base_url: str = Field(
        pattern=r"^https?://[^/?#\s]+/([^?#\s]*/)?$",
        description="The archive root every relative path starts from (ends with '/').",
    )
    access: Access
    include: tuple[str, ...] = Field(
        default=("*",),
        min_length=1,
        description="Products to take: case-insensitive globs on the product's path "
        "(PDS3) or LID (PDS4).",
    )
    exclude: tuple[str, ...] = Field(default=(), description="Globs of products to leave out.")
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
    text = files("lunarchive.schemas.contracts").joinpath(SOURCE_SCHEMA).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


# --- what the harvester keeps in the store -----------------------------------------------


class UpstreamEntry(_Frozen):
    """One product as the upstream inventory lists it."""

    product_id: str  # PDS3 PRODUCT_ID, or the PDS4 LID
    version: str | None = None  # PRODUCT_VERSION_ID, or the VID
    fingerprint: str  # changes whenever upstream changes the product (row text, LIDVID)
    path: str | None = None  # relative to base_url: the label (or data file) to start from


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
