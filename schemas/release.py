"""The release contracts: the manifest of a release and the ``releases/latest.json`` pointer.

Their fields are fixed by DESIGN.md's publish protocol; syncers and publishers of any version
read them, so change them only with a schema version.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ManifestEntry", "ReleaseManifest", "ReleasePointer"]

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ManifestEntry(BaseModel):
    """One object a release needs, by key relative to the store root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)


class ReleaseManifest(BaseModel):
    """``releases/<version>/manifest.json``: every object the release's catalog references."""

    model_config = ConfigDict(extra="forbid")

    version: str
    created: datetime
    objects: list[ManifestEntry]


class ReleasePointer(BaseModel):
    """``releases/latest.json``: which release is current."""

    model_config = ConfigDict(extra="forbid")

    version: str
    manifest: str
    published: datetime
    previous: str | None = None
