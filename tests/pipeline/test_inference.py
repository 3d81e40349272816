"""The Predictor: stored pixels in, labels cropped to the core out; normalisation
and masking on the model's device, equal to the float32 reading rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnrs.fcn_model import load_checkpoint
from fcnrs.pipeline.batch_reading import SceneReader
from fcnrs.pipeline.batches import PixelBatch
from fcnrs.pipeline.inference import Predictor
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import plan_batches, plan_tiles
from fcnrs.pipeline.reading import TileReader, core_box, inspect_scene


def batch(n: int = 2, size: int = 96) -> PixelBatch:
    """uint16 pixels around the factory checkpoint's mean, nodata 0 on the top 10 rows."""
    rng = np.random.default_rng(0)
    image = rng.normal(5000, 3000, (n, size, size, 3)).clip(1, 60000).astype(np.uint16)
    image[:, :10] = 0
    return PixelBatch(image, None, (0.0, 0.0, 0.0), (5, 7, 64, 70))


def test_labels_are_cropped_to_the_core_with_nodata_where_invalid(make_checkpoint):
    predictor = Predictor(make_checkpoint(logit_scale=100.0), probabilities=True)
    b = batch()
    out = predictor(b)
    assert out.labels.shape == (2, 64, 70) and out.labels.dtype == np.uint8
    assert (out.labels[:, :5] == 255).all() and (out.labels[:, 5:] < 4).all()
    assert out.probabilities.shape == (2, 4, 64, 70) and out.predicted == 2
    assert (out.probabilities[:, :, :5] == 0).all()
    x = (b.image.astype(np.float32) - np.float32(5000)) * (np.float32(1) / np.float32(3000))
    x[b.image == 0] = 0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with torch.inference_mode():
        t = torch.from_numpy(x).to(predictor.dtype)
        full = predictor.network(t.contiguous(memory_format=torch.channels_last))
        full = full.float().argmax(1).numpy()
    np.testing.assert_array_equal(out.labels[:, 5:], full[:, 10:69, 7:77])


def test_tiles_without_a_valid_core_pixel_skip_the_model(make_checkpoint):
    b = batch(n=3)
    b.image[1] = 0  # all nodata
    out = Predictor(make_checkpoint())(b)
    assert out.predicted == 2 and (out.labels[1] == NODATA).all()
    assert (out.labels[[0, 2], 5:] != NODATA).all()


@pytest.mark.gpu
def test_cuda_labels_match_cpu(make_checkpoint):
    ckpt = make_checkpoint(logit_scale=100.0)
    cpu = Predictor(ckpt, device="cpu")(batch()).labels
    gpu = Predictor(ckpt, device="cuda")(batch()).labels
    assert (cpu == gpu).mean() > 0.999


def test_auto_precision_follows_the_cpu_flags():
    from fcnrs.pipeline.inference import cpu_has_fast_bf16, resolve_precision

    assert cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512_bf16 amx_tile")
    assert cpu_has_fast_bf16("flags : fpu avx512f amx_bf16 amx_tile")
    assert not cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512bw")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")


def test_channels_last_bf16_labels_agree_with_plain_fp32(make_checkpoint):
    """The fast path (channels-last, bf16 where the CPU has it) labels like the plain
    fp32 network on a checkpoint with decisive logits."""
    ckpt = make_checkpoint(logit_scale=50.0)
    rng = np.random.default_rng(0)
    image = rng.normal(5000, 3000, (2, 192, 160, 3)).clip(1, 60000).astype(np.uint16)
    pixels = PixelBatch(image, None, (None, None, None), (32, 32, 128, 96))
    net, _ = load_checkpoint(ckpt)
    x = (image.astype(np.float32) - np.float32(5000)) * (np.float32(1) / np.float32(3000))
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with torch.inference_mode():
        plain = net.eval()(torch.from_numpy(x)).argmax(1).numpy()
    fast = Predictor(ckpt, device="cpu", precision="auto")(pixels).labels
    assert (fast == plain[:, 32:160, 32:128]).mean() > 0.99


def _reference_labels(predictor: Predictor, scene, bands, tiles) -> np.ndarray:
    """Labels the way the pipeline made them before stored pixels went to the
    replica: float32 windows normalised by the reading rule (TileReader), the
    model in its dtype and layout, argmax, nodata where invalid."""
    meta = predictor.meta
    with TileReader(scene, bands, mean=meta.mean, std=meta.std) as reader:
        windows = [reader.read(t.read) for t in tiles]
    r, c, h, w = core_box(tiles[0])
    x = torch.from_numpy(np.stack([image for image, _ in windows]))
    with torch.inference_mode():
        x = x.to(dtype=predictor.dtype).contiguous(memory_format=torch.channels_last)
        scores = predictor.network(x)[:, :, r : r + h, c : c + w]
        labels = scores.float().argmax(1).to(torch.uint8).numpy()
    valid = np.stack([v[r : r + h, c : c + w] for _, v in windows])
    labels[~valid] = NODATA
    return labels


SCENES = {
    "uint8 nodata": dict(dtype="uint8", mask="nodata", nodata=0),
    "uint16 nodata": dict(dtype="uint16", mask="nodata", nodata=0),
    "int16 nodata": dict(dtype="int16", mask="nodata", nodata=-9999),
    "float32 nodata": dict(dtype="float32", mask="nodata", nodata=-9999),
    "float32 NaN": dict(dtype="float32", mask=None),
    "internal mask": dict(dtype="uint16", mask="internal"),
    "sidecar mask": dict(dtype="uint16", mask="sidecar"),
    "alpha band": dict(dtype="uint16", mask="alpha"),
    "no mask": dict(dtype="uint16", mask=None),
    "int32 nodata": dict(dtype="int32", mask="nodata", nodata=-1),
}


CASES = [(kind, "fp32") for kind in SCENES]
# bf16 tables and bf16 arithmetic: one signed and one unsigned table, one computed type.
CASES += [("uint8 nodata", "bf16"), ("int16 nodata", "bf16"), ("float32 NaN", "bf16")]


@pytest.mark.parametrize(("kind", "precision"), CASES)
def test_stored_pixels_give_the_labels_of_normalised_float32_input(
    make_scene, make_checkpoint, kind, precision
):
    """Shipping stored values and normalising on the replica changes no label, in
    either precision, whatever declares validity; the bands are swapped and one
    band is invalid inside valid pixels (set to its mean, as the reading rule says)."""
    spec = SCENES[kind]
    scene = make_scene(height=130, width=150, **spec)
    if kind == "float32 NaN":
        import rasterio

        with rasterio.open(scene, "r+") as dst:
            data = dst.read()
            data[:, 150:170, 20:60] = np.nan
            data[1, 40:45, 40:45] = np.nan
            dst.write(data)
    elif spec.get("nodata") is not None:
        import rasterio

        with rasterio.open(scene, "r+") as dst:
            band = dst.read(2)
            band[40:45, 40:45] = spec["nodata"]  # one band invalid, the pixel valid
            dst.write(band, 2)
    bands = (3, 1, 2)
    ckpt = make_checkpoint(bands=bands, mean=[5000.0] * 3, std=[3000.0] * 3, logit_scale=20.0)
    predictor = Predictor(ckpt, device="cpu", precision=precision)
    info = inspect_scene(scene)
    grid = plan_tiles(info.height, info.width, tile_size=64, overlap=32)
    compared = 0
    with SceneReader(scene, bands) as reader:
        for tiles in plan_batches(grid, 4):
            got = predictor(reader.read_batch(tiles)).labels
            np.testing.assert_array_equal(got, _reference_labels(predictor, scene, bands, tiles))
            compared += got.size
    assert compared == 130 * 150
