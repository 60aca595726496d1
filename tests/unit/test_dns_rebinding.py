"""R14 after the name check: the address a connection really reaches is checked too.

A name can resolve to a public address when the harvester checks it and to a private one when
it connects ("DNS rebinding"). Here the check's resolver is made to answer a public address
for ``localhost`` while the connection goes, as it really does, to 127.0.0.1: the response
must be refused, naming the rule, and nothing of it read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from lunarchive.flows import sources
from lunarchive.schemas.errors import SourceRefused

BODY = b"secret metadata of a private host"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def rebinding_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name check sees a public address; connections still resolve for real."""

    def public(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    shim = SimpleNamespace(getaddrinfo=public, gaierror=OSError, SOCK_STREAM=socket.SOCK_STREAM)
    monkeypatch.setattr(sources, "socket", shim)


def test_a_name_rebound_to_loopback_is_refused_after_connecting(
    local_port: int, rebinding_resolver: None
) -> None:
    url = f"http://localhost:{local_port}/latest"
    with httpx.Client() as client, pytest.raises(SourceRefused) as refused:
        sources._get(client, url, allow_local=False)
    message = str(refused.value)
    assert "127.0.0.1" in message and "R14" in message and url in message


def test_the_same_connection_is_accepted_when_local_sources_are_allowed(
    local_port: int, rebinding_resolver: None
) -> None:
    with httpx.Client() as client:
        response = sources._get(client, f"http://localhost:{local_port}/x", allow_local=True)
        try:
            assert response.read() == BODY
        finally:
            response.close()


def test_a_sync_source_rebound_to_loopback_is_refused_after_connecting(
    local_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lunarchive.catalog import _http

    def public(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    shim = SimpleNamespace(getaddrinfo=public, gaierror=OSError, SOCK_STREAM=socket.SOCK_STREAM)
    monkeypatch.setattr(_http, "socket", shim)
    tree = _http.HttpTree(f"http://localhost:{local_port}/release/")
    try:
        with pytest.raises(SourceRefused) as refused:
            tree.read("releases/latest.json", limit=1024)
    finally:
        tree.close()
    assert "127.0.0.1" in str(refused.value) and "R14" in str(refused.value)
