"""The ``watchdog`` flow: is anything stale? Fails, with one clear message, when it is.

Data that stops arriving raises no error anywhere: an archive goes quiet, a partner stops
dropping, a scheduled harvest keeps failing, the release stops moving. The watchdog, run on a
schedule, looks for exactly that and ends in a Failed state naming everything stale, so that
Prefect notifications (automations on ``watchdog`` failures) reach an operator:

* a registered source (``flows/registry/``) whose upstream inventory has not changed within
  its ``cadence_days`` (from its completeness report ``reports/harvest/<source>.json``), or
  that was never harvested though ``LUNARCHIVE_WATCHDOG_SOURCES`` expects it;
* a source whose last ``LUNARCHIVE_WATCHDOG_FAILED_RUNS`` ``harvest-source`` runs all failed
  (asked of the Prefect API);
* a partner inbox (``inbox/<partner>/``) with no new drop for longer than
  ``LUNARCHIVE_WATCHDOG_INBOX_CADENCE_DAYS``: a store keeps no arrival times, so the watchdog
  notes when it first saw each drop in ``state/watchdog/inbox.json`` (written only when it
  changes);
* no current release, or one older than ``LUNARCHIVE_WATCHDOG_RELEASE_MAX_AGE_DAYS``.

:func:`evaluate` is the whole judgement, without Prefect; ``lunarchive status`` shows it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from lunarchive.catalog.layout import safe_id
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.store import Store, check_key, json_bytes
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.harvest_engine import HarvestSettings, load_registry, read_report
from lunarchive.flows.settings import Settings

__all__ = [
    "Finding",
    "Freshness",
    "evaluate",
    "harvest_failures",
    "inbox_seen",
    "watchdog",
]

INBOX_STATE_KEY = check_key("state/watchdog/inbox.json")
HARVEST_FLOW = "harvest-source"
Kind = Literal["source", "harvests", "inbox", "release"]


@dataclass(frozen=True)
class Finding:
    """One thing the watchdog looked at: fresh or stale, and why, in one sentence."""

    kind: Kind
    name: str
    stale: bool
    detail: str
    last: datetime | None = None  # when it last produced something new
    watched: bool = True  # False: shown, never flagged (a source nobody expects yet)


@dataclass(frozen=True)
class Freshness:
    checked: datetime
    findings: list[Finding] = field(default_factory=list)

    @property
    def stale(self) -> list[Finding]:
        return [f for f in self.findings if f.stale]

    def message(self) -> str:
        """One line: everything stale, or that all is fresh."""
        stale = self.stale
        if not stale:
            watched = sum(1 for f in self.findings if f.watched)
            return f"all fresh: {watched} thing(s) watched, none stale"
        return f"{len(stale)} stale: " + "; ".join(f"{f.kind} {f.name}: {f.detail}" for f in stale)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked.isoformat(),
            "stale": len(self.stale),
            "message": self.message(),
            "findings": [
                asdict(f) | {"last": f.last.isoformat() if f.last else None} for f in self.findings
            ],
        }


def _age(now: datetime, then: datetime) -> str:
    days = (now - then).total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{days * 24:.1f} hours"


def evaluate(
    settings: Settings,
    store: Store,
    *,
    now: datetime,
    failures: Mapping[str, int] | None = None,
    inbox: Mapping[str, datetime] | None = None,
) -> Freshness:
    """Judge every source, partner inbox and the release at ``now``.

    ``failures``: consecutive failed ``harvest-source`` runs per source (None: not asked);
    ``inbox``: when each partner's newest drop was first seen (None: read the stored state).
    """
    findings: list[Finding] = []
    expected = set(settings.watchdog_sources)
    for spec in load_registry(HarvestSettings().harvest_registry_dir):
        report = read_report(store, spec.name)
        cadence = f"expected every {spec.cadence_days:g} days"
        if report is None:
            watched = spec.name in expected
            findings.append(
                Finding("source", spec.name, watched, f"never harvested ({cadence})", None, watched)
            )
            continue
        last = report.inventory_changed
        stale = "stale" in report.flags_at(now) or last is None
        detail = (
            f"no new data for {_age(now, last)} ({cadence})"
            if last
            else f"inventory never read ({cadence})"
        )
        findings.append(Finding("source", spec.name, stale, detail, last))
    limit = settings.watchdog_failed_runs
    for source, count in sorted((failures or {}).items()):
        if count == 0:  # its last finished run completed: nothing to say
            continue
        findings.append(
            Finding(
                "harvests",
                source,
                count >= limit,
                f"last {count} {HARVEST_FLOW} run(s) failed in a row (flagged at {limit})",
            )
        )
    seen = inbox_seen(store, now, record=False) if inbox is None else inbox
    cadence_days = settings.watchdog_inbox_cadence_days
    for partner, newest in sorted(seen.items()):
        stale = now - newest > timedelta(days=cadence_days)
        detail = f"no new drop for {_age(now, newest)} (expected every {cadence_days:g} days)"
        findings.append(Finding("inbox", partner, stale, detail, newest))
    findings.append(_release_finding(settings, store, now))
    return Freshness(now, findings)


def _release_finding(settings: Settings, store: Store, now: datetime) -> Finding:
    current = read_current(store)
    limit = settings.watchdog_release_max_age_days
    if current is None:
        return Finding("release", "current", True, "no release is published")
    pointer = current[0]
    age = now - pointer.published
    return Finding(
        "release",
        pointer.version,
        age > timedelta(days=limit),
        f"published {_age(now, pointer.published)} ago (expected within {limit:g} days)",
        pointer.published,
    )


# --- partner inboxes: when was each drop first seen ----------------------------------------


def _complete_drops(store: Store) -> dict[str, set[str]]:
    """``inbox/<partner>/<drop>/manifest.json`` present: the drops per partner."""
    drops: dict[str, set[str]] = {}
    for info in store.list("inbox/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == "manifest.json":
            drops.setdefault(parts[1], set()).add(parts[2])
    return drops


def inbox_seen(store: Store, now: datetime, *, record: bool) -> dict[str, datetime]:
    """When each partner's newest drop was first seen; unseen drops count as seen ``now``
    (and are noted in ``state/watchdog/inbox.json`` when ``record``)."""
    try:
        raw = store.read(INBOX_STATE_KEY)
        state: dict[str, dict[str, str]] = json.loads(raw)
    except KeyError:
        raw, state = b"", {}
    for partner, drops in _complete_drops(store).items():
        known = state.setdefault(safe_id(partner), {})
        for drop in drops - set(known):
            known[drop] = now.isoformat()
    data = json_bytes(state)
    if record and data != raw:
        store.write(INBOX_STATE_KEY, data)
    return {
        partner: max(datetime.fromisoformat(when) for when in drops.values())
        for partner, drops in state.items()
        if drops
    }


# --- harvest runs, from the Prefect API -----------------------------------------------------


def harvest_failures(sources: Iterable[str], *, depth: int) -> dict[str, int]:
    """Per source, how many of its latest finished ``harvest-source`` runs failed in a row
    (up to ``depth``); a source with no finished run is left out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    wanted = set(sources)
    finished = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[HARVEST_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=finished))
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=max(200, depth * len(wanted) * 4),
        )
    counts: dict[str, int] = {}
    done: set[str] = set()
    for run in runs:  # newest first
        source = str(run.parameters.get("source", ""))
        if source not in wanted or source in done:
            continue
        counts.setdefault(source, 0)
        if run.state_type == StateType.COMPLETED or counts[source] >= depth:
            done.add(source)
        else:
            counts[source] += 1
    return counts


def prefect_api_configured(settings: Settings) -> bool:
    """Whether a Prefect API answers for this process (a server, or the run's own API)."""
    from prefect.settings import PREFECT_API_URL

    return bool(settings.prefect_api_url or PREFECT_API_URL.value())


def freshness_markdown(result: Freshness) -> str:
    lines = [
        f"# Watchdog at {result.checked:%Y-%m-%d %H:%M}Z: "
        + (f"{len(result.stale)} stale" if result.stale else "all fresh"),
        "",
        "| what | name | state | detail |",
        "|---|---|---|---|",
    ]
    for f in result.findings:
        state = "**stale**" if f.stale else ("fresh" if f.watched else "not watched")
        lines.append(f"| {f.kind} | {f.name} | {state} | {f.detail} |")
    return "\n".join(lines) + "\n"


@flow(name="watchdog")
def watchdog(store_url: str | None = None, now: datetime | None = None) -> State[Any]:
    """Flag stale sources, failing harvests, quiet partner inboxes and an old release.

    Ends Failed (message: everything stale) when anything is stale, else Completed.
    ``now`` replaces the clock (to ask "what will be stale then").
    """
    settings = load_settings(store_url=store_url)
    store = store_for(settings)
    when = now or datetime.now(UTC)
    seen = inbox_seen(store, when, record=True)
    sources = [spec.name for spec in load_registry(HarvestSettings().harvest_registry_dir)]
    failures = harvest_failures(sources, depth=settings.watchdog_failed_runs)
    result = evaluate(settings, store, now=when, failures=failures, inbox=seen)
    create_markdown_artifact(
        freshness_markdown(result), key="watchdog", description="Freshness of lunarchive's data"
    )
    message = result.message()
    if result.stale:
        get_run_logger().error("watchdog: %s", message)
        return Failed(message=message, data=result.as_json())
    get_run_logger().info("watchdog: %s", message)
    return Completed(message=message, data=result.as_json())
