"""Fine-tuning: sampling and ignore rules, initialisation, and the Ray Train job end to end."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import rasterio
import torch

from fcn_model import FCN8s, load_checkpoint, save_checkpoint
from jobs import finetune
from pipeline.labeled import LabeledScene
from pipeline.planning import Window
from pipeline.sample import CLASSES, make_sample_scene
from pipeline.segment import SegmentSettings, segment_scene
from pipeline.training import (
    IGNORE,
    TrainSettings,
    WindowSampler,
    _initial_model,
    band_statistics,
    read_labeled_window,
)
from pipeline.writing import is_complete


@pytest.fixture
def labeled(tmp_path):
    a = make_sample_scene(tmp_path / "a.tif", tmp_path / "a_l.tif", seed=1, height=200, width=220)
    b = make_sample_scene(tmp_path / "b.tif", tmp_path / "b_l.tif", seed=2, height=160, width=190)
    table = tmp_path / "scenes.csv"
    table.write_text(f"image,label,split\n{a[0]},{a[1]},train\n{b[0]},{b[1]},val\n")
    return table, [
        LabeledScene(str(a[0]), str(a[1]), "train"),
        LabeledScene(str(b[0]), str(b[1]), "val"),
    ]


def test_ignored_pixels_never_reach_the_loss(tmp_path):
    profile = dict(
        driver="GTiff",
        height=8,
        width=8,
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(0, 80, 10, 10),
    )
    image = np.full((1, 8, 8), 100, dtype="int16")
    image[0, 0, :] = 0  # declared nodata
    label = np.ones((8, 8), dtype="int16")
    label[1, :] = -1  # undeclared ignore value (Sen1Floods11)
    label[2, :] = 7  # outside the classes
    label[3, :] = 9  # the label file's declared nodata
    with rasterio.open(tmp_path / "i.tif", "w", count=1, dtype="int16", nodata=0, **profile) as d:
        d.write(image)
    with rasterio.open(tmp_path / "l.tif", "w", count=1, dtype="int16", nodata=9, **profile) as d:
        d.write(label, 1)
    scene = LabeledScene(str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "train")
    img, target = read_labeled_window(
        scene, Window(0, 0, 8, 8), bands=[1], num_classes=2, ignore_value=-1
    )
    assert (target[:4] == IGNORE).all() and (target[4:] == 1).all()
    assert np.isnan(img[0, 0]).all() and (img[0, 4:] == 100).all()


def test_band_statistics_match_the_valid_pixels(labeled):
    _, scenes = labeled
    mean, std = band_statistics(scenes, [1, 2, 3, 4], samples=8, size=400)
    with rasterio.open(scenes[0].image) as src:
        data = src.read().astype(float)
        valid = src.dataset_mask() > 0
    np.testing.assert_allclose(mean, data[:, valid].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, data[:, valid].std(axis=1), rtol=1e-6)


def sampler_settings(scenes, **overrides) -> TrainSettings:
    """Settings for sampling 64-px windows of the sample scenes' 4 bands."""
    return TrainSettings(
        scenes=tuple(scenes),
        classes=CLASSES,
        colors=((0, 0, 0),) * 4,
        bands=(1, 2, 3, 4),
        out="",
        window=64,
        **overrides,
    )


def test_windows_differ_per_worker_and_flips_keep_labels_aligned(labeled):
    _, scenes = labeled
    s = sampler_settings(scenes, batch_size=4, mean=(1000.0,) * 4, std=(800.0,) * 4)
    x0, y0 = WindowSampler(s, rank=0, epoch=0).batch()
    x1, _ = WindowSampler(s, rank=1, epoch=0).batch()
    assert x0.shape == (4, 4, 64, 64) and y0.shape == (4, 64, 64)
    assert not torch.equal(x0, x1)
    # Water is dark in the near-infrared (band 4): after any flip or rotation the
    # pixels labelled water must still be the dark ones.
    water = y0 == CLASSES.index("water")
    if water.any():
        nir = x0[:, 3]
        assert nir[water].mean() < nir[(y0 >= 0) & ~water].mean()


def test_brightness_scales_each_window_by_one_gain_per_band(labeled):
    _, scenes = labeled
    raw = {"batch_size": 6, "mean": (0.0,) * 4, "std": (1.0,) * 4}
    plain, y_plain = WindowSampler(sampler_settings(scenes, **raw), rank=0, epoch=0).batch()
    bright = sampler_settings(scenes, **raw, brightness=0.3)
    lit, y_lit = WindowSampler(bright, rank=0, epoch=0).batch()
    assert torch.equal(y_plain, y_lit)  # same windows, same labels
    # Where the raw value is not 0 (nodata), lit / plain is one gain per window and
    # band, and the gains spread over [0.7, 1.3] (with the small per-band part).
    ratio = torch.where(plain != 0, lit / plain, torch.nan).flatten(2)
    gains = ratio.nanmedian(dim=2).values
    spread = (ratio - gains[..., None]).abs().nan_to_num().amax()
    assert spread < 1e-4
    assert gains.min() > 0.5 and gains.max() < 1.5 and gains.std() > 0.05


def test_init_with_other_classes_keeps_the_trunk_and_resets_the_scores(tmp_path, labeled):
    _, scenes = labeled
    torch.manual_seed(9)
    parent = FCN8s(3, in_channels=4, width=0.125)
    path = save_checkpoint(
        tmp_path / "parent.safetensors",
        parent,
        classes=["a", "b", "c"],
        bands=[1, 2, 3, 4],
        mean=[0] * 4,
        std=[1] * 4,
    )
    s = TrainSettings(
        scenes=tuple(scenes),
        classes=("x", "y"),
        colors=((0, 0, 0),) * 2,
        bands=(1, 2, 3, 4),
        out="",
        width=0.125,
        init=str(path),
    )
    child = _initial_model(s)
    assert torch.equal(child.conv1_1.weight, parent.conv1_1.weight)
    assert torch.equal(child.fc7.weight, parent.fc7.weight)
    assert child.score_fr.weight.shape == (2, 512, 1, 1)
    same = TrainSettings(**{**s.__dict__, "classes": ("a", "b", "c"), "colors": ((0, 0, 0),) * 3})
    assert torch.equal(_initial_model(same).score_fr.weight, parent.score_fr.weight)


def small_run(table, out, *extra: str) -> list[str]:
    """``jobs/finetune.py`` arguments of a tiny two-worker run: width 0.125,
    64-px windows in pairs; ``extra`` adds the rest."""
    return [
        "--scenes",
        str(table),
        "--out",
        str(out),
        "--classes",
        ",".join(CLASSES),
        "--width",
        "0.125",
        "--num-workers",
        "2",
        "--batch-size",
        "2",
        "--window",
        "64",
        *extra,
    ]


def test_two_ddp_workers_train_report_checkpoint_export_and_continue(ray_local, labeled, tmp_path):
    table, scenes = labeled
    out = tmp_path / "run"
    args = small_run(table, out, "--steps-per-epoch", "4")
    assert finetune.main([*args, "--epochs", "2"]) == 0
    history = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(0 <= h["val_mean_iou"] <= 1 and len(h["confusion"]) == 4 for h in history)
    _, meta = load_checkpoint(out / "best")
    assert meta.classes == CLASSES and meta.bands == (1, 2, 3, 4) and len(meta.mean) == 4
    # The nightly job takes <out>/best as it is.
    segment_scene(
        scenes[1].image,
        model=out / "best",
        out_dir=tmp_path / "labels",
        settings=SegmentSettings(tile_size=64, overlap=32),
    )
    assert is_complete(tmp_path / "labels" / "b.zarr")
    # Same --out, more epochs: continues from the last checkpoint (epoch 2 only).
    assert finetune.main([*args, "--epochs", "3"]) == 0
    history = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["resumed_from_epoch"] for h in history] == [-1, -1, 1]


def _registered_epoch(experiment) -> int:
    """The epoch of the last checkpoint Ray Train's controller registered (its
    snapshot, written after registration; a folder on disk may not be registered
    yet). -1 while there is none or the file is being rewritten."""
    try:
        snap = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return -1
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", -1))


def test_a_killed_worker_resumes_from_the_last_registered_checkpoint(
    ray_local, labeled, tmp_path, monkeypatch
):
    table, _ = labeled
    out = tmp_path / "run"
    # Ray Train polls its workers every 2 s by default; poll faster so a short
    # epoch's checkpoint is registered before the next one.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    killed: dict[str, int] = {}

    def kill_a_worker_once_epoch_1_is_registered() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            epoch = _registered_epoch(out / "ray_results" / "finetune")
            workers = []
            for p in psutil.Process().children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(p.cmdline()):
                        workers.append(p)
                except psutil.Error:  # a short-lived process that is already gone
                    continue
            if epoch >= 1 and workers:
                workers[0].send_signal(signal.SIGKILL)
                killed.update(epoch=epoch, pid=workers[0].pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_once_epoch_1_is_registered)
    killer.start()
    code = finetune.main(
        small_run(
            table, out, "--cpus-per-worker", "0.5", "--steps-per-epoch", "3", "--epochs", "10"
        )
    )
    killer.join()
    assert code == 0 and killed, "the worker was never killed"
    history = json.loads((out / "report.json").read_text())
    # Every epoch once, in order: the restarted group carried on, it did not redo
    # the run or lose the history.
    assert [h["epoch"] for h in history] == list(range(10))
    resumed = [h["resumed_from_epoch"] for h in history if h["resumed_from_epoch"] >= 0]
    # One restart, from a checkpoint at or after the one registered before the kill.
    assert len(resumed) == 1 and resumed[0] >= killed["epoch"]
