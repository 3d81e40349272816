"""End to end on one process: tiling invariance, nodata, real scenes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import zarr

from fcnrs.fcn_model import load_checkpoint
from fcnrs.pipeline.batch_reading import SceneReader
from fcnrs.pipeline.errors import SceneError
from fcnrs.pipeline.reading import TileReader
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.pipeline.writing import is_complete
from tests.oracle import whole_scene_labels


def read_labels(out_dir, stem) -> np.ndarray:
    return zarr.open_group(str(out_dir / f"{stem}.zarr"), mode="r")["labels"][:]


@pytest.mark.parametrize(
    ("height", "width", "tile_size", "precision"),
    [(1000, 777, 300, "fp32"), (641, 903, 200, "fp32"), (641, 903, 200, "bf16")],
)
def test_stitched_labels_equal_a_whole_scene_pass(
    make_scene, make_checkpoint, tmp_path, height, width, tile_size, precision
):
    scene = make_scene(height=height, width=width, mask="nodata")
    ckpt = make_checkpoint()
    result = segment_scene(
        scene,
        model=ckpt,
        out_dir=tmp_path / "out",
        # A random (He-initialised) network needs about 192 px of context for 99.9%;
        # trained ones need far less (README: why the default halo is 96 px).
        settings=SegmentSettings(
            tile_size=tile_size, overlap=192, batch_size=3, precision=precision
        ),
    )
    stitched = read_labels(tmp_path / "out", "scene")
    if precision == "fp32":
        whole = whole_scene_labels(scene, ckpt)  # the independent oracle
    else:  # the same predictor, one tile whose core is the whole scene
        edge = 32 * -(-max(height, width) // 32)
        single = SegmentSettings(tile_size=edge, overlap=0, precision=precision)
        segment_scene(scene, model=ckpt, out_dir=tmp_path / "whole", settings=single)
        whole = read_labels(tmp_path / "whole", "scene")
    valid = whole != 255
    assert np.array_equal(stitched == 255, ~valid)
    agreement = (stitched[valid] == whole[valid]).mean()
    counts = np.bincount(whole[valid], minlength=4) / valid.sum()
    assert counts.max() < 0.9, f"model labels trivially one class: {counts}"
    assert agreement >= 0.999, f"tiled vs whole-scene agreement {agreement:.5f}"
    assert result.tiles > 9 and result.valid_pixels == valid.sum()


def test_off_stride_tiling_would_fail_the_same_check(make_scene, make_checkpoint):
    """The check above can fail: tiles whose origins are off the stride disagree."""
    scene = make_scene(height=400, width=400, mask=None)
    ckpt = make_checkpoint()
    model, meta = load_checkpoint(ckpt)
    whole = whole_scene_labels(scene, ckpt)
    from fcnrs.pipeline.planning import Window

    with TileReader(scene, meta.bands, mean=meta.mean, std=meta.std) as reader:
        image, _ = reader.read(Window(16, 16, 384, 384))
    with torch.inference_mode():
        shifted = model(torch.from_numpy(image)[None]).argmax(1)[0].numpy()
    core = (slice(100, 300), slice(100, 300))
    agreement = (shifted[core] == whole[116:316, 116:316]).mean()
    assert agreement < 0.99


@pytest.mark.parametrize(
    ("mask", "dtype"),
    [(m, d) for m in ("nodata", "internal") for d in ("uint8", "uint16", "int16", "float32")]
    + [("sidecar", "uint16")]
    # GDAL's GeoTIFF driver honours alpha bands of unsigned integer types.
    + [("alpha", "uint8"), ("alpha", "uint16")],
)
def test_label_255_exactly_where_the_source_is_invalid(
    make_scene, make_checkpoint, tmp_path, mask, dtype
):
    scene = make_scene(height=200, width=333, dtype=dtype, mask=mask, nodata=0)
    assert scene.with_suffix(".tif.msk").exists() == (mask == "sidecar")
    ckpt = make_checkpoint()
    segment_scene(
        scene,
        model=ckpt,
        out_dir=tmp_path / "out",
        settings=SegmentSettings(tile_size=128, overlap=32),
    )
    labels = read_labels(tmp_path / "out", "scene")
    with rasterio.open(scene) as src:
        invalid = src.dataset_mask() == 0
    assert 0.05 < invalid.mean() < 0.5
    assert np.array_equal(labels == 255, invalid)


def test_nan_pixels_in_float_scenes_are_nodata(make_scene, make_checkpoint, tmp_path):
    data = np.random.default_rng(0).normal(5000, 100, (3, 100, 100)).astype("float32")
    data[:, 10:20, 30:60] = np.nan
    data[1, 50, 50] = np.nan  # one band missing: the pixel stays valid
    scene = make_scene(height=100, width=100, dtype="float32", mask=None, data=data)
    segment_scene(scene, model=make_checkpoint(), out_dir=tmp_path / "out")
    labels = read_labels(tmp_path / "out", "scene")
    assert (labels[10:20, 30:60] == 255).all()
    assert (labels == 255).sum() == 300


def test_landsat_collar_is_nodata(realdata, make_checkpoint, tmp_path):
    scene = realdata / "landsat7_rgb_utm18n.tif"
    ckpt = make_checkpoint(mean=[60, 60, 60], std=[40, 40, 40])
    result = segment_scene(
        scene,
        model=ckpt,
        out_dir=tmp_path / "out",
        settings=SegmentSettings(tile_size=128, overlap=32),
    )
    labels = read_labels(tmp_path / "out", "landsat7_rgb_utm18n")
    with rasterio.open(scene) as src:
        invalid = src.dataset_mask() == 0
    assert 0.2 < invalid.mean() < 0.5  # the rotated collar
    assert np.array_equal(labels == 255, invalid)
    # Whole tiles in the collar never reach the model.
    assert result.tiles_predicted < result.tiles


def test_sentinel2_13_bands_in_epsg4326(realdata, make_checkpoint, tmp_path):
    scene = realdata / "sen1floods11_spain_7370579_s2.tif"
    ckpt = make_checkpoint(bands=(4, 3, 2, 8), mean=[1000] * 4, std=[500] * 4)
    segment_scene(scene, model=ckpt, out_dir=tmp_path / "out")
    out = tmp_path / "out" / "sen1floods11_spain_7370579_s2.zarr"
    assert is_complete(out)
    with rasterio.open(f'ZARR:"{out}":/labels') as dst, rasterio.open(scene) as src:
        assert dst.crs == src.crs and dst.crs.to_epsg() == 4326
        assert dst.transform.almost_equals(src.transform, precision=1e-12)
        labels = dst.read(1)
        assert np.array_equal(labels == 255, src.dataset_mask() == 0)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["bands"] == [4, 3, 2, 8]


def test_band_override_must_fit_the_model(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(bands=4, mask=None)
    ckpt = make_checkpoint()
    with pytest.raises(
        SceneError, match=r"scene\.tif: band index 7 does not exist: the file has 4"
    ):
        segment_scene(
            scene, model=ckpt, out_dir=tmp_path / "out", settings=SegmentSettings(bands=(1, 2, 7))
        )
    with pytest.raises(SceneError, match=r"scene\.tif: the model takes 3 bands but 2"):
        segment_scene(
            scene, model=ckpt, out_dir=tmp_path / "out", settings=SegmentSettings(bands=(1, 2))
        )
    assert not (tmp_path / "out").exists()
    segment_scene(
        scene, model=ckpt, out_dir=tmp_path / "out", settings=SegmentSettings(bands=(4, 2, 1))
    )
    assert is_complete(tmp_path / "out" / "scene.zarr")


def test_too_few_bands_for_the_model(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(bands=1, mask=None)
    with pytest.raises(SceneError, match=r"scene\.tif: band index 2 does not exist"):
        segment_scene(scene, model=make_checkpoint(), out_dir=tmp_path / "out")


def test_not_a_raster_fails_naming_the_file(make_checkpoint, tmp_path):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not a GeoTIFF")
    with pytest.raises(SceneError, match=r"notes\.tif: not a readable GTiff raster"):
        segment_scene(bogus, model=make_checkpoint(), out_dir=tmp_path / "out")
    with pytest.raises(SceneError, match=r"absent\.tif: no such file"):
        segment_scene(tmp_path / "absent.tif", model=make_checkpoint(), out_dir=tmp_path / "out")


def test_truncated_geotiff_fails_and_keeps_earlier_output(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(height=512, width=512, mask=None)
    ckpt = make_checkpoint()
    out = tmp_path / "out"
    segment_scene(scene, model=ckpt, out_dir=out, settings=SegmentSettings(tile_size=128))
    before = read_labels(out, "scene")
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SceneError, match=r"scene\.tif: cannot read rows .* truncated or corrupt"):
        segment_scene(scene, model=ckpt, out_dir=out, settings=SegmentSettings(tile_size=128))
    # The earlier complete output is untouched; the failed attempt is not presented as whole.
    assert is_complete(out / "scene.zarr")
    assert np.array_equal(read_labels(out, "scene"), before)
    assert not is_complete(out / ".scene.zarr.partial")


def test_reads_are_windowed_and_decode_each_block_once(
    make_scene, make_checkpoint, tmp_path, monkeypatch
):
    """Every tile asks for its window only; GDAL is asked for whole, aligned
    pieces of blocks, each once (halos shared between tiles are not decoded
    twice), never for more than a bounded piece, and never for the whole scene."""
    scene = make_scene(height=1100, width=1300, mask="nodata")  # 128-px blocks
    asked = []
    original = SceneReader.read_into

    def spy(self, window, image, valid):
        asked.append(window.shape)
        return original(self, window, image, valid)

    monkeypatch.setattr(SceneReader, "read_into", spy)
    seen = []
    real = rasterio.io.DatasetReader.read

    def read(self, *args, window=None, **kw):
        seen.append(
            (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
        )
        return real(self, *args, window=window, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    result = segment_scene(
        scene,
        model=make_checkpoint(),
        out_dir=tmp_path / "out",
        settings=SegmentSettings(tile_size=256, overlap=64),
    )
    assert len(asked) == result.tiles == 30
    assert max(h for h, _ in asked) <= 256 + 2 * 64 and max(w for _, w in asked) <= 384
    # Pieces of 2 x 2 blocks (256 px), aligned, each read once: 1100 x 1300 px in all.
    assert len(seen) == len(set(seen)) == 5 * 6
    assert all(r % 128 == 0 and c % 128 == 0 and h <= 256 and w <= 256 for r, c, h, w in seen)
    assert sum(h * w for _, _, h, w in seen) == 1100 * 1300
