"""Where files live: a local path, or an ``s3://bucket/key`` URL on any S3-compatible store.

Configuration is the AWS way, set once for every library: the standard
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE``, and
``AWS_ENDPOINT_URL`` for S3-compatible servers) are read by obstore (the
Python side: zarr chunks, manifests, listings, checkpoints) and translated here
into GDAL's own options (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
``AWS_VIRTUAL_HOSTING``) for scene reads through ``/vsis3/``. Plain http is
allowed only for a loopback endpoint. Both sides retry transient errors (5xx,
dropped connections, timeouts) with exponential backoff: obstore through its
retry configuration, GDAL through ``GDAL_HTTP_MAX_RETRY`` and
``GDAL_HTTP_RETRY_DELAY`` (an operator's own values win). Credentials are never
put in a message: errors name the URL and the reason only. How each library's
client is configured is :mod:`fcnrs.pipeline.s3_clients`.
"""

from __future__ import annotations

import builtins
import fnmatch
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from fcnrs.fcn_model.files import replaced_whole

from .s3_clients import (
    arrow_filesystem,
    clear_gdal_cache,
    obstore_store,
    sync_gdal_env,
    zarr_object_store,
)

__all__ = [
    "Location",
    "arrow_filesystem",
    "clear_gdal_cache",
    "expand_url_glob",
    "is_url",
    "local_copy",
    "sync_gdal_env",
]


def is_url(path: str | PathLike[str] | Location) -> bool:
    """Whether ``path`` names an object by URL (``s3://...``) rather than a local file."""
    return "://" in str(path)


class Location:
    """A file or folder, local or on S3, with the few operations the project needs.

    Local locations are plain paths (writes go to a temporary sibling, then are
    renamed, with the process umask). S3 locations are key prefixes; "folders"
    are every object whose key starts with ``prefix/``.
    """

    def __init__(self, where: str | PathLike[str] | Location) -> None:
        text = str(where)
        self.remote = is_url(text)
        if self.remote:
            parts = urlsplit(text)
            if parts.scheme != "s3" or not parts.netloc:
                raise ValueError(f"{text}: only s3://bucket/key URLs are supported")
            self.bucket = parts.netloc
            self.key = parts.path.strip("/")
            self.url = f"s3://{self.bucket}/{self.key}".rstrip("/")
        else:
            self.path = Path(text)
            self.url = str(self.path)

    # -- naming ---------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __fspath__(self) -> str:
        if self.remote:
            raise TypeError(f"{self.url} is in object storage, not a local path")
        return str(self.path)

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.url}/{name}" if self.remote else self.path / name)

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name if self.remote else self.path.name

    @property
    def parent(self) -> Location:
        if self.remote:
            return Location(f"s3://{self.bucket}/{PurePosixPath(self.key).parent}".rstrip("/."))
        return Location(self.path.parent)

    def with_name(self, name: str) -> Location:
        return self.parent / name

    @property
    def native(self) -> Path | Location:
        """A local location as the plain :class:`~pathlib.Path` it is, a URL as
        this Location: what the project's functions return, so that callers
        with local paths keep getting paths."""
        return self if self.remote else self.path

    @cached_property
    def gdal_path(self) -> str:
        """The path GDAL opens (``/vsis3/bucket/key`` for S3)."""
        return f"/vsis3/{self.bucket}/{self.key}" if self.remote else str(self.path)

    # -- reading --------------------------------------------------------------
    def exists(self) -> bool:
        """A file, or a folder with anything in it (or a link, even a broken one)."""
        if not self.remote:
            return self.path.exists() or self.path.is_symlink()
        return self.is_file() or next(self.list(), None) is not None

    def is_file(self) -> bool:
        if not self.remote:
            return self.path.is_file()
        try:
            self.head()
        except FileNotFoundError:
            return False
        return True

    def is_link(self) -> bool:
        return not self.remote and self.path.is_symlink()

    def head(self) -> dict[str, Any]:
        """Size, modification time (ns) and ETag (S3) of a file."""
        if not self.remote:
            stat = self.path.stat()
            return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "etag": ""}
        import obstore

        meta = _call(self, obstore.head, obstore_store(self.bucket), self.key)
        modified = meta["last_modified"]
        return {
            "size": int(meta["size"]),
            "mtime_ns": int(modified.timestamp() * 1e9),
            "etag": str(meta.get("e_tag") or "").strip('"'),
        }

    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""
        if not self.remote:
            return self.path.read_bytes()
        import obstore

        return bytes(_call(self, obstore.get, obstore_store(self.bucket), self.key).bytes())

    @contextmanager
    def open(self) -> Iterator[Any]:
        """A seekable binary reader of this file (in S3, ranged reads as they are
        needed: a Parquet footer costs a few small requests, not the file)."""
        if not self.remote:
            with self.path.open("rb") as fh:
                yield fh
            return
        import obstore

        reader = _call(self, obstore.open_reader, obstore_store(self.bucket), self.key)
        try:
            yield reader
        finally:
            reader.close()

    def list(self) -> Iterator[str]:
        """Keys of every file under this folder, relative to it (any depth)."""
        if not self.remote:
            if not self.path.is_dir():
                return
            for root, _, files in os.walk(self.path):
                for f in files:
                    yield str(Path(root, f).relative_to(self.path))
            return
        import obstore

        prefix = f"{self.key}/" if self.key else ""
        batches = obstore.list(obstore_store(self.bucket), prefix=prefix, chunk_size=1000)
        while True:
            batch = _call(self, next, batches, None)  # a listing's errors name the URL too
            if batch is None:
                return
            for meta in batch:
                key = meta["path"][len(prefix) :]
                if key and not self._marker(meta):
                    yield key

    def children(self) -> builtins.list[str]:
        """Names of the files and folders directly in this folder, sorted (in S3,
        one listing by delimiter: a folder of many chunks costs one request)."""
        if not self.remote:
            return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        import obstore

        prefix = f"{self.key}/" if self.key else ""
        found = _call(self, obstore.list_with_delimiter, obstore_store(self.bucket), prefix)
        names = [p.rstrip("/") for p in found["common_prefixes"]]
        names += [m["path"] for m in found["objects"] if not self._marker(m)]
        return sorted({n[len(prefix) :] for n in names} - {""})

    def _marker(self, meta: Any) -> bool:
        """Whether a listed entry is a "folder" marker (an empty ``key/`` object,
        as pyarrow's ``create_dir`` writes for Ray Train), listed without its
        slash: an empty entry that is not an object of that exact key."""
        if meta["size"]:
            return False
        import obstore

        try:
            _call(self, obstore.head, obstore_store(self.bucket), meta["path"])
        except FileNotFoundError:
            return True
        return False

    # -- writing --------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write a whole file: others see the old file or the new one, never a part."""
        if self.remote:
            import obstore

            _call(self, obstore.put, obstore_store(self.bucket), self.key, data)
            return
        with replaced_whole(self.path) as tmp:
            tmp.write_bytes(data)

    def upload(self, source: str | PathLike[str]) -> None:
        """Copy a local file here whole: one PUT, or a multipart upload that the
        server assembles only when every part has arrived. Readers see the old
        object or the new one, never a part (locally: a copy renamed into place)."""
        if not self.remote:
            with self.staged() as tmp:
                shutil.copyfile(source, tmp)
            return
        import obstore

        _call(self, obstore.put, obstore_store(self.bucket), self.key, Path(source))

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A local file to write this file's new content into, published whole
        when the block succeeds: renamed into place (a sibling dot file, so the
        rename is atomic) or uploaded (:meth:`upload`). When the block fails,
        nothing here changes and the staging file is removed. The staging file
        keeps this file's suffix (GDAL and OGR drivers go by it)."""
        if self.remote:
            with tempfile.TemporaryDirectory(prefix="fcnrs-") as folder:
                tmp = Path(folder) / self.name
                yield tmp
                self.upload(tmp)
            return
        with replaced_whole(self.path, keep_suffix=True) as tmp:
            try:
                yield tmp
            finally:
                Path(f"{tmp}.aux.xml").unlink(missing_ok=True)  # a GDAL PAM sidecar, if any

    def delete(self) -> None:
        """Delete this file (nothing happens when there is none)."""
        if not self.remote:
            self.path.unlink(missing_ok=True)
            return
        import obstore

        _call(self, obstore.delete, obstore_store(self.bucket), self.key)

    def delete_tree(self) -> None:
        """Delete this folder and everything in it (a link only as a link)."""
        if not self.remote:
            if self.path.is_symlink() or self.path.is_file():
                self.path.unlink()
            elif self.path.exists():
                shutil.rmtree(self.path)
            return
        import obstore

        keys = [f"{self.key}/{k}" for k in self.list()]
        for start in range(0, len(keys), 1000):
            _call(self, obstore.delete, obstore_store(self.bucket), keys[start : start + 1000])

    def copy_to(self, other: Location) -> None:
        """Server-side copy of one S3 object to another key of the same bucket."""
        import obstore

        _call(self, obstore.copy, obstore_store(self.bucket), self.key, other.key)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """A zarr-python store rooted here (``LocalStore`` or ``ObjectStore``)."""
        if not self.remote:
            from zarr.storage import LocalStore

            return LocalStore(str(self.path), read_only=read_only)
        return zarr_object_store(obstore_store(self.bucket, self.key), read_only=read_only)


def _call(where: Location, fn: Any, *args: Any) -> Any:
    """An obstore call whose errors name the URL and the reason (never credentials).

    Permanent errors are raised as the builtin they resemble, at once (obstore
    retries only transient ones): ``FileNotFoundError`` for a missing object or
    bucket, ``PermissionError`` for a refused request.
    """
    from obstore import exceptions as ox

    try:
        return fn(*args)
    except (ox.BaseError, FileNotFoundError) as exc:
        code = _s3_code(exc)
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"{where}: no such bucket {where.bucket!r}") from None
        if isinstance(exc, ox.NotFoundError | FileNotFoundError) or code == "NoSuchKey":
            raise FileNotFoundError(f"{where}: no such object") from None
        if isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError) or code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ):
            raise PermissionError(f"{where}: access denied ({_first_line(exc)})") from None
        raise OSError(f"{where}: object storage error ({_first_line(exc)})") from None


def _s3_code(exc: BaseException) -> str:
    """The S3 error code (``NoSuchBucket``, ``AccessDenied``, ...) in an error's text."""
    found = re.search(r"<Code>(\w+)</Code>", str(exc))
    return found.group(1) if found else ""


def _first_line(exc: BaseException) -> str:
    """The reason in an obstore error: the server's S3 error code and message
    where it sent one (``SignatureDoesNotMatch: The request signature ...``),
    else its HTTP status (``403 Forbidden``), else the error's first line."""
    text = str(exc)
    code, message = _s3_code(exc), re.search(r"<Message>([^<]*)</Message>", text)
    if code:
        return f"{code}: {message.group(1)}" if message else code
    status = re.search(r"status code: (\d{3}[^:\n]*)", text)  # a HEAD's answer has no body
    if status:
        return status.group(1).strip()
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def expand_url_glob(pattern: str) -> list[str]:
    """``s3://bucket/dir/*.tif``: the matching objects' (or folders') URLs, sorted.

    As a local glob does, a pattern whose magic is in its last component matches
    the entries directly in its folder (files and folders, such as ``*.zarr``
    outputs), found by one listing by delimiter; magic further up (``dir/*/x.tif``,
    ``**``) lists every object below the fixed part.
    """
    where = Location(pattern)
    head, _, last = where.key.rpartition("/")
    if not glob.has_magic(head) and "**" not in last:
        base = Location(f"s3://{where.bucket}/{head}")
        return [f"{base}/{n}" for n in base.children() if fnmatch.fnmatchcase(n, last)]
    fixed = []
    for part in where.key.split("/"):
        if glob.has_magic(part):
            break
        fixed.append(part)
    base = Location(f"s3://{where.bucket}/{'/'.join(fixed)}")
    matches = [f"{base}/{k}" for k in base.list()]
    return sorted(u for u in matches if fnmatch.fnmatchcase(u, where.url))


def local_copy(path: str | PathLike[str]) -> Path:
    """A local file with the content of ``path``: the path itself, or for a URL a
    copy in the user's cache keyed by its ETag (fetched once per version)."""
    if not is_url(path):
        return Path(path)
    where = Location(path)
    meta = where.head()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fcnrs" / "objects"
    tag = (meta["etag"] or str(meta["mtime_ns"])).replace("/", "_")
    target = cache / where.bucket / f"{where.key}.{tag}"
    if not target.exists():
        Location(target).write_bytes(where.read_bytes())
    return target
