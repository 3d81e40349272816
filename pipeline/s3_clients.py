"""How each library reaches S3: obstore (zarr chunks, manifests, listings,
checkpoints), GDAL (scene reads through ``/vsis3/``) and pyarrow (Ray Train's
storage), all configured from the same AWS variables, with the same retries
and timeouts; and GDAL's per-process HTTP cache, which a reader of republished
outputs must clear. :mod:`fcnrs.pipeline.storage` is what the rest of the
project uses; this module is what it is built on.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def s3_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")


def check_endpoint(endpoint: str) -> None:
    """Refuse a plain-http endpoint that is not on this machine (a ValueError
    naming it): credentials and data would cross the network unencrypted."""
    host = urlsplit(endpoint).hostname or ""
    if endpoint.startswith("http://") and not any(host.startswith(p) for p in _LOOPBACK):
        raise ValueError(
            f"AWS_ENDPOINT_URL {endpoint} is plain http: allowed for loopback "
            "endpoints only; use https"
        )


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
    endpoint = s3_endpoint()
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


def obstore_store(bucket: str, prefix: str = "") -> Any:
    """One obstore S3 store per bucket, key prefix and endpoint in this process."""
    from obstore.store import S3Store

    endpoint = s3_endpoint()
    # A store holds the credentials it was built with: a changed environment
    # (another profile, a rotated key) builds another. Only a digest is kept.
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    secret = hashlib.sha256("|".join(os.environ.get(n, "") for n in names).encode()).hexdigest()
    timeouts = (S3_CONNECT_TIMEOUT, request_timeout())
    key = (bucket, prefix, endpoint, secret, timeouts)
    with _lock:
        store = _stores.get(key)
        if store is None:
            check_endpoint(endpoint)
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
    endpoint = s3_endpoint()
    if endpoint:
        check_endpoint(endpoint)
        parts = urlsplit(endpoint)
        options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme}
        options["force_virtual_addressing"] = False
    return fs.S3FileSystem(**options)


def zarr_object_store(store: Any, *, read_only: bool) -> Any:
    """zarr-python's ``ObjectStore`` over an obstore store, with one addition.

    zarr creates group and array metadata with conditional PUTs
    (``If-None-Match: *``, "create unless it exists"). obstore does not retry
    such a request once it was sent (it cannot know whether it took effect), so
    a connection dropped under it failed the scene. Retrying it is safe: if the
    first attempt did create the object, the retry finds it there, which is
    what zarr asks for. Plain PUTs, GETs, listings and deletes keep obstore's
    own retries.
    """
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
