"""The ``harvest-samples`` flow: partner drops in ``inbox/`` → versioned sample tables.

A drop is ``inbox/<partner>/<drop>/``: a ``manifest.json`` (written last by the partner: its
presence means the drop is complete) and the files it lists with their SHA-256. Each drop is
processed once; its ``report.json`` (written last, beside the manifest) marks it done:

1. the manifest and the checksums are checked: a bad drop is quarantined whole, and its report
   says why; nothing of it reaches a table;
2. every row is validated (and the oxide total of each complete analysis); rejected rows are
   kept under ``quarantine/<partner>/<drop>/`` and named in ``report.json`` / ``report.csv``
   (file, row, column, value, rule, message), with warnings for rows kept but worth a look;
3. the valid rows are merged into the partner's table, ``tables/<partner>/<version>/``: a row
   whose id (``sample_id``, ``analysis_id``) the table holds supersedes it, unless the held
   row comes from a drop received later; older versions stay as history. Two runs at once
   both get their rows in: the loser of the compare-and-swap re-reads and merges again.

A drop embargoed until a future date goes to the partner's restricted root instead (the same
layout, see :func:`restricted_store`); once the date has passed, a run moves its rows to the
public table. This module only wires: validation, merging and reports are
:mod:`lunarchive.processing.samples`, objects and the compare-and-swap
:mod:`lunarchive.catalog.sample_tables`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.layout import INBOX_PREFIX, drop_prefix, restricted_root, safe_id
from lunarchive.catalog.quarantine import quarantine, quarantine_rows
from lunarchive.catalog.sample_tables import (
    MANIFEST_NAME,
    TableChange,
    TableRecord,
    find_new_drops,
    read_drop,
    read_table_record,
    table_partners,
    update_table,
    write_drop_report,
)
from lunarchive.catalog.samples_stac import specimen_families
from lunarchive.catalog.store import Store
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.settings import Settings
from lunarchive.processing.samples import (
    REPORT_COLUMNS,
    analyses_from_parquet,
    check_drop_files,
    drop_report,
    merge_drop_entries,
    merge_rows,
    quarantine_document,
    read_drop_manifest,
    report_csv,
    specimens_from_geoparquet,
    table_files,
    validate_drop,
)
from lunarchive.schemas.errors import ConfigurationError, ProductRejected, StoreConflict
from lunarchive.schemas.samples import Analysis, Specimen

__all__ = [
    "REPORT_COLUMNS",
    "Table",
    "find_new_drops",
    "harvest_samples",
    "read_table_version",
    "restricted_store",
    "table_partners",
]


@dataclass(frozen=True)
class Table:
    """One version of a partner's table, and the drops merged into it (oldest first)."""

    partner: str
    version: str | None  # None: no table yet
    specimens: tuple[Specimen, ...] = ()
    analyses: tuple[Analysis, ...] = ()
    drops: tuple[dict[str, Any], ...] = ()
    objects: tuple[dict[str, Any], ...] = ()
    tag: str | None = None  # of latest.json, for the compare-and-swap


def read_table_version(store: Store, partner: str) -> Table:
    """The partner's current table in ``store`` (empty when it has none)."""
    return _decoded(store, partner, read_table_record(store, partner))


def _decoded(store: Store, partner: str, record: TableRecord | None) -> Table:
    if record is None:
        return Table(partner, None)
    return Table(
        partner=partner,
        version=record.version,
        specimens=tuple(specimens_from_geoparquet(store.read(record.key("specimens.parquet")))),
        analyses=tuple(analyses_from_parquet(store.read(record.key("analyses.parquet")))),
        drops=record.drops,
        objects=record.objects,
        tag=record.tag,
    )


def _merge(
    store: Store,
    partner: str,
    incoming: tuple[Sequence[Specimen], Sequence[Analysis]],
    entries: Sequence[Mapping[str, Any]],
    without: frozenset[str] = frozenset(),
) -> Callable[[TableRecord | None], TableChange]:
    """The change that merges ``incoming`` rows (of the drops ``entries``) into whichever
    version is current when it is applied, and drops the rows of the drops ``without``."""

    def change(current: TableRecord | None) -> TableChange:
        held = _decoded(store, partner, current)
        rows = merge_rows(
            (held.specimens, held.analyses), incoming, [*held.drops, *entries], without=without
        )
        families = specimen_families(*rows)
        files = table_files(
            *rows,
            {family.root.sample_id: family.analyses for family in families},
            file_name=lambda sample_id: f"by-specimen/{safe_id(sample_id)}.analyses.parquet",
        )
        drops = merge_drop_entries(held.drops, entries, without=without)
        return TableChange(files, drops, {"specimens": len(rows[0]), "analyses": len(rows[1])})

    return change


def restricted_store(settings: Settings, partner: str) -> Store:
    """The partner's restricted root: its own URL from LUNARCHIVE_RESTRICTED_STORE_URL
    (``{partner}`` filled in), else ``restricted/<partner>/`` beside a folder store."""
    if settings.restricted_store_url:
        url = settings.restricted_store_url.replace("{partner}", safe_id(partner))
    elif store_for(settings).url.startswith("file://"):
        url = store_for(settings).url.rstrip("/") + "/" + restricted_root(partner)
    else:
        raise ConfigurationError(
            f"partner {partner} has an embargoed drop, but LUNARCHIVE_RESTRICTED_STORE_URL is "
            "not set: on S3 a restricted tree needs its own bucket (e.g. "
            "s3://lunarchive-restricted-{partner})"
        )
    return store_for(settings.model_copy(update={"store_url": url}))


@task(cache_policy=NO_CACHE)
def process_drop(settings: Settings, partner: str, drop: str, today: date) -> dict[str, Any]:
    """Check, validate, quarantine, merge and report one drop; return its report."""
    store = store_for(settings)
    prefix = drop_prefix(partner, drop)
    received = datetime.now(UTC).isoformat(timespec="microseconds")
    contents = read_drop(store, partner, drop)
    base: dict[str, Any] = {"partner": partner, "drop": drop, "manifest": prefix + MANIFEST_NAME}
    try:
        manifest = read_drop_manifest(contents[MANIFEST_NAME], file=prefix + MANIFEST_NAME)
        if manifest.partner != partner:
            raise ProductRejected(
                f"{prefix}{MANIFEST_NAME}: partner {manifest.partner!r} is not the inbox's "
                f"{partner!r} (rule: a partner drops into its own inbox)"
            )
        check_drop_files(manifest, contents)
    except ProductRejected as exc:
        files = sorted(prefix + path for path in contents)
        quarantine(
            store, source=partner, product_id=drop, reason=str(exc), rule="DropRejected",
            files=files,
        )  # fmt: skip
        report = base | {"status": "rejected", "reason": str(exc)}
        write_drop_report(store, partner, drop, report, report_csv([]))
        return report
    embargoed = manifest.embargo_until is not None and manifest.embargo_until > today
    target = restricted_store(settings, partner) if embargoed else store
    known = {s.sample_id for s in read_table_version(target, partner).specimens}
    if target is not store:
        known |= {s.sample_id for s in read_table_version(store, partner).specimens}
    drop_id = f"{partner}/{drop}"
    validated = validate_drop(manifest, contents, drop_id, known)
    document = quarantine_document(partner, drop, validated)
    paths = [f["path"] for f in validated.files]
    quarantined = (
        [] if document is None else quarantine_rows(target, partner, drop, document, paths)
    )
    if validated.specimens or validated.analyses:  # nothing valid: the table stays as it is
        until = manifest.embargo_until
        entry: dict[str, Any] = {"drop": drop_id, "licence": manifest.licence}
        entry["received"] = received
        entry["embargo_until"] = None if until is None else until.isoformat()
        incoming = (validated.specimens, validated.analyses)
        record = update_table(target, partner, _merge(target, partner, incoming, [entry]))
    else:
        record = read_table_record(target, partner)
    report = drop_report(
        base, manifest, validated, embargoed=embargoed, received=received,
        table_version=None if record is None else record.version,
    ) | {"quarantine": quarantined or []}  # fmt: skip
    write_drop_report(
        store, partner, drop, report, report_csv(validated.errors, validated.warnings)
    )
    return report


@task(cache_policy=NO_CACHE)
def lift_embargoes(settings: Settings, partner: str, today: date) -> list[str]:
    """Move the rows of the partner's drops whose embargo has passed to the public table.

    A lifted row takes its place by when its drop was received, not by today: a newer
    public row with the same id stays."""
    try:
        restricted = restricted_store(settings, partner)
    except ConfigurationError:
        return []  # no restricted root is configured: nothing can be embargoed
    held = read_table_version(restricted, partner)
    due = frozenset(
        d["drop"]
        for d in held.drops
        if d.get("embargo_until") and date.fromisoformat(d["embargo_until"]) <= today
    )
    if not due:
        return []
    moving = (
        [s for s in held.specimens if s.source.drop in due],
        [a for a in held.analyses if a.source.drop in due],
    )
    lifted = [{**d, "embargo_lifted": today.isoformat()} for d in held.drops if d["drop"] in due]
    store = store_for(settings)
    update_table(store, partner, _merge(store, partner, moving, lifted))
    update_table(restricted, partner, _merge(restricted, partner, ([], []), [], without=due))
    return sorted(due)


@flow(name="harvest-samples")
def harvest_samples(store_url: str | None = None, today: date | None = None) -> dict[str, Any]:
    """Lift passed embargoes, then process every new drop under ``inbox/``."""
    settings = load_settings(store_url=store_url)
    today = today or datetime.now(UTC).date()
    store = store_for(settings)
    logger = get_run_logger()
    partners = sorted({key.split("/")[1] for key in _inbox_keys(store)})
    lifted = [d for p in partners for d in lift_embargoes(settings, p, today)]
    reports, waiting = [], []
    for partner, drop in find_new_drops(store):
        try:
            reports.append(process_drop(settings, partner, drop, today))
        except (ConfigurationError, StoreConflict) as exc:  # it waits for the next run
            logger.error("drop %s/%s waits: %s", partner, drop, exc)
            waiting.append(f"{partner}/{drop}")
    for report in reports:
        counts = report.get("counts", {})
        logger.info(
            "drop %s/%s: %s; specimens %s, analyses %s; %d warning(s)",
            report["partner"], report["drop"], report["status"],
            counts.get("specimens"), counts.get("analyses"), len(report.get("warnings", [])),
        )  # fmt: skip
    return {
        "drops": reports,
        "lifted": lifted,
        "waiting": waiting,
        "tables": {p: read_table_version(store, p).version for p in table_partners(store)},
    }


def _inbox_keys(store: Store) -> list[str]:
    return [info.key for info in store.list(INBOX_PREFIX) if info.key.count("/") >= 3]
