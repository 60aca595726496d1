"""HTTP access to upstream archives: safe, polite, resumable.

Every request is checked against the source rules before connecting (RELIABILITY.md R14):
only http(s); never a link-local, private, multicast or reserved address; loopback only when
the settings allow local sources (the demo's server and the tests' mirrors). Redirects are
followed by hand so that each hop is checked too.

:class:`Fetcher` adds what a harvester owes the archives it reads: a User-Agent naming
lunarchive, a per-host limit on concurrent requests, timeouts, and retries with exponential
backoff on transient errors only (R5: 5xx, 429, dropped connections; never a 404). Downloads
go to a local staging file and resume with an HTTP ``Range`` request after an interruption.

Archives that need registration (China's CLPDS) answer 401 or redirect to a login page: that
is :class:`CredentialsRequired`, never retried, so that the harvest stops in a "credentials
or manual approval required" state instead of hammering the portal. Credentials come from the
setting the registry names (``Header-Name: value``) and are sent to the source's own host
only, never across a redirect to another host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

import httpx

from lunarchive.catalog._http import connected_address
from lunarchive.schemas.errors import (
    LunarchiveError,
    ProductRejected,
    SourceRefused,
    TransientError,
)

__all__ = [
    "CredentialsRequired",
    "Downloaded",
    "Fetcher",
    "HttpPolicy",
    "RemoteFile",
    "check_peer",
    "check_source_url",
    "describe_file",
    "fetch",
    "list_directory",
    "user_agent",
]

_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_LISTING_BYTES = 8 * 1024 * 1024
_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its URL, the product it belongs to, and its name."""

    url: str
    product_id: str
    filename: str


def user_agent() -> str:
    try:
        release = version("lunarchive")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        release = "0"
    return f"lunarchive/{release} (lunar archive harvester; +https://github.com/lunarchive)"


def check_source_url(url: str, *, allow_local: bool) -> None:
    """Refuse a URL that breaks the source rules, before any connection is made.

    Loopback is allowed only with ``allow_local``; link-local (cloud metadata), private,
    multicast and reserved addresses are always refused.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SourceRefused(f"{url}: only http:// and https:// sources are allowed (rule R14)")
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransientError(f"{url}: cannot resolve {parsed.hostname}: {exc}") from exc
    for info in infos:
        _check_address(url, parsed.hostname, ipaddress.ip_address(info[4][0]), allow_local)


def _check_address(
    url: str, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_local: bool
) -> None:
    if address.is_loopback and allow_local:
        return
    if address.is_loopback:
        raise SourceRefused(
            f"{url}: {host} resolves to {address}, a loopback address (rule "
            "R14; LUNARCHIVE_ALLOW_LOCAL_SOURCES=true is for local mirrors only)"
        )
    if not address.is_global or address.is_multicast:
        raise SourceRefused(
            f"{url}: {host} resolves to {address}, a private, link-local or "
            "reserved address (rule R14: sources must be public hosts)"
        )


def check_peer(url: str, response: httpx.Response, *, allow_local: bool) -> None:
    """The address the connection really reached passes the same rule as the name did.

    Closes the gap between :func:`check_source_url` and the connection (a name that resolves
    to a public address for the check and to a private one for the connection, "DNS
    rebinding"): the request has been sent by then, but nothing it answers is read or kept.
    """
    address = connected_address(response)
    if address is None:
        return  # no socket to ask (not a TCP transport): the name check stands alone
    try:
        _check_address(url, str(address), address, allow_local)
    except SourceRefused:
        response.close()
        raise


class CredentialsRequired(LunarchiveError, PermissionError):
    """The archive wants a login or a manual approval: a human must act, retrying won't help."""


def _is_login(location: str) -> bool:
    path = urlparse(location).path.lower()
    return any(part in ("login", "login.do", "signin", "sso") for part in path.split("/"))


class _Throttled(TransientError):
    """429 or 503 with a ``Retry-After`` the backoff honours."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _raise_for_status(
    url: str, response: httpx.Response, ok: tuple[int, ...] = (), *, login: bool = False
) -> None:
    if response.status_code in ok:
        return
    if login and response.status_code in (401, 403):
        response.close()
        raise CredentialsRequired(
            f"{url}: HTTP {response.status_code}: the archive needs registration or a manual "
            "approval (set the source's credentials setting; see its registry notes)"
        )
    if response.status_code >= 500 or response.status_code == 429:
        response.close()
        raise _Throttled(f"{url}: HTTP {response.status_code}", _retry_after(response))
    if response.status_code in (401, 403):
        # archives have answered 401 for a whole data set during a permission change
        # (SOURCES.md §2.5): retried, and left for the next run, never quarantined
        response.close()
        raise TransientError(f"{url}: HTTP {response.status_code} (access denied for now)")
    if response.status_code >= 300:
        response.close()
        raise ProductRejected(f"{url}: HTTP {response.status_code}")


def _get(
    client: httpx.Client,
    url: str,
    *,
    allow_local: bool,
    headers: dict[str, str] | None = None,
    ok: tuple[int, ...] = (),
    credentials: tuple[str, str] | None = None,
    login: bool = False,
) -> httpx.Response:
    """GET with every redirect hop checked; the caller closes the streamed response.

    ``credentials`` (a header) go to the first host only. A redirect to a login page, or a
    401/403 from a source that needs a login (``login``), raises :class:`CredentialsRequired`.
    """
    origin = urlparse(url).netloc.lower()
    for _ in range(_MAX_REDIRECTS + 1):
        check_source_url(url, allow_local=allow_local)
        sent = dict(headers or {})
        if credentials is not None and urlparse(url).netloc.lower() == origin:
            sent[credentials[0]] = credentials[1]
        try:
            response = client.send(client.build_request("GET", url, headers=sent), stream=True)
        except httpx.TransportError as exc:
            raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
        check_peer(url, response, allow_local=allow_local)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECTS or not location:
            _raise_for_status(url, response, ok, login=login or credentials is not None)
            return response
        response.close()
        if _is_login(location):
            raise CredentialsRequired(
                f"{url}: redirected to a login page ({urljoin(url, location)}): the archive "
                "needs registration or a manual approval"
            )
        url = urljoin(url, location)
    raise SourceRefused(f"{url}: more than {_MAX_REDIRECTS} redirects")


class _Links(HTMLParser):
    """The hrefs of a listing, each with the text that follows its link (date, size)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.details: list[list[str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = next((value for name, value in attrs if name == "href" and value), None)
            if href is not None:
                self.hrefs.append(href)
                self.details.append([])
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if not self._inside and self.details:
            self.details[-1].append(data)


def _parsed(body: bytes) -> _Links:
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    parser.close()
    return parser


def _hrefs(body: bytes) -> list[str]:
    return _parsed(body).hrefs


def _listing(client: httpx.Client, url: str, *, allow_local: bool) -> list[str]:
    with closing(_get(client, url, allow_local=allow_local)) as response:
        body = b"".join(_limited(response, _MAX_LISTING_BYTES, url))
    return _hrefs(body)


def _children(base: str, hrefs: list[str]) -> Iterator[str]:
    """The links of a listing that lie below it: no parent, sort or off-site links."""
    for href in hrefs:
        target = urljoin(base, href)
        if not target.startswith(base) or target == base or "?" in href or "#" in href:
            continue
        yield target


def list_directory(
    client: httpx.Client, url: str, *, allow_local: bool, depth: int = 4
) -> list[RemoteFile]:
    """Every file below a directory listing, in name order; links out of it are ignored."""
    base = url if url.endswith("/") else url + "/"
    found: list[RemoteFile] = []
    for target in _children(base, _listing(client, base, allow_local=allow_local)):
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
    for block in response.iter_bytes():  # as received: a dropped transfer keeps its bytes
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
        try:
            for block in _limited(response, max_bytes, remote.url):
                digest.update(block)
                out.write(block)
        except httpx.TransportError as exc:
            raise TransientError(f"{remote.url}: {type(exc).__name__}: {exc}") from exc
    return digest.hexdigest()


# --- the polite, resumable fetcher of the harvest engine ----------------------------------


@dataclass(frozen=True)
class HttpPolicy:
    """How a :class:`Fetcher` treats the hosts it reads."""

    allow_local: bool = False
    timeout_s: float = 60.0
    attempts: int = 4  # tries per request, the first included
    backoff_s: float = 1.0  # the first wait; doubled after each failure
    max_backoff_s: float = 60.0
    per_host: int = 2  # concurrent requests per host
    max_bytes: int = 2 * 1024**3  # per file
    credentials: tuple[str, str] | None = None  # a header for the source's own host
    min_interval_s: float = 0.0  # between the starts of two requests to one host
    needs_login: bool = False  # a 401/403 means "a human must register", not "try later"


@dataclass(frozen=True)
class Downloaded:
    """A complete file in staging, with what its transfer said and what its bytes are."""

    path: Path
    size: int
    md5: str
    sha256: str
    resumed: bool


@dataclass(frozen=True)
class Fetched:
    """A small document read whole (an index, an inventory, a label, a listing)."""

    body: bytes | None  # None: not modified since the validators given
    etag: str | None
    last_modified: str | None


class Fetcher:
    """A thread-safe HTTP client for one harvest run."""

    def __init__(
        self,
        policy: HttpPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._next: dict[str, float] = {}  # host → earliest start of its next request
        self._client = httpx.Client(
            timeout=httpx.Timeout(policy.timeout_s),
            follow_redirects=False,
            headers={"User-Agent": user_agent()},
        )
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _slot(self, url: str) -> Iterator[None]:
        host = urlparse(url).netloc.lower()
        with self._lock:
            gate = self._hosts.setdefault(host, threading.BoundedSemaphore(self.policy.per_host))
        with gate:
            self._space(host)
            yield

    def _space(self, host: str) -> None:
        """Wait until ``min_interval_s`` has passed since the last request to ``host`` began."""
        if self.policy.min_interval_s <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.policy.min_interval_s
        if start > now:
            self._sleep(start - now)

    def _retrying[T](self, what: Callable[[], T]) -> T:
        """``what()``, tried again after a transient error, with exponential backoff."""
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return what()
            except TransientError as exc:
                if attempt == self.policy.attempts:
                    raise
                wait = self.policy.backoff_s * 2 ** (attempt - 1)
                if isinstance(exc, _Throttled) and exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                self._sleep(min(wait, self.policy.max_backoff_s))
        raise AssertionError("unreachable")  # pragma: no cover

    def read(
        self,
        url: str,
        *,
        limit: int = 64 * 1024 * 1024,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str | None = None,
    ) -> Fetched:
        """A whole small document; ``body`` is None when the validators say it is unchanged."""
        headers = {"Accept": accept} if accept else {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified

        def once() -> Fetched:
            with self._slot(url):
                response = _get(
                    self._client,
                    url,
                    allow_local=self.policy.allow_local,
                    headers=headers,
                    ok=(304,),
                    credentials=self.policy.credentials,
                    login=self.policy.needs_login,
                )
                with closing(response):
                    validators = (
                        response.headers.get("etag"),
                        response.headers.get("last-modified"),
                    )
                    if response.status_code == 304:
                        return Fetched(None, etag, last_modified)
                    try:
                        body = b"".join(_limited(response, limit, url))
                    except httpx.TransportError as exc:
                        raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
            return Fetched(body, *validators)

        return self._retrying(once)

    def list_directory(self, url: str, *, depth: int) -> list[str]:
        """The file URLs below a directory listing (links out of it ignored), sorted."""
        base = url if url.endswith("/") else url + "/"
        body = self.read(base, limit=_MAX_LISTING_BYTES).body or b""
        found: list[str] = []
        for target in _children(base, _hrefs(body)):
            if not target.endswith("/"):
                found.append(target)
            elif depth > 0:
                found.extend(self.list_directory(target, depth=depth - 1))
        return sorted(found)

    def subdirectories(self, url: str) -> list[str]:
        """The folders a directory listing links to (below it), sorted."""
        base = url if url.endswith("/") else url + "/"
        body = self.read(base, limit=_MAX_LISTING_BYTES).body or b""
        return sorted({t for t in _children(base, _hrefs(body)) if t.endswith("/")})

    def list_entries(self, url: str, *, depth: int) -> list[tuple[str, str]]:
        """Every file below a listing as (URL, the listing's text beside it), sorted by URL.

        The text (date and size in Apache-style listings) is kept whole rather than parsed:
        it changes when the file does, which is all a fingerprint needs.
        """
        base = url if url.endswith("/") else url + "/"
        parsed = _parsed(self.read(base, limit=_MAX_LISTING_BYTES).body or b"")
        detail = {
            urljoin(base, href): " ".join("".join(parts).split())
            for href, parts in zip(parsed.hrefs, parsed.details, strict=True)
        }
        found: list[tuple[str, str]] = []
        for target in _children(base, parsed.hrefs):
            if not target.endswith("/"):
                found.append((target, detail.get(target, "")))
            elif depth > 0:
                found.extend(self.list_entries(target, depth=depth - 1))
        return sorted(found)

    def download(self, url: str, part: Path) -> Downloaded:
        """``url`` into ``part``, resuming what a previous attempt left there (HTTP Range)."""
        resumed = False

        def once() -> None:
            nonlocal resumed
            have = part.stat().st_size if part.exists() else 0
            resumed = resumed or have > 0
            self._transfer(url, part, have)

        self._retrying(once)
        return describe_file(part, resumed=resumed)

    def _transfer(self, url: str, part: Path, have: int) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._slot(url):
            response = _get(
                self._client,
                url,
                allow_local=self.policy.allow_local,
                headers=headers,
                ok=(416,),
                credentials=self.policy.credentials,
                login=self.policy.needs_login,
            )
            with closing(response):
                if response.status_code == 416:
                    part.unlink(missing_ok=True)  # what we hold is not a prefix: start again
                    raise TransientError(f"{url}: range {have}- not satisfiable, starting over")
                start = _resume_offset(response, have, url)
                length = int(response.headers.get("content-length") or 0)
                if start + length > self.policy.max_bytes:
                    raise ProductRejected(
                        f"{url}: {start + length} bytes, over the {self.policy.max_bytes}-byte "
                        "limit (LUNARCHIVE_MAX_DOWNLOAD_BYTES)"
                    )
                part.parent.mkdir(parents=True, exist_ok=True)
                with part.open("r+b" if start else "wb") as out:
                    out.seek(start)
                    out.truncate()
                    try:
                        for block in _limited(response, self.policy.max_bytes - start, url):
                            out.write(block)
                            # On disk before the next read: a transfer that stalls, or a
                            # process killed while it waits, leaves every byte it received
                            # for the next attempt's Range (not up to 8 KiB in a buffer).
                            out.flush()
                    except httpx.TransportError as exc:
                        raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _resume_offset(response: httpx.Response, have: int, url: str) -> int:
    """Where the body starts in the file: ``have`` for a matching 206, else 0."""
    if response.status_code != 206:
        return 0
    content_range = response.headers.get("content-range", "")
    try:
        unit, _, span = content_range.partition(" ")
        first = int(span.split("-", 1)[0])
    except ValueError:
        raise TransientError(f"{url}: unreadable Content-Range {content_range!r}") from None
    if unit != "bytes" or first != have:
        raise TransientError(f"{url}: asked for bytes {have}-, got {content_range!r}")
    return have


def describe_file(path: Path, *, resumed: bool = False) -> Downloaded:
    """A staged file's size, md5 and sha256."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return Downloaded(path, size, md5.hexdigest(), sha.hexdigest(), resumed)
