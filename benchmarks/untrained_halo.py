"""The halo an *untrained* network needs, per variant and width: the numbers behind
``fcnrs.pipeline.context.UNTRAINED_HALO``, the default for checkpoints that
record none.

For each variant and width, seeds and both initialisations (the network's own
He-normal and torch's default, which fine-tuning uses), builds a 3-band,
4-class network and measures its halo (:func:`fcnrs.pipeline.context.measure_halo`:
the smallest multiple of 32 whose 256-px tiles agree with a whole-scene pass on
99.9% of valid pixels) on the scene generated for it and on the real Landsat
scene (nodata collar), then prints the largest and the value to keep in code
(the largest plus one stride).

    python benchmarks/untrained_halo.py                          # everything (about an hour here)
    python benchmarks/untrained_halo.py --variants fcn8s --widths 0.125 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fcnrs.fcn_model import STRIDE, VARIANTS, build_model, save_checkpoint
from fcnrs.pipeline.context import measure_halo
from fcnrs.pipeline.reading import open_raster

LANDSAT = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "landsat7_rgb_utm18n.tif"


def landsat_statistics() -> tuple[list[float], list[float]]:
    """Per-band mean and std of the Landsat scene's valid pixels (its collar is 0)."""
    with open_raster(LANDSAT) as src:
        data = src.read(masked=True).astype(np.float64)
    return [float(b.mean()) for b in data], [float(b.std()) for b in data]


def checkpoint(path: Path, variant: str, width: float, init: str, seed: int, stats) -> Path:
    torch.manual_seed(seed)
    model = build_model(variant, num_classes=4, in_channels=3, width=width)  # type: ignore[arg-type]
    if init == "pytorch":  # what fine-tuning starts from by default (--weight-init pytorch)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module.weight.requires_grad:
                module.reset_parameters()
    mean, std = stats
    return save_checkpoint(path, model, classes=list("abcd"), bands=[1, 2, 3], mean=mean, std=std)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--inits", nargs="+", default=["he", "pytorch"], choices=["he", "pytorch"])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--max-side", type=int, default=768, help="edge of the region measured")
    p.add_argument("--json", default=None, help="also write every measurement here")
    args = p.parse_args(argv)
    stats = landsat_statistics()
    scenes: list[list[str]] = [[]]  # [] = the generated scene
    if LANDSAT.is_file():
        scenes.append([str(LANDSAT)])
    else:
        print(f"{LANDSAT} not found: generated scene only", file=sys.stderr)
    rows = []
    print(f"{'variant':>7} {'width':>6}  halos (init/seed/scene)            largest  keep")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for width in args.widths:
                found = []
                for init in args.inits:
                    for seed in args.seeds:
                        ckpt = checkpoint(
                            Path(tmp) / "m.safetensors", variant, width, init, seed, stats
                        )
                        for scene in scenes:
                            t0 = time.perf_counter()
                            m = measure_halo(
                                ckpt,
                                scene,
                                precision=args.precision,
                                max_side=args.max_side,
                                margin=0,
                            )
                            where = "landsat" if scene else "generated"
                            found.append(m.halo)
                            rows.append(
                                {
                                    "variant": variant,
                                    "width": width,
                                    "init": init,
                                    "seed": seed,
                                    "scene": where,
                                    "halo": m.halo,
                                    "agreement": m.agreement,
                                    "tried": m.tried,
                                    "seconds": time.perf_counter() - t0,
                                }
                            )
                            print(
                                f"  {variant} {width} {init} seed {seed} {where}: {m.halo} px "
                                f"({m.agreement:.4%}), {time.perf_counter() - t0:.0f} s",
                                file=sys.stderr,
                                flush=True,
                            )
                print(
                    f"{variant:>7} {width:>6}  {' '.join(str(h) for h in found):<34} "
                    f"{max(found):>7}  {max(found) + STRIDE:>4}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
