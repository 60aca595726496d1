"""``lunarchive demo``: a small lunar archive on a loopback HTTP server, through the pipeline.

The archive is generated (deterministically, so a second demo writes nothing new): its DEM
tiles are served by a throw-away HTTP server on 127.0.0.1 and harvested like any remote
archive would be (loopback sources are allowed for this one run); its sample drop is put into
the store's ``inbox/demo-lab/<drop>/`` as a partner laboratory would, and taken in by the
pipeline's ``harvest-samples`` stage.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lunarchive.catalog.layout import drop_prefix
from lunarchive.catalog.store import Store
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.pipeline import pipeline
from lunarchive.processing.demo_archive import write_demo_archive, write_demo_drop

__all__ = ["DEMO_DROP", "DEMO_PARTNER", "DEMO_SOURCE", "put_drop", "run_demo", "serve_folder"]

DEMO_SOURCE = "demo"
DEMO_PARTNER = "demo-lab"
DEMO_DROP = "2021-01-15"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass


@contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve ``root`` read-only on a free loopback port; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-archive", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def put_drop(store: Store, folder: Path, *, partner: str, drop: str) -> list[str]:
    """Copy a drop folder into ``inbox/<partner>/<drop>/`` as a partner would: data files
    first, the manifest last; files already there are left alone. Returns the keys written."""
    prefix = drop_prefix(partner, drop)
    files = sorted(folder.iterdir(), key=lambda p: (p.name == "manifest.json", p.name))
    written = []
    for path in files:
        if path.is_file() and not store.exists(prefix + path.name):
            store.write(prefix + path.name, path.read_bytes())
            written.append(prefix + path.name)
    return written


def run_demo(store_url: str) -> dict[str, Any]:
    """Generate the demo archive, put its drop in the inbox, serve its DEM tiles, run
    ``pipeline`` on them into ``store_url``."""
    with tempfile.TemporaryDirectory(prefix="lunarchive-demo-") as tmp:
        write_demo_archive(Path(tmp))
        write_demo_drop(Path(tmp) / "drop", partner=DEMO_PARTNER)
        store = store_for(load_settings(store_url=store_url))
        put_drop(store, Path(tmp) / "drop", partner=DEMO_PARTNER, drop=DEMO_DROP)
        with serve_folder(Path(tmp) / "dem") as url:
            result: dict[str, Any] = pipeline(
                url, DEMO_SOURCE, store_url=store_url, allow_local_sources=True
            )
    return result
