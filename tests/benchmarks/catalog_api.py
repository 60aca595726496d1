"""The STAC API and the pgstac load, measured against the anchor in the same run (issue 7).

The anchor is what a user has without lunarchive: plain stac-fastapi-pgstac (its own
``instantiate_api()`` with its default settings and extensions) over a pgstac database loaded
by pypgstac's own ``Loader`` (``Methods.insert``, the default of ``pypgstac load``). The anchor
gets its **own database** on the same PostgreSQL server (the caller makes it, e.g. with
``tests.conftest.new_database``), loaded with the same release's items, so both APIs answer
the same queries over the same data; only the loader and the API layer differ.

Both APIs run as uvicorn servers in **child processes** on free loopback ports (as ``lunarchive
serve`` runs), so neither shares the benchmark's interpreter (and its GIL) with the client.
Timings interleave the engines (query by query, turn by turn), so a change in the machine's
load touches both alike.

    from tests.benchmarks import catalog_api
    seconds = catalog_api.timed_loads(store, version, files, ours_url, anchor_url)
    with (catalog_api.serve("ours", ours_url) as ours,
          catalog_api.serve("anchor", anchor_url) as anchor):
        found = catalog_api.measure(
            {"STAC API": catalog_api.searcher(ours),
             "anchor": catalog_api.searcher(anchor, cql2_json=True)}, bodies, repeats=20)

Run on its own (``python -m tests.benchmarks.catalog_api serve ours|anchor URL``), it serves one
app on a free port and prints ``port N`` once it listens.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

ROOT = Path(__file__).resolve().parents[2]
Engine = Literal["ours", "anchor"]


# --- the loads -------------------------------------------------------------------------------


def timed_loads(
    store: Any, version: str, files: Mapping[str, bytes], ours_url: str, anchor_url: str
) -> dict[str, float]:
    """Seconds to load the release into each database, from the same item documents.

    The release's files are read once (``release_documents``, timed as ``read``); both
    databases get pgstac installed first (not timed). ``ours``: ``catalog.pgstac.load_release``
    (one transaction: the release checked, loaded, its queryables indexed, ANALYZE); ``anchor``:
    pypgstac's ``Loader`` given the same collections and items (``Methods.insert``).
    """
    from lunarchive.catalog.layout import release_prefix
    from lunarchive.catalog.pgstac import install_schema, load_release, release_documents

    started = time.perf_counter()
    base = store.url.rstrip("/") + f"/{release_prefix(version)}"
    collections, items = release_documents(files, base_href=base)
    read = time.perf_counter() - started
    install_schema(ours_url)
    install_schema(anchor_url)
    started = time.perf_counter()
    load_release(ours_url, version, collections, items)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    anchor_load(anchor_url, collections, items)
    return {"read": read, "ours": ours, "anchor": time.perf_counter() - started}


def anchor_load(
    database_url: str, collections: list[dict[str, Any]], items: list[dict[str, Any]]
) -> None:
    """pypgstac's own load of collections and items (what ``pypgstac load`` does)."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    with PgstacDB(dsn=database_url) as db:
        loader = Loader(db)
        loader.load_collections(iter(collections), Methods.insert)
        loader.load_items(iter(items), Methods.insert)


# --- the servers -----------------------------------------------------------------------------


@contextmanager
def serve(engine: Engine, database_url: str) -> Iterator[httpx.Client]:
    """One API (ours or the anchor) in a child process; an HTTP client for it."""
    command = [sys.executable, "-m", "tests.benchmarks.catalog_api", "serve", engine, database_url]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # "port N" once the server listens
        if not line.startswith("port "):
            raise RuntimeError(f"the {engine} API did not start (exit {child.poll()})")
        with httpx.Client(base_url=f"http://127.0.0.1:{line.split()[1]}", timeout=120) as client:
            yield client
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _anchor_app(database_url: str) -> Any:
    """Plain stac-fastapi-pgstac, as its own ``create_app`` builds it, on ``database_url``."""
    from contextlib import asynccontextmanager
    from urllib.parse import unquote, urlsplit

    from stac_fastapi.pgstac.app import instantiate_api
    from stac_fastapi.pgstac.config import PostgresSettings
    from stac_fastapi.pgstac.db import close_db_connection, connect_to_db

    url = urlsplit(database_url)
    settings = PostgresSettings(
        pguser=unquote(url.username or "postgres"),
        pgpassword=unquote(url.password or ""),
        pghost=url.hostname or "127.0.0.1",
        pgport=url.port or 5432,
        pgdatabase=url.path.lstrip("/"),
    )

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await connect_to_db(app, postgres_settings=settings)
        yield
        await close_db_connection(app)

    return instantiate_api(lifespan=lifespan).app


def _serve_main(engine: Engine, database_url: str) -> None:
    import uvicorn

    from lunarchive.catalog.api import create_app

    app = create_app(database_url) if engine == "ours" else _anchor_app(database_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        print(f"port {sock.getsockname()[1]}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


# --- the timings -----------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds per call by engine and query, and the items each engine's query returned."""

    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    returned: dict[str, dict[str, int]] = field(default_factory=dict)

    def p50(self, engine: str, query: str | None = None) -> float:
        return percentile(self._calls(engine, query), 0.5)

    def p95(self, engine: str, query: str | None = None) -> float:
        return percentile(self._calls(engine, query), 0.95)

    def _calls(self, engine: str, query: str | None) -> list[float]:
        by_query = self.seconds[engine]
        return by_query[query] if query else [s for calls in by_query.values() for s in calls]

    def summary(self) -> dict[str, Any]:
        """Milliseconds, by engine: p50 and p95 over all calls, and p50 / p95 per query."""
        return {
            engine: {
                "p50_ms": 1000 * self.p50(engine),
                "p95_ms": 1000 * self.p95(engine),
                "per_query_ms": {
                    query: {"p50": 1000 * statistics.median(calls),
                            "p95": 1000 * percentile(calls, 0.95)}
                    for query, calls in by_query.items()
                },
                "returned": self.returned[engine],
            }
            for engine, by_query in self.seconds.items()
        }  # fmt: skip


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def searcher(
    client: httpx.Client, *, cql2_json: bool = False
) -> Callable[[Mapping[str, Any]], int]:
    """POST /search with ``client``, giving the number of items of the page (full items).

    With ``cql2_json`` a cql2-text filter is sent in its cql2-json form: stac-fastapi-pgstac
    takes only cql2-json in a POST body (the same query, written the way the anchor reads it).
    """

    def run(body: Mapping[str, Any]) -> int:
        sent = dict(body)
        if cql2_json and sent.get("filter-lang") == "cql2-text":
            from lunarchive.catalog._cql2sql import parse_filter

            sent |= {"filter": parse_filter(sent["filter"], "cql2-text").tree,
                     "filter-lang": "cql2-json"}  # fmt: skip
        response = client.post("/search", json=sent)
        response.raise_for_status()
        return len(response.json()["features"])

    return run


def measure(
    engines: Mapping[str, Callable[[Mapping[str, Any]], int]],
    bodies: Mapping[str, Mapping[str, Any]],
    repeats: int,
) -> Timings:
    """Each query on each engine once to warm up, then ``repeats`` timed turns, interleaved."""
    found = Timings()
    for engine, run in engines.items():
        found.returned[engine] = {name: run(body) for name, body in bodies.items()}
        found.seconds[engine] = {name: [] for name in bodies}
    for _ in range(repeats):
        for name, body in bodies.items():
            for engine, run in engines.items():
                started = time.perf_counter()
                run(body)
                found.seconds[engine][name].append(time.perf_counter() - started)
    return found


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one API for the benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("engine", choices=["ours", "anchor"])
    serve_parser.add_argument("database_url")
    args = parser.parse_args(argv)
    _serve_main(args.engine, args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
