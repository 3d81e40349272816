"""The sample scene the demo and the training tests use."""

from __future__ import annotations

import numpy as np
import rasterio

from fcnrs.synthetic.scenes import CLASSES, make_sample_scene


def test_sample_scene_has_four_separable_classes_and_a_nodata_border(tmp_path):
    image, labels = make_sample_scene(tmp_path / "s.tif", tmp_path / "l.tif", height=300, width=350)
    with rasterio.open(image) as src, rasterio.open(labels) as lab:
        assert (src.count, src.dtypes[0], src.nodata, src.crs.to_epsg()) == (4, "uint16", 0, 32633)
        assert lab.transform == src.transform and lab.nodata == 255
        x = src.read()
        y = lab.read(1)
        assert np.array_equal(src.dataset_mask() == 0, y == 255)
    shares = np.bincount(y[y != 255], minlength=len(CLASSES)) / (y != 255).sum()
    assert (shares > 0.1).all(), shares
    # Water is the darkest class in the near-infrared, vegetation the brightest.
    nir = [x[3][y == c].mean() for c in range(len(CLASSES))]
    assert np.argmin(nir) == CLASSES.index("water") and np.argmax(nir) == CLASSES.index(
        "vegetation"
    )
