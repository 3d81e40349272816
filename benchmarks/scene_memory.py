"""Peak memory of segmenting one scene, for scenes of growing size.

Each size is generated as a tiled, compressed GeoTIFF (strip by strip) and
segmented in a fresh process, whose peak RSS is reported: it must not grow with
the scene, only with tile size x batch.

    python benchmarks/scene_memory.py --sizes 4096 16384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fcnrs.pipeline.planning import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from fcnrs.synthetic.checkpoints import random_checkpoint
from fcnrs.synthetic.scenes import write_large_scene

CHILD = """
import json, resource, sys, time
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
scene, model, out, tile, overlap, batch = sys.argv[1:7]
t = time.perf_counter()
r = segment_scene(scene, model=model, out_dir=out, settings=SegmentSettings(
    tile_size=int(tile), overlap=int(overlap), batch_size=int(batch)))
print(json.dumps({"seconds": time.perf_counter() - t, "tiles": r.tiles,
                  "valid": r.valid_pixels,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scene_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    model = random_checkpoint(work / "model.safetensors", width=args.width)
    print(
        f"FCN-8s width={args.width} tile={args.tile_size} overlap={args.overlap} "
        f"batch={args.batch_size}"
    )
    print(
        f"{'scene':>12} {'file MiB':>9} {'tiles':>6} {'seconds':>8} {'MP/s':>6} {'peak RSS MiB':>13}"
    )
    for size in args.sizes:
        scene = work / f"scene_{size}.tif"
        if not scene.exists():
            t = time.perf_counter()
            write_large_scene(scene, size)
            print(f"  (wrote {scene.name} in {time.perf_counter() - t:.0f} s)")
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(scene),
                str(model),
                str(work / f"out_{size}"),
                str(args.tile_size),
                str(args.overlap),
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        mib = scene.stat().st_size / 2**20
        print(
            f"{size:>5}x{size:<6} {mib:>9.0f} {r['tiles']:>6} {r['seconds']:>8.1f} "
            f"{size * size / r['seconds'] / 1e6:>6.2f} {r['peak_rss_mib']:>13.0f}"
        )


if __name__ == "__main__":
    main()
