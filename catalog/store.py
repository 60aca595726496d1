"""One small object-store interface over a local folder (``file://``) and S3 (``s3://``).

Publishing and syncing are made of these calls: read, atomic write, list, sha256,
create-if-absent and a compare-and-swap of the release pointer. Keys are always relative
to the store root and are checked so that none can escape it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from lunarchive.schemas.errors import ConfigurationError, InvalidKey, StoreConflict

if TYPE_CHECKING:
    import zarr.abc.store

__all__ = [
    "ObjectInfo",
    "S3Options",
    "Store",
    "check_key",
    "json_bytes",
    "open_store",
    "resume_offset",
]

_CHUNK = 1024 * 1024
_WRITERS = 8  # create_many: threads overlapping the kernel's file and folder creation
_REFUSED_CHARS = re.compile(r"[\x00-\x1f\\]")  # control characters and backslashes


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a write tells about one object."""

    key: str
    size: int
    tag: str = ""  # an opaque version tag: the ETag on S3, the sha256 on a folder


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3 endpoint. Credentials stay out of reprs and logs."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"
    anonymous: bool = False  # unsigned requests: what the endpoint grants to everyone

    def __repr__(self) -> str:
        return (
            f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"anonymous={self.anonymous!r})"
        )


@runtime_checkable
class Store(Protocol):
    """The operations every backend provides, with the same contract.

    ``fetch_into`` brings a local partial file up to the object's ``size`` bytes, reading only
    the range it lacks (a sync resumes a large object this way; the caller checks the result).
    ``sha256=`` on a write is the caller's word for the bytes' sha256 (a sync has just
    checked them against the manifest); the store then need not hash them again. ``sha256()``
    may answer from what the store recorded at write time; ``rehash=True`` reads the bytes.

    ``create_many`` takes ``(key, data, sha256)`` triples (the sha256 again the caller's word)
    and creates each like ``create``, raising StoreConflict for a key that exists; when it
    returns, every object it made is durable. A crash before then leaves some of them, maybe
    incomplete, which is harmless under a prefix nothing references yet.
    """

    url: str

    def read(self, key: str) -> bytes: ...
    def read_tagged(self, key: str) -> tuple[bytes, str] | None: ...
    def exists(self, key: str) -> bool: ...
    def write(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo: ...
    def write_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo: ...
    def create(self, key: str, data: bytes) -> ObjectInfo: ...
    def create_many(self, objects: Iterable[tuple[str, bytes, str]]) -> list[ObjectInfo]: ...
    def swap(self, key: str, data: bytes, *, expected_tag: str | None) -> ObjectInfo: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def sha256(self, key: str, *, rehash: bool = False) -> str: ...
    def delete(self, key: str) -> None: ...
    def download(self, key: str, dest: Path) -> Path: ...
    def fetch_into(self, key: str, part: Path, *, size: int) -> None: ...
    def zarr_store(self, prefix: str) -> zarr.abc.store.Store: ...
    def check_conditional_writes(self) -> None: ...


def json_bytes(data: Any) -> bytes:
    """The one encoding of every JSON document lunarchive stores: sorted keys, two-space
    indent, a final newline (equal content gives equal bytes, so reruns write nothing)."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_key(key: str) -> str:
    """Refuse a key that could escape the store root; return it unchanged otherwise.

    A trailing ``/`` is allowed (it names a prefix). Percent-encoded dots and slashes are
    decoded before the check, so ``%2e%2e/x`` is refused like ``../x``.
    """
    if not key or key.startswith("/") or _REFUSED_CHARS.search(key):
        raise InvalidKey(f"object key {key!r} is refused: empty, absolute, control or backslash")
    parts = key.removesuffix("/").split("/")
    for part in parts:
        decoded = unquote(part)
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            raise InvalidKey(f"object key {key!r} is refused: empty, '.' or '..' segment")
    return key


def _check_prefix(prefix: str) -> str:
    return check_key(prefix) if prefix else prefix


def open_store(url: str, *, s3: S3Options | None = None) -> Store:
    """The store for a URL: a folder path, ``file:///abs/path`` or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        return FolderStore(path.expanduser().resolve())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigurationError(f"store URL {url!r} names no bucket")
        from lunarchive.catalog._s3store import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"), s3 or S3Options())
    raise ConfigurationError(f"store URL {url!r}: only file:// and s3:// are supported")


def resume_offset(part: Path, size: int) -> int:
    """How many bytes of ``part`` a resumed fetch keeps (none if it is already too long)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        return 0
    return have


def _sha256_file(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while block := handle.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()


class FolderStore:
    """A store in a local folder: temp file + rename for writes, a lock for the swap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"object key {key!r} resolves outside the store root")
        return path

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.read(key)
        except KeyError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @contextmanager
    def _temp_beside(self, path: Path) -> Iterator[Path]:
        """A temp file in the target's folder (same file system, so the rename is atomic)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        temp = Path(name)
        try:
            yield temp
        finally:
            temp.unlink(missing_ok=True)

    def _fill(
        self, temp: Path, data: bytes | Path, sha256: str | None, *, hashed: bool = True
    ) -> str:
        """Write ``data`` to ``temp`` durably; return its sha256 (``sha256`` if the caller knows
        it, else hashed on the way through, never by reading the file again; ``""`` when not
        ``hashed``)."""
        digest = None if sha256 or not hashed else hashlib.sha256()
        with temp.open("wb") as out:
            if isinstance(data, Path):
                with data.open("rb") as src:
                    while block := src.read(_CHUNK):
                        out.write(block)
                        if digest is not None:
                            digest.update(block)
            else:
                out.write(data)
                if digest is not None:
                    digest.update(data)
            out.flush()
            os.fsync(out.fileno())
        return sha256 or (digest.hexdigest() if digest is not None else "")

    def write(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        return self._put(key, data, sha256)

    def write_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        return self._put(key, path, sha256)

    def _put(self, key: str, data: bytes | Path, sha256: str | None) -> ObjectInfo:
        path = self._path(key)
        with self._temp_beside(path) as temp:
            tag = self._fill(temp, data, sha256)
            size = temp.stat().st_size
            os.replace(temp, path)
        return ObjectInfo(key, size, tag)

    def create(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        with self._temp_beside(path) as temp:
            tag = self._fill(temp, data, None)
            try:
                os.link(temp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                raise StoreConflict(f"{self.url}/{key} already exists") from None
        return ObjectInfo(key, len(data), tag)

    def create_many(self, objects: Iterable[tuple[str, bytes, str]]) -> list[ObjectInfo]:
        """Create each object (temp file, then a link that refuses an existing name), then
        make them all durable with one sync of the file system (syncfs) instead of an fsync
        per file: a release is 100 000 small files. Threads overlap the system calls
        (creating a file or a folder costs more in the kernel than in Python)."""
        made: set[str] = set()  # folders created or checked in this batch
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with ThreadPoolExecutor(_WRITERS, thread_name_prefix="lunarchive-create") as pool:
                return list(pool.map(lambda o: self._create_unsynced(o, made), objects))
        finally:  # also on a conflict: what was made is durable, whatever the caller does next
            _sync_file_system(self.root)

    def _create_unsynced(self, obj: tuple[str, bytes, str], made: set[str]) -> ObjectInfo:
        key, data, sha256 = obj
        folder, _, name = check_key(key).rpartition("/")
        self._make_folder(folder, made)
        parent = os.path.join(self.root, folder)
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
        try:
            with open(fd, "wb") as out:
                out.write(data)
            os.link(temp, os.path.join(parent, name))  # atomic; fails if the name exists
        except FileExistsError:
            raise StoreConflict(f"{self.url}/{key} already exists") from None
        finally:
            os.unlink(temp)
        return ObjectInfo(key, len(data), sha256)

    def _make_folder(self, folder: str, made: set[str]) -> None:
        """Make ``folder`` (a checked key's folder) and its parents, refusing an existing one
        that is a link out of the root, as ``_path`` does, with one mkdir per new folder
        instead of resolving every path."""
        if not folder or folder in made:
            return
        self._make_folder(folder.rpartition("/")[0], made)
        path = os.path.join(self.root, folder)
        try:
            os.mkdir(path)
        except FileExistsError:
            if os.path.islink(path) and not Path(path).resolve().is_relative_to(self.root):
                raise InvalidKey(f"folder {folder!r} resolves outside the store root") from None
        made.add(folder)

    def swap(self, key: str, data: bytes, *, expected_tag: str | None) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent):
            current = self.read_tagged(key)
            current_tag = current[1] if current else None
            if current_tag != expected_tag:
                raise StoreConflict(
                    f"{self.url}/{key} changed since it was read (expected tag "
                    f"{expected_tag!r}, found {current_tag!r})"
                )
            return self._put(key, data, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a write in flight is not an object
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key, full.stat().st_size)

    def sha256(self, key: str, *, rehash: bool = False) -> str:
        """Always read and hashed: a folder records nothing beside the bytes."""
        try:
            with self._path(key).open("rb") as handle:
                return _sha256_file(handle)
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._temp_beside(dest) as temp:
            self._fill(temp, self._path(key), None, hashed=False)
            os.replace(temp, dest)
        return dest

    def fetch_into(self, key: str, part: Path, *, size: int) -> None:
        have = resume_offset(part, size)
        if have == size:
            return
        try:
            with self._path(key).open("rb") as src, part.open("ab") as out:
                src.seek(have)
                while block := src.read(_CHUNK):
                    out.write(block)
        except FileNotFoundError:
            raise KeyError(key) from None

    def zarr_store(self, prefix: str) -> zarr.abc.store.Store:
        import zarr.storage

        return zarr.storage.LocalStore(self._path(prefix.rstrip("/")))

    def check_conditional_writes(self) -> None:
        """A folder always honours them: link() refuses an existing name, swaps are locked."""


@functools.cache
def _syncfs() -> Any:
    """The C library's syncfs(2) (Linux), or None: Python's ``os`` has no binding for it."""
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def _sync_file_system(folder: Path) -> None:
    """Flush every pending write of the file system holding ``folder`` to its disk: syncfs,
    or ``os.sync`` (every file system) where the C library has no syncfs."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs({folder}): {os.strerror(code)}")
    finally:
        os.close(fd)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder, held for the compare-and-swap."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:  # pragma: no cover - unlocking an fd we hold
            if exc.errno != errno.EBADF:
                raise
        os.close(fd)
