"""A payload team's drops in the archive's own store: ``inbox/<partner>/payload/<drop>/``.

Member states flying their own payloads (a CubeSat deployed from Chang'E-6, instruments
proposed for Chang'E-7) deliver products by writing them into their object-storage inbox.
A drop is complete once its ``manifest.json`` is there (written last, as for sample drops);
the manifest (:class:`~lunarchive.schemas.sources.PayloadManifest`, contract
``payload-manifest.schema.json``) lists every product with its id, version, format and the
sha256 and size of each file, which the harvester verifies after copying the files into
staging. Then the product is read like any other: a GeoTIFF on a lunar CRS, or a PDS4 label
whose arrays fit their files.

Sample drops live one level up (``inbox/<partner>/<drop>/manifest.json``, no ``kind``); the
``payload/`` level and the manifest's ``"kind": "payload"`` keep the two apart: the samples
harvester never sees a manifest directly under ``inbox/<partner>/payload/``, and each
harvester's schema refuses the other's manifest.

FITS: the GDAL in the rasterio wheel has no FITS driver and no FITS library is installed, so
a bare FITS product is quarantined with that reason. FITS files described by a PDS4 label
(``format: pds4``) are read through the label, like the PDS4 M3 bundle's.

A manifest that does not validate, names another partner, or lists a file the drop lacks
quarantines its drop (or product) with the reason; the other drops go on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from lunarchive.flows.source_kinds._base import (
    KindContext,
    Listing,
    PlannedFile,
    ProductPlan,
    selected,
    write_staged,
)
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.sources import (
    HarvestState,
    ListedFile,
    PartnerInboxAccess,
    PayloadManifest,
    UpstreamEntry,
)

__all__ = ["MANIFEST", "PartnerInbox", "payload_prefix", "read_payload_manifest"]

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_FITS_REFUSED = (
    "FITS is not readable here: the GDAL in the installed rasterio wheel has no FITS driver "
    "and no FITS library is installed; deliver a GeoTIFF, or the FITS file with a PDS4 label "
    "(format pds4)"
)


def payload_prefix(partner: str) -> str:
    return f"inbox/{partner}/payload/"


def read_payload_manifest(data: bytes, *, where: str, partner: str) -> PayloadManifest:
    """The manifest, or :class:`ProductRejected` naming the first broken field."""
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ProductRejected(f"{where}: larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = PayloadManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise ProductRejected(
            f"{where}, {field}: {first['msg']} (contract payload-manifest.schema.json)"
        ) from None
    if manifest.partner != partner:
        raise ProductRejected(
            f"{where}: partner {manifest.partner!r} is not the inbox's {partner!r} "
            "(rule: a partner drops into its own inbox)"
        )
    return manifest


class PartnerInbox:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        store = ctx.store
        assert store is not None
        prefix = payload_prefix(access.partner)
        drops: dict[str, set[str]] = {}
        for info in store.list(prefix):
            parts = info.key[len(prefix) :].split("/")
            if len(parts) >= 2:
                drops.setdefault(parts[0], set()).add("/".join(parts[1:]))
        chosen: dict[str, tuple[str, UpstreamEntry]] = {}
        for drop in sorted(drops):
            if MANIFEST not in drops[drop]:
                continue  # still being written
            key = f"{prefix}{drop}/{MANIFEST}"
            data = store.read(key)
            try:
                manifest = read_payload_manifest(data, where=key, partner=access.partner)
            except ProductRejected:
                # the whole drop is one entry: describe() quarantines it with the reason
                entry = UpstreamEntry(
                    product_id=f"drop-{drop}",
                    fingerprint="manifest:" + hashlib.sha256(data).hexdigest()[:32],
                    path=key,
                )
                chosen[entry.product_id] = ("", entry)
                continue
            for product in manifest.products:
                if not selected(ctx.spec, product.product_id):
                    continue
                files = tuple(
                    ListedFile(path=f"{prefix}{drop}/{f.path}", size=f.size, sha256=f.sha256)
                    for f in sorted(product.files, key=lambda f: f.path)
                )
                text = "\n".join(f"{f.path}\t{f.sha256}\t{f.size}" for f in files)
                entry = UpstreamEntry(
                    product_id=product.product_id,
                    version=product.version,
                    fingerprint=f"payload:{product.version}:"
                    + hashlib.sha256(text.encode()).hexdigest()[:32],
                    path=f"{prefix}{drop}/{product.label}",
                    files=files,
                )
                # a product in several drops: the latest manifest's version is current
                order = f"{manifest.created.isoformat()}\t{drop}"
                if product.product_id not in chosen or chosen[product.product_id][0] <= order:
                    chosen[product.product_id] = (order, entry)
        entries = sorted((entry for _, entry in chosen.values()), key=lambda e: e.product_id)
        return Listing(tuple(entries))

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        store = ctx.store
        assert store is not None and entry.path is not None
        access = _access(ctx)
        if not entry.files:  # a drop whose manifest was refused
            data = store.read(entry.path)
            write_staged(folder, MANIFEST, data)
            read_payload_manifest(data, where=entry.path, partner=access.partner)
            raise ProductRejected(f"{entry.path}: the manifest changed while being read")
        label = PurePosixPath(entry.path).name
        if label.lower().endswith((".fits", ".fit", ".fts")):
            raise ProductRejected(f"{entry.path}: {_FITS_REFUSED}")
        planned = []
        folder.mkdir(parents=True, exist_ok=True)
        for listed in entry.files:
            name = PurePosixPath(listed.path).name
            if not (folder / name).is_file():
                if not store.exists(listed.path):
                    raise ProductRejected(
                        f"{listed.path}: listed in the drop's manifest, but not in the drop"
                    )
                store.download(listed.path, folder / name)
            planned.append(
                PlannedFile(
                    name, ctx.url(listed.path), listed.size, staged=True, sha256=listed.sha256
                )
            )
        return ProductPlan(label, tuple(planned), check_identity=False)


def _access(ctx: KindContext) -> PartnerInboxAccess:
    access = ctx.spec.access
    assert isinstance(access, PartnerInboxAccess)
    return access
