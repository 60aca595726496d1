"""``lunarchive process SOURCE``: build the tile cubes of what ``raw/<SOURCE>/`` holds.

The products are the harvest engine's current versions (``state/harvest/<SOURCE>.json``,
whose files' SHA-256 are known, so nothing is hashed again) or, for a source harvested by
the ``pipeline`` flow, each folder of ``raw/<SOURCE>/``. The ``process`` flow runs on Dask
(``LUNARCHIVE_DASK_ADDRESS``, else a LocalCluster); tiles whose inputs are unchanged are
kept, the others built under a new version. ``--publish`` then publishes a release (the
pointer flips only once everything is written). Mounted by ``flows/cli.py``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, cast

import typer

from lunarchive.catalog.store import Store
from lunarchive.flows._cli_common import StoreOption, absolute_store_url, err, out
from lunarchive.schemas.errors import LunarchiveError

__all__ = ["process_command", "raw_products"]


def raw_products(store: Store, source: str) -> list[dict[str, Any]]:
    """The products of ``raw/<source>/`` as the ``process`` flow takes them."""
    from lunarchive.catalog.layout import raw_prefix
    from lunarchive.flows.harvest_engine import state_key
    from lunarchive.schemas.sources import HarvestState

    if store.exists(state_key(source)):
        state = HarvestState.model_validate_json(store.read(state_key(source)))
        products = []
        for product_id, product in sorted(state.products.items()):
            if not product.versions:
                continue
            current = product.versions[-1]
            products.append(
                {
                    "source": source,
                    "product_id": product_id,
                    "keys": sorted(f.key for f in current.files),
                    "sha256": {f.key: f.sha256 for f in current.files},
                    "harvested": current.fetched.isoformat(),
                }
            )
        return products
    folders: dict[str, list[str]] = defaultdict(list)
    prefix = raw_prefix(source)
    for info in store.list(prefix):
        folder = info.key.rsplit("/", 1)[0]
        folders[folder].append(info.key)
    return [
        {"source": source, "product_id": folder.removeprefix(prefix), "keys": sorted(keys)}
        for folder, keys in sorted(folders.items())
    ]


def process_command(
    source: Annotated[str, typer.Argument(help="The source whose raw/<SOURCE>/ to process.")],
    store: StoreOption = None,
    grid: Annotated[
        str | None,
        typer.Option(
            help="Named lunar grid, e.g. moon-eqc-512, moon-sp-237 [default: the ladder rung "
            "nearest the inputs' resolution]."
        ),
    ] = None,
    resampling: Annotated[
        str, typer.Option(help="GDAL resampling: nearest, bilinear, cubic, average …")
    ] = "bilinear",
    rule: Annotated[
        str, typer.Option(help="Where inputs overlap: newest or finest first.")
    ] = "newest",
    publish: Annotated[
        bool, typer.Option("--publish", help="Publish a release of the tiles afterwards.")
    ] = False,
) -> None:
    """Build one Zarr v3 store per grid tile from raw/SOURCE/, rebuilding only changed tiles."""
    from lunarchive.flows._runtime import dask_task_runner, load_settings, prefect_api, store_for
    from lunarchive.flows.process import process
    from lunarchive.flows.publish import publish as publish_flow
    from lunarchive.processing.grids import named_grid

    url = absolute_store_url(store)
    try:
        if rule not in ("newest", "finest"):
            raise typer.BadParameter(f"--rule {rule!r}: use newest or finest")
        if grid is not None:
            try:
                named_grid(grid)
            except KeyError as exc:
                raise typer.BadParameter(str(exc.args[0])) from None
        settings = load_settings(store_url=url)
        products = raw_products(store_for(settings), source)
        if not products:
            raise FileNotFoundError(f"{url}/raw/{source}/: no products to process")
        with prefect_api(settings), out.status(f"Process {source} on Dask …"):
            on_dask = process.with_options(task_runner=dask_task_runner(settings))  # type: ignore[arg-type]
            result = on_dask(
                products, source, url, grid=grid, resampling=resampling, rule=cast("Any", rule)
            )
            release = publish_flow(result, source, url) if publish else None
    except typer.BadParameter as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (LunarchiveError, FileNotFoundError, PermissionError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    lines = []
    for name, made in sorted(result["collections"].items()):
        lines.append(
            f"grid       {made['grid']}: {len(made['tiles'])} tile(s), {len(made['built'])} "
            f"built, {len(made['kept'])} unchanged  ({name}, {made['variable']})"
        )
    for tile in result["empty"]:
        lines.append(f"empty      {tile['collection']} {tile['tile']}: no valid pixel, not kept")
    if result["unrecognised"]:
        lines.append(f"skipped    products of no known kind: {', '.join(result['unrecognised'])}")
    for cube in result["cubes"]:
        lines.append(f"tile       {cube['tile']}  {url.rstrip('/')}/{cube['key']}")
    if release is not None:
        state = "published" if release["published"] else "unchanged, nothing written"
        lines.append(f"release    {release['version']} ({state})")
    out.print("\n".join(lines), highlight=False, soft_wrap=True)
