"""Where a session's movies or outputs live when that is a URL (``s3://bucket/prefix``, or any
protocol fsspec has installed): its file system, and a check that it can be reached.

Credentials and the endpoint come only from the usual places (the environment, including
``AWS_ENDPOINT_URL``; ``~/.aws``; fsspec's configuration such as ``FSSPEC_S3_ENDPOINT_URL``),
never from the URL: a URL that carries them is refused, so they are never stored in the
database or written to the logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec import AbstractFileSystem


class RemoteError(ValueError):
    """A remote location that cannot be used; the message names it and says what to do."""


def is_url(text: str) -> bool:
    """True for ``protocol://…`` (a local path otherwise)."""
    return "://" in text and not text.startswith("file://")


@dataclass(frozen=True)
class Remote:
    """A URL (without a trailing ``/``), its file system and the path within it."""

    url: str
    fs: AbstractFileSystem
    root: str

    def path(self, rel_path: str) -> str:
        """The file system path of ``rel_path`` under the location."""
        return f"{self.root}/{rel_path}" if rel_path else self.root

    def rel(self, path: str) -> str:
        """``path`` (as listed) relative to the location."""
        return path[len(self.root):].lstrip("/")

    def local_copy(self, cache_dir: Path) -> Path:
        """The local folder standing for this location under ``cache_dir``: a hash of the URL,
        then the URL's path (so a ``…/<session>/raw`` URL keeps its session's name)."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        return cache_dir.expanduser().absolute() / digest / urlsplit(self.url).netloc / urlsplit(self.url).path.strip("/")


def open_remote(url: str) -> Remote:
    """The location of ``url``; raises :class:`RemoteError` when the URL carries credentials or
    its protocol is not installed."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise RemoteError(
            f"{parts.scheme}://{parts.hostname}{parts.path}: credentials in the URL are refused; put them in the "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or ~/.aws instead"
        )
    clean = url.rstrip("/")
    try:
        fs, root = fsspec.core.url_to_fs(clean)
    except (ImportError, ValueError) as err:
        raise RemoteError(f"{clean}: cannot open this location ({err}); install the fsspec package for "
                          f"{parts.scheme}:// (s3fs for s3://)") from None
    return Remote(clean, fs, root.rstrip("/"))


def check_access(remote: Remote) -> None:
    """Raise :class:`RemoteError` unless the location's bucket (its first path component) can be
    listed with the credentials found: a missing bucket or bad credentials is said so, with what
    to do, before anything is processed."""
    bucket = remote.root.split("/", 1)[0]
    try:
        remote.fs.invalidate_cache()
        remote.fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        raise RemoteError(f"{remote.url}: the bucket {bucket!r} does not exist at this endpoint; create it, or "
                          "check the URL and the endpoint (AWS_ENDPOINT_URL, FSSPEC_S3_ENDPOINT_URL)") from None
    except PermissionError as err:
        raise RemoteError(f"{remote.url}: access denied ({_reason(err)}); check the credentials "
                          "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) and the endpoint") from None
    except Exception as err:  # noqa: BLE001 - botocore's connection errors are not OSErrors
        raise RemoteError(f"{remote.url}: cannot be reached ({_reason(err)}); check the endpoint "
                          "(AWS_ENDPOINT_URL, FSSPEC_S3_ENDPOINT_URL) and the network") from None


def _reason(err: BaseException) -> str:
    """The error's message, cut short (botocore's are long)."""
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def mtime_ns(info: dict[str, Any]) -> int:
    """An fsspec listing entry's modification time in ns (S3: ``LastModified``), 0 if none."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1_000_000_000)
        if isinstance(value, int | float):
            return int(value * 1_000_000_000)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value).timestamp() * 1_000_000_000)
            except ValueError:
                continue
    return 0
