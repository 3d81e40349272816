"""Training windows per second against the number of producer threads.

The fine-tuning job's sampler on the synthetic thin-structures scene (1024², 3
bands, in memory as the job holds it), 256-px windows in batches of 4, made by
``Prefetcher`` with 1, 2, ... producer threads and consumed as fast as they come
(no model): the rate a GPU could be fed at. The batches are the same whatever
the thread count (tested); only their rate changes.

    python benchmarks/window_producers.py [--producers 1 2 4 8] [--batches 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fcnrs.synthetic.thin import THIN_CLASSES, THIN_COLORS, make_thin_structures_scene
from fcnrs.training.data import LabeledScene
from fcnrs.training.prefetch import Prefetcher
from fcnrs.training.settings import TrainSettings
from fcnrs.training.statistics import band_statistics
from fcnrs.training.windows import WindowSampler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--producers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="window_producers_"))
    image, label = make_thin_structures_scene(work / "thin.tif", work / "thin_labels.tif", seed=1)
    scene = LabeledScene(str(image), str(label), "train")
    mean, std = band_statistics([scene], (1, 2, 3))
    settings = TrainSettings(
        scenes=(scene,),
        classes=THIN_CLASSES,
        colors=THIN_COLORS,
        bands=(1, 2, 3),
        out=str(work / "run"),
        window=args.window,
        batch_size=args.batch_size,
        mean=mean,
        std=std,
        brightness=0.3,
    )
    print(f"{'producers':>9} {'windows/s':>10} {'vs one':>7}")
    base = None
    for n in args.producers:
        with WindowSampler(settings, rank=0) as sampler:
            t0 = time.perf_counter()
            with Prefetcher(sampler, args.batches, depth=2 * n, producers=n) as batches:
                for _ in batches:
                    pass
            rate = args.batches * args.batch_size / (time.perf_counter() - t0)
        base = base or rate
        print(f"{n:>9} {rate:>10.0f} {rate / base:>6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
