"""The harvest engine: incremental, verified, resumable harvesting of one registered source.

One run of :class:`HarvestRun`:

1. **list** the upstream inventory through the source's kind (``source_kinds``), filtered by
   the registry's globs;
2. **diff** it against the state kept in the store: a product whose fingerprint (index row,
   LIDVID) is held is *unchanged*; one quarantined with that same fingerprint stays so until
   upstream changes it; everything else is *new* and fetched;
3. **fetch** each new product into a local staging folder (``LUNARCHIVE_HARVEST_STAGING_DIR``),
   each file through a ``.part`` file that a later attempt or run resumes with HTTP Range;
4. **verify** every file against the md5 or size its label (or index) declares, then read the
   product with its reader (every array and table must fit its file); a mismatch is
   downloaded again, then quarantined with the reason;
5. **store** the verified files under ``raw/<source>/<product>/<version>/`` (data files first,
   the label last, each write atomic), and record the version in the state. An older version
   is never touched: a new VID, or a changed row under the same version, gets its own folder.

What is kept in the store (all JSON, each written only when its content changes, so that a
run with nothing new writes nothing):

* ``state/harvest/<source>.json`` — :class:`~lunarchive.schemas.sources.HarvestState`: held
  versions with every file's key, size, sha256 and md5; quarantined and failed products with
  the fingerprint they failed on; the inventory's fingerprint, validators and when it last
  changed; PDS4 label locations. Saved after every product, so a killed run loses nothing.
* ``reports/harvest/<source>.json`` — :class:`~lunarchive.schemas.sources.CompletenessReport`
  of the last run that changed anything.
* ``quarantine/<source>/<product>-<version>/`` — the rejected files and ``reason.json``.

Transient failures (after the HTTP retries) leave the product *failed*: it is tried again,
and its partial downloads resumed, on the next run. A product whose harvest crashes is
quarantined too (R8): one poisoned product never stops the others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from lunarchive.catalog.layout import safe_id
from lunarchive.catalog.quarantine import quarantine
from lunarchive.catalog.store import Store, check_key, json_bytes
from lunarchive.flows.source_kinds import KindContext, ProductPlan, kind_for
from lunarchive.flows.sources import (
    CredentialsRequired,
    Downloaded,
    Fetcher,
    HttpPolicy,
    describe_file,
)
from lunarchive.processing.products import read_product
from lunarchive.schemas.errors import (
    ConfigurationError,
    ProductRejected,
    TransientError,
)
from lunarchive.schemas.sources import (
    CompletenessReport,
    HarvestState,
    HeldFile,
    HeldVersion,
    InventoryState,
    Problem,
    ProductState,
    RunCounts,
    SourceSpec,
    UpstreamEntry,
)

__all__ = [
    "HarvestRun",
    "HarvestSettings",
    "Outcome",
    "load_registry",
    "load_source",
    "progress_listeners",
    "raw_version_key",
    "read_report",
    "report_key",
    "source_credentials",
    "state_key",
]

Status = Literal["fetched", "failed", "quarantined"]

# Callables told (source, product id, status) as products finish; the CLI draws its progress
# bar from them. "listed" is sent once with the number of products to fetch as the id.
progress_listeners: list[Callable[[str, str, str], None]] = []


class HarvestSettings(BaseSettings):
    """Settings of the harvest engine (``LUNARCHIVE_HARVEST_*``)."""

    model_config = SettingsConfigDict(env_prefix="LUNARCHIVE_", extra="ignore")

    harvest_registry_dir: Path | None = Field(
        default=None,
        description="A folder of extra source files (<name>.json); one named like a built-in "
        "source replaces it.",
    )
    harvest_staging_dir: Path = Field(
        default=Path("~/.cache/lunarchive/harvest-staging"),
        description="Local folder for downloads in progress (resumed from here after an "
        "interruption); nothing in it is visible in the store.",
    )
    harvest_per_host: int = Field(default=2, ge=1, description="Concurrent requests per host.")
    harvest_attempts: int = Field(
        default=4,
        ge=1,
        description="Tries per HTTP request on transient errors, the first included.",
    )
    harvest_backoff_s: float = Field(
        default=1.0, ge=0, description="First wait before a retry; doubled after each failure."
    )
    harvest_max_backoff_s: float = Field(
        default=60.0, ge=0, description="Longest wait between retries (Retry-After included)."
    )
    harvest_verify_attempts: int = Field(
        default=2,
        ge=1,
        description="Downloads of a product whose files fail verification before it is "
        "quarantined.",
    )


# --- the registry --------------------------------------------------------------------------


def _registry_files(extra: Path | None) -> dict[str, Path | str]:
    found: dict[str, Path | str] = {}
    builtin = files("lunarchive.flows").joinpath("registry")
    for item in sorted(builtin.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".json"):
            found[item.name.removesuffix(".json")] = item.read_text("utf-8")
    if extra is not None:
        if not extra.is_dir():
            raise ConfigurationError(f"LUNARCHIVE_HARVEST_REGISTRY_DIR={extra} is not a folder")
        for path in sorted(extra.glob("*.json")):
            found[path.stem] = path
    return found


def _parse_source(name: str, text: str) -> SourceSpec:
    try:
        spec = SourceSpec.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigurationError(f"registry file {name}.json, {where}: {first['msg']}") from None
    if spec.name != name:
        raise ConfigurationError(f"registry file {name}.json names source {spec.name!r}")
    return spec


def load_registry(extra: Path | None = None) -> list[SourceSpec]:
    """Every registered source, built-in files first, ``extra`` ones replacing them by name."""
    return [
        _parse_source(name, item.read_text("utf-8") if isinstance(item, Path) else item)
        for name, item in _registry_files(extra).items()
    ]


def load_source(name: str, extra: Path | None = None) -> SourceSpec:
    """One source; only its own file is parsed, so a broken entry stops only its source."""
    found = _registry_files(extra)
    item = found.get(name)
    if item is None:
        known = ", ".join(sorted(found))
        raise ConfigurationError(f"no source {name!r} in the registry (known: {known})")
    return _parse_source(name, item.read_text("utf-8") if isinstance(item, Path) else item)


def source_credentials(spec: SourceSpec) -> tuple[str, str] | None:
    """The header the source's credentials setting holds (``Header-Name: value``), if set.

    The registry names the setting, never the secret. Unset, the source is read anonymously
    and stops in the "credentials required" state at the first login the archive asks for.
    """
    if spec.credentials_setting is None:
        return None
    value = os.environ.get(spec.credentials_setting, "").strip()
    if not value:
        return None
    name, sep, secret = value.partition(":")
    if not sep or not name.strip() or not secret.strip() or " " in name.strip():
        raise ConfigurationError(
            f"{spec.credentials_setting}: expected 'Header-Name: value' (e.g. 'Cookie: "
            "SESSION=...'), for source " + spec.name
        )
    return name.strip(), secret.strip()


# --- keys ------------------------------------------------------------------------------------


def state_key(source: str) -> str:
    return check_key(f"state/harvest/{safe_id(source)}.json")


def report_key(source: str) -> str:
    return check_key(f"reports/harvest/{safe_id(source)}.json")


def product_key_id(product_id: str) -> str:
    """A key segment for a product: a PDS3 PRODUCT_ID, or a LID without ``urn:nasa:pds:``."""
    return safe_id(product_id.removeprefix("urn:nasa:pds:").replace(":", "-"))


def raw_version_key(source: str, product_id: str, segment: str, filename: str) -> str:
    return check_key(
        f"raw/{safe_id(source)}/{product_key_id(product_id)}/{safe_id(segment)}/{safe_id(filename)}"
    )


def _quarantine_id(product_id: str, segment: str) -> str:
    return f"{product_key_id(product_id)}-{segment}"


def _short(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _dump(model: HarvestState | CompletenessReport) -> bytes:
    return json_bytes(model.model_dump(mode="json"))


def read_report(store: Store, source: str) -> CompletenessReport | None:
    try:
        return CompletenessReport.model_validate_json(store.read(report_key(source)))
    except KeyError:
        return None


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What became of one product this run."""

    entry: UpstreamEntry
    status: Status
    held: HeldVersion | None = None
    problem: Problem | None = None


@dataclass
class _Tally:
    entries: tuple[UpstreamEntry, ...] = ()
    unchanged: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)
    to_fetch: list[UpstreamEntry] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class _Mismatch(ProductRejected):
    """A fetched file is not what its label declares: fetched again, then quarantined."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class HarvestRun:
    """One harvest of one source into one store. Thread-safe between :meth:`fetch` calls."""

    def __init__(
        self,
        spec: SourceSpec,
        store: Store,
        fetcher: Fetcher,
        *,
        staging: Path,
        base_url: str | None = None,
        verify_attempts: int = 2,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.spec = spec
        self.store = store
        self.kind = kind_for(spec)
        # a partner inbox has no URL: its paths are keys of the store itself
        base = base_url or spec.base_url or store.url.rstrip("/") + "/"
        self.ctx = KindContext(spec, fetcher, base, store)
        self.staging = staging.expanduser() / safe_id(spec.name)
        self.verify_attempts = verify_attempts
        self.clock = clock
        self._lock = threading.Lock()
        self._saved = self._load_state_bytes()
        self.state = (
            HarvestState.model_validate_json(self._saved)
            if self._saved
            else HarvestState(source=spec.name, kind=spec.kind)
        )
        self._started = self._saved
        self.tally = _Tally()
        self._refused: str | None = None  # why the archive wants credentials, once it said so

    @classmethod
    def open(
        cls,
        spec: SourceSpec,
        store: Store,
        *,
        settings: HarvestSettings,
        allow_local: bool,
        timeout_s: float,
        max_bytes: int,
        base_url: str | None = None,
    ) -> HarvestRun:
        policy = HttpPolicy(
            allow_local=allow_local,
            timeout_s=timeout_s,
            attempts=settings.harvest_attempts,
            backoff_s=settings.harvest_backoff_s,
            max_backoff_s=settings.harvest_max_backoff_s,
            per_host=min(settings.harvest_per_host, spec.max_per_host or settings.harvest_per_host),
            min_interval_s=spec.min_interval_s,
            max_bytes=max_bytes,
            credentials=source_credentials(spec),
            needs_login=spec.credentials_setting is not None,
        )
        return cls(
            spec,
            store,
            Fetcher(policy),
            staging=settings.harvest_staging_dir,
            base_url=base_url,
            verify_attempts=settings.harvest_verify_attempts,
        )

    def close(self) -> None:
        self.ctx.fetcher.close()

    def _load_state_bytes(self) -> bytes | None:
        try:
            return self.store.read(state_key(self.spec.name))
        except KeyError:
            return None

    def _save_state(self) -> None:
        data = _dump(self.state)
        if data != self._saved:
            self.store.write(state_key(self.spec.name), data)
            self._saved = data

    def _emit(self, product_id: str, status: str) -> None:
        for listener in list(progress_listeners):
            listener(self.spec.name, product_id, status)

    # -- list and diff ------------------------------------------------------------------

    def list_upstream(self) -> list[UpstreamEntry]:
        """Read the upstream inventory, note it in the state, and plan what to fetch."""
        listing = self.kind.list_upstream(self.ctx, self.state)
        held = self.state.inventory
        entries = listing.entries
        if entries is None:
            if held is None:
                raise TransientError(f"{self.spec.name}: inventory not modified, but none held")
            entries = held.entries
        fingerprint = _short("\n".join(f"{e.product_id}\t{e.fingerprint}" for e in entries), 32)
        same = held is not None and held.fingerprint == fingerprint
        inventory = InventoryState(
            fingerprint=fingerprint,
            products=len(entries),
            changed=held.changed if same and held else self.clock(),
            previous_products=(held.previous_products if same else held.products) if held else None,
            etag=listing.etag,
            last_modified=listing.last_modified,
            selection=self.ctx.selection,
            checkpoint=listing.checkpoint,
            entries=entries,
        )
        update: dict[str, object] = {"inventory": inventory}
        if listing.labels is not None:
            update["labels"] = listing.labels
        with self._lock:
            self.state = self.state.model_copy(update=update)
            self._save_state()
        return self._plan(entries)

    def _plan(self, entries: tuple[UpstreamEntry, ...]) -> list[UpstreamEntry]:
        tally = _Tally(entries=entries)
        for entry in entries:
            product = self.state.products.get(entry.product_id, ProductState())
            if product.holds(entry.fingerprint):
                tally.unchanged.add(entry.product_id)
            elif product.quarantined and product.quarantined.fingerprint == entry.fingerprint:
                tally.gave_up.add(entry.product_id)
            else:
                tally.to_fetch.append(entry)
        self.tally = tally
        self._emit(str(len(tally.to_fetch)), "listed")
        return list(tally.to_fetch)

    def _segment(self, entry: UpstreamEntry, version: str | None) -> str:
        """The version's folder: the version itself, or with a hash when already taken."""
        product = self.state.products.get(entry.product_id, ProductState())
        segment = safe_id(version) if version else "unversioned"
        taken = {held.segment: held.fingerprint for held in product.versions}
        if segment in taken and taken[segment] != entry.fingerprint:
            segment = f"{segment}-{_short(entry.fingerprint)}"
        return segment

    # -- one product --------------------------------------------------------------------

    def fetch(self, entry: UpstreamEntry) -> Outcome:
        """Fetch, verify and store one product; never raises for a bad product."""
        segment = self._segment(entry, entry.version)
        folder = (
            self.staging / f"{product_key_id(entry.product_id)}-{_short(entry.fingerprint, 12)}"
        )
        if self._refused is not None:
            return self._failed(entry, "credentials-required", self._refused)
        for attempt in range(1, self.verify_attempts + 1):
            try:
                plan = self.kind.describe(self.ctx, entry, folder)
                staged = self._download(plan, folder)
                version = self._verify(entry, plan, staged, folder)
            except CredentialsRequired as exc:
                # every other product of the source would answer the same: stop asking
                self._refused = str(exc)
                return self._failed(entry, "credentials-required", str(exc))
            except _Mismatch as exc:
                if attempt == self.verify_attempts:
                    return self._quarantined(entry, segment, folder, ("verification", str(exc)))
                shutil.rmtree(folder, ignore_errors=True)  # download every file again
                continue
            except TransientError as exc:
                return self._failed(entry, type(exc).__name__, str(exc))
            except (ProductRejected, PermissionError, ValueError) as exc:
                return self._quarantined(entry, segment, folder, (type(exc).__name__, str(exc)))
            except Exception as exc:  # noqa: BLE001 - R8: a crash poisons one product only
                reason = f"{type(exc).__name__}: {exc}"
                return self._quarantined(entry, segment, folder, ("crash", reason))
            held = self._store(entry, self._segment(entry, version), version, plan, staged)
            shutil.rmtree(folder, ignore_errors=True)
            return self._done(Outcome(entry, "fetched", held=held))
        raise AssertionError("unreachable")  # pragma: no cover

    def _download(self, plan: ProductPlan, folder: Path) -> dict[str, Downloaded]:
        staged: dict[str, Downloaded] = {}
        for file in plan.files:
            final = folder / file.name
            if not final.is_file():
                part = folder / f"{file.name}.part"
                self.ctx.fetcher.download(file.url, part)
                part.replace(final)
            staged[file.name] = describe_file(final)
        return staged

    def _verify(
        self, entry: UpstreamEntry, plan: ProductPlan, staged: dict[str, Downloaded], folder: Path
    ) -> str | None:
        """Check every file against what is declared, read the product; return its version."""
        for file in plan.files:
            got = staged[file.name]
            if file.sha256 and got.sha256 != file.sha256.lower():
                raise _Mismatch(
                    f"{file.url}: sha256 {got.sha256}, its manifest declares {file.sha256}"
                )
            if file.md5 and got.md5 != file.md5.lower():
                raise _Mismatch(f"{file.url}: md5 {got.md5}, its label declares {file.md5}")
            if file.size is not None and got.size != file.size:
                raise _Mismatch(f"{file.url}: {got.size} bytes, its label declares {file.size}")
        try:
            record = read_product(folder / plan.label)
        except ProductRejected as exc:
            raise _Mismatch(str(exc)) from None
        if not plan.check_identity:
            return entry.version or record.version
        if record.product_id.lower() != entry.product_id.lower() or (
            entry.version is not None and record.version != entry.version
        ):
            raise TransientError(
                f"{plan.label}: the label is {record.lidvid}, the inventory lists "
                f"{entry.product_id} {entry.version or ''} (upstream is mid-update)"
            )
        return entry.version

    def _store(
        self,
        entry: UpstreamEntry,
        segment: str,
        version: str | None,
        plan: ProductPlan,
        staged: dict[str, Downloaded],
    ) -> HeldVersion:
        # data files first, the label last: a product's label in raw/ means all its files are
        ordered = sorted(plan.files, key=lambda file: file.name == plan.label)
        held = []
        for file in ordered:
            got = staged[file.name]
            key = raw_version_key(self.spec.name, entry.product_id, segment, file.name)
            if not self.store.exists(key) or self.store.sha256(key) != got.sha256:
                # a key is only ever (re)written with the bytes a crashed run left unfinished
                self.store.write_file(key, got.path)
            held.append(
                HeldFile(name=file.name, key=key, size=got.size, sha256=got.sha256, md5=got.md5)
            )
        return HeldVersion(
            version=version,
            segment=segment,
            fingerprint=entry.fingerprint,
            files=tuple(sorted(held, key=lambda f: f.name)),
            fetched=self.clock(),
        )

    def _problem(
        self, entry: UpstreamEntry, rule: str, reason: str, previous: Problem | None
    ) -> Problem:
        if previous and (previous.fingerprint, previous.rule, previous.reason) == (
            entry.fingerprint,
            rule,
            reason,
        ):
            return previous
        return Problem(fingerprint=entry.fingerprint, rule=rule, reason=reason, since=self.clock())

    def _failed(self, entry: UpstreamEntry, rule: str, reason: str) -> Outcome:
        previous = self.state.products.get(entry.product_id, ProductState()).failed
        problem = self._problem(entry, rule, reason, previous)
        return self._done(Outcome(entry, "failed", problem=problem))

    def _quarantined(
        self, entry: UpstreamEntry, segment: str, folder: Path, why: tuple[str, str]
    ) -> Outcome:
        previous = self.state.products.get(entry.product_id, ProductState()).quarantined
        problem = self._problem(entry, why[0], why[1], previous)
        self._quarantine_files(entry, segment, folder, why)
        shutil.rmtree(folder, ignore_errors=True)
        return self._done(Outcome(entry, "quarantined", problem=problem))

    def _quarantine_files(
        self, entry: UpstreamEntry, segment: str, folder: Path, why: tuple[str, str]
    ) -> None:
        """Keep the rejected files and the reason, once (a rerun writes nothing new)."""
        qid = _quarantine_id(entry.product_id, segment)
        prefix = f"quarantine/{safe_id(self.spec.name)}/{safe_id(qid)}/"
        if self.store.exists(check_key(prefix + "reason.json")):
            return
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.name.endswith(".part"):
                self.store.write_file(check_key(prefix + safe_id(path.name)), path)
        quarantine(
            self.store,
            source=self.spec.name,
            product_id=_quarantine_id(entry.product_id, segment),
            reason=why[1],
            rule=why[0],
            files=[self.ctx.url(entry.path) if entry.path else entry.product_id],
        )

    def _done(self, outcome: Outcome) -> Outcome:
        with self._lock:
            self.tally.outcomes[outcome.entry.product_id] = outcome
            self._apply(outcome)
            self._save_state()
        self._emit(outcome.entry.product_id, outcome.status)
        return outcome

    def _apply(self, outcome: Outcome) -> None:
        pid = outcome.entry.product_id
        product = self.state.products.get(pid, ProductState())
        if outcome.held is not None:
            product = ProductState(versions=(*product.versions, outcome.held))
        elif outcome.status == "failed":
            product = product.model_copy(update={"failed": outcome.problem})
        else:
            product = product.model_copy(update={"quarantined": outcome.problem, "failed": None})
        self.state = self.state.model_copy(
            update={"products": {**self.state.products, pid: product}}
        )

    # -- the report ---------------------------------------------------------------------

    def finish(self) -> tuple[RunCounts, CompletenessReport]:
        """This run's counts, and the completeness report (stored when anything changed)."""
        tally = self.tally
        statuses = [outcome.status for outcome in tally.outcomes.values()]
        quarantined = len(tally.gave_up) + statuses.count("quarantined")
        counts = RunCounts(
            upstream=len(tally.entries),
            new=len(tally.to_fetch),
            fetched=statuses.count("fetched"),
            unchanged=len(tally.unchanged),
            failed=statuses.count("failed"),
            quarantined=quarantined,
            missing=statuses.count("failed") + quarantined,
        )
        report = self._report(counts)
        stored = read_report(self.store, self.spec.name)
        if stored is None or self._saved != self._started:
            self.store.write(report_key(self.spec.name), _dump(report))
            return counts, report
        return counts, stored

    def _report(self, counts: RunCounts) -> CompletenessReport:
        upstream = {entry.product_id: entry for entry in self.tally.entries}
        products = self.state.products

        def current(pid: str) -> ProductState:
            return products.get(pid, ProductState())

        missing = sorted(p for p, e in upstream.items() if not current(p).holds(e.fingerprint))
        inventory = self.state.inventory
        return CompletenessReport(
            source=self.spec.name,
            kind=self.spec.kind,
            base_url=self.ctx.base_url,
            cadence_days=self.spec.cadence_days,
            counts=counts,
            missing=tuple(missing),
            quarantined=tuple(
                p
                for p in missing
                if (q := current(p).quarantined) and q.fingerprint == upstream[p].fingerprint
            ),
            failed=tuple(
                p
                for p in missing
                if (f := current(p).failed) and f.fingerprint == upstream[p].fingerprint
            ),
            withdrawn=tuple(
                sorted(p for p, s in products.items() if s.versions and p not in upstream)
            ),
            inventory_products=inventory.products if inventory else 0,
            inventory_changed=inventory.changed if inventory else None,
            flags=("inventory-shrank",) if inventory and inventory.shrank else (),
            changed=self.clock(),
        )


def report_markdown(counts: RunCounts, report: CompletenessReport, now: datetime) -> str:
    """The Prefect artifact: this run's counts and the source's completeness."""
    flags = ", ".join(report.flags_at(now)) or "none"
    lines = [
        f"# Harvest of `{report.source}` ({report.kind})",
        "",
        "| upstream | new | fetched | unchanged | failed | quarantined | missing |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {counts.upstream} | {counts.new} | {counts.fetched} | {counts.unchanged} | "
        f"{counts.failed} | {counts.quarantined} | {counts.missing} |",
        "",
        f"Inventory: {report.inventory_products} products, last changed "
        f"{report.inventory_changed:%Y-%m-%d %H:%M}Z (expected every {report.cadence_days:g} days)."
        if report.inventory_changed
        else "Inventory: never read.",
        f"Flags: {flags}.",
    ]
    for title, ids in (
        ("Quarantined", report.quarantined),
        ("Failed (retried next run)", report.failed),
        ("Withdrawn upstream", report.withdrawn),
    ):
        if ids:
            lines += ["", f"**{title}**: " + ", ".join(f"`{i}`" for i in ids)]
    return "\n".join(lines) + "\n"


def held_keys(state: HarvestState) -> Iterator[str]:
    for product in state.products.values():
        for version in product.versions:
            for file in version.files:
                yield file.key
