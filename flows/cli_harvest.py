"""``lunarchive harvest SOURCE`` and ``lunarchive status``: the harvest engine's commands.

``harvest`` runs the ``harvest-source`` flow on one registered source with a progress bar;
``status_command`` prints each source's completeness (upstream, held, missing, quarantined,
failed, withdrawn, flags) from the reports in the store. ``lunarchive status`` itself is
:mod:`lunarchive.flows.cli_status`, which shows these rows among the rest. Mounted by
``flows/cli.py``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from lunarchive.flows._cli_common import StoreOption, absolute_store_url, err, one_line_errors, out
from lunarchive.schemas.sources import CompletenessReport

__all__ = ["harvest_command", "status_command"]


def harvest_command(
    source: Annotated[str, typer.Argument(help="A registered source (see `lunarchive status`).")],
    store: StoreOption = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="Harvest a mirror of the source at this URL instead of its own."),
    ] = None,
    allow_local_sources: Annotated[
        bool, typer.Option(help="Allow a loopback source address (local mirrors only).")
    ] = False,
) -> None:
    """Harvest what is new or changed upstream in SOURCE into raw/, verified; report it."""
    from lunarchive.flows._runtime import load_settings, prefect_api
    from lunarchive.flows.harvest import harvest_source
    from lunarchive.flows.harvest_engine import progress_listeners

    url = absolute_store_url(store)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with one_line_errors(), prefect_api(load_settings()), Progress(*columns, console=err) as bar:
        task = bar.add_task(f"{source}: reading the inventory", total=None)

        def advance(_source: str, product: str, status: str) -> None:
            if status == "listed":
                bar.update(task, total=int(product), description=f"{source}: fetching")
            else:
                bar.advance(task)

        progress_listeners.append(advance)
        try:
            result = harvest_source(
                source,
                store_url=url,
                base_url=base_url,
                allow_local_sources=allow_local_sources or None,
            )
        finally:
            progress_listeners.remove(advance)
    report = CompletenessReport.model_validate(result["report"])
    run = result["run"]
    out.print(
        f"{source}: {run['upstream']} upstream, {run['new']} new, {run['fetched']} fetched, "
        f"{run['unchanged']} unchanged, {run['failed']} failed, {run['quarantined']} "
        f"quarantined, {run['missing']} missing",
        highlight=False,
    )
    flags = report.flags_at(datetime.now(UTC))
    if flags:
        out.print(f"flags: {', '.join(flags)}", highlight=False)


def status_command(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Per-source completeness of the holdings against each upstream inventory."""
    from lunarchive.flows._runtime import load_settings, store_for
    from lunarchive.flows.harvest_engine import HarvestSettings, load_registry, read_report

    with one_line_errors():
        target = store_for(load_settings(store_url=absolute_store_url(store)))
        specs = load_registry(HarvestSettings().harvest_registry_dir)
        reports = {spec.name: (spec.kind, read_report(target, spec.name)) for spec in specs}
    now = datetime.now(UTC)
    if as_json:
        rows = [_status_row(name, kind, report, now) for name, (kind, report) in reports.items()]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Harvest completeness", title_justify="left")
    for column in ("source", "kind", "upstream", "held", "missing", "quarantined", "failed"):
        table.add_column(column, justify="right" if column not in ("source", "kind") else "left")
    table.add_column("inventory changed")
    table.add_column("flags")
    for name, (kind, report) in reports.items():
        row = _status_row(name, kind, report, now)
        if report is None:
            table.add_row(name, row["kind"], "—", "—", "—", "—", "—", "never harvested", "")
            continue
        table.add_row(
            name,
            row["kind"],
            *(str(row[key]) for key in ("upstream", "held", "missing", "quarantined", "failed")),
            row["inventory_changed"] or "—",
            ", ".join(row["flags"]),
        )
    out.print(table)


def _status_row(
    name: str, kind: str, report: CompletenessReport | None, now: datetime
) -> dict[str, Any]:
    if report is None:
        return {"source": name, "kind": kind, "harvested": False, "flags": ["never-harvested"]}
    return {
        "source": name,
        "kind": kind,
        "harvested": True,
        "upstream": report.inventory_products,
        "held": report.inventory_products - len(report.missing),
        "missing": len(report.missing),
        "quarantined": len(report.quarantined),
        "failed": len(report.failed),
        "withdrawn": len(report.withdrawn),
        "inventory_changed": report.inventory_changed.isoformat()
        if report.inventory_changed
        else None,
        "last_change": report.changed.isoformat() if report.changed else None,
        "last_run": report.counts.model_dump(),
        "flags": list(report.flags_at(now)),
    }
