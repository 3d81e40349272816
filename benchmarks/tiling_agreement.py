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
import torch
import zarr

from fcnrs.fcn_model import STRIDE, FCN8s, save_checkpoint
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import plan_tiles
from fcnrs.pipeline.reading import inspect_scene, open_raster
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.synthetic.scenes import write_large_scene


def whole_scene_labels(scene: Path, model: Path, out: Path, precision: str) -> np.ndarray:
    """One pass over the whole scene: a single tile whose core is the scene."""
    info = inspect_scene(scene)
    edge = STRIDE * -(-max(info.height, info.width) // STRIDE)
    segment_scene(
        scene,
        model=model,
        out_dir=out,
        settings=SegmentSettings(tile_size=edge, overlap=0, precision=precision),
    )
    return zarr.open_group(str(out / f"{scene.stem}.zarr"), mode="r")["labels"][:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default=None, help="a GeoTIFF (default: synthetic 1000x777)")
    p.add_argument("--bands", default="1,2,3")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--tile-size", type=int, default=300)
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 32, 64, 128, 192, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--model", default=None, help="a trained checkpoint to measure instead of random ones"
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tiling_agreement_"))
    scene = (
        Path(args.scene) if args.scene else write_large_scene(work / "scene.tif", 1000, width=777)
    )
    bands = [int(b) for b in args.bands.split(",")]
    info = inspect_scene(scene)
    with open_raster(scene) as src:  # normalisation from a decimated overview read
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
    for seed in [0] if args.model else args.seeds:
        torch.manual_seed(seed)
        model = (
            Path(args.model)
            if args.model
            else save_checkpoint(
                work / f"m{seed}.safetensors",
                FCN8s(4, in_channels=len(bands), width=args.width),
                classes=list("abcd"),
                bands=bands,
                mean=mean,
                std=std,
            )
        )
        whole = whole_scene_labels(scene, model, work / f"whole{seed}", args.precision)
        valid = whole != NODATA
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
                settings=SegmentSettings(
                    tile_size=args.tile_size, overlap=ov, precision=args.precision
                ),
            )
            stitched = zarr.open_group(str(out / f"{scene.stem}.zarr"), mode="r")["labels"][:]
            results[ov].append(float((stitched[valid] == whole[valid]).mean()))
    for ov in args.overlaps:
        grid = plan_tiles(info.height, info.width, tile_size=args.tile_size, overlap=ov)
        read = sum(t.read.height * t.read.width for t in grid) / (info.height * info.width)
        print(f"{grid.overlap:>7} {read:>10.2f}x " + " ".join(f"{a:>10.4%}" for a in results[ov]))


if __name__ == "__main__":
    main()
