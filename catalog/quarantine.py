"""Quarantine: keep a rejected input and say why, so that the run can go on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lunarchive.catalog.layout import drop_prefix, drop_quarantine_prefix, safe_id
from lunarchive.catalog.store import Store, check_key, json_bytes

__all__ = ["quarantine", "quarantine_rows"]


def quarantine(
    store: Store, *, source: str, product_id: str, reason: str, rule: str, files: list[str]
) -> str:
    """Write ``quarantine/<source>/<id>/reason.json`` (what, why, when); return its key."""
    key = check_key(f"quarantine/{safe_id(source)}/{safe_id(product_id)}/reason.json")
    if store.exists(key):
        return key  # already quarantined: a rerun writes nothing new
    record = {
        "source": source,
        "product_id": product_id,
        "files": files,
        "rule": rule,
        "reason": reason,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store.write(key, json_bytes(record))
    return key


def quarantine_rows(
    store: Store, partner: str, drop: str, document: Mapping[str, Any], files: Sequence[str]
) -> list[str]:
    """Keep a drop's rejected rows (``document``: rows with their cells and broken rules,
    refused files) under ``quarantine/<partner>/<drop>/``; ``files`` are the drop's paths."""
    key = drop_quarantine_prefix(partner, drop) + "rejected-rows.json"
    store.write(key, json_bytes(dict(document)))
    rows, refused = len(document["rows"]), len(document["rejected_files"])
    quarantine(
        store,
        source=partner,
        product_id=drop,
        reason=f"{rows} row(s) and {refused} file(s) rejected; see rejected-rows.json",
        rule="RowRejected",
        files=[drop_prefix(partner, drop) + path for path in files],
    )
    return [key]
