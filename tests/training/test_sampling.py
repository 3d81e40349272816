"""Training windows: the ignore rules, the one pixel-validity rule shared with
inference and band statistics, augmentation, and the sampler's open files."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import TileReader, normalize, open_raster
from fcnrs.synthetic.scenes import CLASSES
from fcnrs.training import prefetch, statistics, windows
from fcnrs.training.data import LabeledScene
from fcnrs.training.settings import TrainSettings
from fcnrs.training.statistics import band_statistics
from fcnrs.training.windows import IGNORE_INDEX, WindowSampler, read_labeled_window

from .conftest import THRESHOLD, THRESHOLD_SIDE, write_raster


def read_scene_window(scene: LabeledScene, window: Window, **kwargs):
    with open_raster(scene.image) as image, open_raster(scene.label) as label:
        return read_labeled_window(image, label, window, **kwargs)


def test_ignored_pixels_never_reach_the_loss(tmp_path):
    image = np.full((1, 8, 8), 100, dtype="int16")
    image[0, 0, :] = 0  # declared nodata
    label = np.ones((8, 8), dtype="int16")
    label[1, :] = -1  # undeclared ignore value (Sen1Floods11)
    label[2, :] = 7  # outside the classes
    label[3, :] = 9  # the label file's declared nodata
    write_raster(tmp_path / "i.tif", image, nodata=0)
    write_raster(tmp_path / "l.tif", label, nodata=9)
    scene = LabeledScene(str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "train")
    img, band_valid, target = read_scene_window(
        scene, Window(0, 0, 8, 8), bands=[1], num_classes=2, ignore_value=-1
    )
    assert (target[:4] == IGNORE_INDEX).all() and (target[4:] == 1).all()
    # The nodata row is marked invalid (normalised to 0 later), the rest is raw.
    assert (~band_valid[0, 0]).all() and band_valid[0, 1:].all()
    assert (img[0, 1:] == 100).all()


def test_band_statistics_match_the_valid_pixels(labeled):
    _, scenes = labeled
    mean, std = band_statistics(scenes, [1, 2, 3, 4], samples=8, size=400)
    with rasterio.open(scenes[0].image) as src:
        data = src.read().astype(float)
        valid = src.dataset_mask() > 0
    np.testing.assert_allclose(mean, data[:, valid].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, data[:, valid].std(axis=1), rtol=1e-6)


def per_band_nodata_scene(tmp_path) -> tuple[LabeledScene, np.ndarray, np.ndarray]:
    """A 2-band uint16 scene with nodata 0 where band 1 is 0 at pixels where band 2
    is not (and the other way round), plus pixels where both are; labels 0/1 with
    their own nodata (255) in one corner. Returns the scene, bands and labels."""
    rng = np.random.default_rng(3)
    data = rng.integers(500, 1500, (2, 48, 48)).astype(np.uint16)
    data[0, 10:16, :] = 0  # band 1 nodata, band 2 valid
    data[1, :, 30:36] = 0  # band 2 nodata, band 1 valid
    # Bright band-1 values where band 2 is nodata: a mean over pixels where every
    # band is valid (the old statistics rule) would miss them by far.
    data[0, :, 30:36] = np.where(data[0, :, 30:36] > 0, 9000, 0)
    data[:, 40:, 40:] = 0  # both nodata: pixel invalid
    labels = (rng.random((48, 48)) > 0.5).astype(np.uint8)
    labels[:4, :4] = 255
    write_raster(tmp_path / "pb.tif", data, nodata=0)
    write_raster(tmp_path / "pb_l.tif", labels, nodata=255)
    scene = LabeledScene(str(tmp_path / "pb.tif"), str(tmp_path / "pb_l.tif"), "train")
    return scene, data, labels


def test_per_band_nodata_inference_training_and_statistics_agree(tmp_path):
    scene, data, labels = per_band_nodata_scene(tmp_path)
    band_valid_truth = data != 0
    pixel_truth = band_valid_truth.any(axis=0)
    # Both kinds of partly valid pixels and fully invalid ones exist.
    assert (band_valid_truth[1] & ~band_valid_truth[0]).any()
    assert (band_valid_truth[0] & ~band_valid_truth[1]).any() and (~pixel_truth).any()

    mean, std = band_statistics([scene], [1, 2], samples=3, size=1000)
    for b in range(2):
        values = data[b][band_valid_truth[b]].astype(np.float64)
        np.testing.assert_allclose(mean[b], values.mean(), rtol=1e-6)
        np.testing.assert_allclose(std[b], values.std(), rtol=1e-6)
    assert mean[0] > 1.2 * data[0][band_valid_truth.all(axis=0)].mean()

    whole = Window(0, 0, 48, 48)
    with TileReader(scene.image, [1, 2], mean=mean, std=std) as reader:
        image, valid = reader.read(whole)
    raw, band_valid, target = read_scene_window(
        scene, whole, bands=[1, 2], num_classes=2, ignore_value=None
    )
    # One validity rule: inference's valid pixels are training's, band by band too.
    assert np.array_equal(valid, pixel_truth)
    assert np.array_equal(band_valid, band_valid_truth)
    assert np.array_equal(target != IGNORE_INDEX, pixel_truth & (labels != 255))
    assert np.array_equal(target[target != IGNORE_INDEX], labels[target != IGNORE_INDEX])
    # A band's nodata inside a valid pixel reaches the model as 0, in both paths.
    trained = normalize(raw, band_valid, np.asarray(mean), np.asarray(std))
    assert np.array_equal(trained, image)
    assert (image[~band_valid_truth] == 0).all()

    # The sampler's windows (the whole scene, flipped or turned) hold the same values.
    s = TrainSettings(
        scenes=(scene,), classes=("a", "b"), colors=((0, 0, 0),) * 2, bands=(1, 2), out="",
        window=48, batch_size=4, mean=mean, std=std,
    )  # fmt: skip
    with WindowSampler(s, rank=0) as sampler:
        x, y = sampler.batch()
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        assert any(
            np.array_equal(xi, dihedral(image, k)) and np.array_equal(yi, dihedral(target, k))
            for k in range(8)
        )


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
    with WindowSampler(s, rank=0) as r0, WindowSampler(s, rank=1) as r1:
        x0, y0 = r0.batch()
        x1, _ = r1.batch()
    assert x0.shape == (4, 4, 64, 64) and y0.shape == (4, 64, 64)
    assert not torch.equal(x0, x1)
    # Water is dark in the near-infrared (band 4): after any flip or rotation the
    # pixels labelled water must still be the dark ones. This seed's batch holds
    # water and other classes, so the comparison always runs.
    water = y0 == CLASSES.index("water")
    land = (y0 >= 0) & ~water
    assert water.sum() > 100 and land.sum() > 100
    nir = x0[:, 3]
    assert nir[water].mean() < nir[land].mean() - 1.0


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips and quarter turns of the last two axes of ``a``."""
    a = a[..., ::-1] if k >= 4 else a
    return np.rot90(a, k % 4, axes=(-2, -1))


def test_flips_and_turns_move_labels_with_their_pixels(threshold_scene):
    n = THRESHOLD_SIDE
    s = TrainSettings(
        scenes=(threshold_scene,), classes=("low", "high"), colors=((0, 0, 0),) * 2, bands=(1,),
        out="", window=32, batch_size=8, mean=(THRESHOLD,), std=(n * n / 4,),
    )  # fmt: skip
    with WindowSampler(s, rank=0) as sampler:
        x, y = sampler.batch()
    x, y = x.numpy()[:, 0], y.numpy()
    # Every pixel's label is whether its value is above the threshold (0 after
    # normalisation): a label moved apart from its pixel would break this.
    assert np.array_equal(x > 0, y == 1) and (y == 0).any() and (y == 1).any()
    # Each window is a crop of the scene seen through one flip or turn; the label
    # window went through the same one. Not all are the identity.
    with open_raster(threshold_scene.image) as src:
        scene = (src.read(1) - THRESHOLD) / (n * n / 4)
    with open_raster(threshold_scene.label) as src:
        labels = src.read(1)
    used = set()
    for xi, yi in zip(x, y, strict=True):
        for k in range(8):  # each flip or turn is undone by one of the eight
            undone = dihedral(xi, k)
            # Values are unique: the corner value says where the crop started.
            r, c = np.unravel_index(np.abs(scene - undone[0, 0]).argmin(), scene.shape)
            crop = np.s_[r : r + 32, c : c + 32]
            if scene[crop].shape == undone.shape and np.allclose(undone, scene[crop], atol=1e-5):
                assert np.array_equal(dihedral(yi, k), labels[crop])
                used.add(k)
                break
        else:
            pytest.fail("a window is not a flipped or turned crop of the scene")
    assert len(used) > 1


def test_brightness_scales_each_window_by_one_gain_per_band(labeled):
    _, scenes = labeled
    raw = {"batch_size": 6, "mean": (0.0,) * 4, "std": (1.0,) * 4}
    with WindowSampler(sampler_settings(scenes, **raw), rank=0) as sampler:
        plain, y_plain = sampler.batch()
    with WindowSampler(sampler_settings(scenes, **raw, brightness=0.3), rank=0) as sampler:
        lit, y_lit = sampler.batch()
    assert torch.equal(y_plain, y_lit)  # same windows, same labels
    # Where the raw value is not 0 (nodata), lit / plain is one gain per window and
    # band, and the gains spread over [0.7, 1.3] (with the small per-band part).
    ratio = torch.where(plain != 0, lit / plain, torch.nan).flatten(2)
    gains = ratio.nanmedian(dim=2).values
    spread = (ratio - gains[..., None]).abs().nan_to_num().amax()
    assert spread < 1e-4
    assert gains.min() > 0.5 and gains.max() < 1.5 and gains.std() > 0.05


@pytest.mark.parametrize("budget_mb", [0, 64])
def test_sampler_opens_each_file_once_and_epochs_reseed(labeled, monkeypatch, budget_mb):
    _, scenes = labeled
    opened = []

    def counting_open(path):
        opened.append(str(path))
        return open_raster(path)

    monkeypatch.setattr(windows, "open_raster", counting_open)
    s = sampler_settings(
        scenes, batch_size=4, mean=(1000.0,) * 4, std=(800.0,) * 4, memory_budget_mb=budget_mb
    )
    with WindowSampler(s, rank=0) as sampler:
        assert sampler.in_memory == (budget_mb > 0)
        first = [sampler.batch() for _ in range(3)]
        sampler.set_epoch(1)
        other = sampler.batch()
        sampler.set_epoch(0)
        again = sampler.batch()
    # The train scene and its labels, once each, for twelve windows, and closed
    # (at once when the scene was read into memory).
    assert sorted(opened) == sorted([scenes[0].image, scenes[0].label])
    assert not torch.equal(first[0][0], other[0])
    assert torch.equal(first[0][0], again[0]) and torch.equal(first[0][1], again[1])


def test_memory_and_file_windows_are_equal_and_the_budget_decides(labeled, monkeypatch):
    _, scenes = labeled
    s = sampler_settings(scenes, batch_size=4, mean=(1000.0,) * 4, std=(800.0,) * 4)
    # a.tif is 200 x 220 with 4 bands: 22 bytes a pixel, 0.92 MiB.
    need = windows.MemoryScene.bytes_needed((200, 220), 4)
    assert need == 200 * 220 * 22
    batches = {}
    for budget in (need / 2**20 - 0.01, need / 2**20):
        settings = TrainSettings(**{**s.__dict__, "memory_budget_mb": budget})
        with WindowSampler(settings, rank=0) as sampler:
            batches[sampler.in_memory] = [sampler.batch() for _ in range(4)]
    assert set(batches) == {0, 1}  # just under the need: files; at it: memory
    for (x0, y0), (x1, y1) in zip(batches[0], batches[1], strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_prefetched_batches_are_the_samplers_in_order_and_errors_reach_the_loop(labeled):
    _, scenes = labeled
    s = sampler_settings(scenes, batch_size=2, mean=(1000.0,) * 4, std=(800.0,) * 4)
    with WindowSampler(s, rank=0) as sampler:
        direct = [sampler.batch() for _ in range(5)]
    fetched = {}
    for producers in (1, 3):  # however many threads make them: the same batches
        with WindowSampler(s, rank=0) as sampler:
            with prefetch.Prefetcher(sampler, 5, depth=2, producers=producers) as batches:
                fetched[producers] = list(batches)
            assert batches.made_seconds > 0
            # Closed after two of five: the threads stop, nothing hangs.
            with prefetch.Prefetcher(sampler, 5, depth=2, producers=producers) as batches:
                next(iter(batches))
            assert not batches._thread.is_alive()
    for got in fetched.values():
        assert len(got) == 5
        for (x0, y0), (x1, y1) in zip(direct, got, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)

    class Broken:
        def __init__(self, settings):
            self.s = settings

        def plan(self, count):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"), prefetch.Prefetcher(Broken(s), 3) as batches:
        list(batches)


def test_class_weights_balance_rare_classes_and_keep_the_loss_scale():
    counts = np.array([900, 90, 10, 0])
    w = np.array(statistics.class_weights(counts, 0.5))
    freq = counts / counts.sum()
    assert (freq * w).sum() == pytest.approx(1.0)  # the average pixel weighs 1
    assert w[1] / w[0] == pytest.approx(np.sqrt(10)) and w[2] / w[0] == pytest.approx(np.sqrt(90))
    assert w[3] == w[2]  # unseen: the largest seen weight
    assert statistics.class_weights(counts, 0.0) == (1.0,) * 4
