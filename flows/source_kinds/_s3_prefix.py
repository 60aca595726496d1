"""Buckets listed with S3 ListObjectsV2, read anonymously over HTTPS (LROC RDRs, PDS cloud).

The LROC RDR volume ``LROLRC_2001`` is reported to be served from an S3-backed PDS store
that answers ``?list-type=2&prefix=…`` with ListObjectsV2 XML (SOURCES.md §3.1, reported).
A listing is paged with ``continuation-token`` until ``IsTruncated`` is false; each object
brings its ``Key``, ``Size`` and ``ETag``, which are its change signal. Objects are grouped
into products by folder and stem (:mod:`._grouped`); the size is verified, the ETag only
when the registry says it is an md5 (single-part uploads), and a product's PDS4 label
declares the whole-file ``md5_checksum`` and ``file_size`` that are verified too.

Requests go through the same :class:`~lunarchive.flows.sources.Fetcher` as every source:
per-host limits, retries on 5xx/429 with ``Retry-After``, redirect hops checked (R14).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlencode

from lxml import etree

from lunarchive.flows.source_kinds._base import KindContext, Listing, ProductPlan
from lunarchive.flows.source_kinds._grouped import describe_group, group_entries
from lunarchive.schemas.errors import TransientError
from lunarchive.schemas.sources import HarvestState, ListedFile, S3PrefixAccess, UpstreamEntry

__all__ = ["S3Prefix", "parse_list_objects"]

_MAX_PAGE_BYTES = 16 * 1024 * 1024
_MAX_PAGES = 100_000
_MD5 = re.compile(r"[0-9a-f]{32}")


class S3Prefix:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        files: list[tuple[ListedFile, str]] = []
        for prefix in access.prefixes:
            for key, size, etag in _list(ctx, access, prefix):
                md5 = etag if access.etag_is_md5 and _MD5.fullmatch(etag) else None
                files.append((ListedFile(path=key, size=size, md5=md5), f"{etag}\t{size}"))
        entries = group_entries(
            ctx, files, access.suffixes, labels=access.label_suffixes, scheme="s3"
        )
        return Listing(entries)

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        return describe_group(_quoting(ctx), entry, folder)


def _access(ctx: KindContext) -> S3PrefixAccess:
    access = ctx.spec.access
    assert isinstance(access, S3PrefixAccess)
    return access


class _QuotedContext(KindContext):
    def url(self, relative: str) -> str:
        return self.base_url + quote(relative, safe="/")


def _quoting(ctx: KindContext) -> KindContext:
    """Object keys become URLs percent-encoded, as S3 expects."""
    return _QuotedContext(ctx.spec, ctx.fetcher, ctx.base_url, ctx.store)


def _list(ctx: KindContext, access: S3PrefixAccess, prefix: str) -> list[tuple[str, int, str]]:
    objects: list[tuple[str, int, str]] = []
    token: str | None = None
    for _ in range(_MAX_PAGES):
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(access.page_size)}
        if token:
            query["continuation-token"] = token
        url = ctx.base_url + "?" + urlencode(query)
        body = ctx.fetcher.read(url, limit=_MAX_PAGE_BYTES).body or b""
        page, token = parse_list_objects(body, where=url)
        objects.extend(page)
        if token is None:
            return objects
    raise TransientError(f"{ctx.base_url}: more than {_MAX_PAGES} listing pages for {prefix}")


def _child(element: etree._Element, name: str) -> str | None:
    for child in element:
        if isinstance(child.tag, str) and etree.QName(child).localname == name:
            return (child.text or "").strip()
    return None


def parse_list_objects(body: bytes, *, where: str) -> tuple[list[tuple[str, int, str]], str | None]:
    """(key, size, ETag without quotes) of a ListObjectsV2 page, and the next page's token."""
    try:
        root = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as exc:
        raise TransientError(f"{where}: not a ListObjectsV2 XML answer: {exc}") from None
    if etree.QName(root).localname != "ListBucketResult":
        raise TransientError(f"{where}: answer is <{etree.QName(root).localname}>, not a listing")
    objects = []
    for element in root:
        if not isinstance(element.tag, str) or etree.QName(element).localname != "Contents":
            continue
        key, size, etag = _child(element, "Key"), _child(element, "Size"), _child(element, "ETag")
        if not key or size is None or not size.isdigit():
            raise TransientError(f"{where}: a <Contents> lacks its Key or Size")
        if key.endswith("/"):
            continue  # a folder marker
        objects.append((key, int(size), (etag or "").strip('"').lower()))
    truncated = (_child(root, "IsTruncated") or "false").lower() == "true"
    token = _child(root, "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise TransientError(f"{where}: truncated listing without NextContinuationToken")
    return objects, token
