"""Fixtures of the distributed tests."""

from __future__ import annotations

import numpy as np
import pytest

from fcnrs.fcn_model import read_meta
from fcnrs.pipeline.scenes import SegmentSettings, plan_scene
from fcnrs.pipeline.writing import staging_group


@pytest.fixture
def planned(make_scene, make_checkpoint, tmp_path):
    """A 300x400 scene whose interior tile (1, 2) is all nodata, and its staging group."""
    invalid = np.zeros((300, 400), bool)
    invalid[64:128, 128:192] = True
    scene = make_scene(height=300, width=400, invalid=invalid)
    ckpt = make_checkpoint()
    meta = read_meta(ckpt)
    settings = SegmentSettings(tile_size=64, overlap=32, batch_size=4)
    plan = plan_scene(scene, meta=meta, out_dir=tmp_path / "out", settings=settings)
    group = staging_group(plan, meta=meta, model_digest="d" * 64, settings=settings)
    group.create()
    return scene, ckpt, meta, plan, group
