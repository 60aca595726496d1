"""Reading a store tree that is published over plain HTTP(S) (static hosting).

The base URL is the user's choice, but every request, and every redirect hop, is checked
against the source rules before connecting (RELIABILITY.md R14): only http(s), no downgrade
from https to http, and no loopback, private or link-local address unless ``allow_local``.
A large object is fetched into a local partial file that a later attempt resumes with an
HTTP ``Range`` request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import quote, urljoin, urlparse

import httpx

from lunarchive.catalog.store import check_key
from lunarchive.schemas.errors import SourceRefused, TransientError

__all__ = ["HttpTree", "check_http_peer", "check_http_url", "connected_address"]

_MAX_REDIRECTS = 5
_BLOCK = 1024 * 1024


def check_http_url(url: str, *, allow_local: bool) -> None:
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
                "link-local address (rule R14; allowed only for local mirrors)"
            )


def connected_address(
    response: httpx.Response,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address the connection behind ``response`` really reached, if a socket tells."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    return ipaddress.ip_address(peer[0]) if peer else None


def check_http_peer(url: str, response: httpx.Response, *, allow_local: bool) -> None:
    """The address the connection really reached passes the same rule as the name did.

    A name may resolve to a public address for :func:`check_http_url` and to a private one for
    the connection (DNS rebinding); nothing such a peer answers is read.
    """
    if allow_local:
        return
    address = connected_address(response)
    if address is None:
        return  # no socket to ask (not a TCP transport): the name check stands alone
    if not address.is_global or address.is_multicast:
        response.close()
        raise SourceRefused(
            f"{url}: the connection reached {address}, a loopback, private or link-local "
            "address (rule R14; allowed only for local mirrors)"
        )


class HttpTree:
    """GETs below one base URL: whole small objects, and resumable large ones."""

    def __init__(
        self, base_url: str, *, allow_local: bool = False, client: httpx.Client | None = None
    ) -> None:
        check_http_url(base_url, allow_local=allow_local)
        self.base_url = base_url.rstrip("/") + "/"
        self.allow_local = allow_local
        self.client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0))

    def close(self) -> None:
        self.client.close()

    def url_for(self, key: str) -> str:
        return self.base_url + quote(check_key(key))

    def read(self, key: str, *, limit: int) -> bytes:
        """The whole object; refuses (without reading on) a body longer than ``limit``."""
        url = self.url_for(key)
        blocks: list[bytes] = []
        seen = 0
        with self._get(url) as response:
            for block in self._blocks(response, url):
                seen += len(block)
                if seen > limit:
                    raise TransientError(f"{url}: longer than the {limit} bytes expected")
                blocks.append(block)
        return b"".join(blocks)

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        """Complete ``part`` up to ``size`` bytes, resuming with Range where it has some.

        An interrupted transfer leaves what arrived in ``part`` for the next attempt; a body
        that runs past ``size`` is cut there (the caller's checksum then decides).
        """
        url = self.url_for(key)
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            if have > size:
                part.unlink()
                have = 0
            else:
                return
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._get(url, headers=headers) as response:
                resumed = bool(have) and _continues_at(response, have)
                with part.open("ab" if resumed else "wb") as out:
                    self._copy(response, url, out, have if resumed else 0, size)
        except _RangeRefused:
            part.unlink(missing_ok=True)  # the object changed size: start over next time
            raise

    def _copy(
        self, response: httpx.Response, url: str, out: IO[bytes], have: int, size: int
    ) -> None:
        for block in self._blocks(response, url):
            room = size - have
            out.write(block[:room])
            have += min(len(block), room)
            if len(block) > room:
                raise TransientError(f"{url}: longer than the {size} bytes expected")

    @contextmanager
    def _get(self, url: str, *, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed GET with every redirect hop checked; closed on exit."""
        for _ in range(_MAX_REDIRECTS + 1):
            check_http_url(url, allow_local=self.allow_local)
            try:
                request = self.client.build_request("GET", url, headers=headers)
                response = self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise TransientError(f"{url}: {exc}") from exc
            check_http_peer(url, response, allow_local=self.allow_local)
            if not response.is_redirect:
                try:
                    _raise_for_status(url, response)
                    yield response
                finally:
                    response.close()
                return
            response.close()
            target = urljoin(url, response.headers.get("location", ""))
            if urlparse(url).scheme == "https" and urlparse(target).scheme != "https":
                raise SourceRefused(f"{url}: redirect to {target} downgrades https")
            url = target
        raise SourceRefused(f"{url}: more than {_MAX_REDIRECTS} redirects")

    @staticmethod
    def _blocks(response: httpx.Response, url: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(_BLOCK)
        except httpx.HTTPError as exc:
            raise TransientError(f"{url}: transfer broke off: {exc}") from exc


def _continues_at(response: httpx.Response, offset: int) -> bool:
    """A 206 whose Content-Range starts exactly where the partial file ends."""
    if response.status_code != 206:
        return False
    content_range = str(response.headers.get("content-range", ""))
    return content_range.startswith(f"bytes {offset}-")


class _RangeRefused(TransientError):
    """416: the partial file no longer fits the object."""


def _raise_for_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status == 416:
        raise _RangeRefused(f"{url}: HTTP 416, the partial download does not fit")
    if status in (404, 410):
        raise KeyError(url)
    if status >= 500 or status in (408, 429):
        raise TransientError(f"{url}: HTTP {status}")
    if status >= 400:
        raise SourceRefused(f"{url}: HTTP {status}")
