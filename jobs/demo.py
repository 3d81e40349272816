"""Built-in demo: the whole path on scenes the project makes itself.

1. writes two labeled sample scenes (4 bands, 4 land-cover classes, nodata border);
2. trains a small FCN-8s on the first for about a minute of CPU and saves a checkpoint;
3. runs the nightly job (``jobs/segment_scenes.py``) on the second, unseen scene;
4. scores the label raster against the second scene's labels and prints how to
   open it in GDAL / QGIS / xarray.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import zarr

from fcn_model import FCN8s, save_checkpoint
from jobs import segment_scenes
from pipeline.areas import query_areas
from pipeline.export import export_cog
from pipeline.metrics import confusion_matrix, scores
from pipeline.sample import CLASSES, COLORS, make_sample_scene


def quick_train(image_path: Path, label_path: Path, *, seconds: float, width: float):
    """A minimal from-scratch training loop on random 128-px windows (the scene is
    small, so it is read once). Returns the model and the per-band mean and std."""
    with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
        image = src.read().astype(np.float32)
        valid = src.dataset_mask() > 0
        labels = lab.read(1).astype(np.int64)
    mean = [float(b[valid].mean()) for b in image]
    std = [float(b[valid].std()) for b in image]
    x_all = torch.from_numpy((image - np.array(mean)[:, None, None]) / np.array(std)[:, None, None])
    x_all = x_all.float() * torch.from_numpy(valid)
    y_all = torch.from_numpy(np.where(labels == 255, -100, labels))
    torch.manual_seed(0)
    model = FCN8s(len(CLASSES), in_channels=image.shape[0], width=width)
    opt = torch.optim.Adam((p for p in model.parameters() if p.requires_grad), lr=1e-3)
    rng = np.random.default_rng(0)
    size, batch, steps, start = 128, 4, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows = rng.integers(0, x_all.shape[1] - size, batch)
        cols = rng.integers(0, x_all.shape[2] - size, batch)
        x = torch.stack(
            [x_all[:, r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
        )
        y = torch.stack(
            [y_all[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
        )
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 250 == 0:
            print(
                f"  step {steps:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)"
            )
    return model.eval(), mean, std


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--width", type=float, default=0.125)
    args = p.parse_args(argv)
    out = Path(args.out)

    print("1. sample scenes")
    train_img, train_lab = make_sample_scene(
        out / "scenes/train.tif", out / "scenes/train_labels.tif", seed=1
    )
    test_img, test_lab = make_sample_scene(
        out / "scenes/test.tif", out / "scenes/test_labels.tif", seed=2, height=900, width=1333
    )
    print(f"2. training FCN-8s width={args.width} for {args.train_seconds:.0f} s on {train_img}")
    model, mean, std = quick_train(
        train_img, train_lab, seconds=args.train_seconds, width=args.width
    )
    ckpt = save_checkpoint(
        out / "model.safetensors",
        model,
        classes=CLASSES,
        bands=[1, 2, 3, 4],
        mean=mean,
        std=std,
        colors=COLORS,
        provenance={"trained_on": str(train_img), "by": "jobs/demo.py"},
    )
    print(f"3. segmenting {test_img} with {ckpt}")
    status = segment_scenes.main(
        [
            "--model",
            str(ckpt),
            "--scenes",
            str(test_img),
            "--out",
            str(out / "labels"),
            "--tile-size",
            "512",
        ]
    )
    if status != 0:
        return status
    zpath = out / "labels" / "test.zarr"
    pred = zarr.open_group(str(zpath), mode="r")["labels"][:]
    with rasterio.open(test_lab) as lab:
        truth = lab.read(1)
    s = scores(confusion_matrix(truth, pred, len(CLASSES)))
    print("4. scores on the unseen scene (against its labels)")
    for name, iou in zip(CLASSES, s.iou, strict=True):
        print(f"   IoU {name:<10} {iou:.3f}")
    print(f"   mean IoU {s.mean_iou:.3f}   pixel accuracy {s.pixel_accuracy:.3f}")
    print(
        f"   nodata agrees with the source mask: {bool(np.array_equal(pred == 255, truth == 255))}"
    )
    done = export_cog(zpath, out / "cogs", quicklook=512)
    print(f"5. exported {done.labels} (COG) and the quicklook {done.quicklook}")
    print(query_areas([zpath]).drop(columns="output").to_string(index=False))
    print("Open the label raster with:")
    print(
        f"   gdalinfo 'ZARR:\"{zpath.resolve()}\":/labels'    (or the COG: gdalinfo {done.labels})"
    )
    print(
        f"   python -c \"import xarray as xr; print(xr.open_zarr('{zpath}', mask_and_scale=False).labels)\""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
