"""The one error hierarchy of lunarchive.

Every error we raise derives from :class:`LunarchiveError` and also from the builtin it
resembles, so callers may catch either. Messages name the product, key or field at fault.
"""

from __future__ import annotations

__all__ = [
    "FAIL",
    "QUARANTINE",
    "RETRY",
    "AccessRefused",
    "ConfigurationError",
    "InvalidFilter",
    "InvalidKey",
    "LunarchiveError",
    "ProductRejected",
    "SourceRefused",
    "StoreConflict",
    "StoreUnsupported",
    "TransientError",
    "decision_for",
]


class LunarchiveError(Exception):
    """Base of every error lunarchive raises on purpose."""


class ConfigurationError(LunarchiveError, ValueError):
    """A setting is missing or wrong: fail the run, never retry."""


class InvalidKey(LunarchiveError, ValueError):
    """An object key or href would escape its root (``..``, leading ``/``, NUL ...)."""


class StoreConflict(LunarchiveError, RuntimeError):
    """A conditional write lost: the object exists, or the pointer moved since it was read."""


class StoreUnsupported(LunarchiveError, RuntimeError):
    """The object store ignores a guarantee we rely on (conditional writes)."""


class TransientError(LunarchiveError, OSError):
    """A network or service hiccup worth retrying."""


class AccessRefused(LunarchiveError, PermissionError):
    """The store refused the credentials in use (S3 403): this tier is not theirs to read."""


class SourceRefused(LunarchiveError, PermissionError):
    """A source address breaks the source rules (scheme, loopback or private address)."""


class ProductRejected(LunarchiveError, ValueError):
    """An input product is malformed: quarantine it and go on."""


class InvalidFilter(LunarchiveError, ValueError):
    """A search filter is malformed or names something that cannot be searched."""


# One table maps errors to decisions (STYLE.md habit 6). Prefect's retry condition and the
# quarantine step read it; anything not listed is a bug or a misconfiguration: fail the run.
RETRY = "retry"
QUARANTINE = "quarantine"
FAIL = "fail"
_DECISIONS: tuple[tuple[type[BaseException], str], ...] = (
    (TransientError, RETRY),
    (ProductRejected, QUARANTINE),
    (SourceRefused, QUARANTINE),
    (InvalidKey, QUARANTINE),
)


def decision_for(exc: BaseException) -> str:
    """``retry``, ``quarantine`` or ``fail`` for an exception."""
    for kind, decision in _DECISIONS:
        if isinstance(exc, kind):
            return decision
    return FAIL
