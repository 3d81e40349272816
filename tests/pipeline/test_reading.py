"""Windowed reads: normalisation, and nodata values never reaching the model raw."""

from __future__ import annotations

import numpy as np
import pytest

from fcnrs.pipeline.errors import SceneError
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import TileReader, inspect_scene, resolve_bands
from fcnrs.pipeline.scenes import scene_stem


def test_read_normalises_and_zeroes_invalid_pixels(make_scene):
    data = np.full((2, 64, 64), 300, dtype="int16")
    data[1] = 500
    data[:, :10, :] = -9999  # declared nodata, far outside the normal range
    data[0, 40, 40] = -9999  # one band invalid inside a valid pixel
    scene = make_scene(
        bands=2,
        height=64,
        width=64,
        dtype="int16",
        mask="nodata",
        nodata=-9999,
        data=data,
        invalid=np.zeros((64, 64), bool),
    )
    with TileReader(scene, [2, 1], mean=[400, 200], std=[50, 100]) as reader:
        image, valid = reader.read(Window(0, 0, 64, 64))
        part, part_valid = reader.read(Window(32, 16, 16, 40))
    assert image.dtype == np.float32 and image.shape == (2, 64, 64)
    assert not valid[:10].any() and valid[10:].all()
    assert (image[:, :10] == 0).all()  # invalid pixels at 0, never (-9999 - mean) / std
    np.testing.assert_allclose(image[0, 10:20], 2.0)  # band 2: (500 - 400) / 50
    assert image[1, 40, 40] == 0 and image[1, 41, 41] == pytest.approx(1.0)
    np.testing.assert_array_equal(part, image[:, 32:48, 16:56])
    np.testing.assert_array_equal(part_valid, valid[32:48, 16:56])


def test_bands_are_checked_against_the_file(make_scene):
    info = inspect_scene(make_scene(bands=4, mask=None))
    assert resolve_bands(info, [4, 1], expected=2) == (4, 1)
    with pytest.raises(SceneError, match=r"band index 0 does not exist.*1-based"):
        resolve_bands(info, [0, 1])


def test_scene_stem():
    assert scene_stem("/data/T31TCJ_20260101.tif") == "T31TCJ_20260101"
    assert scene_stem("s3://bucket/a/b.c.tif") == "b.c"
