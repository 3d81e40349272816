"""Fine-tuning ends by measuring the context its model needs and recording it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from fcnrs.fcn_model import read_meta
from fcnrs.pipeline.context import MARGIN, measure_halo
from fcnrs.training.context import record_best_halo
from fcnrs.training.data import LabeledScene

from .test_loop import sample_settings


def test_fine_tuning_records_the_halo_measured_on_its_val_scene(trained_checkpoint):
    """The session's fine-tuned checkpoint (thin structures, 320-px val scene)."""
    meta = read_meta(trained_checkpoint)
    assert meta.halo is not None
    val = str(trained_checkpoint.parent.parent / "v.tif")
    assert meta.halo.scenes == (val,) and meta.halo.halo % 32 == 0
    assert meta.halo.agreement >= meta.halo.threshold == 0.999
    assert meta.halo.tile_size == 128  # three cores across the 320-px scene: dense seams
    assert meta.halo.halo == meta.halo.needed + MARGIN  # the margin for other scenes
    assert all(a < 0.999 for h, a in meta.halo.tried if h < meta.halo.needed)
    report = json.loads((trained_checkpoint.parent / "best_report.json").read_text())
    assert report["halo"] == json.loads(json.dumps(asdict(meta.halo)))


def test_the_recorded_halo_is_what_measuring_again_finds(tmp_path, labeled):
    _, scenes = labeled
    val = [sc for sc in scenes if sc.split == "val"]
    s = sample_settings(scenes, tmp_path, epochs=1, steps_per_epoch=2)
    from fcnrs.training.runners import train_in_process

    train_in_process(s)
    recorded = read_meta(tmp_path / "best").halo
    assert recorded is not None and recorded.scenes == (val[0].image,)
    again = measure_halo(tmp_path / "best", [val[0].image], bands=s.bands)
    assert (again.halo, again.tried) == (recorded.halo, recorded.tried)


def test_no_checkpoint_no_measurement(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings([LabeledScene(sc.image, sc.label, "val") for sc in scenes], tmp_path)
    assert record_best_halo(s) is None
    assert not Path(tmp_path / "best").exists()
