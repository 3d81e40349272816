"""How much halo the tiles need: agreement of stitched labels with a whole-scene pass.

For each overlap (halo), segments the scene through the tiled path and prints the
share of valid pixels whose label equals a single whole-scene pass, and how many
pixels the model reads per output pixel (the halo's cost).

    python benchmarks/tiling_agreement.py                       # synthetic 1000x777 scene
    python benchmarks/tiling_agreement.py --scene ../shared/realdata/landsat7_rgb_utm18n.tif
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
import zarr
from rasterio.transform import from_origin

from fcn_model import FCN8s, save_checkpoint
from pipeline.planning import plan_tiles
from pipeline.reading import inspect_scene
from pipeline.reference import whole_scene_labels
from pipeline.segment import SegmentSettings, segment_scene


def synthetic_scene(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    bands = []
    for _ in range(3):
        f = sum(
            np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6))
            * np.cos(yy / rng.uniform(20, 90) + rng.uniform(0, 6))
            for _k in range(3)
        )
        bands.append(5000 + 1500 * f + rng.normal(0, 100, f.shape))
    data = np.clip(np.stack(bands), 1, 65535).astype(np.uint16)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4200000, 10, 10),
    ) as dst:
        dst.write(data)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default=None, help="a GeoTIFF (default: synthetic 1000x777)")
    p.add_argument("--bands", default="1,2,3")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--tile-size", type=int, default=300)
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 32, 64, 128, 192, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tiling_agreement_"))
    scene = Path(args.scene) if args.scene else synthetic_scene(work / "scene.tif", 1000, 777)
    bands = [int(b) for b in args.bands.split(",")]
    info = inspect_scene(scene)
    with rasterio.open(scene) as src:  # normalisation from a decimated overview read
        sample = src.read(bands, out_shape=(len(bands), 256, 256), masked=True)
    mean = [float(sample[i].mean()) for i in range(len(bands))]
    std = [float(sample[i].std()) or 1.0 for i in range(len(bands))]
    print(
        f"scene {scene.name} {info.height}x{info.width}, FCN-8s width={args.width}, "
        f"tile size {args.tile_size}, seeds {args.seeds}"
    )
    print(
        f"{'overlap':>7} {'read/out px':>11} "
        + " ".join(f"{'seed ' + str(s):>10}" for s in args.seeds)
    )
    results = {ov: [] for ov in args.overlaps}
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = save_checkpoint(
            work / f"m{seed}.safetensors",
            FCN8s(4, in_channels=len(bands), width=args.width),
            classes=list("abcd"),
            bands=bands,
            mean=mean,
            std=std,
        )
        whole = whole_scene_labels(scene, model)
        valid = whole != 255
        shares = np.bincount(whole[valid], minlength=4) / valid.sum()
        print(
            f"  seed {seed}: whole-scene class shares {np.round(shares, 3).tolist()}",
            file=sys.stderr,
        )
        for ov in args.overlaps:
            out = work / f"o{seed}_{ov}"
            segment_scene(
                scene,
                model=model,
                out_dir=out,
                settings=SegmentSettings(tile_size=args.tile_size, overlap=ov),
            )
            stitched = zarr.open_group(str(out / f"{scene.stem}.zarr"), mode="r")["labels"][:]
            results[ov].append(float((stitched[valid] == whole[valid]).mean()))
    for ov in args.overlaps:
        grid = plan_tiles(info.height, info.width, tile_size=args.tile_size, overlap=ov)
        read = sum(t.read.height * t.read.width for t in grid) / (info.height * info.width)
        print(f"{grid.overlap:>7} {read:>10.2f}x " + " ".join(f"{a:>10.4%}" for a in results[ov]))


if __name__ == "__main__":
    main()
