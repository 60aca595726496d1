"""``lunarchive samples ...``: commands about lunar samples (mounted by the main CLI).

``lunarchive samples at-site SAMPLE_ID`` prints what the published orbital cubes show at the
specimen's collection site: the pixel that contains it, and statistics of the valid pixels
whose centres lie within its position-uncertainty disc, per cube item and variable.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from lunarchive.flows._cli_common import StoreOption, absolute_store_url, one_line_errors, out

__all__ = ["app", "at_site"]

app = typer.Typer(
    help="Lunar samples: what orbit shows at their collection sites.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COLUMNS = (
    ("cube item", "cube_item"), ("version", "cube_version"), ("variable", "variable"),
    ("pixel", "pixel_value"), ("mean", "mean"), ("std", "std"), ("min", "minimum"),
    ("max", "maximum"), ("count", "count"), ("disc r (m)", "radius_m"),
    ("pixel (m)", "pixel_size_x_m"),
)  # fmt: skip


@app.command("at-site")
def at_site(
    sample_id: Annotated[str, typer.Argument(help="A sample number, e.g. 70017 or 15415,177.")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Print the published cubes' values at a specimen's collection site."""
    from lunarchive.catalog.samples_stac import read_at_site
    from lunarchive.flows._runtime import load_settings, store_for

    with one_line_errors():
        settings = load_settings(store_url=absolute_store_url(store))
        version, item_id, rows = read_at_site(store_for(settings), sample_id)
    if as_json:
        document = {"sample_id": sample_id, "release": version, "item": item_id, "rows": rows}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    _print_rows(sample_id, version, item_id, rows)


def _print_rows(sample_id: str, version: str, item_id: str, rows: list[dict[str, Any]]) -> None:
    title = f"{sample_id} at its site: {len(rows)} cube variable(s), item {item_id}, "
    table = Table(title=title + f"release {version}", title_justify="left")
    for header, _ in _COLUMNS:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row[key]) for _, key in _COLUMNS))
    out.print(table)
    if not rows:
        out.print("No published cube covers this specimen's site (or it has no position).")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
