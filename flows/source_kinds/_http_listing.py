"""Archives published as HTTP directory listings (JAXA DARTS: SELENE/Kaguya TC and MI maps).

DARTS has no index table for its map data sets (SOURCES.md §4.4): the harvester crawls the
Apache-style listings. The data-set directories are discovered in the listing of the base
URL by the registry's globs, because a new processing version is a new directory
(``sln-l-tc-5-dtm-map-v2.0`` then ``-v3.0``); below each, files are grouped into products
(:mod:`._grouped`). Only hrefs are parsed; the text beside each link (date, size) is kept
whole as the file's change signal, so a tile replaced in place under the same name is
fetched again. DARTS labels carry no checksum: the product reader checks that every object
fits its file, and the harvester keeps its own sha256.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import unquote

from lunarchive.flows.source_kinds._base import KindContext, Listing, ProductPlan
from lunarchive.flows.source_kinds._grouped import describe_group, group_entries
from lunarchive.schemas.sources import HarvestState, HttpListingAccess, ListedFile, UpstreamEntry

__all__ = ["HttpListing"]


class HttpListing:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        base = ctx.base_url
        datasets = [
            url
            for url in ctx.fetcher.subdirectories(base)
            if _wanted(access, unquote(url[len(base) :].rstrip("/")))
        ]
        files: list[tuple[ListedFile, str]] = []
        for dataset in sorted(set(datasets)):
            for url, detail in ctx.fetcher.list_entries(dataset, depth=access.crawl_depth):
                files.append((ListedFile(path=unquote(ctx.relative(url))), detail))
        entries = group_entries(
            ctx, files, access.suffixes, labels=access.label_suffixes, scheme="listing"
        )
        return Listing(entries)

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        return describe_group(ctx, entry, folder)


def _access(ctx: KindContext) -> HttpListingAccess:
    access = ctx.spec.access
    assert isinstance(access, HttpListingAccess)
    return access


def _wanted(access: HttpListingAccess, name: str) -> bool:
    return "/" not in name and any(
        fnmatchcase(name.lower(), glob.lower()) for glob in access.datasets
    )
