"""What every ``lunarchive`` command shares: the consoles, the ``--store`` option, the store
URL it resolves to, and one-line errors. Free of Prefect, so the CLI starts fast."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.console import Console

from lunarchive.flows.settings import Settings
from lunarchive.schemas.errors import InvalidFilter, LunarchiveError

__all__ = ["StoreOption", "absolute_store_url", "err", "one_line_errors", "out"]

out = Console()
err = Console(stderr=True)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store root: a folder, file:///abs/path or s3://bucket/prefix "
        "[default: LUNARCHIVE_STORE_URL, else ./lunarchive-data].",
    ),
]


def absolute_store_url(given: str | None) -> str:
    """The store URL (given, else the settings'), a relative folder made absolute (flows may
    run elsewhere)."""
    url = given or Settings().store_url
    if urlparse(url).scheme in ("", "file") and not url.startswith("file://"):
        return Path(url).expanduser().resolve().as_uri()
    return url


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn our errors into one line on stderr and an exit status: 2 for a malformed query,
    1 for anything else refused."""
    try:
        yield
    except InvalidFilter as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (LunarchiveError, FileNotFoundError, PermissionError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
