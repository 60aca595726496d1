"""``lunarchive status``: one screen of what a data engineer checks first.

The current release and its age, the last pipeline runs and their outcome (from the run
reports in ``reports/``), the quarantines waiting for attention, and per source its
completeness and freshness (the watchdog's own judgement, :func:`~lunarchive.flows.watchdog.
evaluate`). Everything is read from the store; the harvest-failure streaks come from the
Prefect API when one is configured (``LUNARCHIVE_PREFECT_API_URL`` / ``PREFECT_API_URL``).
Mounted by ``flows/cli.py``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lunarchive.catalog.store import Store
from lunarchive.flows._cli_common import StoreOption, absolute_store_url, one_line_errors
from lunarchive.flows.cli_harvest import _status_row
from lunarchive.flows.settings import Settings
from lunarchive.schemas.run_report import RunReport, run_id_of

__all__ = ["status_command"]

out = Console()


@dataclass(frozen=True)
class Quarantined:
    source: str
    items: int
    newest: str | None
    reason: str


def read_run_reports(store: Store, last: int) -> list[RunReport]:
    """The ``last`` run reports, newest first."""
    reports = [
        RunReport.model_validate_json(store.read(info.key))
        for info in store.list("reports/")
        if run_id_of(info.key)
    ]
    return sorted(reports, key=lambda r: r.started, reverse=True)[:last]


def quarantines(store: Store) -> list[Quarantined]:
    """``quarantine/<source>/<id>/reason.json`` per source: how many, the newest and why."""
    found: dict[str, list[dict[str, Any]]] = {}
    for info in store.list("quarantine/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == "reason.json":
            found.setdefault(parts[1], []).append(json.loads(store.read(info.key)))
    waiting = []
    for source, records in sorted(found.items()):
        records.sort(key=lambda r: str(r.get("when", "")))
        newest = records[-1]
        waiting.append(
            Quarantined(
                source,
                len(records),
                newest.get("when"),
                f"{newest.get('product_id')}: {newest.get('reason', '')}",
            )
        )
    return waiting


def _age(now: datetime, then: datetime) -> str:
    seconds = (now - then).total_seconds()
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop returns


def _failures(settings: Settings, sources: list[str]) -> tuple[dict[str, int] | None, str]:
    """Harvest-failure streaks from the Prefect API, when one is configured."""
    if not (settings.prefect_api_url or os.environ.get("PREFECT_API_URL")):
        return None, "harvest runs not checked (no Prefect API configured)"
    from lunarchive.flows.watchdog import harvest_failures

    try:
        return harvest_failures(sources, depth=settings.watchdog_failed_runs), ""
    except Exception as exc:  # noqa: BLE001 - the screen shows the rest anyway
        return None, f"harvest runs not checked (Prefect API: {type(exc).__name__})"


def status_command(
    store: StoreOption = None,
    runs: Annotated[int, typer.Option(min=1, help="How many recent runs to list.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print it all as JSON.")] = False,
) -> None:
    """The current release, the last runs, quarantines waiting, and each source's freshness."""
    from lunarchive.catalog.publish import read_current
    from lunarchive.flows._runtime import load_settings, store_for
    from lunarchive.flows.harvest_engine import HarvestSettings, load_registry, read_report
    from lunarchive.flows.watchdog import evaluate

    now = datetime.now(UTC)
    with one_line_errors():
        settings = load_settings(store_url=absolute_store_url(store))
        target = store_for(settings)
        current = read_current(target)
        specs = load_registry(HarvestSettings().harvest_registry_dir)
        completeness = {s.name: _status_row(s.name, s.kind, read_report(target, s.name), now)
                        for s in specs}  # fmt: skip
        failures, note = _failures(settings, [s.name for s in specs])
        freshness = evaluate(settings, target, now=now, failures=failures)
        reports = read_run_reports(target, runs)
        waiting = quarantines(target)
    release: dict[str, Any] | None = None
    if current:
        pointer, manifest, _ = current
        prefix = f"releases/{pointer.version}/"
        items = sum(
            1 for e in manifest.objects if e.key.startswith(prefix) and e.key.count("/") == 4
        )
        release = {
            "version": pointer.version,
            "published": pointer.published.isoformat(),
            "age_days": round((now - pointer.published).total_seconds() / 86400, 3),
            "items": items,
            "objects": len(manifest.objects),
            "previous": pointer.previous,
        }
    if as_json:
        document = {
            "store": target.url,
            "checked": now.isoformat(),
            "release": release,
            "runs": [r.model_dump(mode="json", exclude={"coverage"}) for r in reports],
            "quarantine": [q.__dict__ for q in waiting],
            "freshness": freshness.as_json(),
            "sources": list(completeness.values()),
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    out.print(_screen(target.url, now, release, reports, waiting, freshness, completeness, note))


def _screen(
    url: str,
    now: datetime,
    release: dict[str, Any] | None,
    reports: list[RunReport],
    waiting: list[Quarantined],
    freshness: Any,
    completeness: dict[str, dict[str, Any]],
    note: str,
) -> Group:
    stale = freshness.stale
    head = Text(f"lunarchive status of {url} at {now:%Y-%m-%d %H:%M}Z — ", style="bold")
    head.append(f"{len(stale)} stale" if stale else "all fresh", style="red" if stale else "green")
    if release:
        published = datetime.fromisoformat(release["published"])
        line = Text(
            f"release {release['version']}: {release['items']} items, {release['objects']} "
            f"objects, published {_age(now, published)} ago"
            + (f" (previous {release['previous']})" if release["previous"] else "")
        )
    else:
        line = Text("release: none published yet", style="red")
    run_lines = [Text("Last runs", style="italic")]
    for r in reports:
        run = Text(f" {r.started:%m-%d %H:%M}Z {r.source} ")
        run.append(r.outcome, style="green" if r.outcome == "completed" else "red")
        run.append(
            f": {sum(s.new for s in r.sources)} new, "
            f"{sum(s.quarantined for s in r.sources)} quarantined, {r.tiles_built} tiles "
            f"built, {r.items_published} items published, {_size(r.bytes_moved)}, "
            f"{(r.finished - r.started).total_seconds():.0f} s"
            + (f" — {r.error}" if r.error else "")
        )
        run_lines.append(run)
    if not reports:
        run_lines.append(Text(" no run report yet", style="dim"))
    quarantine_table = Table(
        title="Quarantine waiting", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("source", "items", "newest", "latest reason"):
        quarantine_table.add_column(column, overflow="ellipsis", no_wrap=True)
    for q in waiting:
        newest = (q.newest or "—")[:16]
        quarantine_table.add_row(q.source, str(q.items), newest, q.reason)
    quarantined: Any = quarantine_table if waiting else Text("Quarantine waiting: none")
    fresh_table = Table(
        title="Freshness", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("what", "name", "held", "state", "detail"):
        fresh_table.add_column(column, overflow="fold")
    unwatched = []
    for f in freshness.findings:
        if not f.watched:
            unwatched.append(f.name)
            continue
        row = completeness.get(f.name, {}) if f.kind == "source" else {}
        held = f"{row['held']}/{row['upstream']}" if row.get("harvested") else ""
        state = Text("stale", style="red") if f.stale else Text("fresh", style="green")
        fresh_table.add_row(f.kind, f.name, held, state, f.detail)
    notes = [note] if note else []
    if unwatched:
        notes.append(f"never harvested, not watched: {', '.join(unwatched)}")
    parts: list[Any] = [head, line, Text(), *run_lines, Text(), quarantined, fresh_table]
    parts += [Text(n, style="dim") for n in notes]
    return Group(*parts)
