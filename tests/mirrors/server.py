"""A loopback HTTP server for archive mirrors: listings, validators, Range, and faults.

It serves an in-memory tree (``path → bytes``) the way the archives do: Apache-style
directory listings (hrefs, a parent link, dates and sizes), ``Content-Length``,
``Last-Modified`` and ``ETag``, conditional GETs (304), and byte ranges (206) when Range is
on. GETs are case-insensitive, as SOURCES.md asks of the LOLA mirror. Faults are queued per
path and consumed one per request, deterministically: an HTTP status (``503``, ``429``,
``404``, ``403`` ...), ``truncate`` (the body cut short, with a matching Content-Length),
``corrupt`` (one byte flipped), ``drop`` (the full Content-Length promised, half the body
sent, the connection closed), ``stall`` (half the body sent, then nothing until
``released`` is set: a harvester killed mid-download) and ``redirect:<url>``. Every
request is logged with its headers; ``sent`` is set once a stalled response has sent its
half.

Per-archive behaviour, switchable: ``ranges`` off (DARTS answers a Range request with the
whole body); ``buckets`` — paths answering S3 ListObjectsV2 (``?list-type=2&prefix=…``,
paged by ``max-keys`` capped at ``page_cap``, with continuation tokens) as the PDS cloud
store does for LROC; ``throttle`` — every Nth request answers 429 with ``Retry-After``
(LROC's origin); ``protected`` — path prefixes that redirect to ``/login`` unless the
request carries the given header (China's CLPDS); ``apps`` — path prefixes answered by a
function of (rest of the path, query, headers), for small APIs (the PDS Search API).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

__all__ = ["MirrorServer", "Request", "serve"]

_EPOCH = 1_700_000_000.0  # a fixed Last-Modified for files given no date
# an API behind a path prefix: (rest of the path, query, headers) → (status, body, headers)
App = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, bytes, dict[str, str]]]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    query: str = ""


@dataclass
class MirrorServer:
    """The served tree, its faults and its request log (mutable between requests)."""

    files: dict[str, bytes] = field(default_factory=dict)  # "/a/b.img" → bytes
    modified: dict[str, float] = field(default_factory=dict)
    ranges: bool = True
    faults: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    log: list[Request] = field(default_factory=list)
    url: str = ""
    sent: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    buckets: tuple[str, ...] = ()  # "/data/store/": ListObjectsV2 answered there
    page_cap: int = 1000
    throttle: int | None = None  # every Nth request answers 429
    protected: dict[str, tuple[str, str]] = field(default_factory=dict)  # prefix → header
    served: int = 0
    apps: dict[str, App] = field(default_factory=dict)

    def replace(self, files: dict[str, bytes], modified: dict[str, float] | None = None) -> None:
        self.files = dict(files)
        self.modified = dict(modified or {})

    def fault(self, path: str, *kinds: str) -> None:
        self.faults[path.lower()].extend(kinds)

    def requests(self, suffix: str) -> list[Request]:
        return [r for r in self.log if r.path.lower().endswith(suffix.lower())]

    def _find(self, path: str) -> str | None:
        if path in self.files:
            return path
        lower = {p.lower(): p for p in self.files}
        return lower.get(path.lower())

    def _children(self, folder: str) -> list[tuple[str, bool]]:
        names: dict[str, bool] = {}
        for path in self.files:
            if path.lower().startswith(folder.lower()) and path != folder:
                rest = path[len(folder) :]
                head, _, tail = rest.partition("/")
                names[head] = names.get(head, False) or bool(tail)
        return sorted(names.items())

    def listing(self, folder: str) -> bytes | None:
        children = self._children(folder)
        if not children:
            return None
        rows = ['<tr><td><a href="../">Parent Directory</a></td><td>-</td></tr>']
        for name, is_dir in children:
            href = name + ("/" if is_dir else "")
            size = "-" if is_dir else str(len(self.files[folder + name]))
            stamp = self.modified.get(folder + name, _EPOCH) if not is_dir else _EPOCH
            date = time.strftime("%d-%b-%Y %H:%M", time.gmtime(stamp))
            rows.append(
                f'<tr><td><a href="{href}">{href}</a></td><td>{date}</td><td>{size}</td></tr>'
            )
        head = f"<html><head><title>Index of {folder}</title></head>"
        body = f"<body><h1>Index of {folder}</h1><table>{''.join(rows)}</table></body></html>"
        return (head + body).encode()

    def list_objects(self, bucket: str, query: dict[str, list[str]]) -> bytes:
        """A ListObjectsV2 answer for the objects below ``bucket`` (AWS's XML shape)."""
        prefix = query.get("prefix", [""])[0]
        keys = sorted(p[len(bucket) :] for p in self.files if p.startswith(bucket))
        keys = [key for key in keys if key.startswith(prefix)]
        token = query.get("continuation-token", [""])[0]
        after = base64.urlsafe_b64decode(token).decode() if token else ""
        keys = [key for key in keys if key > after]
        limit = min(int(query.get("max-keys", ["1000"])[0]), self.page_cap)
        page, truncated = keys[:limit], len(keys) > limit
        contents = "".join(
            "<Contents>"
            f"<Key>{escape(key)}</Key>"
            f"<LastModified>{_iso(self.modified.get(bucket + key, _EPOCH))}</LastModified>"
            f"<ETag>&quot;{_md5(self.files[bucket + key])}&quot;</ETag>"
            f"<Size>{len(self.files[bucket + key])}</Size>"
            "<StorageClass>STANDARD</StorageClass>"
            "</Contents>"
            for key in page
        )
        following = (
            "<NextContinuationToken>"
            + base64.urlsafe_b64encode(page[-1].encode()).decode()
            + "</NextContinuationToken>"
            if truncated
            else ""
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>pds-img-archive-prod</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            f"{contents}{following}</ListBucketResult>"
        ).encode()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(stamp))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mirror: MirrorServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        mirror = self.mirror
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        mirror.log.append(
            Request("GET", path, {k.lower(): v for k, v in self.headers.items()}, parsed.query)
        )
        mirror.served += 1
        if mirror.throttle and mirror.served % mirror.throttle == 0:
            return self._send(429, b"slow down\n", {"Retry-After": "0"})
        for prefix, (name, value) in mirror.protected.items():
            if path.startswith(prefix) and self.headers.get(name) != value:
                return self._send(302, b"", {"Location": "/login?next=" + path})
        query = parse_qs(parsed.query)
        for prefix, app in mirror.apps.items():
            if path.startswith(prefix):
                headers = {k.lower(): v for k, v in self.headers.items()}
                return self._send(*app(path[len(prefix) :], query, headers))
        if path in mirror.buckets and query.get("list-type") == ["2"]:
            page = mirror.list_objects(path, query)
            return self._send(200, page, {"Content-Type": "application/xml"})
        queued = mirror.faults.get(path.lower())
        fault = queued.pop(0) if queued else None
        if fault and fault.isdigit():
            headers = {"Retry-After": "0"} if fault == "429" else {}
            return self._send(int(fault), b"fault injected\n", headers)
        if fault and fault.startswith("redirect:"):
            return self._send(302, b"", {"Location": fault.removeprefix("redirect:")})
        found = mirror._find(path)
        if found is None:
            listing = mirror.listing(path) if path.endswith("/") else None
            if listing is None:
                return self._send(404, b"not found\n")
            return self._send(200, listing, {"Content-Type": "text/html"})
        body = mirror.files[found]
        if fault == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        elif fault == "truncate":
            body = body[: len(body) // 2]
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(mirror.modified.get(found, _EPOCH), usegmt=True),
            "Accept-Ranges": "bytes" if mirror.ranges else "none",
        }
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, b"", headers)
        status, start = 200, 0
        wanted = self.headers.get("Range")
        if wanted and mirror.ranges and wanted.startswith("bytes="):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        if fault in ("drop", "stall"):
            return self._drop(status, payload, headers, stall=fault == "stall")
        return self._send(status, payload, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def _drop(self, status: int, body: bytes, headers: dict[str, str], *, stall: bool) -> None:
        """Promise the whole body, send half, (wait,) and cut the connection."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if stall:
            self.mirror.sent.set()
            self.mirror.released.wait(timeout=120)
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


@contextmanager
def serve(mirror: MirrorServer) -> Iterator[MirrorServer]:
    """Serve ``mirror`` on 127.0.0.1 (a free port) until the block ends."""
    handler = type("Handler", (_Handler,), {"mirror": mirror})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield mirror
    finally:
        mirror.released.set()
        server.shutdown()
        server.server_close()
        thread.join()
