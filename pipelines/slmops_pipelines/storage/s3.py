"""An artifact store in S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW).

Design notes:

* boto3 is imported lazily, when the first request needs a client: importing this module
  (and building a store from a spec) stays cheap, and code that only touches local stores
  never pays for botocore's start-up.
* Endpoint, region and credentials come from the constructor, else from the usual
  environment variables (``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_ACCESS_KEY_ID``...).  With no key given, boto3's own chain applies (IRSA, instance
  profiles, ``~/.aws``), so the same code runs in a cluster with IAM roles.
* Requests use path-style addressing and SigV4, which every S3 clone understands (virtual
  hosts need wildcard DNS that MinIO/SeaweedFS/Ceph setups rarely have).  Transient
  failures are retried with backoff by botocore's "standard" retry mode.
* :meth:`S3Store.check` uses a second client with a single retry and short timeouts, so
  a wrong endpoint fails in seconds instead of after minutes of backoff.
* Every botocore/boto3 error is translated by :meth:`S3Store._errors` into one
  :class:`StorageError` whose message says what to fix: the endpoint cannot be reached,
  the credentials are refused, the bucket or the object does not exist.  Messages name
  the endpoint, bucket and key, never a secret.
* Large files go up in parts (boto3's transfer manager); a multipart upload becomes
  visible only once completed, so writes are atomic like the local store's.
"""

from __future__ import annotations

import builtins  # `list` is a method of the stores: annotations in the class spell the type builtins.list
import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage.base import ArtifactStore, ObjectInfo

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from botocore.client import BaseClient

MiB = 1024 * 1024
DEFAULT_REGION = "us-east-1"
CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or output.credentialsSecret"
DELETE_BATCH = 1000  # the most keys one DeleteObjects request accepts

# S3 error codes that mean "these credentials are wrong, expired or not allowed".
_CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)


class S3Store(ArtifactStore):
    """Artifacts under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        field: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.field = field
        self.endpoint_url = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
        if self.endpoint_url and "://" not in self.endpoint_url:
            raise self._error(
                "the S3 endpoint (AWS_ENDPOINT_URL) must be a URL starting with http:// or https://"
            )
        self.region = region or _env("AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION
        # Kept private and out of __repr__ and messages: only boto3 ever sees them.
        self._access_key = access_key or _env("AWS_ACCESS_KEY_ID")
        self._secret_key = secret_key or _env("AWS_SECRET_ACCESS_KEY")
        self._session_token = session_token or _env("AWS_SESSION_TOKEN")
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint_label!r})"

    @property
    def endpoint_label(self) -> str:
        """The endpoint as messages show it: never a configured one, which may come from a Secret.

        Messages reach a job's status and Events, which more people read than the Secret.
        """
        if self.endpoint_url:
            return "the S3 endpoint in AWS_ENDPOINT_URL"
        return f"S3 endpoint https://s3.{self.region}.amazonaws.com"

    # -- primitives ------------------------------------------------------------------------

    def check(self) -> None:
        with self._errors("HeadBucket"):
            self._check_client.head_bucket(Bucket=self.bucket)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat(self, key: str) -> ObjectInfo | None:
        with self._errors("HeadObject", key):
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
            except Exception as exc:
                # HEAD responses have no body, so a missing object is just "404".  A missing
                # bucket looks the same; check() is where that gets reported.
                if _http_status(exc) == 404:
                    return None
                raise
        return ObjectInfo(
            key.strip("/"), int(head.get("ContentLength", 0)), str(head.get("ETag", "")).strip('"')
        )

    def read_bytes(self, key: str) -> bytes:
        with self._errors("GetObject", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("PutObject", key):
            self._client.put_object(Bucket=self.bucket, Key=self._full_key(key), Body=data)

    def upload_file(self, local: Path, key: str) -> None:
        local = Path(local)
        if not local.is_file():
            raise self._error(f"cannot upload {local}: it does not exist or is not a file")
        with self._errors("upload", key):
            self._client.upload_file(
                str(local), self.bucket, self._full_key(key), Config=self._transfer_config
            )

    def download_file(self, key: str, local: Path) -> None:
        local = Path(local)
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot create {local.parent}: {exc.strerror or exc}") from exc
        # The transfer manager writes to a temporary name and renames it when complete.
        with self._errors("download", key):
            self._client.download_file(
                self.bucket, self._full_key(key), str(local), Config=self._transfer_config
            )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        infos = [
            ObjectInfo(self._rel_key(obj["Key"]), obj["Size"], str(obj.get("ETag", "")).strip('"'))
            for obj in self._list_raw(prefix)
        ]
        return iter(sorted(infos, key=lambda info: info.key))

    def delete_prefix(self, prefix: str) -> int:
        keys = [obj["Key"] for obj in self._list_raw(prefix)]
        if prefix.strip("/") and self.exists(prefix):  # a prefix that names one object: that object too
            keys.append(self._full_key(prefix))
        for start in range(0, len(keys), DELETE_BATCH):
            self._delete_batch(prefix, keys[start : start + DELETE_BATCH])
        return len(keys)

    def delete_keys(self, keys: builtins.list[str]) -> int:
        full = [self._full_key(key) for key in keys]
        for start in range(0, len(full), DELETE_BATCH):
            self._delete_batch("", full[start : start + DELETE_BATCH])
        return len(full)

    def local_root(self) -> Path | None:
        return None

    def source_identity(self, prefix: str = "") -> str:
        # The endpoint is part of where the bytes are (it never leaves this process: hashed into keys).
        endpoint = self.endpoint_url or f"aws:{self.region}"
        return f"s3|{endpoint}|{self.bucket}|{self._full_key(prefix) if prefix.strip('/') else self.prefix}"

    # -- keys --------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        rel = key.strip("/")
        if not rel:
            raise self._error(f"an empty key does not name an object under {self.uri}")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _rel_key(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _folder(self, prefix: str) -> str:
        """The S3 prefix for a folder: "ckpt" lists ckpt/..., never ckpt-old/..."""
        rel = prefix.strip("/")
        return self._full_key(rel) + "/" if rel else (f"{self.prefix}/" if self.prefix else "")

    # -- requests ----------------------------------------------------------------------------

    def _list_raw(self, prefix: str) -> builtins.list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        with self._errors("ListObjectsV2", prefix or None):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._folder(prefix)):
                # Keys ending in "/" are folder markers some tools create, not artifacts.
                objects.extend(obj for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
        return objects

    def _delete_batch(self, prefix: str, keys: builtins.list[str]) -> None:
        with self._errors("DeleteObjects", prefix or None):
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise self._error(
                f"S3 refused to delete {len(errors)} object(s) under {self.uri_of(prefix)}, e.g. "
                f"s3://{self.bucket}/{first.get('Key')} ({first.get('Code')}: {first.get('Message')})"
            )

    # -- clients -----------------------------------------------------------------------------

    @functools.cached_property
    def _client(self) -> BaseClient:
        # Standard retry mode backs off on throttling, 5xx and connection errors.
        return self._make_client(max_attempts=5, connect_timeout=5, read_timeout=60)

    @functools.cached_property
    def _check_client(self) -> BaseClient:
        # One retry and short timeouts: check() must answer in seconds for a wrong endpoint.
        return self._make_client(max_attempts=1, connect_timeout=3, read_timeout=10)

    def _make_client(self, *, max_attempts: int, connect_timeout: float, read_timeout: float) -> BaseClient:
        import boto3.session
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # botocore >= 1.36 adds CRC checksums to every upload by default; older MinIO
            # and Ceph releases reject those requests.  Send them only where S3 requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private session: boto3's default session is shared and not thread-safe.
        session = boto3.session.Session(
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            aws_session_token=self._session_token,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    @functools.cached_property
    def _transfer_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            # The CRT client is picked on some hosts when installed; it ignores our client's
            # endpoint and retry settings, so always use the classic transfer manager.
            preferred_transfer_client="classic",
        )

    # -- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn any boto error raised inside the block into one clear StorageError."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            cause = _unwrap(exc)
            if cause is None:
                raise  # not a boto error: a bug, keep the traceback
            raise self._translate(cause, action, key) from exc

    def _translate(self, exc: Exception, action: str, key: str | None) -> StorageError:
        from botocore import exceptions as bx

        target = self.uri_of(key) if key else self.uri
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
            return self._error(f"cannot reach {self.endpoint_label} for {self.uri}: {exc}")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return self._error(f"no usable S3 credentials for {self.uri} ({exc}): {CREDENTIALS_HINT}")
        if not isinstance(exc, bx.ClientError):
            return self._error(f"S3 {action} of {target} failed: {exc}")

        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = _http_status(exc)
        detail = f"{code}: {error['Message']}" if error.get("Message") else f"HTTP {status}"
        if code in _CREDENTIAL_CODES or status == 403:
            return self._error(
                f"S3 rejected the credentials for s3://{self.bucket} ({detail}, on {action} of {target} "
                f"at {self.endpoint_label}): {CREDENTIALS_HINT}"
            )
        if code == "NoSuchBucket" or (status == 404 and key is None):
            if not _from_s3(exc):
                return self._error(
                    f"{self.endpoint_label} answered HTTP {status} for {self.uri} but does not "
                    "look like an S3 API (no x-amz-request-id header): check the endpoint URL and port"
                )
            return self._error(
                f"bucket {self.bucket!r} does not exist at {self.endpoint_label} "
                f"(needed for {self.uri}); create it or fix the URI"
            )
        if code in ("NoSuchKey", "404") or status == 404:
            return self._error(f"{target} does not exist")
        return self._error(f"S3 {action} of {target} failed ({detail})")

    def _error(self, message: str) -> StorageError:
        return StorageError(self._redacted(message), field=self.field)

    def _redacted(self, message: str) -> str:
        """``message`` without the configured endpoint (botocore's own messages name it)."""
        if not self.endpoint_url:
            return message
        from urllib.parse import urlsplit

        for secret in sorted(
            {self.endpoint_url, self.endpoint_url.rstrip("/"), urlsplit(self.endpoint_url).netloc},
            key=len,
            reverse=True,
        ):
            if secret:
                message = message.replace(secret, "$AWS_ENDPOINT_URL")
        return message


def _env(*names: str) -> str | None:
    """The first of ``names`` set to a non-empty value in the environment."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _unwrap(exc: BaseException) -> Exception | None:
    """The botocore error behind ``exc``, or None if ``exc`` is not a boto error."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    # boto3's transfer helpers re-raise botocore errors wrapped, with the code only in text.
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        return _unwrap(exc.__context__) or exc
    if isinstance(exc, RetriesExceededError) and isinstance(exc.last_exception, Exception):
        return _unwrap(exc.last_exception) or exc
    if isinstance(exc, (BotoCoreError, ClientError)):
        return exc
    return None


def _from_s3(exc: BaseException) -> bool:
    """Whether an error response came from an S3 API (AWS, MinIO, SeaweedFS and Ceph all send
    x-amz-request-id), rather than from some other web server at a wrong port."""
    headers = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return "x-amz-request-id" in {name.lower() for name in headers}


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
