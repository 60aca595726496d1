"""The ``harvest-samples`` flow: partner drops in ``inbox/`` → versioned sample tables.

A drop is ``inbox/<partner>/<drop>/``: a ``manifest.json`` (written last by the partner: its
presence means the drop is complete) and the files it lists with their SHA-256. Each drop is
processed once; its ``report.json`` (written last, beside the manifest) marks it done:

1. the manifest and the checksums are checked: a bad drop is quarantined whole, and its report
   says why; nothing of it reaches a table;
2. every row is validated; rejected rows are kept under ``quarantine/<partner>/<drop>/`` and
   named in ``report.json`` / ``report.csv`` (file, row, column, value, rule, message);
3. the valid rows are merged into the partner's table, ``tables/<partner>/<version>/``: a row
   whose id (``sample_id``, ``analysis_id``) the table holds supersedes it; the version is a
   hash of the content, so an unchanged table writes nothing; older versions stay as history
   (``table.json`` names the previous one, ``latest.json`` the current one).

A drop embargoed until a future date goes to the partner's restricted root instead (the same
layout, see :func:`restricted_store`); once the date has passed, a run moves its rows to the
public table. Flows wire: validation is :mod:`lunarchive.processing.samples`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.layout import (
    INBOX_PREFIX,
    drop_prefix,
    drop_quarantine_prefix,
    drop_report_key,
    restricted_root,
    safe_id,
    table_key,
    table_latest_key,
)
from lunarchive.catalog.publish import create_once
from lunarchive.catalog.quarantine import quarantine
from lunarchive.catalog.samples_stac import specimen_families
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.settings import Settings
from lunarchive.processing.samples import (
    SourceRow,
    analyses_from_parquet,
    analyses_parquet_bytes,
    check_drop_files,
    read_drop_manifest,
    read_moondb_submission,
    read_table,
    specimens_from_geoparquet,
    specimens_geoparquet_bytes,
    validate_analyses,
    validate_specimens,
)
from lunarchive.schemas.errors import ConfigurationError, ProductRejected
from lunarchive.schemas.samples import Analysis, DropManifest, RowError, Specimen

__all__ = [
    "REPORT_COLUMNS",
    "Table",
    "find_new_drops",
    "harvest_samples",
    "read_table_version",
    "restricted_store",
    "table_partners",
]

REPORT_COLUMNS = ("file", "sheet", "row", "column", "value", "rule", "message")
_MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------
# Tables: tables/<partner>/<version>/{specimens,analyses}.parquet, by-specimen/, table.json


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
    tagged = store.read_tagged(table_latest_key(partner))
    if tagged is None:
        return Table(partner, None)
    record = json.loads(tagged[0])
    keys = {PurePosixPath(o["key"]).name: o["key"] for o in record["objects"]}
    return Table(
        partner=partner,
        version=record["version"],
        specimens=tuple(specimens_from_geoparquet(store.read(keys["specimens.parquet"]))),
        analyses=tuple(analyses_from_parquet(store.read(keys["analyses.parquet"]))),
        drops=tuple(record["drops"]),
        objects=tuple(record["objects"]),
        tag=tagged[1],
    )


def table_partners(store: Store) -> list[str]:
    """The partners with a table in ``store``."""
    return sorted(
        info.key.split("/")[1]
        for info in store.list("tables/")
        if info.key.count("/") == 2 and info.key.endswith("/latest.json")
    )


def _merged(table: Table, specimens: Iterable[Specimen], analyses: Iterable[Analysis]) -> Table:
    """Rows with an id the table holds supersede it; the rest are added."""
    by_sample = {s.sample_id: s for s in table.specimens} | {s.sample_id: s for s in specimens}
    by_id = {a.analysis_id: a for a in table.analyses} | {a.analysis_id: a for a in analyses}
    return Table(
        table.partner,
        table.version,
        tuple(by_sample.values()),
        tuple(by_id.values()),
        table.drops,
        table.objects,
        table.tag,
    )


def _write_table(store: Store, table: Table, drops: list[dict[str, Any]]) -> Table:
    """Write ``table`` as a new version unless its content equals the current version."""
    files = {
        "specimens.parquet": specimens_geoparquet_bytes(table.specimens),
        "analyses.parquet": analyses_parquet_bytes(table.analyses),
    }
    for family in specimen_families(table.specimens, table.analyses):
        if family.analyses:
            name = f"by-specimen/{safe_id(family.root.sample_id)}.analyses.parquet"
            files[name] = analyses_parquet_bytes(family.analyses)
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(f"{name}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    version = digest.hexdigest()[:16]
    if version == table.version:
        return table
    objects = [
        create_once(store, table_key(table.partner, version, n), d).model_dump()
        for n, d in files.items()
    ]
    record = {
        "partner": table.partner,
        "version": version,
        "previous": table.version,
        "drops": drops,
        "counts": {"specimens": len(table.specimens), "analyses": len(table.analyses)},
        "objects": sorted(objects, key=lambda o: o["key"]),
    }
    data = json_bytes(record)
    create_once(store, table_key(table.partner, version, "table.json"), data)
    store.swap(table_latest_key(table.partner), data, expected_tag=table.tag)
    return read_table_version(store, table.partner)


# ---------------------------------------------------------------------------------------------
# Drops


def find_new_drops(store: Store) -> list[tuple[str, str]]:
    """``(partner, drop)`` of every complete (manifest present), unprocessed drop, sorted."""
    names: dict[tuple[str, str], set[str]] = {}
    for info in store.list(INBOX_PREFIX):
        parts = info.key.split("/")
        if len(parts) >= 4:
            names.setdefault((parts[1], parts[2]), set()).add("/".join(parts[3:]))
    return sorted(
        d for d, files in names.items() if _MANIFEST in files and "report.json" not in files
    )


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


@dataclass
class _Validated:
    specimens: list[Specimen]
    analyses: list[Analysis]
    errors: list[RowError]
    rejected_rows: list[SourceRow]
    files: list[dict[str, Any]]


def _read_rows(kind: str, data: bytes, path: str, sheet: str | None) -> list[SourceRow]:
    if kind == "moondb_submission":
        return read_moondb_submission(data, file=path)
    return read_table(data, file=path, sheet=sheet)


def _validate_drop(
    manifest: DropManifest, contents: Mapping[str, bytes], drop_id: str, known: set[str]
) -> _Validated:
    """Every file of the drop, specimens first (analyses must name a known specimen)."""
    out = _Validated([], [], [], [], [])
    ordered = sorted(manifest.files, key=lambda f: (f.kind != "specimens", f.path))
    for entry in ordered:
        try:
            rows = _read_rows(entry.kind, contents[entry.path], entry.path, entry.sheet)
            if entry.kind == "specimens":
                valid_s, errors = validate_specimens(rows, source=drop_id)
                valid: list[Any] = valid_s
                out.specimens += valid_s
                known |= {s.sample_id for s in valid_s}
            else:
                valid_a, errors = validate_analyses(
                    rows, source=drop_id, dataset=manifest.dataset, known_samples=known
                )
                valid = valid_a
                out.analyses += valid_a
        except ProductRejected as exc:  # the whole file is unreadable: say so, keep it
            out.files.append({"path": entry.path, "kind": entry.kind, "status": "rejected"})
            out.files[-1] |= {"reason": str(exc), "rows": None, "valid": 0, "rejected": None}
            continue
        bad = {(e.file, e.sheet, e.row) for e in errors}
        out.errors += errors
        out.rejected_rows += [r for r in rows if (r.file, r.sheet, r.row) in bad]
        out.files.append(
            {"path": entry.path, "kind": entry.kind, "status": "read", "rows": len(rows)}
            | {"valid": len(valid), "rejected": len(rows) - len(valid)}
        )
    return out


def _report_csv(errors: Iterable[RowError]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for error in errors:
        writer.writerow(["" if (v := getattr(error, c)) is None else v for c in REPORT_COLUMNS])
    return buffer.getvalue().encode("utf-8")


def _write_report(store: Store, partner: str, drop: str, report: dict[str, Any]) -> None:
    """The CSV first, the JSON last: report.json marks the drop as processed."""
    errors = [RowError(**e) for e in report.get("errors", [])]
    store.write(drop_report_key(partner, drop, "csv"), _report_csv(errors))
    data = (json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode()
    store.write(drop_report_key(partner, drop, "json"), data)


def _quarantine_rows(store: Store, partner: str, drop: str, validated: _Validated) -> list[str]:
    """Keep every rejected row (its cells as read, and the rules it breaks)."""
    if not validated.rejected_rows and not any(f["status"] == "rejected" for f in validated.files):
        return []
    by_row: dict[tuple[str, str | None, int], list[dict[str, Any]]] = {}
    for error in validated.errors:
        by_row.setdefault((error.file, error.sheet, error.row), []).append(error.model_dump())
    rows = [
        {"file": r.file, "sheet": r.sheet, "row": r.row, "cells": dict(r.cells)}
        | {"errors": by_row[(r.file, r.sheet, r.row)]}
        for r in validated.rejected_rows
    ]
    key = drop_quarantine_prefix(partner, drop) + "rejected-rows.json"
    files = [f for f in validated.files if f["status"] == "rejected"]
    document = {"partner": partner, "drop": drop, "rows": rows, "rejected_files": files}
    store.write(key, json_bytes(document))
    reason = f"{len(rows)} row(s) and {len(files)} file(s) rejected; see rejected-rows.json"
    quarantine(
        store,
        source=partner,
        product_id=drop,
        reason=reason,
        rule="RowRejected",
        files=[drop_prefix(partner, drop) + f["path"] for f in validated.files],
    )
    return [key]


@task(cache_policy=NO_CACHE)
def process_drop(settings: Settings, partner: str, drop: str, today: date) -> dict[str, Any]:
    """Check, validate, quarantine, merge and report one drop; return its report."""
    store = store_for(settings)
    prefix = drop_prefix(partner, drop)
    contents = {i.key.removeprefix(prefix): store.read(i.key) for i in store.list(prefix)}
    report: dict[str, Any] = {"partner": partner, "drop": drop, "manifest": prefix + _MANIFEST}
    try:
        manifest = read_drop_manifest(contents[_MANIFEST], file=prefix + _MANIFEST)
        if manifest.partner != partner:
            raise ProductRejected(
                f"{prefix}{_MANIFEST}: partner {manifest.partner!r} is not the inbox's "
                f"{partner!r} (rule: a partner drops into its own inbox)"
            )
        check_drop_files(manifest, contents)
    except ProductRejected as exc:
        files = sorted(prefix + path for path in contents)
        quarantine(
            store,
            source=partner,
            product_id=drop,
            reason=str(exc),
            rule="DropRejected",
            files=files,
        )
        _write_report(store, partner, drop, report | {"status": "rejected", "reason": str(exc)})
        return report | {"status": "rejected", "reason": str(exc)}
    embargoed = manifest.embargo_until is not None and manifest.embargo_until > today
    target = restricted_store(settings, partner) if embargoed else store
    return _merge_drop(store, target, manifest, contents, report, embargoed)


def _merge_drop(
    store: Store,
    target: Store,
    manifest: DropManifest,
    contents: Mapping[str, bytes],
    report: dict[str, Any],
    embargoed: bool,
) -> dict[str, Any]:
    partner, drop = report["partner"], report["drop"]
    drop_id = f"{partner}/{drop}"
    table = read_table_version(target, partner)
    known = {s.sample_id for s in table.specimens}
    if target is not store:
        known |= {s.sample_id for s in read_table_version(store, partner).specimens}
    validated = _validate_drop(manifest, contents, drop_id, known)
    quarantined = _quarantine_rows(target, partner, drop, validated)
    entry = {"drop": drop_id, "licence": manifest.licence, "embargo_until": manifest.embargo_until}
    written = table
    if validated.specimens or validated.analyses:  # nothing valid: the table stays as it is
        merged = _merged(table, validated.specimens, validated.analyses)
        written = _write_table(target, merged, [*table.drops, _jsonable(entry)])
    counts = {
        kind: {
            "rows": sum(f["rows"] or 0 for f in validated.files if _is(f, kind)),
            "valid": sum(f["valid"] for f in validated.files if _is(f, kind)),
            "rejected": sum(f["rejected"] or 0 for f in validated.files if _is(f, kind)),
        }
        for kind in ("specimens", "analyses")
    }
    refused = [f["path"] for f in validated.files if f["status"] == "rejected"]
    if len(refused) == len(validated.files):
        status = "rejected"
        report["reason"] = f"every file was refused: {', '.join(refused)} (see files)"
    elif refused or any(c["rejected"] for c in counts.values()):
        status = "accepted_with_rejections"
    else:
        status = "accepted"
    report |= {
        "status": status,
        "licence": manifest.licence,
        "embargo_until": manifest.embargo_until,
        "embargoed": embargoed,
        "files": validated.files,
        "counts": counts,
        "errors": [e.model_dump() for e in validated.errors],
        "quarantine": quarantined,
        "table": {"partner": partner, "version": written.version, "restricted": embargoed},
    }
    _write_report(store, partner, drop, report)
    return _jsonable(report)


def _is(file: Mapping[str, Any], kind: str) -> bool:
    return bool((file["kind"] == "specimens") == (kind == "specimens"))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(data, default=str)))


@task(cache_policy=NO_CACHE)
def lift_embargoes(settings: Settings, partner: str, today: date) -> list[str]:
    """Move the rows of the partner's drops whose embargo has passed to the public table."""
    try:
        restricted = restricted_store(settings, partner)
    except ConfigurationError:
        return []  # no restricted root is configured: nothing can be embargoed
    held = read_table_version(restricted, partner)
    due = {
        d["drop"]
        for d in held.drops
        if d.get("embargo_until") and date.fromisoformat(d["embargo_until"]) <= today
    }
    if not due:
        return []
    store = store_for(settings)
    public = read_table_version(store, partner)
    moving_s = [s for s in held.specimens if s.source.drop in due]
    moving_a = [a for a in held.analyses if a.source.drop in due]
    lifted = [{**d, "embargo_lifted": today.isoformat()} for d in held.drops if d["drop"] in due]
    _write_table(store, _merged(public, moving_s, moving_a), [*public.drops, *lifted])
    remaining = Table(
        partner,
        held.version,
        tuple(s for s in held.specimens if s.source.drop not in due),
        tuple(a for a in held.analyses if a.source.drop not in due),
        tag=held.tag,
    )
    _write_table(restricted, remaining, [d for d in held.drops if d["drop"] not in due])
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
        except ConfigurationError as exc:  # an embargoed drop with nowhere to go: it waits
            logger.error("drop %s/%s waits: %s", partner, drop, exc)
            waiting.append(f"{partner}/{drop}")
    for report in reports:
        counts = report.get("counts", {})
        logger.info(
            "drop %s/%s: %s; specimens %s, analyses %s",
            report["partner"], report["drop"], report["status"],
            counts.get("specimens"), counts.get("analyses"),
        )  # fmt: skip
    return {
        "drops": reports,
        "lifted": lifted,
        "waiting": waiting,
        "tables": {p: read_table_version(store, p).version for p in table_partners(store)},
    }


def _inbox_keys(store: Store) -> list[str]:
    return [info.key for info in store.list(INBOX_PREFIX) if info.key.count("/") >= 3]
