"""The S3 backend of the store: boto3 for objects, obstore for zarr's own store.

Conditional writes carry the publish protocol: ``If-None-Match: *`` for create-if-absent and
``If-Match: <etag>`` for the pointer swap. An endpoint that ignores them is refused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lunarchive.catalog.store import ObjectInfo, S3Options, check_key
from lunarchive.schemas.errors import (
    AccessRefused,
    StoreConflict,
    StoreUnsupported,
    TransientError,
)

if TYPE_CHECKING:
    import zarr.abc.store

__all__ = ["S3Store"]

_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """A store under ``s3://bucket/prefix`` on any S3 API that honours conditional writes."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.options = options
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # boto3 clients do not pickle

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client(
                "s3",
                endpoint_url=self.options.endpoint_url,
                aws_access_key_id=self.options.access_key_id,
                aws_secret_access_key=self.options.secret_access_key,
                region_name=self.options.region,
                config=Config(
                    retries={"max_attempts": 6, "mode": "standard"},
                    signature_version=UNSIGNED if self.options.anonymous else None,
                ),
            )
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, name: str, key: str, **kwargs: Any) -> Any:
        """One S3 call, with its failures mapped onto our errors."""
        try:
            return getattr(self.client, name)(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _PRECONDITION:
                raise StoreConflict(f"{self.url}/{key}: conditional write refused") from None
            if code in _MISSING:
                raise KeyError(key) from None
            if code in _DENIED:
                raise AccessRefused(f"{self.url}/{key}: {name} refused ({code})") from None
            if code.startswith("5") or code in {"SlowDown", "InternalError", "ServiceUnavailable"}:
                raise TransientError(f"{self.url}/{key}: {name} failed: {code}") from exc
            raise
        except BotoCoreError as exc:
            raise TransientError(f"{self.url}/{key}: {name} failed: {exc}") from exc

    def read(self, key: str) -> bytes:
        body: bytes = self._call("get_object", key)["Body"].read()
        return body

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self._call("get_object", key)
        except KeyError:
            return None
        return response["Body"].read(), str(response["ETag"])

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", key)
        except KeyError:
            return False
        return True

    def write(self, key: str, data: bytes) -> ObjectInfo:
        response = self._call("put_object", key, Body=data)
        return ObjectInfo(key, len(data), str(response["ETag"]))

    def write_file(self, key: str, path: Path) -> ObjectInfo:
        with path.open("rb") as handle:
            response = self._call("put_object", key, Body=handle)
        return ObjectInfo(key, path.stat().st_size, str(response["ETag"]))

    def create(self, key: str, data: bytes) -> ObjectInfo:
        response = self._call("put_object", key, Body=data, IfNoneMatch="*")
        return ObjectInfo(key, len(data), str(response["ETag"]))

    def swap(self, key: str, data: bytes, *, expected_tag: str | None) -> ObjectInfo:
        condition = {"IfMatch": expected_tag} if expected_tag else {"IfNoneMatch": "*"}
        response = self._call("put_object", key, Body=data, **condition)
        return ObjectInfo(key, len(data), str(response["ETag"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix:
            check_key(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    key = str(entry["Key"])[len(self.prefix) :]
                    yield ObjectInfo(key, int(entry["Size"]), str(entry["ETag"]))
        except ClientError as exc:
            code = _code(exc)
            if code in _DENIED:
                raise AccessRefused(f"{self.url}/{prefix}: listing refused ({code})") from None
            raise

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        for block in self._call("get_object", key)["Body"].iter_chunks(1024 * 1024):
            digest.update(block)
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        self._call("delete_object", key)

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in self._call("get_object", key)["Body"].iter_chunks(1024 * 1024):
                    out.write(block)
            os.replace(name, dest)
        finally:
            Path(name).unlink(missing_ok=True)
        return dest

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
        from obstore.store import S3Store as ObjectS3Store

        config: dict[str, Any] = {"region": self.options.region}
        if self.options.endpoint_url:
            config["endpoint"] = self.options.endpoint_url
            config["virtual_hosted_style_request"] = False
        if self.options.anonymous:
            config["skip_signature"] = True
        elif self.options.access_key_id and self.options.secret_access_key:
            config["access_key_id"] = self.options.access_key_id
            config["secret_access_key"] = self.options.secret_access_key
        inner = ObjectS3Store(
            self.bucket,
            prefix=self._key(prefix.rstrip("/")),
            client_options={"allow_http": True},
            **config,
        )
        return zarr.storage.ObjectStore(inner, read_only=False)
