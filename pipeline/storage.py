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
put in a message: errors name the URL and the reason only.
"""

from __future__ import annotations

import builtins
import ctypes
import fnmatch
import glob
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from fcnrs.fcn_model.files import replaced_whole

#: Retries of a request to object storage, and the longest it may keep retrying.
S3_RETRIES = 6
S3_RETRY_TIMEOUT = timedelta(seconds=120)
#: Seconds a request may take to connect, and in all by default, before it is
#: abandoned and retried (a stalled server), for obstore, GDAL and pyarrow alike.
S3_CONNECT_TIMEOUT = 10
S3_REQUEST_TIMEOUT = 60
#: The variable that changes the request timeout (seconds), read when a client is
#: configured, so that every process of a run (the local engine's worker, Ray's)
#: follows it.
TIMEOUT_ENV = "FCNRS_S3_TIMEOUT"


def request_timeout() -> float:
    """Seconds a request to object storage may take in all: ``$FCNRS_S3_TIMEOUT``,
    else :data:`S3_REQUEST_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else float(S3_REQUEST_TIMEOUT)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds above 0")
    return seconds


_LOOPBACK = ("127.", "localhost", "[::1]", "::1")

_stores: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()
_gdal_set: dict[str, str] = {}  # what this module put in os.environ, to update it alone


def is_url(path: str | PathLike[str] | Location) -> bool:
    return "://" in str(path)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return any(host.startswith(p) for p in _LOOPBACK)


def sync_gdal_env() -> None:
    """Give GDAL the endpoint and retry settings the AWS variables imply (for
    ``/vsis3/``), unless the operator set GDAL's own; cheap, and called before
    every remote open, as a process may learn its environment late."""
    wanted = {
        "GDAL_HTTP_MAX_RETRY": str(S3_RETRIES),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_CONNECTTIMEOUT": str(S3_CONNECT_TIMEOUT),
        "GDAL_HTTP_TIMEOUT": f"{request_timeout():g}",
        # Cache an object's bytes while it is open, not after: a scene replaced in
        # the bucket is read anew by the next handle, never from this process's
        # old copy.
        "CPL_VSIL_CURL_NON_CACHED": "/vsis3/",
    }
    endpoint = _endpoint()
    if endpoint:
        parts = urlsplit(endpoint)
        wanted["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        wanted["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        wanted["AWS_VIRTUAL_HOSTING"] = "FALSE"  # S3-compatible servers use path style
    if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
        wanted["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"]
    for key, value in wanted.items():
        current = os.environ.get(key)
        if current is None or _gdal_set.get(key) == current:
            os.environ[key] = value
            _gdal_set[key] = value


def clear_gdal_cache() -> int:
    """Forget what GDAL has cached, in this process, of objects read over HTTP
    (``VSICurlClearCache``): their sizes, existence, listings and bytes.

    GDAL keeps these per process, beyond a handle's life (even with
    ``CPL_VSIL_CURL_NON_CACHED``, for ``/vsis3_streaming/`` and the listings
    behind a Zarr group). A process that opened an output through ``/vsis3/``
    and opens it again after a later run republished it would read the old
    sizes: ``JSON parsing error`` on ``.zmetadata``, ``Could not read tile``, or
    stale pixels. Call this before reopening such an output (the project does,
    wherever it reopens one); a fresh process needs nothing.

    Every GDAL loaded in the process is cleared (rasterio's, and pyogrio's own
    where it is loaded). Returns how many were.
    """
    cleared = 0
    for library in _gdal_libraries():
        try:
            lib = ctypes.CDLL(
                library, mode=getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0)
            )
        except OSError:  # not loaded after all: nothing of it to clear
            continue
        lib.VSICurlClearCache()
        cleared += 1
    return cleared


def _gdal_libraries() -> list[str]:
    """The GDAL shared libraries mapped into this process (Linux: from
    ``/proc/self/maps``; elsewhere rasterio's bundled or linked one)."""
    import rasterio  # loads GDAL if it is not yet

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        maps = []
    found = {line.split()[-1] for line in maps if re.search(r"/libgdal[.-][^/]*$", line)}
    if not found:
        import ctypes.util

        libs = Path(rasterio.__file__).parent.parent / "rasterio.libs"
        found = {str(p) for p in libs.glob("libgdal*")} or {ctypes.util.find_library("gdal") or ""}
    return sorted(f for f in found if f)


def _store(bucket: str, prefix: str = "") -> Any:
    """One obstore S3 store per bucket, key prefix and endpoint in this process."""
    from obstore.store import S3Store

    endpoint = _endpoint()
    # A store holds the credentials it was built with: a changed environment
    # (another profile, a rotated key) builds another. Only a digest is kept.
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    secret = hashlib.sha256("|".join(os.environ.get(n, "") for n in names).encode()).hexdigest()
    timeouts = (S3_CONNECT_TIMEOUT, request_timeout())
    key = (bucket, prefix, endpoint, secret, timeouts)
    with _lock:
        store = _stores.get(key)
        if store is None:
            if endpoint.startswith("http://") and not _is_loopback(endpoint):
                raise ValueError(
                    f"AWS_ENDPOINT_URL {endpoint} is plain http: allowed for loopback "
                    "endpoints only; use https"
                )
            store = _stores[key] = S3Store(
                bucket,
                prefix=prefix or None,
                client_options={
                    "allow_http": endpoint.startswith("http://"),
                    "connect_timeout": timedelta(seconds=S3_CONNECT_TIMEOUT),
                    "timeout": timedelta(seconds=timeouts[1]),
                },
                retry_config={
                    "max_retries": S3_RETRIES,
                    "retry_timeout": S3_RETRY_TIMEOUT,
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=5),
                        "base": 2,
                    },
                },
            )
    return store


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

        meta = _call(self, obstore.head, _store(self.bucket), self.key)
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

        return bytes(_call(self, obstore.get, _store(self.bucket), self.key).bytes())

    @contextmanager
    def open(self) -> Iterator[Any]:
        """A seekable binary reader of this file (in S3, ranged reads as they are
        needed: a Parquet footer costs a few small requests, not the file)."""
        if not self.remote:
            with self.path.open("rb") as fh:
                yield fh
            return
        import obstore

        reader = _call(self, obstore.open_reader, _store(self.bucket), self.key)
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
        batches = obstore.list(_store(self.bucket), prefix=prefix, chunk_size=1000)
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
        found = _call(self, obstore.list_with_delimiter, _store(self.bucket), prefix)
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
            _call(self, obstore.head, _store(self.bucket), meta["path"])
        except FileNotFoundError:
            return True
        return False

    # -- writing --------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write a whole file: others see the old file or the new one, never a part."""
        if self.remote:
            import obstore

            _call(self, obstore.put, _store(self.bucket), self.key, data)
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

        _call(self, obstore.put, _store(self.bucket), self.key, Path(source))

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
        with replaced_whole(self.path) as tmp:
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

        _call(self, obstore.delete, _store(self.bucket), self.key)

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
            _call(self, obstore.delete, _store(self.bucket), keys[start : start + 1000])

    def copy_to(self, other: Location) -> None:
        """Server-side copy of one S3 object to another key of the same bucket."""
        import obstore

        _call(self, obstore.copy, _store(self.bucket), self.key, other.key)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """A zarr-python store rooted here (``LocalStore`` or ``ObjectStore``)."""
        if not self.remote:
            from zarr.storage import LocalStore

            return LocalStore(str(self.path), read_only=read_only)
        return _zarr_object_store(_store(self.bucket, self.key), read_only=read_only)


def arrow_filesystem() -> Any:
    """A ``pyarrow.fs.S3FileSystem`` configured from the same AWS variables (for
    libraries that write through pyarrow, such as Ray Train's ``storage_path``).

    No credentials are put into it: pyarrow's AWS SDK finds them where obstore
    does (the variables, a profile, an instance role) in each process it is
    used in, so pickling the filesystem (Ray does) never carries a secret.
    """
    from pyarrow import fs

    options: dict[str, Any] = {
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=S3_RETRIES + 1),
        "connect_timeout": S3_CONNECT_TIMEOUT,
        "request_timeout": request_timeout(),
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    endpoint = _endpoint()
    if endpoint:
        if endpoint.startswith("http://") and not _is_loopback(endpoint):
            raise ValueError(
                f"AWS_ENDPOINT_URL {endpoint} is plain http: allowed for loopback "
                "endpoints only; use https"
            )
        parts = urlsplit(endpoint)
        options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme}
        options["force_virtual_addressing"] = False
    return fs.S3FileSystem(**options)


def _zarr_object_store(store: Any, *, read_only: bool) -> Any:
    """zarr-python's ``ObjectStore`` over an obstore store, with one addition.

    zarr creates group and array metadata with conditional PUTs
    (``If-None-Match: *``, "create unless it exists"). obstore does not retry
    such a request once it was sent (it cannot know whether it took effect), so
    a connection dropped under it failed the scene. Retrying it is safe: if the
    first attempt did create the object, the retry finds it there, which is
    what zarr asks for. Plain PUTs, GETs, listings and deletes keep obstore's
    own retries.
    """
    import asyncio

    from obstore import exceptions as ox
    from zarr.storage import ObjectStore

    class RetriedObjectStore(ObjectStore):  # type: ignore[type-arg]
        async def set_if_not_exists(self, key: str, value: Any) -> None:
            for attempt in range(S3_RETRIES + 1):
                try:
                    return await super().set_if_not_exists(key, value)
                except ox.GenericError:  # dropped, reset, timed out: not a refusal
                    if attempt == S3_RETRIES:
                        raise
                    await asyncio.sleep(0.1 * 2**attempt)

    return RetriedObjectStore(store, read_only=read_only)


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
