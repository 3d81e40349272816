"""The jobs against object storage that misbehaves: a proxy of the tests' own
(``tests/s3proxy.py``, in its own process, on loopback) stands between the jobs
and the real S3 server (``weed mini``) and injects 503 SlowDown, 429, 500,
dropped connections and stalled responses into reads, writes and listings of
both clients (GDAL's ``/vsis3/``, obstore for everything else), or refuses
requests for good (403). Every fault test is bounded: a fixed number of faults
(every N-th request of a kind, at most M) and a time limit."""

from __future__ import annotations

import collections
import time
import uuid

import numpy as np
import pytest
from rasterio.transform import from_origin

from fcnrs.jobs.cli import main as fcnrs
from fcnrs.jobs.segment_scenes import main
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.storage import Location
from tests.files import tree_bytes
from tests.gis.test_mosaic import A_ORIGIN, B_ORIGIN, UTM33, blocks

pytestmark = pytest.mark.s3
SETTINGS = SegmentSettings(tile_size=64, overlap=32, batch_size=2, precision="fp32")
FLAGS = ["--tile-size", "64", "--overlap", "32", "--batch-size", "2", "--precision", "fp32"]
#: Statuses a retried request may end with: an answer, not a transient error.
ANSWERED = {200, 204, 206, 404}


@pytest.fixture
def night(s3_server, make_scene, make_checkpoint, tmp_path):
    """Two scenes and a checkpoint in S3, and the same night run on local files."""
    scenes = [
        make_scene("a.tif", height=200, width=260, seed=1),
        make_scene("b.tif", height=150, width=180, seed=2, mask="internal"),
    ]
    ckpt = make_checkpoint()
    base = f"s3://fcnrs/{uuid.uuid4().hex[:10]}"
    for scene in scenes:
        Location(f"{base}/scenes/{scene.name}").write_bytes(scene.read_bytes())
    Location(f"{base}/models/model.safetensors").write_bytes(ckpt.read_bytes())
    local = tmp_path / "local"
    report = run_scenes(
        scenes, model=ckpt, out_dir=local, settings=SETTINGS, progress=None, engine="local"
    )
    assert [r.status for r in report.rows] == ["done", "done"]
    return base, local


def segment(base: str, out: str) -> tuple[int, float]:
    """The job's command line, S3 to S3 (model, a scene glob, the output)."""
    t0 = time.perf_counter()
    model, scenes = f"{base}/models/model.safetensors", f"{base}/scenes/*.tif"
    status = main(["--model", model, "--scenes", scenes, "--out", out, "--engine", "local", *FLAGS])
    return status, time.perf_counter() - t0


def arrays(where, scene: str = "") -> dict[str, bytes]:
    """Every object of the published rasters' arrays (chunks and metadata of
    labels, x, y, spatial_ref), not the group's attributes (which name the
    source: a URL here, a path in the local run)."""
    return {
        k: v
        for k, v in tree_bytes(where).items()
        if k.startswith(f"{scene}") and k.count("/") >= 2 and k.split("/")[0].endswith(".zarr")
    }


def same_labels(out: str, local) -> None:
    """The published arrays equal the local run's, byte for byte."""
    remote, here = arrays(out), arrays(local)
    assert sorted(remote) == sorted(here) and len(remote) > 30
    assert remote == here


def log_lines(entries: list[dict]) -> str:
    """The proxy's log in order of arrival, one request a line (for messages)."""
    return "\n".join(
        f"{e['seq']} {e['agent']} {e['method']} {e['path']}?{e['query'][:60]} "
        f"{e['range'] or ''} {e['fault'] or ''} {e['status']}"
        for e in sorted(entries, key=lambda e: e["seq"])
    )


def not_retried(entries: list[dict]) -> str:
    """The faulted requests that were not made again and answered, with the log."""
    missing = retried(entries)
    return f"not retried: {log_lines(missing)}\n{log_lines(entries)}" if missing else ""


def retried(entries: list[dict]) -> list[dict]:
    """The faulted requests that were not followed by the same request answered."""
    entries = sorted(entries, key=lambda e: e["seq"])  # in order of arrival
    missing = []
    for i, e in enumerate(entries):
        if not e["fault"]:
            continue
        later = (
            f
            for f in entries[i + 1 :]
            if (f["method"], f["path"], f["query"]) == (e["method"], e["path"], e["query"])
        )
        if not any(f["fault"] is None and f["status"] in ANSWERED for f in later):
            missing.append(e)
    return missing


def test_slowdown_429_500_and_dropped_connections_are_retried_to_the_same_labels(
    night, s3_proxy, s3_server, monkeypatch
):
    base, local = night
    proxy = s3_proxy(
        # GDAL's reads of the scenes (few: small tiled files). Not its listings:
        # those probe for sidecar files, and GDAL takes a failed probe for "none"
        # and looks for each file directly instead (a 404 or the file: no harm).
        "503:every=4,agent=GDAL,ops=read",
        "429:every=5,agent=GDAL,ops=read",
        "drop:every=6,agent=GDAL,ops=read",
        # obstore's listings (the glob, the output folder, the staging group, the
        # manifest), reads (model, manifests, metadata) and writes (chunks, copies).
        "503:every=5,agent=object_store,ops=list",
        "429:every=7,agent=object_store,ops=list",
        "drop:every=9,agent=object_store,ops=list",
        "503:every=25,agent=object_store,ops=read+write",
        "429:every=37,agent=object_store,ops=read+write",
        "drop:every=31,agent=object_store,ops=read+write",
        "500:every=61,agent=object_store,ops=read+write",
    )
    status, seconds = segment(base, f"{base}/out")
    assert status == 0
    entries = proxy.entries()
    faults = collections.Counter((e["fault"], e["op"]) for e in entries if e["fault"])
    by_agent = collections.Counter((e["agent"], e["fault"]) for e in entries if e["fault"])
    for kind in ("503", "429", "drop"):
        for op in ("read", "write", "list"):
            assert faults[kind, op] >= 1, f"no {kind} on a {op}: {faults}"
        assert by_agent["GDAL", kind] >= 1 and by_agent["object_store", kind] >= 1, by_agent
    assert faults["500", "write"] + faults["500", "read"] + faults["500", "list"] >= 1
    injected = sum(faults.values())
    # Bounded: about one request in eight failed, and the night still took seconds.
    assert 40 <= injected <= len(entries) // 5 and seconds < 180, (injected, len(entries))
    # Retries are quick: none of them waited on a timeout.
    assert max(e["ms"] for e in entries) < 5_000
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # read the results directly
    same_labels(f"{base}/out", local)
    rows = read_manifest(f"{base}/out").to_pylist()
    assert [r["status"] for r in rows] == ["done", "done"]
    # Every faulted obstore request was made again and answered. GDAL made its
    # reads again too, after every kind of fault; what it leaves is a failed
    # piece of a multi-range prefetch (parallel ranged GETs that fill its cache
    # for a window's blocks): GDAL then reads those bytes in its ordinary chunks,
    # retried (the proxy's log shows the ranges), and the labels above are exact.
    missing = retried(entries)
    assert [e for e in missing if e["agent"] != "GDAL"] == [], not_retried(entries)
    again = collections.Counter(
        e["fault"] for e in entries if e["fault"] and e["agent"] == "GDAL" and e not in missing
    )
    assert set(again) == {"503", "429", "drop"}, not_retried(entries)


def test_responses_stalled_past_the_timeout_are_abandoned_and_retried(
    night, s3_proxy, s3_server, monkeypatch
):
    base, local = night
    # Requests of either client, in every process of the run, give up after 3 s
    # (FCNRS_S3_TIMEOUT sets obstore's timeout and GDAL_HTTP_TIMEOUT); the proxy
    # holds a stalled one for 30 s, then resets it.
    monkeypatch.setenv("FCNRS_S3_TIMEOUT", "3")
    proxy = s3_proxy(
        # GDAL's reads of a scene's bytes; not its probes for sidecar files (GDAL
        # does not retry a probe that timed out: it takes the file for absent).
        r"stall:every=2,agent=GDAL,ops=read,max=1,match=/scenes/[ab]\.tif$",
        "stall:every=10,agent=object_store,ops=read,max=1",
        "stall:every=50,ops=write,max=1",
        "stall:every=3,ops=list,max=1",
        stall_seconds=30,
    )
    status, seconds = segment(base, f"{base}/out")
    assert status == 0
    entries = proxy.entries()
    stalled = [(e["agent"], e["op"]) for e in entries if e["fault"] == "stall"]
    assert collections.Counter(op for _, op in stalled) == {"read": 2, "write": 1, "list": 1}
    assert {agent for agent, op in stalled if op == "read"} == {"GDAL", "object_store"}
    assert not not_retried(entries), not_retried(entries)
    # Each stalled request was given up after the timeout and made again long
    # before the proxy gave up on it: 3 s after it, not 30 s.
    for e in entries:
        if e["fault"] == "stall":
            retry = min(
                f["t"]
                for f in entries
                if f["seq"] > e["seq"] and (f["method"], f["path"]) == (e["method"], e["path"])
            )
            assert 2.9 <= retry - e["t"] < 30, (e, retry)
    assert seconds < 180  # a guard against retrying for minutes
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    same_labels(f"{base}/out", local)


def test_a_refused_scene_fails_fast_and_alone_naming_the_url(night, s3_proxy, s3_server):
    base, local = night
    proxy = s3_proxy("403:every=1,match=/scenes/b.tif")
    status, seconds = segment(base, f"{base}/out")
    assert status == 1 and seconds < 60
    rows = {r["scene"]: r for r in read_manifest(f"{base}/out").to_pylist()}
    assert rows[f"{base}/scenes/a.tif"]["status"] == "done"
    refused = rows[f"{base}/scenes/b.tif"]
    assert refused["status"] == "failed"
    assert refused["error"].startswith(f"{base}/scenes/b.tif: access denied"), refused["error"]
    # A permanent error is not retried: each client asked once or twice, not 7 times.
    asked = collections.Counter(e["agent"] for e in proxy.entries() if e["fault"] == "403")
    assert 1 <= max(asked.values()) <= 3, asked
    assert arrays(f"{base}/out", "a.zarr/") == arrays(local, "a.zarr/")


GIS_FAULTS = (
    # GDAL's reads of COGs and VRTs (a fingerprint, the mosaic's grid), not its
    # probes for sidecars, which it does not retry (see above).
    r"stall:every=1,agent=GDAL,ops=read,max=1,match=\.(tif|vrt)$",
    r"503:every=4,agent=GDAL,ops=read,match=\.(tif|vrt)$",
    # obstore: label rasters, uploads, listings, the manifest.
    "503:every=7,agent=object_store",
    "429:every=11,agent=object_store",
    "drop:every=13,agent=object_store",
    "500:every=29,agent=object_store",
)


def test_the_gis_commands_write_the_same_files_through_the_same_faults(
    s3_server, s3_proxy, make_labels, tmp_path, monkeypatch
):
    local, remote = tmp_path / "out", f"s3://fcnrs/{uuid.uuid4().hex[:10]}/out"
    for name, origin, seed in (("a", A_ORIGIN, 0), ("b", B_ORIGIN, 1)):
        for out in (local, Location(remote)):
            make_labels(blocks(200, 300, seed), name=f"{name}.zarr", out_dir=out, crs=UTM33,
                        transform=from_origin(*origin, 10, 10), tile_size=64)  # fmt: skip
    commands = [
        ["export", "{out}/a.zarr", "{out}/b.zarr", "--out", "{out}/cogs", "--quicklook", "64"],
        ["vectorize", "{out}/a.zarr", "{out}/b.zarr"],
        ["areas", "{out}", "--format", "csv", "--output", "{out}/areas.csv"],
        ["mosaic", "{out}"],
        ["catalog", "{out}"],
    ]
    for command in commands:
        assert fcnrs([a.format(out=local) for a in command]) == 0
    monkeypatch.setenv("FCNRS_S3_TIMEOUT", "3")
    proxy = s3_proxy(*GIS_FAULTS, stall_seconds=30)
    t0 = time.perf_counter()
    for command in commands:
        assert fcnrs([a.format(out=remote) for a in command]) == 0, command
    seconds = time.perf_counter() - t0
    entries = proxy.entries()
    kinds = collections.Counter(e["fault"] for e in entries if e["fault"])
    assert set(kinds) == {"503", "429", "drop", "500", "stall"} and seconds < 180, kinds
    assert not not_retried(entries), not_retried(entries)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    there, here = tree_bytes(remote), tree_bytes(local)
    for key in ("cogs/a.tif", "cogs/a.tif.aux.xml", "cogs/b.png", "vectors/b.parquet"):
        assert there[key] == here[key], key
    assert there["areas.csv"].replace(remote.encode(), str(local).encode()) == here["areas.csv"]
    assert {k for k in there if k.startswith(("stac/", "mosaic/"))} == {
        k for k in here if k.startswith(("stac/", "mosaic/"))
    }


def test_a_large_upload_survives_faults_on_its_parts(s3_proxy, tmp_path):
    """A file over obstore's 5 MB part size goes up as a multipart upload: its
    parts are retried alone, and the object appears only once whole."""
    proxy = s3_proxy("503:every=3,ops=write", "drop:every=5,ops=write")
    data = np.random.default_rng(0).integers(0, 255, 12 * 2**20, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(data)
    where = Location(f"s3://fcnrs/{uuid.uuid4().hex[:10]}/big.bin")
    where.upload(tmp_path / "big.bin")
    methods = collections.Counter((e["method"], e["query"][:7]) for e in proxy.entries())
    assert methods["POST", "uploads"] >= 1 and methods["PUT", "partNum"] >= 3, methods
    entries = proxy.entries()
    assert len(proxy.faults()) >= 2 and not not_retried(entries), not_retried(entries)
    assert where.read_bytes() == data
