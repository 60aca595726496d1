"""Quarantine: keep a rejected input and say why, so that the run can go on."""

from __future__ import annotations

from datetime import UTC, datetime

from lunarchive.catalog.layout import safe_id
from lunarchive.catalog.store import Store, check_key, json_bytes

__all__ = ["quarantine"]


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
