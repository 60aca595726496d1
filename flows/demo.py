"""``lunarchive demo``: a small lunar archive on a loopback HTTP server, through the pipeline.

The archive is generated (deterministically, so a second demo writes nothing new), served by
a throw-away HTTP server on 127.0.0.1, and harvested like any remote archive would be: the
only difference is that loopback sources are allowed for this one run.
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

from lunarchive.flows.pipeline import pipeline
from lunarchive.processing.demo_archive import write_demo_archive

__all__ = ["DEMO_SOURCE", "run_demo", "serve_folder"]

DEMO_SOURCE = "demo"


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


def run_demo(store_url: str) -> dict[str, Any]:
    """Generate the demo archive, serve it, run ``pipeline`` on it into ``store_url``."""
    with tempfile.TemporaryDirectory(prefix="lunarchive-demo-") as tmp:
        write_demo_archive(Path(tmp))
        with serve_folder(Path(tmp)) as url:
            result: dict[str, Any] = pipeline(
                url, DEMO_SOURCE, store_url=store_url, allow_local_sources=True
            )
    return result
