"""Harvest source adapter: an archive published as an HTTP directory listing.

Real lunar archives (PDS Geosciences Node volumes, LROC's RDR tree) are browsable this way.
Every request is checked against the source rules before connecting (RELIABILITY.md R14):
only http(s), and no loopback, private or link-local address unless the settings allow it;
redirects are followed by hand so that each hop is checked too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

import httpx

from lunarchive.schemas.errors import ProductRejected, SourceRefused, TransientError

__all__ = ["RemoteFile", "check_source_url", "fetch", "list_directory"]

_MAX_REDIRECTS = 5
_MAX_LISTING_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its URL, the product it belongs to, and its name."""

    url: str
    product_id: str
    filename: str


def check_source_url(url: str, *, allow_local: bool) -> None:
    """Refuse a URL that breaks the source rules, before any connection is made."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SourceRefused(f"{url}: only http:// and https:// sources are allowed")
    if allow_local:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransientError(f"{url}: cannot resolve {parsed.hostname}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise SourceRefused(
                f"{url}: {parsed.hostname} resolves to {address}, a loopback, private or "
                "link-local address (rule R14; LUNARCHIVE_ALLOW_LOCAL_SOURCES=true is for "
                "local mirrors only)"
            )


def _get(client: httpx.Client, url: str, *, allow_local: bool) -> httpx.Response:
    """GET with every redirect hop checked; the caller closes the streamed response."""
    for _ in range(_MAX_REDIRECTS + 1):
        check_source_url(url, allow_local=allow_local)
        try:
            response = client.send(client.build_request("GET", url), stream=True)
        except httpx.TransportError as exc:
            raise TransientError(f"{url}: {exc}") from exc
        if not response.is_redirect:
            _raise_for_status(url, response)
            return response
        response.close()
        url = urljoin(url, response.headers["location"])
    raise SourceRefused(f"{url}: more than {_MAX_REDIRECTS} redirects")


def _raise_for_status(url: str, response: httpx.Response) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        response.close()
        raise TransientError(f"{url}: HTTP {response.status_code}")
    if response.status_code >= 400:
        response.close()
        raise ProductRejected(f"{url}: HTTP {response.status_code}")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)


def _listing(client: httpx.Client, url: str, *, allow_local: bool) -> list[str]:
    with closing(_get(client, url, allow_local=allow_local)) as response:
        body = b"".join(_limited(response, _MAX_LISTING_BYTES, url))
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    return parser.hrefs


def list_directory(
    client: httpx.Client, url: str, *, allow_local: bool, depth: int = 4
) -> list[RemoteFile]:
    """Every file below a directory listing, in name order; links out of it are ignored."""
    base = url if url.endswith("/") else url + "/"
    found: list[RemoteFile] = []
    for href in _listing(client, base, allow_local=allow_local):
        target = urljoin(base, href)
        if not target.startswith(base) or target == base or "?" in href or "#" in href:
            continue  # parent links, sort links, other hosts
        if target.endswith("/"):
            if depth > 0:
                found.extend(
                    list_directory(client, target, allow_local=allow_local, depth=depth - 1)
                )
            continue
        name = unquote(PurePosixPath(urlparse(target).path).name)
        found.append(RemoteFile(target, product_id=name.split(".", 1)[0], filename=name))
    return sorted(found, key=lambda remote: remote.url)


def _limited(response: httpx.Response, limit: int, url: str) -> Iterator[bytes]:
    seen = 0
    for block in response.iter_bytes(1024 * 1024):
        seen += len(block)
        if seen > limit:
            raise ProductRejected(f"{url}: larger than the {limit}-byte limit")
        yield block


def fetch(
    client: httpx.Client, remote: RemoteFile, dest: Path, *, allow_local: bool, max_bytes: int
) -> str:
    """Stream one file to ``dest`` within the size limit; return its sha256."""
    digest = hashlib.sha256()
    with (
        closing(_get(client, remote.url, allow_local=allow_local)) as response,
        dest.open("wb") as out,
    ):
        declared = int(response.headers.get("content-length", "0") or 0)
        if declared > max_bytes:
            raise ProductRejected(f"{remote.url}: declares {declared} bytes, over {max_bytes}")
        for block in _limited(response, max_bytes, remote.url):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()
