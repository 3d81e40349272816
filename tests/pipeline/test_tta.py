"""Test-time augmentation: transforms and inverses, the stride-grid alignment, the
labels against a hand-computed average of flipped passes, determinism and the
settings identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from fcnrs.fcn_model import FCN8s, load_checkpoint
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import TileReader
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.pipeline.tta import TRANSFORMS, averaged_probabilities, pad_to_stride


def read_group(out: Path, stem: str = "scene") -> zarr.Group:
    return zarr.open_group(str(out / f"{stem}.zarr"), mode="r")


def test_each_transform_is_undone_and_the_groups_have_4_and_8_distinct_elements():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    for mode, n in (("none", 1), ("flips", 4), ("d4", 8)):
        images = set()
        for t in TRANSFORMS[mode]:
            y = t.apply(x)
            assert torch.equal(t.undo(y), x)
            images.add(tuple(y.flatten().tolist()) + tuple(y.shape))
        assert len(images) == n


def symmetric_fcn8s(seed: int = 0) -> FCN8s:
    """A random FCN-8s whose every filter is unchanged by each flip and 90° turn:
    on the stride grid its scores turn with its input, up to rounding."""
    torch.manual_seed(seed)
    model = FCN8s(4, in_channels=3, width=0.125).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                w = module.weight
                turns = [torch.rot90(w, k, (-2, -1)) for k in range(4)]
                module.weight.copy_(sum(turns + [t.flip(-1) for t in turns]) / 8)
    return model


def test_a_flip_on_the_stride_grid_keeps_each_pixel_at_its_pooling_phase():
    """A symmetric network's flipped pass, undone, equals the plain pass when the
    window is padded to the stride grid before the flip; a naive flip of a window
    whose width is not a multiple of 32 pools every pixel at another phase."""
    model = symmetric_fcn8s()
    x = torch.randn(1, 3, 77, 150)  # neither side a multiple of 32
    with torch.inference_mode():
        plain = model(x)
        flip = TRANSFORMS["flips"][1]  # left-right
        aligned = flip.undo(model(flip.apply(pad_to_stride(x))))[..., :77, :150]
        naive = flip.undo(model(flip.apply(x)))
    scale = plain.abs().max()
    assert (aligned - plain).abs().max() < 1e-4 * scale
    assert (naive - plain).abs().max() > 0.1 * scale
    assert (naive.argmax(1) != plain.argmax(1)).float().mean() > 0.05
    # Every pass of d4 agrees with the plain one, so their average is its softmax.
    with torch.inference_mode():
        mean = averaged_probabilities(model, x, mode="d4")
    assert (mean - plain.softmax(1)).abs().max() < 1e-4


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_flip_average(model, image: np.ndarray, *, aligned: bool) -> np.ndarray:
    """Class probabilities averaged over the 4 flips, each pass in numpy: pad (or
    not) to multiples of 32, flip, run, flip back, softmax, then the mean."""
    h, w = image.shape[-2:]
    padded = np.pad(image, ((0, 0), (0, -h % 32), (0, -w % 32))) if aligned else image
    total = 0.0
    for axes in ((), (3,), (2,), (2, 3)):  # (1, bands, rows, cols): rows and columns
        flipped = np.ascontiguousarray(np.flip(padded[None], axes) if axes else padded[None])
        with torch.inference_mode():
            scores = model(torch.from_numpy(flipped)).numpy().astype(np.float64)
        back = np.flip(scores, axes) if axes else scores
        total = total + softmax(back[:, :, :h, :w])
    return (total / 4)[0]


def test_tta_labels_equal_a_hand_computed_average_of_flipped_passes(
    make_scene, make_checkpoint, tmp_path
):
    scene = make_scene(height=150, width=219)  # 219: flips need the padding
    ckpt = make_checkpoint(logit_scale=100.0)
    settings = SegmentSettings(tile_size=256, precision="fp32", tta="flips", probabilities=True)
    segment_scene(scene, model=ckpt, out_dir=tmp_path / "tta", settings=settings)
    group = read_group(tmp_path / "tta")
    labels, probs = group["labels"][:], group["probabilities"][:]

    model, meta = load_checkpoint(ckpt)
    with TileReader(scene, meta.bands, mean=meta.mean, std=meta.std) as reader:
        image, valid = reader.read(Window(0, 0, 150, 219))
    mean = hand_flip_average(model, image, aligned=True)
    expected = np.where(valid, mean.argmax(0), 255)
    top2 = np.sort(mean, axis=0)[-2:]
    clear = valid & (top2[1] - top2[0] > 1e-4)  # not a tie to float rounding
    assert clear.mean() > 0.99 * valid.mean()
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert (labels[~valid] == 255).all()
    assert np.abs(probs[:, valid].astype(int) - np.round(mean[:, valid] * 255)).max() <= 1

    # The check has teeth: TTA changed labels, and the naive (unpadded) flips differ.
    plain = SegmentSettings(tile_size=256, precision="fp32")
    segment_scene(scene, model=ckpt, out_dir=tmp_path / "plain", settings=plain)
    assert (read_group(tmp_path / "plain")["labels"][:][valid] != labels[valid]).mean() > 0.01
    naive = hand_flip_average(model, image, aligned=False).argmax(0)
    assert (naive[valid] != labels[valid]).mean() > 0.01


def test_tta_tiles_agree_with_one_tta_pass_and_the_bytes_are_deterministic(
    make_scene, make_checkpoint, tmp_path
):
    """d4 in 96-px tiles at the default halo (edge windows of every odd shape)
    against the whole scene as one d4 tile; a second tiled run writes the same
    bytes."""
    scene = make_scene(height=201, width=263)
    ckpt = make_checkpoint()
    tiled = SegmentSettings(tile_size=96, tta="d4")
    for out in ("a", "b"):
        segment_scene(scene, model=ckpt, out_dir=tmp_path / out, settings=tiled)
    whole = SegmentSettings(tile_size=288, overlap=0, tta="d4")
    segment_scene(scene, model=ckpt, out_dir=tmp_path / "whole", settings=whole)
    a, w = read_group(tmp_path / "a")["labels"][:], read_group(tmp_path / "whole")["labels"][:]
    valid = w != 255
    assert (a[valid] == w[valid]).mean() >= 0.999
    chunks = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("labels/*"))
    assert len(chunks) >= 9
    for chunk in chunks:
        assert (tmp_path / "a" / chunk).read_bytes() == (tmp_path / "b" / chunk).read_bytes()


def test_tta_is_part_of_the_settings_identity():
    digests = {SegmentSettings(overlap=64, tta=mode).digest() for mode in ("none", "flips", "d4")}
    assert len(digests) == 3
    assert SegmentSettings(tta="d4").output_settings()["tta"] == "d4"
    with pytest.raises(ValueError, match=r"tta must be one of \['none', 'flips', 'd4'\]"):
        SegmentSettings(tta="rot90")  # type: ignore[arg-type]


@pytest.mark.gpu
def test_cuda_tta_labels_match_cpu_and_repeat_exactly(make_checkpoint, monkeypatch):
    from fcnrs.pipeline.batches import PixelBatch
    from fcnrs.pipeline.inference import Predictor

    # As the replicas run it (PredictStage): the same kernels every run.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    rng = np.random.default_rng(0)
    image = rng.normal(5000, 3000, (2, 150, 219, 3)).clip(1, 60000).astype(np.uint16)
    pixels = PixelBatch(image, None, (0.0, 0.0, 0.0), (0, 0, 150, 219))
    ckpt = make_checkpoint(logit_scale=100.0)
    cpu = Predictor(ckpt, device="cpu", precision="fp32", tta="d4")(pixels).labels
    gpu = Predictor(ckpt, device="cuda", precision="fp32", tta="d4")
    first, second = gpu(pixels).labels, gpu(pixels).labels
    assert np.array_equal(first, second)
    assert (first == cpu).mean() > 0.999
