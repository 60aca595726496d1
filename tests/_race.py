"""Run contenders at the same instant and record who won (used by the concurrency tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from lunarchive.schemas.errors import StoreConflict


def race(contenders: Mapping[str, Callable[[], object]]) -> dict[str, str]:
    """Start every contender behind one barrier; each ends "won" or "refused" (StoreConflict)."""
    barrier = threading.Barrier(len(contenders))
    outcome: dict[str, str] = {}

    def run(name: str, contender: Callable[[], object]) -> None:
        barrier.wait()
        try:
            contender()
            outcome[name] = "won"
        except StoreConflict:
            outcome[name] = "refused"

    threads = [threading.Thread(target=run, args=item) for item in contenders.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome
