"""Source kinds: how one kind of archive lists its products and describes one of them.

A kind knows an archive's *access pattern* (a PDS3 index table, a PDS4 collection
inventory, an HTTP directory listing, an S3 prefix, a partner's payload inbox in the
archive's own store); the harvest engine does
the rest the same way for every kind (diffing against the holdings, resumable downloads,
verification, storing, quarantine, the completeness report). A new kind is one module with
the two methods of :class:`SourceKind`, a model in ``schemas/sources.py`` and one line in
``_KINDS`` below.
"""

from __future__ import annotations

from lunarchive.flows.source_kinds._base import (
    KindContext,
    Listing,
    PlannedFile,
    ProductPlan,
    SourceKind,
    selected,
)
from lunarchive.flows.source_kinds._http_listing import HttpListing
from lunarchive.flows.source_kinds._partner_inbox import PartnerInbox
from lunarchive.flows.source_kinds._pds3_index import Pds3Index
from lunarchive.flows.source_kinds._pds4_inventory import Pds4Inventory
from lunarchive.flows.source_kinds._pds4_search_api import Pds4SearchApi
from lunarchive.flows.source_kinds._s3_prefix import S3Prefix
from lunarchive.schemas.errors import ConfigurationError
from lunarchive.schemas.sources import SourceSpec

__all__ = [
    "KindContext",
    "Listing",
    "PlannedFile",
    "ProductPlan",
    "SourceKind",
    "kind_for",
    "selected",
]

_KINDS: dict[str, SourceKind] = {
    "pds3-index": Pds3Index(),
    "pds4-inventory": Pds4Inventory(),
    "pds4-search-api": Pds4SearchApi(),
    "http-listing": HttpListing(),
    "s3-prefix": S3Prefix(),
    "partner-inbox": PartnerInbox(),
}


def kind_for(spec: SourceSpec) -> SourceKind:
    """The kind that harvests ``spec``."""
    try:
        return _KINDS[spec.kind]
    except KeyError:
        raise ConfigurationError(
            f"source {spec.name}: no harvester for kind {spec.kind!r}"
        ) from None
