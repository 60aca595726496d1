"""The S3 backend of the store, on obstore (the Rust ``object_store`` crate) for every call.

One client serves the objects and zarr's own store, and its calls release the GIL, so a
thread pool of transfers runs in parallel. Conditional writes carry the publish protocol:
``If-None-Match: *`` (obstore's ``mode="create"``) for create-if-absent and
``If-Match: <etag>`` (``mode={"e_tag": …}``) for the pointer swap; SeaweedFS 4.48 answers
both with 412, and an endpoint that ignores them is refused (``check_conditional_writes``).

Every object written here carries its sha256 as user metadata (``x-amz-meta-sha256``), so
``sha256`` is one HEAD instead of a download. A plain PUT by another tool replaces the
metadata too, so a stale value cannot outlive the bytes it describes; an object without it
is hashed by streaming it, and ``sha256(key, rehash=True)`` always streams (the audit).

Two gaps of obstore are covered here: its listing prefix is a whole path segment (``raw/a``
would not list ``raw/ab/…``), so the parent folder is listed and filtered; and a refused
listing comes back as a generic error, recognised by its HTTP status.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store as ObjectS3Store

from lunarchive.catalog.store import ObjectInfo, S3Options, check_key, resume_offset
from lunarchive.schemas.errors import (
    AccessRefused,
    StoreConflict,
    StoreUnsupported,
    TransientError,
)

if TYPE_CHECKING:
    import zarr.abc.store
    from obstore import GetOptions, PutMode
    from obstore.store import RetryConfig

__all__ = ["SHA256_METADATA", "S3Store"]

SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
_BLOCK = 1024 * 1024
_SINGLE_PUT_MAX = 16 * 1024 * 1024  # larger files go up as a multipart upload
_PART = 8 * 1024 * 1024
_WRITERS = 16  # concurrent PUTs of create_many: a release is many small objects
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REFUSED = re.compile(r"\b403 Forbidden\b")
_T = TypeVar("_T")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _blocks(path: Path) -> Iterator[bytes]:
    """The file's bytes read through Python (so a failing read fails the upload)."""
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            yield block


class S3Store:
    """A store under ``s3://bucket/prefix`` on any S3 API that honours conditional writes."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.options = options
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client: ObjectS3Store | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # rebuilt lazily in the other process

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"region": self.options.region}
        if self.options.endpoint_url:
            config["endpoint"] = self.options.endpoint_url
            config["virtual_hosted_style_request"] = False
        if self.options.anonymous:
            config["skip_signature"] = True
        elif self.options.access_key_id and self.options.secret_access_key:
            config["access_key_id"] = self.options.access_key_id
            config["secret_access_key"] = self.options.secret_access_key
        return config

    def _open(self, prefix: str) -> ObjectS3Store:
        retry: RetryConfig = {
            "max_retries": 5,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
                "base": 2,
            },
            "retry_timeout": timedelta(seconds=60),
        }
        return ObjectS3Store(
            self.bucket,
            prefix=prefix or None,
            client_options={"allow_http": True, "timeout": "120s", "connect_timeout": "15s"},
            retry_config=retry,
            **self._config(),
        )

    @property
    def client(self) -> ObjectS3Store:
        if self._client is None:
            self._client = self._open(self.prefix.rstrip("/"))
        return self._client

    @contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        """Map obstore's failures onto ours: KeyError, StoreConflict, AccessRefused, …"""
        where = f"{self.url}/{key}"
        try:
            yield
        except FileNotFoundError:  # obstore's NotFoundError
            raise KeyError(key) from None
        except (AlreadyExistsError, PreconditionError):
            raise StoreConflict(f"{where}: conditional write refused") from None
        except (PermissionDeniedError, UnauthenticatedError):
            raise AccessRefused(f"{where}: {what} refused (403)") from None
        except BaseError as exc:
            if _REFUSED.search(str(exc)):
                raise AccessRefused(f"{where}: {what} refused (403)") from None
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TransientError(f"{where}: {what} failed: {first_line}") from exc

    def _call(self, what: str, key: str, action: Callable[[str], _T]) -> _T:
        path = check_key(key)
        with self._errors(what, key):
            return action(path)

    def _put(
        self, key: str, data: bytes | Iterator[bytes], sha256: str, mode: PutMode | None = None
    ) -> str:
        def put(path: str) -> str:
            result = obstore.put(
                self.client,
                path,
                data,
                mode=mode,
                attributes={SHA256_METADATA: sha256},
                chunk_size=_PART,
                max_concurrency=4,
            )
            return str(result["e_tag"] or "")

        return self._call("write", key, put)

    def read(self, key: str) -> bytes:
        return self._call("read", key, lambda p: bytes(obstore.get(self.client, p).bytes()))

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        def get(path: str) -> tuple[bytes, str]:
            result = obstore.get(self.client, path)
            return bytes(result.bytes()), str(result.meta["e_tag"] or "")

        try:
            return self._call("read", key, get)
        except KeyError:
            return None

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda p: obstore.head(self.client, p))
        except KeyError:
            return False
        return True

    def write(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        tag = self._put(key, data, sha256 or _sha256_bytes(data))
        return ObjectInfo(key, len(data), tag)

    def write_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        """Upload a local file: one PUT when small, else a multipart upload that is never
        visible unless complete (a failed read leaves the previous object in place)."""
        digest = sha256 or _sha256_path(path)
        size = path.stat().st_size
        if size <= _SINGLE_PUT_MAX:
            tag = self._put(key, b"".join(_blocks(path)), digest)
        else:
            tag = self._put(key, _blocks(path), digest)
        return ObjectInfo(key, size, tag)

    def create(self, key: str, data: bytes) -> ObjectInfo:
        tag = self._put(key, data, _sha256_bytes(data), mode="create")
        return ObjectInfo(key, len(data), tag)

    def create_many(self, objects: Iterable[tuple[str, bytes, str]]) -> list[ObjectInfo]:
        """Concurrent creates (a PUT is durable when it returns; obstore releases the GIL)."""

        def create(obj: tuple[str, bytes, str]) -> ObjectInfo:
            key, data, sha256 = obj
            return ObjectInfo(key, len(data), self._put(key, data, sha256, mode="create"))

        with ThreadPoolExecutor(_WRITERS, thread_name_prefix="lunarchive-s3-create") as pool:
            return list(pool.map(create, objects))

    def swap(self, key: str, data: bytes, *, expected_tag: str | None) -> ObjectInfo:
        mode: PutMode = {"e_tag": expected_tag} if expected_tag else "create"
        tag = self._put(key, data, _sha256_bytes(data), mode=mode)
        return ObjectInfo(key, len(data), tag)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix:
            check_key(prefix)
        folder = prefix.rpartition("/")[0]  # obstore lists whole path segments only
        with self._errors("listing", prefix):
            for batch in obstore.list(self.client, prefix=folder or None, chunk_size=1000):
                for meta in batch:
                    key = str(meta["path"])
                    if key.startswith(prefix):
                        yield ObjectInfo(key, int(meta["size"]), str(meta["e_tag"] or ""))

    def sha256(self, key: str, *, rehash: bool = False) -> str:
        """The object's sha256: from its metadata when it carries one, else by streaming it."""
        if not rehash:
            head = self._call(
                "head", key, lambda p: obstore.get(self.client, p, options={"head": True})
            )
            known = str(head.attributes.get(SHA256_METADATA, ""))
            if _HEX64.fullmatch(known):
                return known

        def stream(path: str) -> str:
            digest = hashlib.sha256()
            for block in obstore.get(self.client, path).stream(min_chunk_size=_BLOCK):
                digest.update(block)
            return digest.hexdigest()

        return self._call("read", key, stream)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda p: obstore.delete(self.client, p))

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:

                def fill(path: str) -> None:
                    for block in obstore.get(self.client, path).stream(min_chunk_size=_BLOCK):
                        out.write(block)

                self._call("read", key, fill)
            os.replace(name, dest)
        finally:
            Path(name).unlink(missing_ok=True)
        return dest

    def fetch_into(self, key: str, part: Path, *, size: int) -> None:
        """Append the bytes ``part`` lacks, with one ranged GET from its length."""
        have = resume_offset(part, size)
        if have == size:
            return
        with part.open("ab") as out:

            def fill(path: str) -> None:
                options: GetOptions = {"range": {"offset": have}} if have else {}
                for block in obstore.get(self.client, path, options=options).stream(_BLOCK):
                    out.write(block)

            self._call("read", key, fill)

    def check_conditional_writes(self) -> None:
        """Refuse an endpoint that accepts a second ``If-None-Match: *`` create."""
        probe = f".lunarchive-probe/{uuid.uuid4().hex}"
        self.create(probe, b"1")
        try:
            self.create(probe, b"2")
        except StoreConflict:
            return
        finally:
            self.delete(probe)
        raise StoreUnsupported(
            f"{self.url}: the endpoint ignores If-None-Match; it cannot hold a release safely"
        )

    def zarr_store(self, prefix: str) -> zarr.abc.store.Store:
        import zarr.storage

        inner = self._open(self.prefix + check_key(prefix.rstrip("/")))
        return zarr.storage.ObjectStore(inner, read_only=False)
