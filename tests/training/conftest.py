"""Labeled scenes for the training tests: the demo's sample scenes, and small
hand-made ones whose every value is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from fcnrs.synthetic.scenes import make_sample_scene
from fcnrs.training.data import LabeledScene


def write_raster(path: Path, data: np.ndarray, *, nodata: float | None = None) -> Path:
    """A GeoTIFF of ``data`` (bands, h, w) or (h, w) on a UTM grid, 10 m pixels."""
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=from_origin(500000, 4100000, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture
def labeled(tmp_path) -> tuple[Path, list[LabeledScene]]:
    """Two sample scenes (4 bands, 4 classes, nodata border): a train and a val one,
    as a scene table and as LabeledScenes."""
    a = make_sample_scene(tmp_path / "a.tif", tmp_path / "a_l.tif", seed=1, height=200, width=220)
    b = make_sample_scene(tmp_path / "b.tif", tmp_path / "b_l.tif", seed=2, height=160, width=190)
    table = tmp_path / "scenes.csv"
    table.write_text(f"image,label,split\n{a[0]},{a[1]},train\n{b[0]},{b[1]},val\n")
    return table, [
        LabeledScene(str(a[0]), str(a[1]), "train"),
        LabeledScene(str(b[0]), str(b[1]), "val"),
    ]


#: The threshold scene's side and the value between its two classes.
THRESHOLD_SIDE = 96
THRESHOLD = THRESHOLD_SIDE**2 / 2 - 0.5


@pytest.fixture
def threshold_scene(tmp_path) -> LabeledScene:
    """One band holding each of 0 .. n-1 once (float32, exact) in random order, and
    the label ``value > THRESHOLD``: every pixel is told apart by its own value,
    and a value says where in the scene it came from."""
    n = THRESHOLD_SIDE
    values = np.random.default_rng(7).permutation(n * n).astype(np.float32).reshape(n, n)
    write_raster(tmp_path / "t.tif", values)
    write_raster(tmp_path / "t_l.tif", (values > THRESHOLD).astype(np.uint8))
    return LabeledScene(str(tmp_path / "t.tif"), str(tmp_path / "t_l.tif"), "train")
